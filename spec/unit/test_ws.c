/* WebSocket sessions fed scripted bytes in memory: no sockets. */
#include <stdint.h>
#include <wslay/wslay.h>

#include "check.h"
#include "ws.h"

typedef struct {
  uint8_t out[1 << 16];
  size_t outlen;
  char msgs[8][4096];
  size_t msglen[8];
  int nmsgs;
  int echo_close; /* close from inside on_message */
} sink_t;

static void on_message(dcm__ws_t *ws, const char *msg, size_t len) {
  sink_t *s = ws->data;
  CHECK(s->nmsgs < 8 && len < 4096);
  memcpy(s->msgs[s->nmsgs], msg, len);
  s->msglen[s->nmsgs++] = len;
  if (s->echo_close) dcm__ws_close(ws, 4002, "bye");
}

static int on_write(dcm__ws_t *ws, const uint8_t *data, size_t len) {
  sink_t *s = ws->data;
  CHECK(s->outlen + len <= sizeof s->out);
  memcpy(s->out + s->outlen, data, len);
  s->outlen += len;
  return 0;
}

static const dcm__ws_cbs_t cbs = {on_message, on_write};

/* A client frame: masked unless mask == 0. */
static size_t frame(uint8_t *buf, int fin, int op, const void *payload, size_t len, int mask) {
  static const uint8_t key[4] = {0x11, 0x22, 0x33, 0x44};
  size_t o = 0;
  buf[o++] = (uint8_t)((fin ? 0x80 : 0) | op);
  uint8_t m = mask ? 0x80 : 0;
  if (len < 126) {
    buf[o++] = (uint8_t)(m | len);
  } else if (len < 65536) {
    buf[o++] = m | 126;
    buf[o++] = (uint8_t)(len >> 8);
    buf[o++] = (uint8_t)len;
  } else {
    buf[o++] = m | 127;
    for (int i = 7; i >= 0; i--) buf[o++] = (uint8_t)((uint64_t)len >> (8 * i));
  }
  if (mask) {
    memcpy(buf + o, key, 4);
    o += 4;
  }
  for (size_t i = 0; i < len; i++)
    buf[o + i] = ((const uint8_t *)payload)[i] ^ (mask ? key[i % 4] : 0);
  return o + len;
}

/* Close code of the first server frame if it is a close frame, else 0. */
static int server_close_code(const sink_t *s) {
  for (size_t i = 0; i + 1 < s->outlen;) {
    int op = s->out[i] & 0x0f;
    size_t len = s->out[i + 1] & 0x7f, hdr = 2;
    if (len == 126) { len = (size_t)s->out[i + 2] << 8 | s->out[i + 3]; hdr = 4; }
    if (op == WSLAY_CONNECTION_CLOSE)
      return len >= 2 ? (s->out[i + hdr] << 8 | s->out[i + hdr + 1]) : 1005;
    i += hdr + len;
  }
  return 0;
}

static void session(dcm__ws_t *ws, sink_t *s, uint64_t max) {
  memset(s, 0, sizeof *s);
  CHECK_EQ(dcm__ws_init(ws, 0, max, &cbs, s), 0);
}

static void text_message(void) {
  dcm__ws_t ws; sink_t s; uint8_t buf[256];
  session(&ws, &s, 1024);
  size_t n = frame(buf, 1, WSLAY_TEXT_FRAME, "{\"o\":9}", 7, 1);
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  CHECK_EQ(s.nmsgs, 1);
  CHECK(s.msglen[0] == 7 && memcmp(s.msgs[0], "{\"o\":9}", 7) == 0);
  CHECK_EQ(s.outlen, 0);
  CHECK(!dcm__ws_done(&ws));
  dcm__ws_free(&ws);
}

