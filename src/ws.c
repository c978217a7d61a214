/* ws.c: see ws.h. */
#include "ws.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include <wslay/wslay.h>

#include "discluster/master.h"

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

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data,
                       size_t len, int flags, void *user) {
  dcm__ws_t *ws = user;
  (void)flags;
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

static void msg_cb(wslay_event_context_ptr ctx,
                   const struct wslay_event_on_msg_recv_arg *arg, void *user) {
  dcm__ws_t *ws = user;
  if (arg->opcode == WSLAY_TEXT_FRAME) {
    ws->cbs->on_message(ws, (const char *)arg->msg, arg->msg_length);
  } else if (arg->opcode == WSLAY_BINARY_FRAME) {
    static const char why[] = "text frames only";
    wslay_event_queue_close(ctx, WSLAY_CODE_UNSUPPORTED_DATA,
                            (const uint8_t *)why, sizeof why - 1);
  }
}

int dcm__ws_init(dcm__ws_t *ws, int client, uint64_t max_message,
                 const dcm__ws_cbs_t *cbs, void *data) {
  static const struct wslay_event_callbacks wcbs = {
      recv_cb, send_cb, genmask_cb, NULL, NULL, NULL, msg_cb};
  memset(ws, 0, sizeof(*ws));
  ws->cbs = cbs;
  ws->data = data;
  int r = client ? wslay_event_context_client_init(&ws->ctx, &wcbs, ws)
                 : wslay_event_context_server_init(&ws->ctx, &wcbs, ws);
  if (r != 0) return DCM_ENOMEM;
  wslay_event_config_set_max_recv_msg_length(ws->ctx, max_message);
  return 0;
}

void dcm__ws_free(dcm__ws_t *ws) {
  if (ws->ctx) wslay_event_context_free(ws->ctx);
  ws->ctx = NULL;
}

static int flush(dcm__ws_t *ws) {
  if (wslay_event_want_write(ws->ctx) && wslay_event_send(ws->ctx) != 0)
    return DCM_EINVAL;
  return ws->write_failed ? DCM_EINVAL : 0;
}

int dcm__ws_feed(dcm__ws_t *ws, const uint8_t *buf, size_t len) {
  ws->in = buf;
  ws->inlen = len;
  /* wslay stops reading after a close or an error; drop what follows. */
  int r = wslay_event_get_read_enabled(ws->ctx) ? wslay_event_recv(ws->ctx) : 0;
  ws->in = NULL;
  ws->inlen = 0;
  if (r != 0) return DCM_EINVAL;
  return flush(ws);
}

int dcm__ws_send(dcm__ws_t *ws, const char *text, size_t len) {
  struct wslay_event_msg msg = {WSLAY_TEXT_FRAME, (const uint8_t *)text, len};
  if (wslay_event_get_close_sent(ws->ctx)) return DCM_ESTATE;
  int r = wslay_event_queue_msg(ws->ctx, &msg);
  if (r == WSLAY_ERR_NOMEM) return DCM_ENOMEM;
  if (r != 0) return DCM_ESTATE;
  return flush(ws);
}

int dcm__ws_close(dcm__ws_t *ws, uint16_t code, const char *reason) {
  size_t n = reason ? strlen(reason) : 0;
  if (n > 122) n = 122;
  int r = wslay_event_queue_close(ws->ctx, code, (const uint8_t *)reason, n);
  if (r != 0) return DCM_ESTATE;
  return flush(ws);
}

int dcm__ws_close_sent(const dcm__ws_t *ws) {
  return wslay_event_get_close_sent(ws->ctx);
}

int dcm__ws_close_received(const dcm__ws_t *ws) {
  return wslay_event_get_close_received(ws->ctx);
}

uint16_t dcm__ws_close_code(const dcm__ws_t *ws) {
  return wslay_event_get_close_sent(ws->ctx)
             ? wslay_event_get_status_code_sent(ws->ctx) : 0;
}

int dcm__ws_done(const dcm__ws_t *ws) {
  if (ws->write_failed) return 1;
  if (wslay_event_get_close_sent(ws->ctx) && wslay_event_get_close_received(ws->ctx))
    return 1;
  /* wslay disables both directions after a fatal protocol error. */
  return !wslay_event_get_read_enabled(ws->ctx) &&
         !wslay_event_get_write_enabled(ws->ctx);
}
