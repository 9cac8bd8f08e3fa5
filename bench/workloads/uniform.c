/* Uniform random: each pass makes N touches at pages drawn uniformly (no
 * locality at all: every miss is a real fault for any pager); half of them write. */
#define WL_VERIFY_SCATTERED /* no locality in the final sweep either */
#include "common.h"
static const char *WL_NAME = "uniform";
static int WL_WRITE_PCT = 50;
static void setup(wl_t *w) { (void)w; }
static uint64_t pick(wl_t *w, uint64_t i) {
  (void)i;
  return rnd(w) % w->pages;
}
