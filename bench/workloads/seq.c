/* Sequential sweep: every pass touches pages 0..N-1 in order and rewrites them
 * (the best case for kernel swap readahead). */
#include "common.h"
static const char *WL_NAME = "seq";
static int WL_WRITE_PCT = 100;
static void setup(wl_t *w) { (void)w; }
static uint64_t pick(wl_t *w, uint64_t i) {
  (void)w;
  return i;
}
