/*
 * ws.h: one WebSocket session (RFC 6455 framing by wslay), independent of
 * any socket: bytes come in through dcm__ws_feed and go out through the
 * on_write callback, so it is tested with scripted byte feeds in memory.
 * Server or client side. Text messages only; a message over max_message is
 * refused with close code 1009 (wslay's own check). Depends on wslay.
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
} dcm__ws_cbs_t;

struct dcm__ws_s {
  struct wslay_event_context *ctx;
  const dcm__ws_cbs_t *cbs;
  void *data; /* the owner's */
  const uint8_t *in;
  size_t inlen;
  int write_failed;
};

int dcm__ws_init(dcm__ws_t *ws, int client, uint64_t max_message,
                 const dcm__ws_cbs_t *cbs, void *data);
void dcm__ws_free(dcm__ws_t *ws);

/*
 * Consumes len bytes from the peer, delivering messages and writing any
 * replies (pong, close). Returns 0, or < 0 when the session is broken and
 * the transport should be closed now.
 */
int dcm__ws_feed(dcm__ws_t *ws, const uint8_t *buf, size_t len);

/* Queues one text message and writes it. DCM_ESTATE after a close. */
int dcm__ws_send(dcm__ws_t *ws, const char *text, size_t len);

/* Starts the close handshake with code and a short reason. */
int dcm__ws_close(dcm__ws_t *ws, uint16_t code, const char *reason);

/* 1 once a close frame has been sent. */
int dcm__ws_close_sent(const dcm__ws_t *ws);
/* 1 once the peer's close frame has arrived. */
int dcm__ws_close_received(const dcm__ws_t *ws);
/* The code we sent in our close frame (0 if none). */
uint16_t dcm__ws_close_code(const dcm__ws_t *ws);
/* 1 when both sides are done: the transport may be closed. */
int dcm__ws_done(const dcm__ws_t *ws);

#endif
