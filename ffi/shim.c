// remora's native shim: a read of the target's pages that signals an eventfd
// when it is done, and a thread that touches new slab memory ahead of its use.
// Everything else (poll, ioctls, ptrace, most reads) is called from TypeScript.
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

// The CPUs the shim's threads run on; unset, they inherit the caller's. The
// pager's loop may be narrowed to its target's CPU (co-location): its helpers
// belong elsewhere. Set and read on the loop's thread only.
static cpu_set_t helper_cpus;
static int helper_cpus_set;

// Lets the shim's threads started from now on run on the CPUs of `mask`
// (`bytes` long, as sched_setaffinity takes it); `bytes` 0: wherever the
// calling thread may run.
void remora_set_helper_cpus(const void *mask, uint64_t bytes) {
  CPU_ZERO(&helper_cpus);
  if (bytes > sizeof helper_cpus) bytes = sizeof helper_cpus;
  if (bytes > 0) memcpy(&helper_cpus, mask, bytes);
  helper_cpus_set = bytes > 0 && CPU_COUNT(&helper_cpus) > 0;
}

// A thread running fn(arg): detached or joinable; `helper`: on the helper CPUs.
static int start_thread(pthread_t *thread, int detached, int helper, void *(*fn)(void *),
                        void *arg) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  if (detached) pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  if (helper && helper_cpus_set) pthread_attr_setaffinity_np(&attr, sizeof helper_cpus, &helper_cpus);
  int e = pthread_create(thread, &attr, fn, arg);
  pthread_attr_destroy(&attr);
  return e;
}

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
  pthread_t thread;
  int e = start_thread(&thread, 1, 0, run_read, job);
  if (e != 0) {
    free(job);
    return -e;
  }
  return 0;
}

struct prefault {
  const volatile char *addr;
  uint64_t len;
  int stop; // set by remora_prefault_stop, read by the thread (atomically)
  pthread_t thread;
};

static void *run_prefault(void *arg) {
  struct prefault *p = arg;
  for (uint64_t at = 0; at < p->len && !__atomic_load_n(&p->stop, __ATOMIC_RELAXED); at += 4096) (void)p->addr[at];
  return NULL;
}

// Reads a byte of every page of [addr, addr + len) on a thread of its own, so
// that the caller's first write to each page finds it mapped. On a virtual
// machine that shadows page tables, the first touch of a page costs 10-15 us
// however it was populated (MADV_POPULATE_WRITE halves it at best); done here,
// on another CPU, it is off the caller's path. Only for memory whose contents
// a read cannot change (a shared file mapping), which stays mapped until
// remora_prefault_stop returns. Returns a handle, or NULL if no thread started.
void *remora_prefault_start(const void *addr, uint64_t len) {
  struct prefault *p = malloc(sizeof *p);
  if (p == NULL) return NULL;
  p->addr = addr;
  p->len = len;
  p->stop = 0;
  if (start_thread(&p->thread, 0, 1, run_prefault, p) != 0) {
    free(p);
    return NULL;
  }
  return p;
}

// Stops a prefault (at its next page) and waits for its thread: after this,
// the memory may be unmapped.
void remora_prefault_stop(void *handle) {
  struct prefault *p = handle;
  __atomic_store_n(&p->stop, 1, __ATOMIC_RELAXED);
  pthread_join(p->thread, NULL);
  free(p);
}

// Lets the TypeScript side check that the library it loaded is this one.
int remora_shim_version(void) { return 4; }
