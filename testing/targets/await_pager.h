// Test targets started under the pager (`pager.ts -- TARGET`) with
// REMORA_AWAIT_PAGER=1 in their environment wait, before touching a new
// mapping, until the pager has registered it for userfaultfd (VmFlags "um"
// in /proc/self/smaps). A new mapping raises no event (the pager finds it by
// polling), so without this a fast machine could run a small target to its
// end before the pager saw its memory, and a test would depend on speed.
#ifndef REMORA_AWAIT_PAGER_H
#define REMORA_AWAIT_PAGER_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// True once the mapping holding `addr` is registered for missing faults.
static int pager_registered(const void *addr) {
  FILE *f = fopen("/proc/self/smaps", "r");
  if (!f) return 0;
  char line[512];
  int inside = 0, yes = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
      inside = (uintptr_t)addr >= lo && (uintptr_t)addr < hi;
    } else if (inside && strncmp(line, "VmFlags:", 8) == 0) {
      yes = strstr(line, " um") != NULL;
      break;
    }
  }
  fclose(f);
  return yes;
}

// If the environment variable `var` is set, waits (polling every millisecond)
// until the pager registered `addr`'s mapping.
static void await_pager_if(const char *var, const void *addr) {
  if (getenv(var) == NULL) return;
  while (!pager_registered(addr)) usleep(1000);
}

// REMORA_AWAIT_PAGER=1: waits until the pager registered `addr`'s mapping.
static void await_pager(const void *addr) { await_pager_if("REMORA_AWAIT_PAGER", addr); }
#endif
