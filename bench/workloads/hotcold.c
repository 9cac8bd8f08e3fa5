/* Hot/cold: 90% of touches go to a hot 10% of the pages (spread over the whole
 * range, so neither side benefits from address contiguity); 20% writes. */
#include "common.h"
static const char *WL_NAME = "hotcold";
static int WL_WRITE_PCT = 20;
static void setup(wl_t *w) { (void)w; }
static uint64_t pick(wl_t *w, uint64_t i) {
  (void)i;
  uint64_t n = w->pages, hot = n / 10 ? n / 10 : 1;
  uint64_t r = rnd(w);
  /* Hot pages are every 10th page; cold touches are uniform over everything. */
  if (r % 100 < 90) return ((rnd(w) % hot) * 10) % n;
  return rnd(w) % n;
}
