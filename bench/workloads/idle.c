/* Idle target: writes MIB of anonymous memory once, prints "ready", then
 * sleeps SECONDS (an attached pager should then cost next to no CPU).
 *
 * Usage: idle MIB SECONDS */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s MIB SECONDS\n", argv[0]);
    return 2;
  }
  size_t bytes = (size_t)(atof(argv[1]) * 1048576.0);
  char *p = mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return perror("mmap"), 1;
  madvise(p, bytes, MADV_NOHUGEPAGE);
  for (size_t i = 0; i < bytes; i += 4096) p[i] = (char)(i >> 12 | 1);
  printf("ready\n");
  fflush(stdout);
  sleep((unsigned)atoi(argv[2]));
  return 0;
}
