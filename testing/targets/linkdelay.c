/*
 * A link with a one-way delay, for test hosts on a kernel without sch_netem.
 *
 *   linkdelay relay LISTEN_IP:PORT UPSTREAM_IP:PORT DELAY_US [JITTER_US]
 *   linkdelay echo LISTEN_IP:PORT
 *   linkdelay ping IP:PORT COUNT
 *
 * relay: accepts TCP connections and forwards each to UPSTREAM; every chunk
 * read in either direction is written out DELAY_US (plus a uniform random
 * 0..JITTER_US) after it arrived, never before an earlier chunk of the same
 * direction (a link does not reorder a TCP stream). One thread, epoll, one
 * timerfd armed at the earliest deadline with 1 ns timer slack, so the delay
 * is the asked one plus this machine's wake-up cost, which `ping` measures.
 * echo: writes back whatever it reads. ping: COUNT one-byte round trips one
 * at a time; prints "rtt p50 X us p99 Y us" (the link as a C program sees it).
 * relay and echo print "linkdelay ready on port N" once they listen (port 0
 * in LISTEN picks one). A side that closes closes its pair at once, dropping
 * what was still queued (a test tool's simplification).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define BUF (4u << 20)     /* bytes queued per direction */
#define CHUNKS 65536u      /* chunk records per direction */

struct chunk { uint64_t due_ns; uint32_t end; };

/* One direction of one connection: bytes read from `from`, due for `to`. */
struct lane {
  int from, to;
  unsigned char *buf;
  uint32_t head, tail;          /* byte ring: [head, tail) queued (monotonic, mod BUF) */
  struct chunk *chunks;
  uint32_t chead, ctail;
  uint64_t last_due;
  int reading, writing;         /* epoll interest currently held */
  struct lane *other;
};

static int epfd, tfd;
static uint64_t delay_ns, jitter_ns;

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void die(const char *what) { perror(what); exit(1); }

static void parse_addr(const char *s, struct sockaddr_in *a) {
  char host[64];
  const char *colon = strrchr(s, ':');
  if (!colon || (size_t)(colon - s) >= sizeof host) { fprintf(stderr, "bad address %s\n", s); exit(2); }
  memcpy(host, s, (size_t)(colon - s));
  host[colon - s] = 0;
  memset(a, 0, sizeof *a);
  a->sin_family = AF_INET;
  a->sin_port = htons((uint16_t)atoi(colon + 1));
  if (inet_pton(AF_INET, host, &a->sin_addr) != 1) { fprintf(stderr, "bad address %s\n", s); exit(2); }
}

static int listen_on(const char *addr) {
  struct sockaddr_in a;
  int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
  parse_addr(addr, &a);
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  socklen_t len = sizeof a;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 64)) die("listen");
  getsockname(fd, (struct sockaddr *)&a, &len);
  printf("linkdelay ready on port %d\n", ntohs(a.sin_port));
  fflush(stdout);
  return fd;
}

static void nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void watch(struct lane *l) {
  /* Each fd carries one lane's reads and the other lane's writes. */
  struct lane *w = l->other;
  struct epoll_event ev = { .events = (l->reading ? EPOLLIN : 0) | (w->writing ? EPOLLOUT : 0),
                            .data.ptr = l };
  epoll_ctl(epfd, EPOLL_CTL_MOD, l->from, &ev);
}

static void arm(uint64_t due) {
  struct itimerspec it = { .it_value = { .tv_sec = (time_t)(due / 1000000000ull),
                                         .tv_nsec = (long)(due % 1000000000ull) } };
  if (!due) it.it_value.tv_nsec = 0;
  timerfd_settime(tfd, TFD_TIMER_ABSTIME, &it, NULL);
}

static void close_pair(struct lane *l) {
  struct lane *o = l->other;
  epoll_ctl(epfd, EPOLL_CTL_DEL, l->from, NULL);
  epoll_ctl(epfd, EPOLL_CTL_DEL, o->from, NULL);
  close(l->from);
  close(o->from);
  l->from = o->from = -1;
}

/* Reads what `l->from` has into the ring as one chunk due after the delay. */
static int lane_read(struct lane *l) {
  uint32_t used = l->tail - l->head, off = l->tail % BUF;
  uint32_t room = BUF - used, contiguous = BUF - off;
  if (room == 0 || l->ctail - l->chead == CHUNKS) { l->reading = 0; watch(l); return 0; }
  ssize_t n = read(l->from, l->buf + off, room < contiguous ? room : contiguous);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return -1;
  if (n < 0) return 0;
  uint64_t due = now_ns() + delay_ns + (jitter_ns ? (uint64_t)random() % (jitter_ns + 1) : 0);
  if (due < l->last_due) due = l->last_due;
  l->last_due = due;
  l->tail += (uint32_t)n;
  l->chunks[l->ctail++ % CHUNKS] = (struct chunk){ due, l->tail };
  return 0;
}

