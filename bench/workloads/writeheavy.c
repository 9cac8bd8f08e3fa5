/* Write-heavy: uniform random touches, 90% writes (nearly every eviction must
 * write the page out again). */
#include "common.h"
static const char *WL_NAME = "writeheavy";
static int WL_WRITE_PCT = 90;
static void setup(wl_t *w) { (void)w; }
static uint64_t pick(wl_t *w, uint64_t i) {
  (void)i;
  return rnd(w) % w->pages;
}
