/*
 * Shared body of the remora benchmark workloads.
 *
 * Each workload maps an anonymous working set, writes every page once (pass 0),
 * then runs PASSES passes of page touches in the order its pick() function
 * chooses. Every page carries a pattern derived from its index and its version
 * (the pass that last wrote it), so a page that comes back from swap or from a
 * pager with wrong contents is caught: the program exits 3 on the first
 * mismatch. A final sweep re-verifies every page.
 *
 * The first access of each touch is timed on its own (a page fault, if any,
 * happens there), so the harness gets an application-side latency histogram
 * that means the same thing under kernel swap and under remora.
 *
 * A workload that defines WL_THREADS > 1 before including this file runs each
 * pass on that many threads: thread t makes the touches i in [t*N/T, (t+1)*N/T)
 * (pick() maps each to a page) with its own random state and histogram, and
 * the pass ends when all have. Pages written by two threads in one pass would
 * race on their version; pick() must keep the threads' pages apart.
 *
 * Output: one JSON line on stdout.
 *
 * Usage: NAME MIB PASSES [WRITE_PCT] [SEED]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WORDS (PAGE / 8u)
#define MAX_PASSES 64
#ifndef WL_THREADS
#define WL_THREADS 1
#endif

/* Log-spaced latency buckets: bucket b holds [HMIN*R^b, HMIN*R^(b+1)) ns. */
#define HBUCKETS 96
#define HMIN_NS 50.0
#define HRATIO 1.25

typedef struct {
  uint64_t pages;
  uint64_t s; /* xorshift state */
  void *extra;
} wl_t;

/* Provided by each workload: the next page index to touch. */
static uint64_t pick(wl_t *w, uint64_t i);
/* Provided by each workload: one-time setup (may be empty). */
static void setup(wl_t *w);
/* Provided by each workload: its name and default write percentage. */
static const char *WL_NAME;
static int WL_WRITE_PCT;

static inline uint64_t rnd(wl_t *w) {
  uint64_t x = w->s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return w->s = x;
}

static inline double rnd01(wl_t *w) { return (double)(rnd(w) >> 11) * (1.0 / 9007199254740992.0); }

static inline uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static inline double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static inline void hrecord(uint64_t *hist, double ns) {
  int b = 0;
  double hi = HMIN_NS * HRATIO;
  while (b < HBUCKETS - 1 && ns >= hi) {
    b++;
    hi *= HRATIO;
  }
  hist[b]++;
}

static void fill(uint64_t *p, uint64_t idx, uint32_t ver) {
  uint64_t seed = mix(idx * 1000003ull + ver);
  p[0] = (idx << 20) | ver;
  for (unsigned k = 1; k < WORDS; k++) p[k] = seed + k * 0x2545f4914f6cdd1dull;
}

static void check(const uint64_t *p, uint64_t idx, uint32_t ver) {
  uint64_t seed = mix(idx * 1000003ull + ver);
  int bad = p[0] != ((idx << 20) | ver);
  for (unsigned k = 1; k < WORDS && !bad; k++) bad = p[k] != seed + k * 0x2545f4914f6cdd1dull;
  if (bad) {
    printf("{\"workload\":\"%s\",\"ok\":false,\"page\":%llu,\"version\":%u,\"found\":\"%llx\"}\n", WL_NAME,
           (unsigned long long)idx, ver, (unsigned long long)p[0]);
    fflush(stdout);
    exit(3);
  }
}

/* One thread's share of every pass. */
typedef struct {
  wl_t w;
  uint64_t lo, hi; /* touches i in [lo, hi) */
  uint8_t *mem;
  uint32_t *ver;
  int wpct, pass;
  uint64_t reads, writes, sink;
  uint64_t hist[HBUCKETS];
} part_t;

/* One pass over a thread's share of the touches. */
static void *run_part(void *arg) {
  part_t *pt = arg;
  volatile uint64_t sink = 0;
  for (uint64_t i = pt->lo; i < pt->hi; i++) {
    uint64_t idx = pick(&pt->w, i);
    uint64_t *p = (uint64_t *)(pt->mem + idx * PAGE);
    int write = (int)(rnd(&pt->w) % 100) < pt->wpct;
    double a = now_ns();
    if (write) {
      /* Touch with a write of the same value: the fault (if any) is a write fault. */
      __atomic_store_n(&p[1], __atomic_load_n(&p[1], __ATOMIC_RELAXED), __ATOMIC_RELAXED);
    } else {
      sink += __atomic_load_n(&p[0], __ATOMIC_RELAXED);
    }
    double b = now_ns();
    hrecord(pt->hist, b - a);
    check(p, idx, pt->ver[idx]);
    if (write) {
      uint32_t v = (uint32_t)pt->pass + 1;
      fill(p, idx, v);
      pt->ver[idx] = v;
      pt->writes++;
    } else {
      pt->reads++;
    }
  }
  pt->sink += sink;
  return 0;
}

