/*
 * memverify: the guest workload of remora's QEMU test.
 *
 * usage: memverify MIB [ROUNDS] [SLEEP_MS] [STATUS_FILE]
 *
 * Allocates MIB MiB of anonymous memory and fills it with the pattern of
 * round 0. Each round k >= 1 then checks that every word still holds the
 * pattern of round k-1 and rewrites it with the pattern of round k, so the
 * data has to survive the whole interval between two rounds (including the
 * sleep), which is when the host pager evicts and restores guest pages.
 * ROUNDS 0 means forever. One line per round goes to stdout:
 *
 *   round K ok pages=P ms=T
 *   MISMATCH at page P word W round K: got X want Y [zero page]
 *
 * A one-shot run (ROUNDS > 0) ends with
 *
 *   verify ok mib=M rounds=R ms=T
 *
 * and the exit status is 0, or 1 after a mismatch (2 on bad usage).
 * With STATUS_FILE, each line also replaces that file's content (written
 * to a temp file and renamed, so a reader never sees a torn line): the
 * guest's command loop then answers `status` with a shell builtin `read`
 * instead of forking `tail`, which touches ~300 fewer guest pages per
 * command when the pager keeps the guest at 180 resident pages.
 * The pattern depends on page index and round, so a lost page (zeros), a
 * stale page (older round) or a page put back at the wrong place all fail.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WORDS (PAGE / sizeof(uint64_t))

/* splitmix64: a cheap, well-mixed seed per (page, round). */
static uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* The seed differs per page and round; words inside a page step by an odd
 * constant so that a shifted or torn page is caught as well. One add per
 * word keeps a round cheap under TCG. */
static inline uint64_t seed_of(uint64_t page, uint64_t round) {
  return mix((round << 40) ^ page) | 1;
}

static const char *status_path;

/* Prints one line to stdout and, if asked, publishes it in status_path. */
static void report(const char *fmt, ...) {
  char line[256], tmp[4096];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (n >= (int)sizeof line) n = sizeof line - 1;
  fputs(line, stdout);
  fflush(stdout);
  if (!status_path) return;
  snprintf(tmp, sizeof tmp, "%s.tmp", status_path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return;
  ssize_t w = write(fd, line, n);
  close(fd);
  if (w == n) rename(tmp, status_path);
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void fill(uint64_t *mem, size_t pages, uint64_t round) {
  for (size_t p = 0; p < pages; p++) {
    uint64_t *w = mem + p * WORDS, v = seed_of(p, round);
    for (size_t i = 0; i < WORDS; i++, v += 0x9e3779b97f4a7c15ull) w[i] = v;
  }
}

/* Checks round-1's pattern and writes round's, page by page (one pass over
 * memory per round keeps the number of page touches per round minimal). */
static int check_and_rewrite(uint64_t *mem, size_t pages, uint64_t round) {
  for (size_t p = 0; p < pages; p++) {
    uint64_t *w = mem + p * WORDS;
    uint64_t v = seed_of(p, round - 1);
    for (size_t i = 0; i < WORDS; i++, v += 0x9e3779b97f4a7c15ull) {
      if (w[i] != v) {
        int zero = 1;
        for (size_t j = 0; j < WORDS; j++) zero &= w[j] == 0;
        report("MISMATCH at page %zu word %zu round %llu: got %016llx want %016llx%s\n", p, i,
               (unsigned long long)round, (unsigned long long)w[i], (unsigned long long)v,
               zero ? " [zero page]" : "");
        return 1;
      }
    }
    uint64_t n = seed_of(p, round);
    for (size_t i = 0; i < WORDS; i++, n += 0x9e3779b97f4a7c15ull) w[i] = n;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: memverify MIB [ROUNDS] [SLEEP_MS] [STATUS_FILE]\n");
    return 2;
  }
  long mib = atol(argv[1]);
  long rounds = argc > 2 ? atol(argv[2]) : 0;
  long sleep_ms = argc > 3 ? atol(argv[3]) : 1000;
  status_path = argc > 4 ? argv[4] : NULL;
  if (mib <= 0 || rounds < 0 || sleep_ms < 0) {
    fprintf(stderr, "memverify: bad arguments\n");
    return 2;
  }
  size_t pages = (size_t)mib * 256;
  uint64_t *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    perror("memverify: mmap");
    return 2;
  }
  /* Line-buffered even into a file: the guest's `status` command reads the
   * last line while we run. */
  setvbuf(stdout, NULL, _IOLBF, 0);
  double t0 = now_ms();
  fill(mem, pages, 0);
  report("round 0 ok pages=%zu ms=%.0f\n", pages, now_ms() - t0);
  for (uint64_t k = 1; rounds == 0 || k <= (uint64_t)rounds; k++) {
    if (sleep_ms > 0) {
      struct timespec ts = {sleep_ms / 1000, (sleep_ms % 1000) * 1000000L};
      nanosleep(&ts, NULL);
    }
    double t = now_ms();
    if (check_and_rewrite(mem, pages, k)) return 1;
    report("round %llu ok pages=%zu ms=%.0f\n", (unsigned long long)k, pages, now_ms() - t);
  }
  report("verify ok mib=%ld rounds=%ld ms=%.0f\n", mib, rounds, now_ms() - t0);
  return 0;
}