static void byte_by_byte_and_fragments(void) {
  dcm__ws_t ws; sink_t s; uint8_t buf[256];
  session(&ws, &s, 1024);
  size_t n = frame(buf, 0, WSLAY_TEXT_FRAME, "hel", 3, 1);
  n += frame(buf + n, 0, WSLAY_CONTINUATION_FRAME, "lo ", 3, 1);
  n += frame(buf + n, 1, WSLAY_CONTINUATION_FRAME, "world", 5, 1);
  n += frame(buf + n, 1, WSLAY_TEXT_FRAME, "second", 6, 1);
  for (size_t i = 0; i < n; i++) CHECK_EQ(dcm__ws_feed(&ws, buf + i, 1), 0);
  CHECK_EQ(s.nmsgs, 2);
  CHECK(s.msglen[0] == 11 && memcmp(s.msgs[0], "hello world", 11) == 0);
  CHECK(s.msglen[1] == 6 && memcmp(s.msgs[1], "second", 6) == 0);
  dcm__ws_free(&ws);
}

static void ping_gets_pong(void) {
  dcm__ws_t ws; sink_t s; uint8_t buf[64];
  session(&ws, &s, 1024);
  size_t n = frame(buf, 1, WSLAY_PING, "abc", 3, 1);
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  CHECK_EQ(s.outlen, 5);
  CHECK_EQ(s.out[0], 0x80 | WSLAY_PONG);
  CHECK_EQ(s.out[1], 3); /* server frames are not masked */
  CHECK(memcmp(s.out + 2, "abc", 3) == 0);
  dcm__ws_free(&ws);
}

static void peer_close_is_answered(void) {
  dcm__ws_t ws; sink_t s; uint8_t buf[64];
  const uint8_t payload[] = {0x03, 0xe8, 'o', 'k'};
  session(&ws, &s, 1024);
  size_t n = frame(buf, 1, WSLAY_CONNECTION_CLOSE, payload, sizeof payload, 1);
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  CHECK_EQ(server_close_code(&s), 1000);
  CHECK(dcm__ws_close_received(&ws));
  CHECK(dcm__ws_done(&ws));
  dcm__ws_free(&ws);
}

static void too_big_closes_1009(void) {
  dcm__ws_t ws; sink_t s;
  static uint8_t buf[4096], payload[2000];
  memset(payload, 'x', sizeof payload);
  session(&ws, &s, 1024);
  size_t n = frame(buf, 1, WSLAY_TEXT_FRAME, payload, sizeof payload, 1);
  dcm__ws_feed(&ws, buf, n);
  CHECK_EQ(s.nmsgs, 0);
  CHECK_EQ(server_close_code(&s), 1009);
  CHECK_EQ(dcm__ws_close_code(&ws), 1009);
  dcm__ws_free(&ws);
}

static void too_big_across_fragments(void) {
  dcm__ws_t ws; sink_t s;
  static uint8_t buf[4096], payload[700];
  memset(payload, 'y', sizeof payload);
  session(&ws, &s, 1024);
  size_t n = frame(buf, 0, WSLAY_TEXT_FRAME, payload, sizeof payload, 1);
  n += frame(buf + n, 1, WSLAY_CONTINUATION_FRAME, payload, sizeof payload, 1);
  dcm__ws_feed(&ws, buf, n);
  CHECK_EQ(s.nmsgs, 0);
  CHECK_EQ(server_close_code(&s), 1009);
  dcm__ws_free(&ws);
}

static void unmasked_client_frame_is_a_protocol_error(void) {
  dcm__ws_t ws; sink_t s; uint8_t buf[64];
  session(&ws, &s, 1024);
  size_t n = frame(buf, 1, WSLAY_TEXT_FRAME, "hi", 2, 0);
  dcm__ws_feed(&ws, buf, n);
  CHECK_EQ(s.nmsgs, 0);
  CHECK_EQ(server_close_code(&s), 1002);
  dcm__ws_free(&ws);
}

