/*
 * The target: maps SIZE MiB anonymous memory, fills it with a pattern, then
 * each round verifies the previous round's pattern and writes the next one,
 * printing "round N ok". Any mismatch prints MISMATCH and exits 3; it never
 * runs longer than MAX_SECONDS, so a failed test cannot leave it behind.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t pat(size_t i, long r) {
  return (i * 0x9e3779b97f4a7c15ULL) ^ ((uint64_t)r << 48) ^ 0x5a5a5a5a00000000ULL;
}
static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}
int main(int argc, char **argv) {
  size_t mib = argc > 1 ? (size_t)atol(argv[1]) : 64;
  long rounds = argc > 2 ? atol(argv[2]) : 0;       /* 0: until MAX_SECONDS */
  double max_seconds = argc > 3 ? atof(argv[3]) : 120;
  long sleep_ms = argc > 4 ? atol(argv[4]) : 0;
  size_t bytes = mib << 20, words = bytes / 8;
  uint64_t *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) { perror("mmap"); return 1; }
  double t0 = now();
  printf("target pid %d filling %zu MiB\n", (int)getpid(), mib);
  fflush(stdout);
  for (size_t i = 0; i < words; i++) p[i] = pat(i, 0);
  for (long r = 1; rounds == 0 || r <= rounds; r++) {
    for (size_t i = 0; i < words; i++) {
      if (p[i] != pat(i, r - 1)) {
        printf("MISMATCH round %ld word %zu got %016llx want %016llx\n", r, i,
               (unsigned long long)p[i], (unsigned long long)pat(i, r - 1));
        fflush(stdout);
        return 3;
      }
      p[i] = pat(i, r);
    }
    printf("round %ld ok\n", r);
    fflush(stdout);
    if (now() - t0 > max_seconds) break;
    if (sleep_ms) usleep(sleep_ms * 1000);
  }
  printf("done\n");
  fflush(stdout);
  return 0;
}
