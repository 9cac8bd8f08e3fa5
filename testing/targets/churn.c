// Frees, unmaps and moves memory while the pager pages it, and checks that
// every byte reads as the program expects: freed pages read zeros, moved
// pages keep their contents, kept pages keep theirs.
//
// usage: churn MIB ROUNDS
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "await_pager.h"

#define PAGE 4096
// Checks pages [first, first+pages) of the area at p (filled with `seed`, 0 = zeros).
static int check(uint8_t *p, size_t first, size_t pages, uint64_t seed, const char *what) {
  for (size_t i = first; i < first + pages; i++) {
    uint64_t *q = (uint64_t *)(p + (i - first) * PAGE);
    for (size_t w = 0; w < PAGE / 8; w++) {
      uint64_t want = seed ? (seed * 31 + i) ^ (w * 7) : 0;
      if (q[w] != want) {
        printf("MISMATCH %s page %zu word %zu: %llx != %llx\n", what, i, w,
               (unsigned long long)q[w], (unsigned long long)want);
        fflush(stdout);
        return 1;
      }
    }
  }
  return 0;
}
static void fill(uint8_t *p, size_t pages, uint64_t seed) {
  for (size_t i = 0; i < pages; i++) {
    uint64_t *q = (uint64_t *)(p + i * PAGE);
    for (size_t w = 0; w < PAGE / 8; w++) q[w] = (seed * 31 + i) ^ (w * 7);
  }
}
static void sweep(uint8_t *junk, size_t pages) {
  // Touch other memory so that the pages under test get evicted.
  for (size_t i = 0; i < pages; i++) junk[i * PAGE] ^= 1;
}

int main(int argc, char **argv) {
  size_t mib = argc > 1 ? strtoull(argv[1], 0, 10) : 32;
  int rounds = argc > 2 ? atoi(argv[2]) : 3;
  size_t pages = mib * 256;
  uint8_t *junk = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  await_pager(junk);
  memset(junk, 1, pages * PAGE);
  printf("ready pid %d\n", getpid());
  fflush(stdout);
  for (int r = 1; r <= rounds; r++) {
    size_t n = pages / 2;
    uint8_t *a = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    await_pager(a);
    fill(a, n, r);
    sweep(junk, pages);
    if (check(a, 0, n, r, "kept")) return 1;
    // Free the first quarter: it must read zeros afterwards, even if evicted.
    madvise(a, n / 4 * PAGE, MADV_DONTNEED);
    sweep(junk, pages);
    if (check(a, 0, n / 4, 0, "freed")) return 1;
    if (check(a + n / 4 * PAGE, n / 4, n - n / 4, r, "kept-after-free")) return 1;
    // Move the second half elsewhere (evicted pages move with it), grow it.
    uint8_t *b = mremap(a + n / 2 * PAGE, n / 2 * PAGE, n * PAGE, MREMAP_MAYMOVE);
    if (b == MAP_FAILED) { perror("mremap"); return 2; }
    sweep(junk, pages);
    if (check(b, n / 2, n / 2, r, "moved")) return 1;
    if (check(b + n / 2 * PAGE, 0, n / 2, 0, "grown")) return 1;
    munmap(b, n * PAGE);
    munmap(a, n / 2 * PAGE);
    // New memory where old memory was must read zeros, not old contents.
    uint8_t *c = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    await_pager(c);
    sweep(junk, pages);
    if (check(c, 0, n, 0, "fresh")) return 1;
    munmap(c, n * PAGE);
    printf("round %d ok\n", r);
    fflush(stdout);
  }
  printf("done\n");
  return 0;
}
