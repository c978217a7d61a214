/*
 * outq.h: writes to a libuv stream with a bounded outbound queue. Each write
 * tries uv_try_write first and copies only what the kernel did not take
 * into one uv_write request; the bytes still queued are counted against a
 * cap, so a peer that stops reading is noticed instead of growing memory.
 * Shared by MASTER's connections and the CONTROL agent's client.
 */
#ifndef DCM_OUTQ_H
#define DCM_OUTQ_H

#include <stddef.h>
#include <uv.h>

typedef struct dcm__outq_s dcm__outq_t;

struct dcm__outq_s {
  size_t bytes; /* queued, not yet on the wire */
  size_t cap;   /* a write that would queue more fails with UV_ENOBUFS */
  int wipe;     /* zero queued copies before freeing them (secrets) */
  /* A queued write failed (not on cancel); the owner usually closes. */
  void (*on_error)(dcm__outq_t *q, int status);
};

/* 0, or a libuv error; on error nothing was queued and on_error is not called. */
int dcm__outq_write(dcm__outq_t *q, uv_stream_t *s, const void *data, size_t len);

#endif
