/* Read-mostly: uniform random touches, 5% writes (clean pages need no write-back
 * on eviction, which rewards pagers that track dirtiness). */
#include "common.h"
static const char *WL_NAME = "readmostly";
static int WL_WRITE_PCT = 5;
static void setup(wl_t *w) { (void)w; }
static uint64_t pick(wl_t *w, uint64_t i) {
  (void)i;
  return rnd(w) % w->pages;
}
