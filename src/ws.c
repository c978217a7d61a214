/* ws.c: see ws.h. */
#include "ws.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include <wslay/wslay.h>

#include "discluster/master.h"

/* A message buffer up to this size is kept for the next message. */
#define MSG_KEEP 1024
/* The first message buffer: most messages (heartbeats) fit, so it is reused as is. */
#define MSG_FIRST 256
/* A client's text frame up to this payload may skip the event context. */
#define SHORT_MAX 125

struct dcm__ws_slot_s {
  struct wslay_event_context *ctx; /* its user data is the slot */
  dcm__ws_t *ws;                   /* the session it serves now */
  dcm__ws_slot_t *next;            /* in the pool's spare list */
  char *msg;                       /* a small message buffer, kept for reuse */
  size_t msgcap;
  uint8_t pong[DCM_WS_PONG_MAX];
  size_t ponglen;
  int pong_ready; /* a complete pong waits in pong[] */
  /* the peer's close reason; a context that got a close is never reused */
  char close_reason[DCM_WS_REASON_MAX + 1];
};

struct dcm__ws_pool_s {
  int client;
  dcm__ws_slot_t *spare;
  size_t nspare, nslots;
  struct wslay_frame_context *out; /* writes our text frames */
  dcm__ws_t *writer;               /* the session writing through out */
  uint8_t join[DCM_WS_JOIN];       /* header and payload, one on_write */
  size_t joinlen;
  /* reads short messages of sessions without an event context (server
     side; made at the first read): between reads it is at a frame boundary
     with its buffer empty */
  struct wslay_frame_context *in;
  const uint8_t *rin; /* what in's recv callback hands over next */
  size_t rinlen;
  int reading; /* in is in use: a feed from inside on_message skips it */
};

static void fill_mask(uint8_t *buf, size_t len) {
  /* Masking only defeats proxy cache poisoning; it is not a secret. */
  if (uv_random(NULL, NULL, buf, len, 0, NULL) != 0) {
    for (size_t i = 0; i < len; i++) buf[i] = (uint8_t)rand();
  }
}

/* ---- the pool's frame writer -------------------------------------------- */

static void join_flush(dcm__ws_pool_t *p) {
  dcm__ws_t *ws = p->writer;
  if (p->joinlen && !ws->write_failed && ws->cbs->on_write(ws, p->join, p->joinlen) < 0)
    ws->write_failed = 1;
  p->joinlen = 0;
}

/* Never fails, so the shared frame context always ends on a frame boundary;
   a failed write is recorded on the session. */
static ssize_t out_cb(const uint8_t *data, size_t len, int flags, void *user) {
  dcm__ws_pool_t *p = user;
  dcm__ws_t *ws = p->writer;
  (void)flags;
  if (len > sizeof p->join - p->joinlen) {
    join_flush(p);
    if (len > sizeof p->join) {
      if (!ws->write_failed && ws->cbs->on_write(ws, data, len) < 0) ws->write_failed = 1;
      return (ssize_t)len;
    }
  }
  memcpy(p->join + p->joinlen, data, len);
  p->joinlen += len;
  return (ssize_t)len;
}

static int out_mask_cb(uint8_t *buf, size_t len, void *user) {
  (void)user;
  fill_mask(buf, len);
  return 0;
}

dcm__ws_pool_t *dcm__ws_pool_new(int client) {
  static const struct wslay_frame_callbacks fcbs = {out_cb, NULL, out_mask_cb};
  dcm__ws_pool_t *p = calloc(1, sizeof *p);
  if (p == NULL) return NULL;
  p->client = client;
  if (wslay_frame_context_init(&p->out, &fcbs, p) != 0) {
    free(p);
    return NULL;
  }
  return p;
}

static void slot_free(dcm__ws_pool_t *p, dcm__ws_slot_t *s) {
  wslay_event_context_free(s->ctx);
  free(s->msg);
  free(s);
  p->nslots--;
}

void dcm__ws_pool_free(dcm__ws_pool_t *p) {
  if (p == NULL) return;
  while (p->spare) {
    dcm__ws_slot_t *s = p->spare;
    p->spare = s->next;
    slot_free(p, s);
  }
  wslay_frame_context_free(p->out);
  if (p->in) wslay_frame_context_free(p->in);
  free(p);
}

size_t dcm__ws_pool_contexts(const dcm__ws_pool_t *p) { return p->nslots; }

/* Header and payload bytes of a frame wslay accepted (it requires the
   shortest length encoding). */
