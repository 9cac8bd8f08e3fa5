// A multithreaded verifying workload with random access: THREADS threads
// each own the pages p % THREADS == id of a MIB area and, at random, check a
// page against the generation they last wrote into it and write the next.
// Random faults from several threads at once outrun eviction more easily
// than a sweep. Any wrong word prints MISMATCH and exits 1.
//
// usage: randwalk MIB THREADS SECONDS   (prints "tick N" every 100 ms)
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "await_pager.h"

#define PAGE 4096
#define WORDS (PAGE / 8)
static uint64_t *mem;
static uint32_t *gen;
static size_t pages;
static int threads;

static inline uint64_t word(size_t p, size_t w, uint32_t g) {
  return (p * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)g << 40) ^ (w * 0x100000001b3ull);
}

static void fill(size_t p, uint32_t g) {
  uint64_t *q = mem + p * WORDS;
  for (size_t w = 0; w < WORDS; w++) q[w] = word(p, w, g);
}

static void *walk(void *arg) {
  long id = (long)arg;
  uint64_t s = 0x2545F4914F6CDD1Dull * (id + 1);
  for (;;) {
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    size_t p = (size_t)(s % (pages / threads)) * threads + id;
    uint64_t *q = mem + p * WORDS;
    uint32_t g = gen[p];
    for (size_t w = 0; w < WORDS; w++) {
      if (q[w] != word(p, w, g)) {
        printf("MISMATCH page %zu word %zu\n", p, w);
        fflush(stdout);
        exit(1);
      }
    }
    gen[p] = g + 1;
    fill(p, g + 1);
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 4) { fprintf(stderr, "usage: randwalk MIB THREADS SECONDS\n"); return 2; }
  pages = strtoull(argv[1], 0, 10) * 256;
  threads = atoi(argv[2]);
  int seconds = atoi(argv[3]);
  if (threads < 1 || threads > 64 || pages < (size_t)threads) return 2;
  mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  await_pager(mem);
  gen = calloc(pages, sizeof *gen);
  if (mem == MAP_FAILED || gen == NULL) { perror("alloc"); return 2; }
  for (size_t p = 0; p < pages; p++) fill(p, 0);
  printf("ready pid %d pages %zu\n", getpid(), pages);
  fflush(stdout);
  pthread_t t[64];
  for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, walk, (void *)i);
  for (int k = 1; k <= seconds * 10; k++) {
    usleep(100000);
    printf("tick %d\n", k);
    fflush(stdout);
  }
  printf("done\n");
  fflush(stdout);
  return 0;
}