/* One pass: on this thread, or on WL_THREADS threads started for it. */
static void run_pass(part_t *parts, int pass) {
  for (int t = 0; t < WL_THREADS; t++) parts[t].pass = pass;
  if (WL_THREADS == 1) {
    run_part(&parts[0]);
    return;
  }
  pthread_t th[WL_THREADS];
  for (int t = 0; t < WL_THREADS; t++) {
    if (pthread_create(&th[t], 0, run_part, &parts[t])) {
      perror("pthread_create");
      exit(1);
    }
  }
  for (int t = 0; t < WL_THREADS; t++) pthread_join(th[t], 0);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s MIB PASSES [WRITE_PCT] [SEED]\n", argv[0]);
    return 2;
  }
  double mib = atof(argv[1]);
  int passes = atoi(argv[2]);
  int wpct = argc > 3 ? atoi(argv[3]) : WL_WRITE_PCT;
  uint64_t seedarg = argc > 4 ? strtoull(argv[4], 0, 10) : 42;
  if (mib <= 0 || passes < 1 || passes > MAX_PASSES || wpct < 0 || wpct > 100) {
    fprintf(stderr, "%s: bad arguments\n", argv[0]);
    return 2;
  }
  wl_t w = {.pages = (uint64_t)(mib * 1048576.0) / PAGE, .s = mix(seedarg) | 1};
  uint64_t n = w.pages;
  /* Version per page lives in its own (small, 0.1% of the set) mapping: it is
   * paged like everything else, which costs every configuration the same. */
  uint32_t *ver = mmap(0, n * 4, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  uint8_t *mem = mmap(0, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED || ver == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  /* 4 KiB pages everywhere: THP would make kernel swap and remora page at
   * different granularities. */
  madvise(mem, n * PAGE, MADV_NOHUGEPAGE);
  setup(&w);
  /* remora learns of new mappings by polling the target (every 10-50 ms): give
   * it time to register the working set before the first touch, or pages
   * written before then escape its budget. Not timed; same for every row. */
  usleep(200 * 1000);

  double t0 = now_ns();
  for (uint64_t i = 0; i < n; i++) {
    fill((uint64_t *)(mem + i * PAGE), i, 1);
    ver[i] = 1;
  }
  double t1 = now_ns();
  double pass_ms[MAX_PASSES];
  static part_t parts[WL_THREADS];
  for (int t = 0; t < WL_THREADS; t++) {
    parts[t] = (part_t){.w = w, .lo = n * t / WL_THREADS, .hi = n * (t + 1) / WL_THREADS,
                        .mem = mem, .ver = ver, .wpct = wpct};
    /* Thread 0 keeps the single-threaded random sequence; the others get their own. */
    if (t > 0) parts[t].w.s = mix(seedarg + (uint64_t)t) | 1;
  }
  for (int pass = 1; pass <= passes; pass++) {
    double ps = now_ns();
    run_pass(parts, pass);
    pass_ms[pass - 1] = (now_ns() - ps) / 1e6;
  }
  double t2 = now_ns();
  uint64_t reads = 0, writes = 0, sink = 0;
  static uint64_t hist[HBUCKETS];
  for (int t = 0; t < WL_THREADS; t++) {
    reads += parts[t].reads;
    writes += parts[t].writes;
    sink += parts[t].sink;
    for (int b = 0; b < HBUCKETS; b++) hist[b] += parts[t].hist[b];
  }
  /* The final sweep visits every page once: in order, or (WL_VERIFY_SCATTERED)
   * in a random permutation, so that a workload with no locality keeps none in
   * its verification either (a constant stride would be a trend to a prefetcher). */
  uint32_t *order = 0;
#ifdef WL_VERIFY_SCATTERED
  order = malloc(n * sizeof *order);
  if (!order) {
    perror("malloc");
    return 1;
  }
  for (uint64_t i = 0; i < n; i++) order[i] = (uint32_t)i;
  for (uint64_t i = n - 1; i > 0; i--) {
    uint64_t j = rnd(&w) % (i + 1);
    uint32_t t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
#endif
  for (uint64_t i = 0; i < n; i++) {
    uint64_t idx = order ? order[i] : i;
    check((uint64_t *)(mem + idx * PAGE), idx, ver[idx]);
  }
  free(order);
  double t3 = now_ns();

  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("{\"workload\":\"%s\",\"ok\":true,\"pages\":%llu,\"passes\":%d,\"writePct\":%d,\"threads\":%d,",
         WL_NAME, (unsigned long long)n, passes, wpct, WL_THREADS);
  printf("\"reads\":%llu,\"writes\":%llu,", (unsigned long long)reads, (unsigned long long)writes);
  printf("\"initMs\":%.3f,\"passesMs\":%.3f,\"verifyMs\":%.3f,\"totalMs\":%.3f,\"passMs\":[", (t1 - t0) / 1e6,
         (t2 - t1) / 1e6, (t3 - t2) / 1e6, (t3 - t0) / 1e6);
  for (int p = 0; p < passes; p++) printf("%s%.3f", p ? "," : "", pass_ms[p]);
  printf("],\"utimeMs\":%.1f,\"stimeMs\":%.1f,\"majflt\":%ld,\"minflt\":%ld,\"maxrssKb\":%ld,",
         ru.ru_utime.tv_sec * 1e3 + ru.ru_utime.tv_usec / 1e3, ru.ru_stime.tv_sec * 1e3 + ru.ru_stime.tv_usec / 1e3,
         ru.ru_majflt, ru.ru_minflt, ru.ru_maxrss);
  /* Sparse histogram: [[bucket, count], ...]; bucket b spans minNs*ratio^b up to minNs*ratio^(b+1)
   * (bucket 0 starts at 0, the last one is open-ended). */
  printf("\"touchHist\":{\"minNs\":%.1f,\"ratio\":%.3f,\"buckets\":[", HMIN_NS, HRATIO);
  int first = 1;
  for (int b = 0; b < HBUCKETS; b++) {
    if (!hist[b]) continue;
    printf("%s[%d,%llu]", first ? "" : ",", b, (unsigned long long)hist[b]);
    first = 0;
  }
  printf("]},\"sink\":%llu}\n", (unsigned long long)(sink & 1));
  return 0;
}
