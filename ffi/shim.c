// remora's native shim: a read of the target's pages that signals an eventfd
// when it is done. Everything else (poll, ioctls, ptrace, most reads) is
// called from TypeScript.
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <unistd.h>

struct read_job {
  int32_t pid;
  int32_t done_fd;
  const struct iovec *local;
  uint64_t nlocal;
  const struct iovec *remote;
  uint64_t nremote;
  int64_t *result;
};

static void *run_read(void *arg) {
  struct read_job *job = arg;
  ssize_t r = process_vm_readv(job->pid, job->local, job->nlocal, job->remote, job->nremote, 0);
  *job->result = r < 0 ? -errno : r;
  uint64_t one = 1;
  // The write publishes the result: the reader looks at it after the eventfd.
  while (write(job->done_fd, &one, sizeof one) < 0 && errno == EINTR) {
  }
  free(job);
  return NULL;
}

// Starts process_vm_readv(pid, local, remote) on a thread of its own: a read
// of a page that is not present raises a userfault that only the caller can
// serve, so the caller must not make the call itself. When the read is done,
// `*result` holds bytes read or -errno and `done_fd` (an eventfd) is signalled;
// the caller keeps every buffer alive until then, and serves faults from the
// same poll that waits for `done_fd`. Deno's own nonblocking calls would do
// the same through its thread pool and event loop, at 1-2 ms per batch here.
// Returns 0, or -errno if the thread could not start (nothing was read).
int remora_read_start(int32_t pid, const void *local, uint64_t nlocal, const void *remote,
                      uint64_t nremote, int64_t *result, int32_t done_fd) {
  struct read_job *job = malloc(sizeof *job);
  if (job == NULL) return -ENOMEM;
  *job = (struct read_job){pid, done_fd, local, nlocal, remote, nremote, result};
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  pthread_t thread;
  int e = pthread_create(&thread, &attr, run_read, job);
  pthread_attr_destroy(&attr);
  if (e != 0) {
    free(job);
    return -e;
  }
  return 0;
}

// Lets the TypeScript side check that the library it loaded is this one.
int remora_shim_version(void) { return 3; }
