/* Four interleaved sequential streams: four threads, each sweeping its own
 * quarter of the pages in order and rewriting them, at the same time. Their
 * faults interleave as the scheduler runs them, so a prefetcher must tell the
 * threads apart to see four sweeps rather than noise. */
#define WL_THREADS 4
#include "common.h"
static const char *WL_NAME = "streams";
static int WL_WRITE_PCT = 100;
static void setup(wl_t *w) { (void)w; }
/* Thread t makes touches [t*n/4, (t+1)*n/4): its own quarter, in order. */
static uint64_t pick(wl_t *w, uint64_t i) {
  (void)w;
  return i;
}
