// remora's native shim: only the wait for fault events.
//
// Deno cannot poll an arbitrary file descriptor, so an idle pager parks a
// worker thread here (called as a nonblocking FFI symbol) instead of spinning.
// Everything else (ioctls, ptrace, reads) is called from TypeScript directly.
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>

#define REMORA_MAX_WAIT_FDS 256

// Waits until one of `fds[0..n)` is readable (or hung up) or `timeout_ms`
// passes. Writes each fd's revents into `revents[i]`. Returns the number of
// ready fds, 0 on timeout, or -errno. EINTR is reported as 0 ready so the
// caller simply loops.
int remora_wait(const int32_t *fds, int32_t n, int16_t *revents, int32_t timeout_ms) {
  struct pollfd p[REMORA_MAX_WAIT_FDS];
  if (n < 0 || n > REMORA_MAX_WAIT_FDS) return -EINVAL;
  for (int i = 0; i < n; i++) {
    p[i].fd = fds[i];
    p[i].events = POLLIN;
    p[i].revents = 0;
  }
  int r = poll(p, (nfds_t)n, timeout_ms);
  if (r < 0) return errno == EINTR ? 0 : -errno;
  for (int i = 0; i < n; i++) revents[i] = p[i].revents;
  return r;
}

// Lets the TypeScript side check that the library it loaded is this one.
int remora_shim_version(void) { return 1; }
