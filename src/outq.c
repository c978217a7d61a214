/* outq.c: see outq.h. */
#include "outq.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
  uv_write_t req;
  dcm__outq_t *q;
  size_t len;
  char data[];
} outq_req_t;

static void write_cb(uv_write_t *req, int status) {
  outq_req_t *w = (outq_req_t *)req;
  dcm__outq_t *q = w->q;
  q->bytes -= w->len;
  if (q->wipe) memset(w->data, 0, w->len);
  free(w);
  if (status < 0 && status != UV_ECANCELED && q->on_error) q->on_error(q, status);
}

int dcm__outq_write(dcm__outq_t *q, uv_stream_t *s, const void *data, size_t len) {
  if (uv_is_closing((uv_handle_t *)s)) return UV_EPIPE;
  uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
  int n = uv_try_write(s, &buf, 1);
  if (n == (int)len) return 0;
  if (n < 0 && n != UV_EAGAIN) return n;
  if (n < 0) n = 0;
  size_t left = len - (size_t)n;
  if (q->bytes + left > q->cap) return UV_ENOBUFS;
  outq_req_t *w = malloc(sizeof *w + left);
  if (w == NULL) return UV_ENOMEM;
  memcpy(w->data, (const char *)data + n, left);
  w->q = q;
  w->len = left;
  buf = uv_buf_init(w->data, (unsigned)left);
  int r = uv_write(&w->req, s, &buf, 1, write_cb);
  if (r != 0) {
    free(w);
    return r;
  }
  q->bytes += left;
  return 0;
}
