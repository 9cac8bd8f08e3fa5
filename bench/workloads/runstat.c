/*
 * runstat: runs a command and reports what it cost, as one JSON line written
 * to FILE (or stderr without --out).
 *
 *   runstat [--out FILE] [--cgroup DIR] -- PROGRAM [ARGS...]
 *
 * With --cgroup the child joins DIR (a cgroup v1 directory) before exec, so all
 * of its memory is charged there from the first page.
 *
 * Reported: exit status, wall time, CPU of the child and all descendants it
 * reaped (wait4 rusage), and the child's own peak RSS (VmHWM) and own CPU,
 * sampled from /proc every 10 ms while it runs. The child runs in its own
 * process group; SIGINT/SIGTERM to runstat SIGKILL that whole group, so an
 * aborted benchmark leaves no program (or program under a pager) behind. The child's own figures are
 * what "pager CPU / pager RSS" means when the child is the pager: its reaped
 * program is counted in the wait4 total but not in /proc/PID/stat fields 14-15.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static pid_t child;
static void forward(int sig) {
  (void)sig;
  if (child > 0) kill(-child, SIGKILL);
}

/* Reads VmHWM (kB) and own utime+stime (clock ticks) of pid; 0 when gone. */
static void sample(pid_t pid, long *hwm, long *ticks) {
  char path[64], buf[4096];
  snprintf(path, sizeof path, "/proc/%d/status", pid);
  FILE *f = fopen(path, "r");
  if (f) {
    while (fgets(buf, sizeof buf, f))
      if (!strncmp(buf, "VmHWM:", 6)) {
        long v = atol(buf + 6);
        if (v > *hwm) *hwm = v;
      }
    fclose(f);
  }
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  int fd = open(path, O_RDONLY);
  if (fd >= 0) {
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n > 0) {
      buf[n] = 0;
      char *p = strrchr(buf, ')');
      unsigned long ut = 0, st = 0;
      /* After ")": state(3) ... utime is field 14, stime 15. */
      if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) == 2) {
        if ((long)(ut + st) > *ticks) *ticks = (long)(ut + st);
      }
    }
  }
}

int main(int argc, char **argv) {
  const char *cg = 0, *outpath = 0;
  int i = 1;
  for (; i < argc; i++) {
    if (!strcmp(argv[i], "--cgroup") && i + 1 < argc) cg = argv[++i];
    else if (!strcmp(argv[i], "--out") && i + 1 < argc) outpath = argv[++i];
    else if (!strcmp(argv[i], "--")) {
      i++;
      break;
    } else {
      fprintf(stderr, "usage: runstat [--out FILE] [--cgroup DIR] -- PROGRAM [ARGS...]\n");
      return 2;
    }
  }
  if (i >= argc) {
    fprintf(stderr, "usage: runstat [--out FILE] [--cgroup DIR] -- PROGRAM [ARGS...]\n");
    return 2;
  }
  FILE *out = outpath ? fopen(outpath, "w") : stderr;
  if (!out) return perror(outpath), 1;
  double t0 = now_ms();
  child = fork();
  if (child < 0) return perror("fork"), 1;
  if (child == 0) {
    setpgid(0, 0);
    if (out != stderr) fclose(out);
    if (cg) {
      char path[4096], pid[32];
      snprintf(path, sizeof path, "%s/cgroup.procs", cg);
      int fd = open(path, O_WRONLY);
      int len = snprintf(pid, sizeof pid, "%d", getpid());
      if (fd < 0 || write(fd, pid, len) != len) {
        fprintf(stderr, "runstat: cannot join %s: %s\n", cg, strerror(errno));
        _exit(126);
      }
      close(fd);
    }
    execvp(argv[i], argv + i);
    fprintf(stderr, "runstat: exec %s: %s\n", argv[i], strerror(errno));
    _exit(127);
  }
  setpgid(child, child); /* both sides, so no signal can arrive before it holds */
  signal(SIGINT, forward);
  signal(SIGTERM, forward);
  long hwm = 0, ticks = 0;
  int status = 0;
  struct rusage ru;
  for (;;) {
    pid_t r = wait4(child, &status, WNOHANG, &ru);
    if (r == child) break;
    if (r < 0 && errno != EINTR) return perror("wait4"), 1;
    sample(child, &hwm, &ticks);
    struct timespec d = {0, 10 * 1000 * 1000};
    nanosleep(&d, 0);
  }
  double wall = now_ms() - t0;
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  double hz = (double)sysconf(_SC_CLK_TCK);
  fprintf(out,
          "{\"exit\":%d,\"wallMs\":%.3f,\"treeUtimeMs\":%.1f,\"treeStimeMs\":%.1f,\"treeMaxrssKb\":%ld,"
          "\"treeMajflt\":%ld,\"selfCpuMs\":%.1f,\"selfHwmKb\":%ld}\n",
          code, wall, ru.ru_utime.tv_sec * 1e3 + ru.ru_utime.tv_usec / 1e3,
          ru.ru_stime.tv_sec * 1e3 + ru.ru_stime.tv_usec / 1e3, ru.ru_maxrss, ru.ru_majflt,
          ticks * 1000.0 / hz, hwm);
  fflush(out);
  return code;
}