static uint64_t frame_size(uint64_t payload, int masked) {
  return 2 + (payload < 126 ? 0 : payload < 65536 ? 2 : 8) + (masked ? 4 : 0) + payload;
}

/* ---- wslay callbacks (user data: the slot) ------------------------------ */

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                       int flags, void *user) {
  dcm__ws_t *ws = ((dcm__ws_slot_t *)user)->ws;
  (void)flags;
  if (ws->inlen == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  size_t n = len < ws->inlen ? len : ws->inlen;
  memcpy(buf, ws->in, n);
  ws->in += n;
  ws->inlen -= n;
  ws->unparsed += n;
  return (ssize_t)n;
}

/* The start of an outgoing frame: wslay hands each header over whole. */
static void out_header(dcm__ws_t *ws, const uint8_t *h, size_t len) {
  uint64_t n = len >= 2 ? (h[1] & 0x7fu) : 0;
  size_t ext = n == 126 ? 2 : n == 127 ? 8 : 0;
  if (ext && len >= 2 + ext) {
    n = 0;
    for (size_t i = 0; i < ext; i++) n = n << 8 | h[2 + i];
  }
  ws->out_left = n;
  ws->out_pong = len >= 2 && (h[0] & 0x0fu) == WSLAY_PONG;
  if (ws->out_pong) { /* a newer pong replaces a held one */
    ws->slot->ponglen = 0;
    ws->slot->pong_ready = 0;
  }
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data,
                       size_t len, int flags, void *user) {
  dcm__ws_slot_t *s = user;
  dcm__ws_t *ws = s->ws;
  (void)flags;
  if (ws->out_left == 0)
    out_header(ws, data, len);
  else
    ws->out_left -= len < ws->out_left ? len : ws->out_left;
  if (ws->out_pong) { /* kept here; flush decides when it goes */
    if (len > sizeof s->pong - s->ponglen) {
      ws->write_failed = 1;
      wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
      return -1;
    }
    memcpy(s->pong + s->ponglen, data, len);
    s->ponglen += len;
    if (ws->out_left == 0) {
      ws->out_pong = 0;
      s->pong_ready = 1;
    }
    return (ssize_t)len;
  }
  if (ws->cbs->on_write(ws, data, len) < 0) {
    ws->write_failed = 1;
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  return (ssize_t)len;
}

static int genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                      void *user) {
  (void)ctx;
  (void)user;
  fill_mask(buf, len);
  return 0;
}

/* Closes with code and stops reading, as wslay does for its own checks. */
static void refuse(dcm__ws_t *ws, uint16_t code, const char *why) {
  wslay_event_queue_close(ws->slot->ctx, code, (const uint8_t *)why, why ? strlen(why) : 0);
  wslay_event_shutdown_read(ws->slot->ctx);
  ws->in_text = 0;
}

/* Reserves room for the frame's payload; the message bound is checked here
   because wslay does not count unbuffered frames towards it. */
static void frame_start_cb(wslay_event_context_ptr ctx,
                           const struct wslay_event_on_frame_recv_start_arg *arg,
                           void *user) {
  dcm__ws_t *ws = ((dcm__ws_slot_t *)user)->ws;
  uint64_t n = arg->payload_length;
  (void)ctx;
  /* wslay accepts only minimal lengths, masked towards a server only */
  ws->in_frame = 1;
  ws->frame_len = frame_size(n, !ws->client);
  ws->in_text = 0;
  if (wslay_is_ctrl_frame(arg->opcode)) return; /* wslay buffers those (<= 125 bytes) */
  ws->in_msg = !arg->fin;
  if (arg->opcode == WSLAY_BINARY_FRAME) {
    refuse(ws, WSLAY_CODE_UNSUPPORTED_DATA, "text frames only");
    return;
  }
  if (arg->opcode == WSLAY_TEXT_FRAME) ws->msglen = 0;
  if (arg->payload_length > ws->max - ws->msglen) {
    refuse(ws, WSLAY_CODE_MESSAGE_TOO_BIG, NULL);
    return;
  }
  size_t need = ws->msglen + (size_t)arg->payload_length;
  if (need > ws->msgcap) {
    /* exact for a final frame; doubling (up to the bound) for fragments */
    size_t grow = arg->fin ? need : ws->msgcap * 2;
    if (grow < need) grow = need;
    if (grow < MSG_FIRST) grow = MSG_FIRST;
    if (grow > ws->max) grow = (size_t)ws->max;
    char *p = realloc(ws->msg, grow);
    if (p == NULL) {
      refuse(ws, WSLAY_CODE_INTERNAL_SERVER_ERROR, NULL);
      return;
    }
    ws->msg = p;
    ws->msgcap = grow;
  }
  ws->in_text = 1;
}

static void frame_chunk_cb(wslay_event_context_ptr ctx,
                           const struct wslay_event_on_frame_recv_chunk_arg *arg,
                           void *user) {
  dcm__ws_t *ws = ((dcm__ws_slot_t *)user)->ws;
  (void)ctx;
  if (!ws->in_text || arg->data_length == 0) return;
  if (arg->data_length > ws->msgcap - ws->msglen) return; /* cannot happen: reserved */
  memcpy(ws->msg + ws->msglen, arg->data, arg->data_length);
  ws->msglen += arg->data_length;
}

static void frame_end_cb(wslay_event_context_ptr ctx, void *user) {
  dcm__ws_t *ws = ((dcm__ws_slot_t *)user)->ws;
  (void)ctx;
  ws->in_frame = 0;
  ws->unparsed -= ws->frame_len <= ws->unparsed ? ws->frame_len : ws->unparsed;
}

static void msg_cb(wslay_event_context_ptr ctx,
                   const struct wslay_event_on_msg_recv_arg *arg, void *user) {
  dcm__ws_slot_t *slot = user;
  dcm__ws_t *ws = slot->ws;
  if (arg->opcode == WSLAY_CONNECTION_CLOSE) { /* wslay buffers it: <= 125 bytes */
    size_t n = arg->msg_length > 2 ? arg->msg_length - 2 : 0;
    if (n > DCM_WS_REASON_MAX) n = DCM_WS_REASON_MAX;
    if (n) memcpy(slot->close_reason, arg->msg + 2, n);
    slot->close_reason[n] = '\0';
    return;
  }
  /* refused at its last frame's start: wslay still completes it */
  if (arg->opcode != WSLAY_TEXT_FRAME || !wslay_event_get_read_enabled(ctx)) return;
  size_t len = ws->msglen;
  ws->msglen = 0;
  ws->in_text = 0;
  ws->cbs->on_message(ws, ws->msg ? ws->msg : "", len);
  if (ws->msgcap > MSG_KEEP) { /* an idle session keeps no large buffer */
    free(ws->msg);
    ws->msg = NULL;
    ws->msgcap = 0;
  }
}

/* ---- borrowing a context ------------------------------------------------ */

static int attach(dcm__ws_t *ws) {
  static const struct wslay_event_callbacks wcbs = {
      recv_cb, send_cb, genmask_cb, frame_start_cb, frame_chunk_cb, frame_end_cb, msg_cb};
  dcm__ws_pool_t *p = ws->pool;
  dcm__ws_slot_t *s = p->spare;
  if (ws->slot) return 0;
  if (s) {
    p->spare = s->next;
    p->nspare--;
  } else {
    s = calloc(1, sizeof *s);
    if (s == NULL) return DCM_ENOMEM;
    int r = p->client ? wslay_event_context_client_init(&s->ctx, &wcbs, s)
                      : wslay_event_context_server_init(&s->ctx, &wcbs, s);
    if (r != 0) {
      free(s);
      return DCM_ENOMEM;
    }
    /* wslay would keep an allocation and a queue cell per data frame */
    wslay_event_config_set_no_buffering(s->ctx, 1);
    p->nslots++;
  }
  wslay_event_config_set_max_recv_msg_length(s->ctx, ws->max);
  s->next = NULL;
  s->ws = ws;
  ws->slot = s;
  ws->msg = s->msg; /* a small buffer kept from an earlier message */
  ws->msgcap = s->msgcap;
  s->msg = NULL;
  s->msgcap = 0;
  return 0;
}

/* Nothing in wslay's context belongs to this session any more: it is as
   fresh, so any session may take it next. */
static int clean(const dcm__ws_t *ws) {
  const dcm__ws_slot_t *s = ws->slot;
  return ws->depth == 0 && !ws->write_failed && !ws->fail_code && !s->pong_ready &&
         !ws->in_frame && !ws->in_msg && ws->unparsed == 0 && ws->msglen == 0 &&
         ws->out_left == 0 && wslay_event_get_read_enabled(s->ctx) &&
         wslay_event_get_write_enabled(s->ctx) && !wslay_event_get_close_sent(s->ctx) &&
         !wslay_event_get_close_received(s->ctx) && !wslay_event_want_write(s->ctx);
}

static void detach(dcm__ws_t *ws) {
  dcm__ws_slot_t *s = ws->slot;
  dcm__ws_pool_t *p = ws->pool;
  if (s == NULL || !clean(ws)) return;
  ws->slot = NULL;
  s->ws = NULL;
  if (ws->msg && ws->msgcap <= MSG_KEEP) {
    s->msg = ws->msg;
    s->msgcap = ws->msgcap;
  } else {
    free(ws->msg);
  }
  ws->msg = NULL;
  ws->msgcap = 0;
  if (p->nspare >= DCM_WS_POOL_SPARE) {
    slot_free(p, s);
    return;
  }
  s->next = p->spare;
  p->spare = s;
  p->nspare++;
}

/* ---- sessions ----------------------------------------------------------- */

int dcm__ws_init_pooled(dcm__ws_t *ws, dcm__ws_pool_t *pool, uint64_t max_message,
                        const dcm__ws_cbs_t *cbs, void *data) {
  memset(ws, 0, sizeof(*ws));
  ws->pool = pool;
  ws->cbs = cbs;
  ws->data = data;
  ws->client = pool->client;
  ws->max = max_message;
  return 0;
}

int dcm__ws_init(dcm__ws_t *ws, int client, uint64_t max_message,
                 const dcm__ws_cbs_t *cbs, void *data) {
  dcm__ws_pool_t *p = dcm__ws_pool_new(client);
  if (p == NULL) return DCM_ENOMEM;
  dcm__ws_init_pooled(ws, p, max_message, cbs, data);
  ws->own_pool = 1;
  return 0;
}

void dcm__ws_free(dcm__ws_t *ws) {
  if (ws->pool == NULL) return;
  if (ws->slot) {
    ws->slot->ws = NULL;
    slot_free(ws->pool, ws->slot);
    ws->slot = NULL;
  }
  free(ws->msg);
  ws->msg = NULL;
  ws->msgcap = ws->msglen = 0;
  if (ws->own_pool) dcm__ws_pool_free(ws->pool);
  ws->pool = NULL;
}

static int closed_by_us(const dcm__ws_t *ws) {
  return ws->fail_code != 0 || (ws->slot && wslay_event_get_close_sent(ws->slot->ctx));
}

/* Writes the held pong if the transport is idle; never after our close. */
static int send_pong(dcm__ws_t *ws) {
  dcm__ws_slot_t *s = ws->slot;
  if (s == NULL || !s->pong_ready) return 0;
  if (closed_by_us(ws) || ws->write_failed) {
    s->pong_ready = 0;
    return 0;
  }
  if (ws->cbs->idle && !ws->cbs->idle(ws)) return 0;
  s->pong_ready = 0;
  if (ws->cbs->on_write(ws, s->pong, s->ponglen) < 0) {
    ws->write_failed = 1;
    return DCM_EINVAL;
  }
  return 0;
}

static int flush(dcm__ws_t *ws) {
  if (wslay_event_want_write(ws->slot->ctx) && wslay_event_send(ws->slot->ctx) != 0)
    return DCM_EINVAL;
  if (ws->write_failed) return DCM_EINVAL;
  return send_pong(ws);
}

/*
 * wslay answers a framing error (control frame over 125 bytes or
 * fragmented, bad length encoding) by queueing a close without a code and
 * failing: that frame is dropped and one with code is written instead.
 * wslay never leaves a frame half written (on_write takes everything), so
 * this starts on a frame boundary.
 */
static void fail_close(dcm__ws_t *ws, uint16_t code) {
  uint8_t f[2 + 4 + 2], mask[4] = {0, 0, 0, 0};
  size_t n = 0;
  wslay_event_shutdown_read(ws->slot->ctx);
  wslay_event_shutdown_write(ws->slot->ctx);
  ws->slot->pong_ready = 0;
  if (ws->write_failed || closed_by_us(ws)) return;
  ws->fail_code = code;
  f[n++] = 0x80 | WSLAY_CONNECTION_CLOSE;
  f[n++] = (uint8_t)((ws->client ? 0x80 : 0) | 2);
  if (ws->client) {
    fill_mask(mask, sizeof mask);
    memcpy(f + n, mask, 4);
    n += 4;
  }
  f[n++] = (uint8_t)((code >> 8) ^ mask[0]);
  f[n++] = (uint8_t)((code & 0xff) ^ mask[1]);
  if (ws->cbs->on_write(ws, f, n) < 0) ws->write_failed = 1;
}

/* ---- short messages through the pool's frame reader --------------------- */

static ssize_t in_cb(uint8_t *buf, size_t len, int flags, void *user) {
  dcm__ws_pool_t *p = user;
  size_t n = len < p->rinlen ? len : p->rinlen;
  (void)flags;
  memcpy(buf, p->rin, n);
  p->rin += n;
  p->rinlen -= n;
  return (ssize_t)n; /* 0: wslay says WSLAY_ERR_WANT_READ */
}

static int plain_ascii(const uint8_t *s, size_t len) {
  uint64_t high = 0, w;
  size_t i = 0;
  for (; i + 8 <= len; i += 8) { /* a word at a time: every heartbeat passes here */
    memcpy(&w, s + i, 8);
    high |= w;
  }
  for (; i < len; i++) high |= s[i];
  return !(high & 0x8080808080808080ull);
}

/*
 * A server session that borrows no event context (so wslay holds nothing
 * for it) reads the frames at the start of buf with the pool's frame
 * context, which unmasks them. Each whole unfragmented text frame from the
 * client, without RSV bits, of at most SHORT_MAX bytes and the message
 * bound, plain ASCII (so valid UTF-8) is delivered as wslay's event path
 * would deliver it. The first frame that is anything else (cut short, a
 * control frame, a fragment, longer, not ASCII, invalid) stops it: the
 * bytes from that frame's start on are left to the event path. Returns the
 * bytes used.
 */
static size_t short_messages(dcm__ws_t *ws, const uint8_t *buf, size_t len) {
  static const struct wslay_frame_callbacks icbs = {NULL, in_cb, NULL};
  dcm__ws_pool_t *p = ws->pool;
  size_t used = 0; /* bytes of the frames delivered */
  size_t seen = 0; /* used, and a whole frame not taken after them */
  if (ws->client || p->reading || len == 0) return 0;
  if (p->in == NULL && wslay_frame_context_init(&p->in, &icbs, p) != 0) {
    p->in = NULL; /* tried again at the next read */
    return 0;
  }
  p->reading = 1;
  p->rin = buf;
  p->rinlen = len;
  while (used < len && ws->slot == NULL && !ws->write_failed) {
    struct wslay_frame_iocb f;
    ssize_t r = wslay_frame_recv(p->in, &f);
    if (r < 0 || f.data_length != f.payload_length) break; /* an error, or not all here */
    seen = used + (size_t)frame_size(f.payload_length, f.mask);
    if (!f.fin || f.rsv || f.opcode != WSLAY_TEXT_FRAME || !f.mask ||
        f.payload_length > SHORT_MAX || f.payload_length > ws->max ||
        !plain_ascii(f.data, f.data_length))
      break;
    used = seen;
    ws->depth++;
    ws->cbs->on_message(ws, (const char *)f.data, f.data_length);
    ws->depth--;
  }
  /* Anything read past the last whole frame (a frame cut short, the frames
     after one not taken) stays in wslay's buffer and state: wslay has no
     reset, so a fresh context replaces it. Not on the heartbeat path. */
  if (len - p->rinlen != seen) {
    wslay_frame_context_free(p->in);
    if (wslay_frame_context_init(&p->in, &icbs, p) != 0) p->in = NULL;
  }
  p->rin = NULL;
  p->rinlen = 0;
  p->reading = 0;
  return used;
}

int dcm__ws_feed(dcm__ws_t *ws, const uint8_t *buf, size_t len) {
  size_t used = short_messages(ws, buf, len);
  if (used > 0 && used == len && ws->slot == NULL) return ws->write_failed ? DCM_EINVAL : 0;
  buf += used;
  len -= used;
  int r = attach(ws);
  if (r != 0) return r;
  ws->depth++;
  ws->in = buf;
  ws->inlen = len;
  /* wslay stops reading after a close or an error; drop what follows. */
  r = wslay_event_get_read_enabled(ws->slot->ctx) ? wslay_event_recv(ws->slot->ctx) : 0;
  ws->in = NULL;
  ws->inlen = 0;
  if (r != 0) {
    fail_close(ws, r == WSLAY_ERR_NOMEM ? WSLAY_CODE_INTERNAL_SERVER_ERROR
                                        : WSLAY_CODE_PROTOCOL_ERROR);
    r = DCM_EINVAL;
  } else {
    r = flush(ws);
  }
  ws->depth--;
  detach(ws);
  return r;
}

/* After a message went out: a held pong follows, and the context may go. */
static int sent(dcm__ws_t *ws) {
  if (ws->write_failed) return DCM_EINVAL;
  int r = send_pong(ws);
  detach(ws);
  return r;
}

int dcm__ws_send(dcm__ws_t *ws, const char *text, size_t len) {
  dcm__ws_pool_t *p = ws->pool;
  if (closed_by_us(ws) || ws->write_failed) return DCM_ESTATE;
  struct wslay_frame_iocb iocb = {1, 0, WSLAY_TEXT_FRAME, len, (uint8_t)ws->client,
                                  (const uint8_t *)text, len};
  size_t off = 0;
  p->writer = ws;
  do { /* returns once everything is written: out_cb takes it all */
    iocb.data = (const uint8_t *)text + off;
    iocb.data_length = len - off;
    ssize_t n = wslay_frame_send(p->out, &iocb);
    if (n < 0 || (n == 0 && off < len)) {
      ws->write_failed = 1;
      break;
    }
    off += (size_t)n;
  } while (off < len);
  join_flush(p);
  p->writer = NULL;
  return sent(ws);
}

size_t dcm__ws_encode(dcm__ws_pool_t *p, const char *text, size_t len, uint8_t *out,
                      size_t cap) {
  struct wslay_frame_iocb iocb = {1, 0, WSLAY_TEXT_FRAME, len, 0, (const uint8_t *)text, len};
  /* with no writer out_cb only collects: the frame must fit in join */
  if (p->client || p->writer || frame_size(len, 0) > sizeof p->join) return 0;
  p->joinlen = 0;
  ssize_t n = wslay_frame_send(p->out, &iocb);
  size_t got = p->joinlen;
  p->joinlen = 0;
  if (n != (ssize_t)len || got != frame_size(len, 0) || got > cap) return 0;
  memcpy(out, p->join, got);
  return got;
}

int dcm__ws_send_frame(dcm__ws_t *ws, const uint8_t *frame, size_t len) {
  if (closed_by_us(ws) || ws->write_failed) return DCM_ESTATE;
  if (ws->cbs->on_write(ws, frame, len) < 0) ws->write_failed = 1;
  return sent(ws);
}

int dcm__ws_close(dcm__ws_t *ws, uint16_t code, const char *reason) {
  size_t n = reason ? strlen(reason) : 0;
  if (n > 122) n = 122;
  if (ws->fail_code) return DCM_ESTATE;
  int r = attach(ws);
  if (r != 0) return r;
  r = wslay_event_queue_close(ws->slot->ctx, code, (const uint8_t *)reason, n);
  if (r != 0) return DCM_ESTATE;
  ws->depth++;
  r = flush(ws);
  ws->depth--;
  return r; /* closing: the context stays until the session is freed */
}

int dcm__ws_drained(dcm__ws_t *ws) {
  int r = send_pong(ws);
  if (r == 0 && ws->depth == 0) detach(ws);
  return r;
}

int dcm__ws_close_sent(const dcm__ws_t *ws) { return closed_by_us(ws); }

int dcm__ws_close_received(const dcm__ws_t *ws) {
  return ws->slot && wslay_event_get_close_received(ws->slot->ctx);
}

uint16_t dcm__ws_close_code_received(const dcm__ws_t *ws) {
  return ws->slot && wslay_event_get_close_received(ws->slot->ctx)
             ? wslay_event_get_status_code_received(ws->slot->ctx) : 0;
}

const char *dcm__ws_close_reason_received(const dcm__ws_t *ws) {
  return dcm__ws_close_received(ws) ? ws->slot->close_reason : "";
}

uint16_t dcm__ws_close_code(const dcm__ws_t *ws) {
  if (ws->fail_code) return ws->fail_code;
  return ws->slot && wslay_event_get_close_sent(ws->slot->ctx)
             ? wslay_event_get_status_code_sent(ws->slot->ctx) : 0;
}

int dcm__ws_done(const dcm__ws_t *ws) {
  if (ws->write_failed || ws->fail_code) return 1;
  if (ws->slot == NULL) return 0; /* an idle session is open both ways */
  wslay_event_context_ptr ctx = ws->slot->ctx;
  if (wslay_event_get_close_sent(ctx) && wslay_event_get_close_received(ctx)) return 1;
  /* wslay disables both directions after a fatal protocol error. */
  return !wslay_event_get_read_enabled(ctx) && !wslay_event_get_write_enabled(ctx);
}