/* Writes every chunk whose time has come; returns the next deadline (0: none). */
static uint64_t lane_flush(struct lane *l, uint64_t now) {
  while (l->chead != l->ctail) {
    struct chunk *c = &l->chunks[l->chead % CHUNKS];
    if (c->due_ns > now) return c->due_ns;
    while (l->head != c->end) {
      uint32_t off = l->head % BUF, len = c->end - l->head;
      if (len > BUF - off) len = BUF - off;
      ssize_t n = write(l->to, l->buf + off, len);
      if (n < 0 && errno == EAGAIN) {
        if (!l->writing) { l->writing = 1; watch(l->other); }
        return 0;
      }
      if (n < 0) return 0;
      l->head += (uint32_t)n;
    }
    l->chead++;
    if (!l->reading) { l->reading = 1; watch(l); }
  }
  if (l->writing) { l->writing = 0; watch(l->other); }
  return 0;
}

static struct lane *lanes[4096];
static int nlanes;

static void rearm(void) {
  uint64_t now = now_ns(), next = 0;
  for (int i = 0; i < nlanes; i++) {
    if (lanes[i]->from < 0) continue;
    uint64_t due = lane_flush(lanes[i], now);
    if (due && (!next || due < next)) next = due;
  }
  arm(next);
}

static struct lane *new_lane(int from, int to) {
  struct lane *l = calloc(1, sizeof *l);
  l->from = from;
  l->to = to;
  l->buf = malloc(BUF);
  l->chunks = malloc(CHUNKS * sizeof *l->chunks);
  l->reading = 1;
  return l;
}

static void accept_one(int lfd, struct sockaddr_in *up) {
  int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
  if (c < 0) return;
  int u = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(u, (struct sockaddr *)up, sizeof *up)) { close(c); close(u); return; }
  fcntl(u, F_SETFL, O_NONBLOCK);
  nodelay(c);
  nodelay(u);
  if (nlanes + 2 > (int)(sizeof lanes / sizeof *lanes)) { close(c); close(u); return; }
  struct lane *a = new_lane(c, u), *b = new_lane(u, c);
  a->other = b;
  b->other = a;
  lanes[nlanes++] = a;
  lanes[nlanes++] = b;
  struct epoll_event ea = { .events = EPOLLIN, .data.ptr = a }, eb = { .events = EPOLLIN, .data.ptr = b };
  epoll_ctl(epfd, EPOLL_CTL_ADD, c, &ea);
  epoll_ctl(epfd, EPOLL_CTL_ADD, u, &eb);
}

static int relay(const char *listen_addr, const char *upstream, long delay_us, long jitter_us) {
  struct sockaddr_in up;
  int lfd = listen_on(listen_addr);
  parse_addr(upstream, &up);
  delay_ns = (uint64_t)delay_us * 1000;
  jitter_ns = (uint64_t)jitter_us * 1000;
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  epfd = epoll_create1(0);
  tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
  struct epoll_event el = { .events = EPOLLIN, .data.ptr = NULL }, et = { .events = EPOLLIN, .data.ptr = &tfd };
  epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &el);
  epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &et);
  struct epoll_event evs[64];
  for (;;) {
    int n = epoll_wait(epfd, evs, 64, -1);
    for (int i = 0; i < n; i++) {
      struct lane *l = evs[i].data.ptr;
      if (!l) { accept_one(lfd, &up); continue; }
      if ((void *)l == (void *)&tfd) { uint64_t x; (void)!read(tfd, &x, sizeof x); continue; }
      if (l->from < 0) continue;
      if ((evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && l->reading && lane_read(l) < 0)
        close_pair(l);
    }
    rearm();
  }
  return 0;
}

static int echo(const char *listen_addr) {
  int lfd = listen_on(listen_addr);
  for (;;) {
    int c = accept(lfd, NULL, NULL);
    if (c < 0) continue;
    nodelay(c);
    if (fork() == 0) {
      char b[65536];
      ssize_t n;
      while ((n = read(c, b, sizeof b)) > 0)
        if (write(c, b, (size_t)n) != n) break;
      _exit(0);
    }
    close(c);
  }
}

static int cmp(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static int ping(const char *addr, long count) {
  struct sockaddr_in a;
  parse_addr(addr, &a);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(fd, (struct sockaddr *)&a, sizeof a)) die("connect");
  nodelay(fd);
  uint64_t *rtt = malloc((size_t)count * sizeof *rtt);
  char b = 'x';
  for (long i = 0; i < count; i++) {
    uint64_t t = now_ns();
    if (write(fd, &b, 1) != 1 || read(fd, &b, 1) != 1) die("ping");
    rtt[i] = now_ns() - t;
  }
  qsort(rtt, (size_t)count, sizeof *rtt, cmp);
  printf("rtt p50 %.1f us p99 %.1f us\n", rtt[count / 2] / 1e3, rtt[count * 99 / 100] / 1e3);
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc >= 5 && !strcmp(argv[1], "relay"))
    return relay(argv[2], argv[3], atol(argv[4]), argc > 5 ? atol(argv[5]) : 0);
  if (argc == 3 && !strcmp(argv[1], "echo")) return echo(argv[2]);
  if (argc == 4 && !strcmp(argv[1], "ping")) return ping(argv[2], atol(argv[3]));
  fprintf(stderr, "usage: linkdelay relay LISTEN UPSTREAM DELAY_US [JITTER_US] | echo LISTEN | ping ADDR COUNT\n");
  return 2;
}
