/* outq.c: see outq.h. */
#include "outq.h"

#include <stdlib.h>
#include <string.h>

/* What the allocator adds to each block (glibc: a size word, 16-byte alignment). */
#define ALLOC_OVERHEAD 16
/* The first coalescing buffer: room for many small frames at once. */
#define COALESCE_MIN 4096

struct dcm__outq_buf_s {
  uv_write_t req; /* first: write_cb gets it back */
  dcm__outq_t *q;
  size_t len;  /* bytes to write */
  size_t size; /* bytes allocated for data */
  char data[];
};

static size_t cost(size_t size) { return sizeof(dcm__outq_buf_t) + size + ALLOC_OVERHEAD; }

static dcm__outq_buf_t *buf_new(dcm__outq_t *q, size_t size) {
  dcm__outq_buf_t *b = malloc(sizeof *b + size);
  if (b == NULL) return NULL;
  b->q = q;
  b->len = 0;
  b->size = size;
  q->bytes += cost(size);
  return b;
}

static void buf_free(dcm__outq_t *q, dcm__outq_buf_t *b) {
  q->bytes -= cost(b->size);
  if (q->wipe) explicit_bzero(b->data, b->len);
  free(b);
}

static void write_cb(uv_write_t *req, int status);

static int submit(dcm__outq_t *q, dcm__outq_buf_t *b) {
  uv_buf_t buf = uv_buf_init(b->data, (unsigned)b->len);
  int r = uv_write(&b->req, q->stream, &buf, 1, write_cb);
  if (r == 0) q->inflight = b;
  return r;
}

/* Runs a deferred shutdown now, or fails it with status. */
static void shutdown_now(dcm__outq_t *q, int status) {
  uv_shutdown_t *req = q->shutdown;
  uv_shutdown_cb cb = q->shutdown_cb;
  if (req == NULL) return;
  q->shutdown = NULL;
  if (status == 0) status = uv_shutdown(req, q->stream, cb);
  if (status != 0) cb(req, status);
}

static void write_cb(uv_write_t *req, int status) {
  dcm__outq_buf_t *b = (dcm__outq_buf_t *)req;
  dcm__outq_t *q = b->q;
  q->inflight = NULL;
  buf_free(q, b);
  if (status == 0 && uv_is_closing((uv_handle_t *)q->stream)) status = UV_ECANCELED;
  if (status == 0 && q->pending) {
    dcm__outq_buf_t *p = q->pending;
    q->pending = NULL;
    status = submit(q, p);
    if (status != 0) buf_free(q, p);
  }
  if (status != 0) {
    if (q->pending) buf_free(q, q->pending);
    q->pending = NULL;
    shutdown_now(q, status);
    if (status != UV_ECANCELED && q->on_error) q->on_error(q, status);
    return;
  }
  shutdown_now(q, 0); /* after the pending bytes were handed over */
  if (q->inflight == NULL && !q->shut && q->on_drain) q->on_drain(q);
}

int dcm__outq_write(dcm__outq_t *q, uv_stream_t *s, const void *data, size_t len) {
  if (q->shut || uv_is_closing((uv_handle_t *)s)) return UV_EPIPE;
  if (len == 0) return 0;
  if (q->stream != s) q->stream = s; /* no store: the line stays clean */
  if (q->inflight == NULL) { /* nothing queued: the kernel may take it all */
    uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
    int n = uv_try_write(s, &buf, 1);
    if (n == (int)len) return 0;
    if (n < 0 && n != UV_EAGAIN) return n;
    if (n < 0) n = 0;
    data = (const char *)data + n;
    len -= (size_t)n;
    if (q->bytes + cost(len) > q->cap) return UV_ENOBUFS;
    dcm__outq_buf_t *b = buf_new(q, len);
    if (b == NULL) return UV_ENOMEM;
    memcpy(b->data, data, len);
    b->len = len;
    int r = submit(q, b);
    if (r != 0) buf_free(q, b);
    return r;
  }
  /* A write is in flight: append behind it, growing the buffer geometrically. */
  dcm__outq_buf_t *p = q->pending;
  size_t used = p ? p->len : 0, size = p ? p->size : 0;
  if (size - used < len) {
    size_t need = used + len;
    size_t others = q->bytes - (p ? cost(size) : 0);
    if (others + cost(need) > q->cap) return UV_ENOBUFS;
    size_t room = q->cap - others - cost(0); /* the most this buffer may hold */
    size_t grow = size * 2 < COALESCE_MIN ? COALESCE_MIN : size * 2;
    if (grow < need) grow = need;
    if (grow > room) grow = room; /* the last growth takes what the cap leaves */
    dcm__outq_buf_t *np = buf_new(q, grow);
    if (np == NULL) return UV_ENOMEM;
    if (p) {
      memcpy(np->data, p->data, used);
      np->len = used;
      buf_free(q, p);
    }
    q->pending = p = np;
  }
  memcpy(p->data + p->len, data, len);
  p->len += len;
  return 0;
}

int dcm__outq_full(const dcm__outq_t *q) {
  return q->bytes > DCM_OUTQ_READ_PAUSE || q->bytes > q->cap / 2;
}

int dcm__outq_shutdown(dcm__outq_t *q, uv_stream_t *s, uv_shutdown_t *req, uv_shutdown_cb cb) {
  if (q->shut) return UV_ENOTCONN;
  q->shut = 1;
  q->stream = s;
  if (q->pending == NULL) return uv_shutdown(req, s, cb);
  q->shutdown = req; /* write_cb hands pending over, then shuts down */
  q->shutdown_cb = cb;
  return 0;
}

void dcm__outq_free(dcm__outq_t *q) {
  if (q->pending) buf_free(q, q->pending);
  q->pending = NULL;
}
