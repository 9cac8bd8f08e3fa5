/* Zipfian (theta 0.99, as in YCSB): page popularity falls off as 1/rank; ranks
 * are scattered over the range by a multiplicative permutation so that hot
 * pages are not neighbours. 20% writes. */
#include <math.h>
#include "common.h"
static const char *WL_NAME = "zipf";
static int WL_WRITE_PCT = 20;
static double theta = 0.99, zetan, alpha, eta;
static uint64_t stride;

static uint64_t gcd(uint64_t a, uint64_t b) {
  while (b) {
    uint64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

/* Gray et al., "Quickly generating billion-record synthetic databases": O(N)
 * setup, O(1) per sample, no per-page table. */
static void setup(wl_t *w) {
  uint64_t n = w->pages;
  zetan = 0;
  for (uint64_t i = 1; i <= n; i++) zetan += 1.0 / pow((double)i, theta);
  double zeta2 = 1.0 + 1.0 / pow(2.0, theta);
  alpha = 1.0 / (1.0 - theta);
  eta = (1.0 - pow(2.0 / (double)n, 1.0 - theta)) / (1.0 - zeta2 / zetan);
  stride = 2654435761ull % n;
  if (stride == 0) stride = 1;
  while (gcd(stride, n) != 1) stride++;
}

static uint64_t pick(wl_t *w, uint64_t i) {
  (void)i;
  uint64_t n = w->pages;
  double u = rnd01(w), uz = u * zetan, rank;
  if (uz < 1.0) rank = 0;
  else if (uz < 1.0 + pow(0.5, theta)) rank = 1;
  else rank = floor((double)n * pow(eta * u - eta + 1.0, alpha));
  uint64_t r = (uint64_t)rank;
  if (r >= n) r = n - 1;
  return (r * stride) % n;
}
