/* The bounded outbound queue over a socketpair whose far end reads only when told. */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "outq.h"

typedef struct {
  uv_loop_t loop;
  uv_pipe_t pipe;
  int far; /* the peer's end */
  dcm__outq_t q;
  int drained, errors, shut;
} rig_t;

static void on_drain(dcm__outq_t *q) {
  rig_t *r = (rig_t *)((char *)q - offsetof(rig_t, q));
  r->drained++;
}

static void on_error(dcm__outq_t *q, int status) {
  rig_t *r = (rig_t *)((char *)q - offsetof(rig_t, q));
  (void)status;
  r->errors++;
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  rig_t *r = req->data;
  CHECK_EQ(status, 0);
  r->shut++;
}

static void rig_open(rig_t *r, size_t cap) {
  int sv[2], small = 4096;
  memset(r, 0, sizeof *r);
  CHECK_EQ(uv_loop_init(&r->loop), 0);
  CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  CHECK_EQ(uv_pipe_init(&r->loop, &r->pipe, 0), 0);
  CHECK_EQ(uv_pipe_open(&r->pipe, sv[0]), 0);
  r->far = sv[1];
  fcntl(r->far, F_SETFL, fcntl(r->far, F_GETFL) | O_NONBLOCK);
  r->q.cap = cap;
  r->q.on_drain = on_drain;
  r->q.on_error = on_error;
}

static void rig_close(rig_t *r) {
  uv_close((uv_handle_t *)&r->pipe, NULL);
  CHECK_EQ(uv_run(&r->loop, UV_RUN_DEFAULT), 0);
  dcm__outq_free(&r->q);
  CHECK_EQ(r->q.bytes, 0);
  CHECK_EQ(uv_loop_close(&r->loop), 0);
  close(r->far);
}

/* Reads the far end until want bytes came (checking the "ab" pattern) or EOF. */
static size_t read_all(rig_t *r, size_t want, int until_eof) {
  char buf[65536];
  size_t got = 0;
  for (;;) {
    ssize_t n = read(r->far, buf, sizeof buf);
    if (n > 0) {
      for (ssize_t i = 0; i < n; i++) CHECK_EQ(buf[i], "ab"[(got + (size_t)i) % 2]);
      got += (size_t)n;
    } else if (n == 0) {
      return got;
    } else {
      CHECK(errno == EAGAIN);
      if (!until_eof && got >= want) return got;
    }
    uv_run(&r->loop, UV_RUN_NOWAIT);
  }
}

/* Heap bytes in use; 0 under ASan, whose allocator glibc does not see. */
static size_t heap_used(void) {
#ifdef __SANITIZE_ADDRESS__
  return 0;
#else
  struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
#endif
}

static void small_writes_cost_what_the_cap_says(void) {
  /* One uv_write per small write cost ~200 bytes each beyond the payload
     the cap counted: 2-byte pongs grew a connection to hundreds of MiB. */
  rig_t r;
  rig_open(&r, 1 << 20);
  size_t before = heap_used(), n = 0;
  int rc;
  while ((rc = dcm__outq_write(&r.q, (uv_stream_t *)&r.pipe, "ab", 2)) == 0) n++;
  CHECK_EQ(rc, UV_ENOBUFS);
  CHECK(r.q.bytes <= r.q.cap);
  CHECK(n > 400000); /* most of the cap went to payload, not overhead */
  size_t grown = heap_used() - before;
  if (before) CHECK(grown <= r.q.cap + 4096);
  CHECK_EQ(r.drained, 0);
  CHECK(dcm__outq_full(&r.q));
  CHECK_EQ(read_all(&r, 2 * n, 0), 2 * n); /* in order, nothing lost */
  CHECK_EQ(r.q.bytes, 0);
  CHECK_EQ(r.drained, 1);
  CHECK(!dcm__outq_full(&r.q));
  CHECK_EQ(r.errors, 0);
  rig_close(&r);
}

static void shutdown_waits_for_coalesced_writes(void) {
  rig_t r;
  uv_shutdown_t req;
  rig_open(&r, 1 << 20);
  size_t n = 0;
  while (r.q.pending == NULL) {
    CHECK_EQ(dcm__outq_write(&r.q, (uv_stream_t *)&r.pipe, "ab", 2), 0);
    n++;
  }
  for (int i = 0; i < 1000; i++, n++)
    CHECK_EQ(dcm__outq_write(&r.q, (uv_stream_t *)&r.pipe, "ab", 2), 0);
  req.data = &r;
  CHECK_EQ(dcm__outq_shutdown(&r.q, (uv_stream_t *)&r.pipe, &req, on_shutdown), 0);
  CHECK_EQ(dcm__outq_write(&r.q, (uv_stream_t *)&r.pipe, "ab", 2), UV_EPIPE);
  CHECK_EQ(read_all(&r, 0, 1), 2 * n); /* every byte, then EOF */
  CHECK_EQ(r.shut, 1);
  CHECK_EQ(r.drained, 0); /* shut down: nothing more to write */
  rig_close(&r);
}

static void wiped_queue_frees_on_close(void) {
  rig_t r;
  rig_open(&r, 1 << 20);
  r.q.wipe = 1;
  while (r.q.pending == NULL)
    CHECK_EQ(dcm__outq_write(&r.q, (uv_stream_t *)&r.pipe, "ab", 2), 0);
  rig_close(&r); /* the in-flight write is cancelled, pending freed: no leak */
  CHECK_EQ(r.errors, 0);
}

int main(void) {
  RUN(small_writes_cost_what_the_cap_says);
  RUN(shutdown_waits_for_coalesced_writes);
  RUN(wiped_queue_frees_on_close);
  return 0;
}
