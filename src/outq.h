/*
 * outq.h: writes to a libuv stream with a bounded outbound queue. A write
 * tries uv_try_write first when nothing is queued; what the kernel did not
 * take is copied into at most two buffers: one handed to libuv (in flight)
 * and one that coalesces every later write until the first completes, so
 * a stream of small writes costs one request, not one per write. The cap
 * counts real memory (bytes, buffer slack, requests and allocator
 * overhead), so a peer that stops reading is noticed instead of growing
 * memory (while the coalescing buffer doubles, the old copy is held for
 * the memcpy). Shared by MASTER's connections and the CONTROL agent's
 * client.
 */
#ifndef DCM_OUTQ_H
#define DCM_OUTQ_H

#include <stddef.h>
#include <uv.h>

/* Owners stop reading from a peer while more than this is queued. */
#define DCM_OUTQ_READ_PAUSE (64u << 10)

typedef struct dcm__outq_s dcm__outq_t;
typedef struct dcm__outq_buf_s dcm__outq_buf_t;

struct dcm__outq_s {
  size_t bytes;              /* memory held by the queue, overhead included */
  dcm__outq_buf_t *inflight; /* handed to libuv */
  uv_stream_t *stream;       /* the stream of the queued writes */
  int shut;                  /* shutdown asked: no more writes */
  int wipe;                  /* zero queued copies before freeing them (secrets) */
  size_t cap;                /* a write that would hold more fails with UV_ENOBUFS */
  dcm__outq_buf_t *pending;  /* coalesces writes made meanwhile */
  /* A queued write failed (not on cancel); the owner usually closes. */
  void (*on_error)(dcm__outq_t *q, int status);
  /* Everything queued is on the wire; may write again. Optional. */
  void (*on_drain)(dcm__outq_t *q);
  uv_shutdown_t *shutdown; /* deferred until pending is handed over */
  uv_shutdown_cb shutdown_cb;
};

/* 0, or a libuv error; on error nothing was queued and on_error is not called. */
int dcm__outq_write(dcm__outq_t *q, uv_stream_t *s, const void *data, size_t len);

/* 1 when the owner should stop reading: over DCM_OUTQ_READ_PAUSE or half the cap. */
int dcm__outq_full(const dcm__outq_t *q);

/*
 * uv_shutdown once everything queued is written (libuv orders a shutdown
 * after the writes it holds, and pending is handed to it first). Later
 * writes fail with UV_EPIPE. cb runs exactly once, also on failure.
 */
int dcm__outq_shutdown(dcm__outq_t *q, uv_stream_t *s, uv_shutdown_t *req, uv_shutdown_cb cb);

/* Frees what is not in flight. Call once the stream is closed. */
void dcm__outq_free(dcm__outq_t *q);

#endif
