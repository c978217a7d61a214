/*
 * ws.h: one WebSocket session (RFC 6455 framing by wslay), independent of
 * any socket: bytes come in through dcm__ws_feed and go out through the
 * on_write callback, so it is tested with scripted byte feeds in memory.
 * Server or client side. Text messages only (binary closes 1003).
 *
 * Memory: an idle session holds no wslay context. Sessions borrow one from
 * a pool (one per side, shared by a MASTER's connections) while wslay has
 * state for them: inside a frame or a fragmented message, a held pong, a
 * close under way. At a frame boundary with nothing queued the context goes
 * back, so N idle sessions cost N small structs plus at most
 * DCM_WS_POOL_SPARE spare contexts (about 8.6 KiB each) and the pool's two
 * wslay frame contexts (about 4.2 KiB each). Outgoing text frames are
 * written by the pool's writing frame context (wslay_frame_send) straight
 * from the caller's bytes: no allocation per message, one on_write per
 * frame up to DCM_WS_JOIN bytes.
 *
 * The heartbeat path borrows no event context: on a server session that
 * holds none, the frames at the start of a read are read by the pool's
 * reading frame context (wslay_frame_recv, which unmasks them in its 4 KiB
 * buffer), and each whole unfragmented text frame without RSV bits, masked,
 * of at most 125 bytes and the message bound, plain ASCII (so valid UTF-8)
 * is delivered from there. The first frame that is anything else, and all
 * that follows it in the read, goes to wslay's event path as before; if
 * the frame context then holds bytes past the last whole frame it read, it
 * is replaced by a fresh one (wslay has no reset), so it never carries
 * bytes from one read to the next. No framing is parsed by hand.
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
typedef struct dcm__ws_pool_s dcm__ws_pool_t;
typedef struct dcm__ws_slot_s dcm__ws_slot_t; /* a borrowed wslay context */

/* Spare contexts a pool keeps for the next borrower; more are freed. */
#define DCM_WS_POOL_SPARE 8
/* An outgoing frame up to this size (header included) is one on_write. */
#define DCM_WS_JOIN 4096

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
  /* what a heartbeat's read and ack touch come first */
  dcm__ws_pool_t *pool;
  dcm__ws_slot_t *slot; /* the borrowed wslay context, or NULL when idle */
  const dcm__ws_cbs_t *cbs;
  void *data; /* the owner's */
  uint64_t max;
  int depth; /* inside feed/send/close: the context stays */
  int write_failed;
  int client;
  uint16_t fail_code; /* close code written after a framing error, or 0 */
  int own_pool;       /* dcm__ws_init made the pool: freed with the session */
  const uint8_t *in;
  size_t inlen;
  /* the incoming text message */
  char *msg;
  size_t msglen, msgcap;
  int in_text; /* the current frame's payload belongs to msg */
  /* where wslay's input stands: the context may go back only between frames */
  int in_frame;       /* a frame's header was read, not yet its end */
  int in_msg;         /* a fragmented data message is under way */
  uint64_t frame_len; /* header and payload bytes of that frame */
  uint64_t unparsed;  /* bytes handed to wslay not yet part of an ended frame */
  /* frames wslay writes (pong, close), followed to hold back pongs */
  uint64_t out_left; /* payload bytes of the frame being written */
  int out_pong;
};

/* A pool of contexts for sessions of one side (client: masked frames). */
dcm__ws_pool_t *dcm__ws_pool_new(int client);
/* Frees the spare contexts; every session using the pool is freed first. */
void dcm__ws_pool_free(dcm__ws_pool_t *pool);
/* wslay event contexts alive: borrowed and spare. */
size_t dcm__ws_pool_contexts(const dcm__ws_pool_t *pool);

/* A session with a pool of its own (the agent's single connection). */
int dcm__ws_init(dcm__ws_t *ws, int client, uint64_t max_message,
                 const dcm__ws_cbs_t *cbs, void *data);
/* A session borrowing contexts from pool (its side is the pool's). */
int dcm__ws_init_pooled(dcm__ws_t *ws, dcm__ws_pool_t *pool, uint64_t max_message,
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

/*
 * A server's frames are not masked, so a message sent often (the heartbeat
 * ack) is framed once: dcm__ws_encode writes text as one frame (by
 * wslay_frame_send) into out and returns its length, or 0 for a client
 * pool or a frame over cap or DCM_WS_JOIN; dcm__ws_send_frame then sends
 * those bytes as dcm__ws_send would send text.
 */
size_t dcm__ws_encode(dcm__ws_pool_t *pool, const char *text, size_t len, uint8_t *out,
                      size_t cap);
int dcm__ws_send_frame(dcm__ws_t *ws, const uint8_t *frame, size_t len);

/* Starts the close handshake with code and a short reason. */
int dcm__ws_close(dcm__ws_t *ws, uint16_t code, const char *reason);

/* The transport drained: writes a held pong. 0, or < 0 if the write failed. */
int dcm__ws_drained(dcm__ws_t *ws);

/* 1 once a close frame has been sent. */
int dcm__ws_close_sent(const dcm__ws_t *ws);
/* 1 once the peer's close frame has arrived. */
int dcm__ws_close_received(const dcm__ws_t *ws);
/* The code in the peer's close frame (1005 if it had none; 0 before one). */
uint16_t dcm__ws_close_code_received(const dcm__ws_t *ws);
/* The reason in the peer's close frame ("" if none or before one); at most
 * DCM_WS_REASON_MAX bytes of UTF-8 (wslay checks it), valid while the
 * session lives. */
#define DCM_WS_REASON_MAX 123
const char *dcm__ws_close_reason_received(const dcm__ws_t *ws);
/* The code we sent in our close frame (0 if none). */
uint16_t dcm__ws_close_code(const dcm__ws_t *ws);
/* 1 when both sides are done: the transport may be closed. */
int dcm__ws_done(const dcm__ws_t *ws);

#endif
