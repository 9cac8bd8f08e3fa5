/* Strided: each pass touches every 3rd page (0, 3, 6, ...), then the pages
 * after them (1, 4, 7, ...), then the rest (2, 5, 8, ...), rewriting each: a
 * constant stride of 3 pages that no cluster or plain readahead follows, yet
 * every page is touched once per pass. */
#include "common.h"
static const char *WL_NAME = "strided";
static int WL_WRITE_PCT = 100;
/* Touches in the first and second sweep of a pass: ceil(n/3), ceil((n-1)/3). */
static uint64_t sweep0, sweep1;
static void setup(wl_t *w) {
  sweep0 = (w->pages + 2) / 3;
  sweep1 = (w->pages + 1) / 3;
}
static uint64_t pick(wl_t *w, uint64_t i) {
  (void)w;
  if (i < sweep0) return 3 * i;
  if (i < sweep0 + sweep1) return 1 + 3 * (i - sweep0);
  return 2 + 3 * (i - sweep0 - sweep1);
}
