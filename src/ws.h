/*
 * ws.h: one WebSocket session (RFC 6455 framing by wslay), independent of
 * any socket: bytes come in through dcm__ws_feed and go out through the
 * on_write callback, so it is tested with scripted byte feeds in memory.
 * Server or client side. Text messages only (binary closes 1003).
 *
 * Bounds: wslay's per-frame buffering is off; a message is assembled here
 * in one buffer that never exceeds max_message (over it: close 1009), so
 * memory per session stays near the message bound however the peer
 * fragments it. At most one pong waits: while the owner's transport is
 * busy (idle() says 0) a pong is held back and a later ping replaces it
 * (RFC 6455 5.5.3); dcm__ws_drained sends it. A framing error wslay
 * rejects is answered with close 1002 before the transport closes.
 * wslay (1.1.1, upstream too) checks a peer's close reason for UTF-8 per
 * read, so a close split inside a character may be answered 1007 rather
 * than echoed; the session ends either way.
 * Depends on wslay.
 */
#ifndef DCM_WS_H
#define DCM_WS_H

#include <stddef.h>
#include <stdint.h>

typedef struct dcm__ws_s dcm__ws_t;

typedef struct {
  /* One complete text message. May call dcm__ws_send / dcm__ws_close. */
  void (*on_message)(dcm__ws_t *ws, const char *msg, size_t len);
  /* Bytes for the wire; copy them. Return 0, or < 0 to fail the session. */
  int (*on_write)(dcm__ws_t *ws, const uint8_t *data, size_t len);
  /* 1 when nothing waits to be written; NULL = always. Gates pongs. */
  int (*idle)(dcm__ws_t *ws);
} dcm__ws_cbs_t;

/* A pong frame: header (with a client's mask key) and at most 125 bytes. */
#define DCM_WS_PONG_MAX (2 + 4 + 125)

struct dcm__ws_s {
  struct wslay_event_context *ctx;
  const dcm__ws_cbs_t *cbs;
  void *data; /* the owner's */
  const uint8_t *in;
  size_t inlen;
  int write_failed;
  int client;
  uint16_t fail_code; /* close code written after a framing error, or 0 */
  /* the incoming text message */
  uint64_t max;
  char *msg;
  size_t msglen, msgcap;
  int in_text; /* the current frame's payload belongs to msg */
  /* outgoing frames, followed to hold back pongs */
  uint64_t out_left; /* payload bytes of the frame being written */
  int out_pong;
  uint8_t pong[DCM_WS_PONG_MAX];
  size_t ponglen;
  int pong_ready; /* a complete pong waits in pong[] */
};

int dcm__ws_init(dcm__ws_t *ws, int client, uint64_t max_message,
                 const dcm__ws_cbs_t *cbs, void *data);
void dcm__ws_free(dcm__ws_t *ws);

/*
 * Consumes len bytes from the peer, delivering messages and writing any
 * replies (pong, close). Returns 0, or < 0 when the session is broken and
 * the transport should be closed now (after writing what was queued).
 */
int dcm__ws_feed(dcm__ws_t *ws, const uint8_t *buf, size_t len);

/* Queues one text message and writes it. DCM_ESTATE after a close. */
int dcm__ws_send(dcm__ws_t *ws, const char *text, size_t len);

/* Starts the close handshake with code and a short reason. */
int dcm__ws_close(dcm__ws_t *ws, uint16_t code, const char *reason);

/* The transport drained: writes a held pong. 0, or < 0 if the write failed. */
int dcm__ws_drained(dcm__ws_t *ws);

/* 1 once a close frame has been sent. */
int dcm__ws_close_sent(const dcm__ws_t *ws);
/* 1 once the peer's close frame has arrived. */
int dcm__ws_close_received(const dcm__ws_t *ws);
/* The code we sent in our close frame (0 if none). */
uint16_t dcm__ws_close_code(const dcm__ws_t *ws);
/* 1 when both sides are done: the transport may be closed. */
int dcm__ws_done(const dcm__ws_t *ws);

#endif
