// A verifying workload: allocates MiB of anonymous memory, writes a pattern
// that depends on page and round, and in every round verifies the previous
// round's pattern before writing the next. Any wrong byte ends it with
// "MISMATCH" and exit status 1.
//
// usage: memcheck MIB ROUNDS [THREADS] [FORK_AT_ROUND] [SLEEP_MS]
//   ROUNDS 0 runs forever. FORK_AT_ROUND > 0 forks once after that round;
//   parent and child then both keep verifying the whole area.
//   REMORA_AWAIT_PAGER=1: see await_pager.h. REMORA_AWAIT_PAGER_BEFORE_FORK=1:
//   runs unpaged until then, but forks only once a pager (attached by pid
//   meanwhile) has registered the memory, so that the pager sees the fork.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "await_pager.h"

#define PAGE 4096
static uint8_t *mem;
static size_t pages;
static int threads = 1;
static const char *who = "parent";

static inline uint64_t word(size_t page, size_t w, uint64_t round) {
  return (page * 0x9E3779B97F4A7C15ull) ^ (round << 32) ^ (w * 0x100000001b3ull);
}

struct slice { size_t from, to; uint64_t round; int bad; size_t bad_page; };

static void *work(void *arg) {
  struct slice *s = arg;
  for (size_t p = s->from; p < s->to; p++) {
    uint64_t *q = (uint64_t *)(mem + p * PAGE);
    if (s->round > 0) {
      for (size_t w = 0; w < PAGE / 8; w++) {
        if (q[w] != word(p, w, s->round - 1)) { s->bad = 1; s->bad_page = p; return NULL; }
      }
    }
    for (size_t w = 0; w < PAGE / 8; w++) q[w] = word(p, w, s->round);
  }
  return NULL;
}

static int run_round(uint64_t round) {
  pthread_t tid[64];
  struct slice sl[64];
  for (int t = 0; t < threads; t++) {
    sl[t].from = pages * t / threads;
    sl[t].to = pages * (t + 1) / threads;
    sl[t].round = round;
    sl[t].bad = 0;
    if (threads == 1) work(&sl[t]);
    else pthread_create(&tid[t], NULL, work, &sl[t]);
  }
  for (int t = 0; t < threads; t++) {
    if (threads > 1) pthread_join(tid[t], NULL);
    if (sl[t].bad) {
      printf("%s MISMATCH page %zu round %llu\n", who, sl[t].bad_page, (unsigned long long)round);
      fflush(stdout);
      return 1;
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: memcheck MIB ROUNDS [THREADS] [FORK_AT] [SLEEP_MS]\n"); return 2; }
  size_t mib = strtoull(argv[1], 0, 10);
  uint64_t rounds = strtoull(argv[2], 0, 10);
  threads = argc > 3 ? atoi(argv[3]) : 1;
  uint64_t fork_at = argc > 4 ? strtoull(argv[4], 0, 10) : 0;
  int sleep_ms = argc > 5 ? atoi(argv[5]) : 0;
  if (threads < 1 || threads > 64) threads = 1;
  pages = mib * 256;
  // MEMCHECK_THP=1: a 2 MiB-aligned area advised for transparent huge pages.
  int thp = getenv("MEMCHECK_THP") != NULL;
  size_t extra = thp ? (2u << 20) : 0;
  mem = mmap(NULL, pages * PAGE + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) { perror("mmap"); return 2; }
  if (thp) {
    mem = (uint8_t *)(((uintptr_t)mem + extra - 1) & ~(uintptr_t)(extra - 1));
    madvise(mem, pages * PAGE, MADV_HUGEPAGE);
  }
  await_pager(mem);
  printf("ready pid %d pages %zu\n", getpid(), pages);
  fflush(stdout);
  pid_t child = -1;
  for (uint64_t r = 0; rounds == 0 || r < rounds; r++) {
    if (run_round(r)) return 1;
    printf("%s round %llu ok\n", who, (unsigned long long)r);
    fflush(stdout);
    if (fork_at > 0 && r + 1 == fork_at && child < 0) {
      await_pager_if("REMORA_AWAIT_PAGER_BEFORE_FORK", mem);
      child = fork();
      if (child == 0) { who = "child"; child = 0; }
    }
    if (sleep_ms > 0) usleep(sleep_ms * 1000);
  }
  if (child > 0) {
    int st;
    waitpid(child, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) { printf("parent: child failed\n"); return 1; }
  }
  printf("%s done\n", who);
  fflush(stdout);
  return 0;
}
