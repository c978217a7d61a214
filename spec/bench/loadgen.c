/*
 * loadgen.c: the load generator of scripts/bench-fleet. Opens N WebSocket
 * connections to 127.0.0.1:PORT (upgrade, `info`), then sends heartbeats
 * at RATE per second in total, spread round-robin over the connections,
 * for SECONDS, and counts the frames that come back. Frames are encoded
 * and masked once at start: a heartbeat costs one write. Against the
 * floor server (floor.c), which answers every read with one frame, the
 * same steps work: any reply moves a connection on.
 *
 * Talks to the bench script on stdout, one line each: "identified N S",
 * then, after the script's go (a line on stdin), "beating" when the
 * measured window starts, "done ACKS SECONDS CPU" when it ends.
 *   loadgen PORT N RATE SECONDS [WARMUP]
 * Depends on libuv only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#define INFLIGHT 24 /* handshakes at once: under MASTER's per-address limit (32) */
#define TICK_MS 1

typedef enum { C_CONNECTING, C_UPGRADING, C_INFO, C_READY } phase_t;

typedef struct {
  uv_tcp_t tcp;
  uv_connect_t req;
  phase_t phase;
  int id;
  size_t skip;   /* bytes left of the frame being read */
  uint8_t hdr[10];
  size_t hdrlen; /* bytes of the next frame's header seen so far */
  unsigned long beats; /* heartbeats sent */
} conn_t;

static uv_loop_t *loop;
static conn_t *conns;
static int N, port, started, identified, next_beat;
static double rate, seconds, warmup = 1.5;
static uint64_t acks, sent, t_identify, t_beat0, t_window, acks0;
static uint8_t hb[128], hb_first[128]; /* later heartbeats, a connection's first */
static size_t hblen, hb_firstlen;
static uv_timer_t tick;
static int window_open;
static struct rusage ru0;

static void die(const char *what, int r) {
  fprintf(stderr, "loadgen: %s: %s\n", what, r ? uv_strerror(r) : "failed");
  exit(1);
}

/* A client frame: masked with a fixed key (masking is not a secret). */
static size_t frame(uint8_t *out, const char *text) {
  static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
  size_t len = strlen(text), o = 0;
  if (len > 125) die("frame too long", 0);
  out[o++] = 0x81;
  out[o++] = (uint8_t)(0x80 | len);
  memcpy(out + o, key, 4);
  o += 4;
  for (size_t i = 0; i < len; i++) out[o + i] = (uint8_t)text[i] ^ key[i % 4];
  return o + len;
}

static void send_bytes(conn_t *c, const void *data, size_t len);

static void write_cb(uv_write_t *req, int status) {
  if (status < 0) die("write", status);
  free(req);
}

static void send_bytes(conn_t *c, const void *data, size_t len) {
  uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
  int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
  if (n == (int)len) return;
  if (n < 0 && n != UV_EAGAIN) die("try_write", n);
  if (n < 0) n = 0;
  /* rare: the kernel took part; the rest goes through libuv */
  uv_write_t *req = malloc(sizeof *req + len - (size_t)n);
  if (req == NULL) die("malloc", 0);
  memcpy(req + 1, (const char *)data + n, len - (size_t)n);
  b = uv_buf_init((char *)(req + 1), (unsigned)(len - (size_t)n));
  int r = uv_write(req, (uv_stream_t *)&c->tcp, &b, 1, write_cb);
  if (r != 0) die("write", r);
}

static void connect_next(void);

/* Counts the server's frames (unmasked) across reads. */
static void count_frames(conn_t *c, const uint8_t *p, size_t n) {
  while (n > 0) {
    if (c->skip > 0) {
      size_t k = n < c->skip ? n : c->skip;
      c->skip -= k;
      p += k;
      n -= k;
      continue;
    }
    c->hdr[c->hdrlen++] = *p++;
    n--;
    if (c->hdrlen < 2) continue;
    size_t len7 = c->hdr[1] & 0x7f, need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0);
    if (c->hdrlen < need) continue;
    uint64_t len = len7;
    if (len7 >= 126) {
      len = 0;
      for (size_t i = 2; i < need; i++) len = len << 8 | c->hdr[i];
    }
    c->hdrlen = 0;
    c->skip = (size_t)len;
    acks++;
  }
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  static char shared[65536];
  (void)h;
  (void)suggested;
  *buf = uv_buf_init(shared, sizeof shared);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  conn_t *c = s->data;
  char info[128];
  if (nread == 0) return;
  if (nread < 0) {
    fprintf(stderr, "loadgen: connection %d closed by the server (%s)\n", c->id,
            uv_err_name((int)nread));
    exit(1);
  }
  switch (c->phase) {
    case C_UPGRADING: /* the 101 head, or the floor's frame */
      snprintf(info, sizeof info,
               "{\"o\":0,\"d\":{\"id\":\"bench-%d\",\"cores\":4,\"loadavg\":0.5}}", c->id);
      {
        uint8_t f[160];
        size_t n = frame(f, info);
        c->phase = C_INFO;
        send_bytes(c, f, n);
      }
      break;
    case C_INFO: { /* initialise (or the floor's frame): identified */
      uint64_t before = acks; /* follow its frame, count it not */
      count_frames(c, (const uint8_t *)buf->base, (size_t)nread);
      acks = before;
      c->phase = C_READY;
      identified++;
      if (identified == N) {
        t_identify = uv_now(loop) - t_identify;
        printf("identified %d %.3f\n", N, t_identify / 1000.0);
      }
      connect_next();
      break;
    }
    default:
      count_frames(c, (const uint8_t *)buf->base, (size_t)nread);
  }
}

