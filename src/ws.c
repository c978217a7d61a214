/* ws.c: see ws.h. */
#include "ws.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include <wslay/wslay.h>

#include "discluster/master.h"

/* A message buffer up to this size is kept for the next message. */
#define MSG_KEEP 1024

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                       int flags, void *user) {
  dcm__ws_t *ws = user;
  (void)flags;
  if (ws->inlen == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  size_t n = len < ws->inlen ? len : ws->inlen;
  memcpy(buf, ws->in, n);
  ws->in += n;
  ws->inlen -= n;
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
    ws->ponglen = 0;
    ws->pong_ready = 0;
  }
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data,
                       size_t len, int flags, void *user) {
  dcm__ws_t *ws = user;
  (void)flags;
  if (ws->out_left == 0)
    out_header(ws, data, len);
  else
    ws->out_left -= len < ws->out_left ? len : ws->out_left;
  if (ws->out_pong) { /* kept here; flush decides when it goes */
    if (len > sizeof ws->pong - ws->ponglen) {
      ws->write_failed = 1;
      wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
      return -1;
    }
    memcpy(ws->pong + ws->ponglen, data, len);
    ws->ponglen += len;
    if (ws->out_left == 0) {
      ws->out_pong = 0;
      ws->pong_ready = 1;
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
  /* Masking only defeats proxy cache poisoning; it is not a secret. */
  if (uv_random(NULL, NULL, buf, len, 0, NULL) != 0) {
    for (size_t i = 0; i < len; i++) buf[i] = (uint8_t)rand();
  }
  return 0;
}

/* Closes with code and stops reading, as wslay does for its own checks. */
static void refuse(dcm__ws_t *ws, uint16_t code, const char *why) {
  wslay_event_queue_close(ws->ctx, code, (const uint8_t *)why, why ? strlen(why) : 0);
  wslay_event_shutdown_read(ws->ctx);
  ws->in_text = 0;
}

/* Reserves room for the frame's payload; the message bound is checked here
   because wslay does not count unbuffered frames towards it. */
static void frame_start_cb(wslay_event_context_ptr ctx,
                           const struct wslay_event_on_frame_recv_start_arg *arg,
                           void *user) {
  dcm__ws_t *ws = user;
  (void)ctx;
  ws->in_text = 0;
  if (wslay_is_ctrl_frame(arg->opcode)) return; /* wslay buffers those (<= 125 bytes) */
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
  dcm__ws_t *ws = user;
  (void)ctx;
  if (!ws->in_text || arg->data_length == 0) return;
  if (arg->data_length > ws->msgcap - ws->msglen) return; /* cannot happen: reserved */
  memcpy(ws->msg + ws->msglen, arg->data, arg->data_length);
  ws->msglen += arg->data_length;
}

static void msg_cb(wslay_event_context_ptr ctx,
                   const struct wslay_event_on_msg_recv_arg *arg, void *user) {
  dcm__ws_t *ws = user;
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

int dcm__ws_init(dcm__ws_t *ws, int client, uint64_t max_message,
                 const dcm__ws_cbs_t *cbs, void *data) {
  static const struct wslay_event_callbacks wcbs = {
      recv_cb, send_cb, genmask_cb, frame_start_cb, frame_chunk_cb, NULL, msg_cb};
  memset(ws, 0, sizeof(*ws));
  ws->cbs = cbs;
  ws->data = data;
  ws->client = client;
  ws->max = max_message;
  int r = client ? wslay_event_context_client_init(&ws->ctx, &wcbs, ws)
                 : wslay_event_context_server_init(&ws->ctx, &wcbs, ws);
  if (r != 0) return DCM_ENOMEM;
  wslay_event_config_set_max_recv_msg_length(ws->ctx, max_message);
  /* wslay would keep an allocation and a queue cell per data frame */
  wslay_event_config_set_no_buffering(ws->ctx, 1);
  return 0;
}

void dcm__ws_free(dcm__ws_t *ws) {
  if (ws->ctx) wslay_event_context_free(ws->ctx);
  ws->ctx = NULL;
  free(ws->msg);
  ws->msg = NULL;
  ws->msgcap = ws->msglen = 0;
}

static int closed_by_us(const dcm__ws_t *ws) {
  return ws->fail_code != 0 || wslay_event_get_close_sent(ws->ctx);
}

/* Writes the held pong if the transport is idle; never after our close. */
static int send_pong(dcm__ws_t *ws) {
  if (!ws->pong_ready) return 0;
  if (closed_by_us(ws) || ws->write_failed) {
    ws->pong_ready = 0;
    return 0;
  }
  if (ws->cbs->idle && !ws->cbs->idle(ws)) return 0;
  ws->pong_ready = 0;
  if (ws->cbs->on_write(ws, ws->pong, ws->ponglen) < 0) {
    ws->write_failed = 1;
    return DCM_EINVAL;
  }
  return 0;
}

static int flush(dcm__ws_t *ws) {
  if (wslay_event_want_write(ws->ctx) && wslay_event_send(ws->ctx) != 0)
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
  wslay_event_shutdown_read(ws->ctx);
  wslay_event_shutdown_write(ws->ctx);
  ws->pong_ready = 0;
  if (ws->write_failed || closed_by_us(ws)) return;
  ws->fail_code = code;
  f[n++] = 0x80 | WSLAY_CONNECTION_CLOSE;
  f[n++] = (uint8_t)((ws->client ? 0x80 : 0) | 2);
  if (ws->client) {
    genmask_cb(ws->ctx, mask, sizeof mask, ws);
    memcpy(f + n, mask, 4);
    n += 4;
  }
  f[n++] = (uint8_t)((code >> 8) ^ mask[0]);
  f[n++] = (uint8_t)((code & 0xff) ^ mask[1]);
  if (ws->cbs->on_write(ws, f, n) < 0) ws->write_failed = 1;
}

int dcm__ws_feed(dcm__ws_t *ws, const uint8_t *buf, size_t len) {
  ws->in = buf;
  ws->inlen = len;
  /* wslay stops reading after a close or an error; drop what follows. */
  int r = wslay_event_get_read_enabled(ws->ctx) ? wslay_event_recv(ws->ctx) : 0;
  ws->in = NULL;
  ws->inlen = 0;
  if (r != 0) {
    fail_close(ws, r == WSLAY_ERR_NOMEM ? WSLAY_CODE_INTERNAL_SERVER_ERROR
                                        : WSLAY_CODE_PROTOCOL_ERROR);
    return DCM_EINVAL;
  }
  return flush(ws);
}

int dcm__ws_send(dcm__ws_t *ws, const char *text, size_t len) {
  struct wslay_event_msg msg = {WSLAY_TEXT_FRAME, (const uint8_t *)text, len};
  if (closed_by_us(ws)) return DCM_ESTATE;
  int r = wslay_event_queue_msg(ws->ctx, &msg);
  if (r == WSLAY_ERR_NOMEM) return DCM_ENOMEM;
  if (r != 0) return DCM_ESTATE;
  return flush(ws);
}

int dcm__ws_close(dcm__ws_t *ws, uint16_t code, const char *reason) {
  size_t n = reason ? strlen(reason) : 0;
  if (n > 122) n = 122;
  if (ws->fail_code) return DCM_ESTATE;
  int r = wslay_event_queue_close(ws->ctx, code, (const uint8_t *)reason, n);
  if (r != 0) return DCM_ESTATE;
  return flush(ws);
}

int dcm__ws_drained(dcm__ws_t *ws) { return send_pong(ws); }

int dcm__ws_close_sent(const dcm__ws_t *ws) { return closed_by_us(ws); }

int dcm__ws_close_received(const dcm__ws_t *ws) {
  return wslay_event_get_close_received(ws->ctx);
}

uint16_t dcm__ws_close_code(const dcm__ws_t *ws) {
  if (ws->fail_code) return ws->fail_code;
  return wslay_event_get_close_sent(ws->ctx)
             ? wslay_event_get_status_code_sent(ws->ctx) : 0;
}

int dcm__ws_done(const dcm__ws_t *ws) {
  if (ws->write_failed || ws->fail_code) return 1;
  if (wslay_event_get_close_sent(ws->ctx) && wslay_event_get_close_received(ws->ctx))
    return 1;
  /* wslay disables both directions after a fatal protocol error. */
  return !wslay_event_get_read_enabled(ws->ctx) &&
         !wslay_event_get_write_enabled(ws->ctx);
}