static void binary_is_refused(void) {
  dcm__ws_t ws; sink_t s; uint8_t buf[64];
  session(&ws, &s, 1024);
  size_t n = frame(buf, 1, WSLAY_BINARY_FRAME, "\x01\x02", 2, 1);
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  CHECK_EQ(s.nmsgs, 0);
  CHECK_EQ(server_close_code(&s), 1003);
  dcm__ws_free(&ws);
}

static void garbage_never_crashes(void) {
  uint8_t junk[512];
  uint32_t x = 12345;
  for (int round = 0; round < 200; round++) {
    dcm__ws_t ws; sink_t s;
    session(&ws, &s, 1024);
    for (size_t i = 0; i < sizeof junk; i++) {
      x = x * 1103515245u + 12345u;
      junk[i] = (uint8_t)(x >> 16);
    }
    dcm__ws_feed(&ws, junk, sizeof junk);
    dcm__ws_feed(&ws, junk, 17);
    dcm__ws_free(&ws);
  }
}

static void server_send_and_close_handshake(void) {
  dcm__ws_t ws; sink_t s; uint8_t buf[64];
  const uint8_t reply[] = {0x0f, 0xa1};
  session(&ws, &s, 1024);
  CHECK_EQ(dcm__ws_send(&ws, "{\"o\":5}", 7), 0);
  CHECK_EQ(s.out[0], 0x80 | WSLAY_TEXT_FRAME);
  CHECK_EQ(s.out[1], 7);
  CHECK(memcmp(s.out + 2, "{\"o\":5}", 7) == 0);
  s.outlen = 0;
  CHECK_EQ(dcm__ws_close(&ws, 4001, "heartbeat timeout"), 0);
  CHECK_EQ(server_close_code(&s), 4001);
  CHECK(dcm__ws_close_sent(&ws));
  CHECK(!dcm__ws_done(&ws));
  CHECK(dcm__ws_send(&ws, "late", 4) != 0); /* nothing after our close */
  size_t n = frame(buf, 1, WSLAY_CONNECTION_CLOSE, reply, sizeof reply, 1);
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  CHECK(dcm__ws_done(&ws));
  dcm__ws_free(&ws);
}

static void close_from_inside_a_message(void) {
  dcm__ws_t ws; sink_t s; uint8_t buf[64];
  session(&ws, &s, 1024);
  s.echo_close = 1;
  size_t n = frame(buf, 1, WSLAY_TEXT_FRAME, "x", 1, 1);
  n += frame(buf + n, 1, WSLAY_TEXT_FRAME, "y", 1, 1);
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  CHECK_EQ(server_close_code(&s), 4002);
  dcm__ws_free(&ws);
}

static int pair_write(dcm__ws_t *ws, const uint8_t *data, size_t len) {
  return dcm__ws_feed(ws->data, data, len) == 0 ? 0 : -1;
}

static void client_to_server(void) {
  /* The client side masks; the server side accepts it. */
  dcm__ws_t client, server; sink_t s;
  static const dcm__ws_cbs_t ccbs = {on_message, pair_write};
  session(&server, &s, 1024);
  CHECK_EQ(dcm__ws_init(&client, 1, 1024, &ccbs, &server), 0);
  CHECK_EQ(dcm__ws_send(&client, "{\"o\":0}", 7), 0);
  CHECK_EQ(s.nmsgs, 1);
  CHECK(memcmp(s.msgs[0], "{\"o\":0}", 7) == 0);
  dcm__ws_free(&client);
  dcm__ws_free(&server);
}

int main(void) {
  RUN(text_message);
  RUN(byte_by_byte_and_fragments);
  RUN(ping_gets_pong);
  RUN(peer_close_is_answered);
  RUN(too_big_closes_1009);
  RUN(too_big_across_fragments);
  RUN(unmasked_client_frame_is_a_protocol_error);
  RUN(binary_is_refused);
  RUN(garbage_never_crashes);
  RUN(server_send_and_close_handshake);
  RUN(close_from_inside_a_message);
  RUN(client_to_server);
  return 0;
}