static void connect_cb(uv_connect_t *req, int status) {
  conn_t *c = req->data;
  static const char head[] =
      "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
  if (status < 0) die("connect", status);
  uv_tcp_nodelay(&c->tcp, 1);
  c->phase = C_UPGRADING;
  uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
  send_bytes(c, head, sizeof head - 1);
}

static void connect_next(void) {
  struct sockaddr_in addr;
  uv_ip4_addr("127.0.0.1", port, &addr);
  while (started < N && started - identified < INFLIGHT) {
    conn_t *c = &conns[started];
    c->id = started++;
    uv_tcp_init(loop, &c->tcp);
    c->tcp.data = c->req.data = c;
    int r = uv_tcp_connect(&c->req, &c->tcp, (const struct sockaddr *)&addr, connect_cb);
    if (r != 0) die("connect", r);
  }
}

static double cpu_s(const struct rusage *a, const struct rusage *b) {
  return (double)(b->ru_utime.tv_sec - a->ru_utime.tv_sec) +
         (b->ru_utime.tv_usec - a->ru_utime.tv_usec) / 1e6 +
         (double)(b->ru_stime.tv_sec - a->ru_stime.tv_sec) +
         (b->ru_stime.tv_usec - a->ru_stime.tv_usec) / 1e6;
}

/* Every millisecond: the heartbeats due by now, round-robin. */
static void tick_cb(uv_timer_t *t) {
  uv_update_time(loop);
  uint64_t now = uv_now(loop);
  uint64_t due = (uint64_t)((double)(now - t_beat0) * rate / 1000.0);
  while (sent < due) {
    conn_t *c = &conns[next_beat];
    if (c->beats++ == 0)
      send_bytes(c, hb_first, hb_firstlen);
    else
      send_bytes(c, hb, hblen);
    next_beat = (next_beat + 1) % N;
    sent++;
  }
  if (!window_open && now - t_beat0 >= (uint64_t)(warmup * 1000)) {
    window_open = 1;
    t_window = now;
    acks0 = acks;
    getrusage(RUSAGE_SELF, &ru0);
    printf("beating\n");
  } else if (window_open && now - t_window >= (uint64_t)(seconds * 1000)) {
    struct rusage ru1;
    getrusage(RUSAGE_SELF, &ru1);
    double secs = (double)(now - t_window) / 1000.0;
    printf("done %llu %.3f %.3f\n", (unsigned long long)(acks - acks0), secs,
           cpu_s(&ru0, &ru1));
    exit(0);
  }
  (void)t;
}

/* The script's go: a line on stdin. */
static void go_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) {
  static char buf[64];
  (void)h;
  (void)s;
  *b = uv_buf_init(buf, sizeof buf);
}

static void go_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  if (nread == 0) return;
  uv_read_stop(s);
  if (nread < 0) exit(0); /* the script went away */
  uv_update_time(loop);
  t_beat0 = uv_now(loop);
  uv_timer_start(&tick, tick_cb, TICK_MS, TICK_MS);
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: loadgen PORT N RATE SECONDS [WARMUP]\n");
    return 2;
  }
  port = atoi(argv[1]);
  N = atoi(argv[2]);
  rate = atof(argv[3]);
  seconds = atof(argv[4]);
  if (argc > 5) warmup = atof(argv[5]);
  if (N < 1 || port < 1 || rate <= 0 || seconds <= 0) {
    fprintf(stderr, "loadgen: bad arguments\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  /* the canonical heartbeats, byte for byte what discluster-control sends
     while nothing failed: failed_clusters [] first on a connection, then
     left out (docs/protocol.md; DCM_HEARTBEAT_HEAD, _TAIL, _TAIL_SAME) */
  hb_firstlen = frame(hb_first, "{\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[],"
                                "\"failed_clusters_more\":0}}");
  hblen = frame(hb, "{\"o\":9,\"d\":{\"loadavg\":0.5}}");
  conns = calloc((size_t)N, sizeof *conns);
  if (conns == NULL) die("calloc", 0);
  loop = uv_default_loop();
  uv_timer_init(loop, &tick);
  /* stdin is a pipe from the script: read it as a stream */
  uv_pipe_t *pin = malloc(sizeof *pin);
  uv_pipe_init(loop, pin, 0);
  if (uv_pipe_open(pin, 0) != 0) die("stdin", 0);
  uv_read_start((uv_stream_t *)pin, go_alloc, go_cb);
  t_identify = uv_now(loop);
  connect_next();
  return uv_run(loop, UV_RUN_DEFAULT);
}
