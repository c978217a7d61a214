/* WebSocket sessions fed scripted bytes in memory: no sockets. */
#include <malloc.h>
#include <stdint.h>
#include <wslay/wslay.h>

#include "check.h"
#include "discluster/master.h"
#include "ws.h"

typedef struct {
  uint8_t out[1 << 16];
  size_t outlen;
  char msgs[8][4096]; /* the first 4096 bytes of each */
  size_t msglen[8];
  int nmsgs;
  int echo_close; /* close from inside on_message */
  int busy;       /* the transport has bytes queued: pongs wait */
} sink_t;

static void on_message(dcm__ws_t *ws, const char *msg, size_t len) {
  sink_t *s = ws->data;
  CHECK(s->nmsgs < 8);
  memcpy(s->msgs[s->nmsgs], msg, len < 4096 ? len : 4096);
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

static int sink_idle(dcm__ws_t *ws) {
  return !((sink_t *)ws->data)->busy;
}

static const dcm__ws_cbs_t cbs = {on_message, on_write, sink_idle};

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
    if (s->out[i + 1] & 0x80) hdr += 4; /* a client's mask key */
    if (op == WSLAY_CONNECTION_CLOSE) {
      const uint8_t *k = s->out + i + hdr - 4, *d = s->out + i + hdr;
      if (len < 2) return 1005;
      if (!(s->out[i + 1] & 0x80)) return d[0] << 8 | d[1];
      return (d[0] ^ k[0]) << 8 | (d[1] ^ k[1]);
    }
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
  CHECK_EQ(dcm__ws_close_code_received(&ws), 1000);
  CHECK(strcmp(dcm__ws_close_reason_received(&ws), "ok") == 0);
  CHECK(dcm__ws_done(&ws));
  dcm__ws_free(&ws);
}

/* The reason of a close (a 4020's names the new leader) is kept whole,
   up to its 123 bytes; none before a close, "" for a close without one. */
static void peer_close_reason_is_kept(void) {
  dcm__ws_t ws; sink_t s; uint8_t buf[200], payload[125];
  session(&ws, &s, 1024);
  CHECK(strcmp(dcm__ws_close_reason_received(&ws), "") == 0);
  payload[0] = 4020 >> 8;
  payload[1] = 4020 & 0xff;
  memset(payload + 2, 'u', 123);
  size_t n = frame(buf, 1, WSLAY_CONNECTION_CLOSE, payload, sizeof payload, 1);
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  CHECK_EQ(dcm__ws_close_code_received(&ws), 4020);
  const char *r = dcm__ws_close_reason_received(&ws);
  CHECK_EQ(strlen(r), 123u);
  CHECK(r[0] == 'u' && r[122] == 'u');
  dcm__ws_free(&ws);
  session(&ws, &s, 1024);
  n = frame(buf, 1, WSLAY_CONNECTION_CLOSE, payload, 2, 1);
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  CHECK_EQ(dcm__ws_close_code_received(&ws), 4020);
  CHECK(strcmp(dcm__ws_close_reason_received(&ws), "") == 0);
  dcm__ws_free(&ws);
}

/* Found by fuzz_ws: wslay checks a close reason's UTF-8 per read and skips
   the first two bytes of each read, so a valid close split inside a
   multibyte character is answered 1007 instead of being echoed. Either way
   the session ends with a close frame; ws.c relies on nothing more. */
static void split_close_still_ends_the_session(void) {
  static const uint8_t payload[] = {0x03, 0xe8, 0xe2, 0x82, 0xac, 'A'}; /* 1000 "€A" */
  for (int split = 0; split < 2; split++) {
    dcm__ws_t ws; sink_t s; uint8_t buf[64];
    session(&ws, &s, 1024);
    size_t n = frame(buf, 1, WSLAY_CONNECTION_CLOSE, payload, sizeof payload, 1);
    if (split) { /* the read ends after the first byte of the euro sign */
      CHECK_EQ(dcm__ws_feed(&ws, buf, n - 3), 0);
      CHECK_EQ(dcm__ws_feed(&ws, buf + n - 3, 3), 0);
    } else {
      CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
    }
    CHECK(dcm__ws_done(&ws));
    int code = server_close_code(&s); /* split: 1007 with wslay 1.1.1 */
    CHECK(code == 1000 || (split && code == 1007));
    dcm__ws_free(&ws);
  }
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

/* Heap bytes in use; 0 under ASan, whose allocator glibc does not see. */
static size_t heap_used(void) {
#ifdef __SANITIZE_ADDRESS__
  return 0;
#else
  struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
#endif
}

static void one_byte_fragments_cost_the_message_only(void) {
  /* wslay kept an allocation and a queue cell per frame: ~90 bytes each */
  enum { N = 200000 };
  static uint8_t buf[8 * N];
  dcm__ws_t ws; sink_t s;
  session(&ws, &s, 1 << 20);
  size_t n = frame(buf, 0, WSLAY_TEXT_FRAME, "a", 1, 1);
  for (int i = 1; i < N; i++) n += frame(buf + n, 0, WSLAY_CONTINUATION_FRAME, "a", 1, 1);
  size_t before = heap_used();
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  size_t grown = heap_used() - before;
  if (before) CHECK(grown <= 2 * N + 4096); /* the buffer doubles, nothing per frame */
  CHECK(ws.msgcap <= 2 * N);
  n = frame(buf, 1, WSLAY_CONTINUATION_FRAME, "b", 1, 1);
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  CHECK_EQ(s.nmsgs, 1);
  CHECK_EQ(s.msglen[0], (size_t)N + 1);
  CHECK(s.msgs[0][0] == 'a' && s.msgs[0][4095] == 'a');
  CHECK_EQ(ws.msgcap, 0); /* an idle session keeps no large buffer */
  dcm__ws_free(&ws);
}

static void fragments_up_to_the_bound_pass(void) {
  dcm__ws_t ws; sink_t s;
  static uint8_t buf[4096], payload[512];
  memset(payload, 'z', sizeof payload);
  session(&ws, &s, 1024);
  size_t n = frame(buf, 0, WSLAY_TEXT_FRAME, payload, sizeof payload, 1);
  n += frame(buf + n, 1, WSLAY_PING, "p", 1, 1); /* control frames may interleave */
  n += frame(buf + n, 1, WSLAY_CONTINUATION_FRAME, payload, sizeof payload, 1);
  n += frame(buf + n, 1, WSLAY_TEXT_FRAME, "", 0, 1);
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  CHECK_EQ(s.nmsgs, 2);
  CHECK_EQ(s.msglen[0], 1024);
  CHECK_EQ(s.msglen[1], 0);
  CHECK_EQ(s.out[0], 0x80 | WSLAY_PONG);
  CHECK_EQ(server_close_code(&s), 0);
  dcm__ws_free(&ws);
}

static void fragmented_binary_is_refused_at_once(void) {
  dcm__ws_t ws; sink_t s; uint8_t buf[64];
  session(&ws, &s, 1024);
  size_t n = frame(buf, 0, WSLAY_BINARY_FRAME, "\x01", 1, 1);
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  CHECK_EQ(server_close_code(&s), 1003);
  dcm__ws_free(&ws);
}

static void framing_errors_close_1002(void) {
  static uint8_t big[126];
  static const uint8_t nonminimal[] = {0x81, 0x80 | 126, 0, 5, 0, 0, 0, 0, 'h', 'e', 'l', 'l', 'o'};
  static const uint8_t msb64[] = {0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  static const uint8_t rsv[] = {0x80 | 0x40 | 1, 0x80 | 1, 0, 0, 0, 0, 'x'};
  uint8_t buf[256];
  memset(big, 'p', sizeof big);
  for (int c = 0; c < 8; c++) {
    dcm__ws_t ws; sink_t s;
    size_t n = 0;
    session(&ws, &s, 1024);
    switch (c) {
      case 0: n = frame(buf, 1, WSLAY_PING, big, sizeof big, 1); break; /* > 125 bytes */
      case 1: n = frame(buf, 0, WSLAY_PING, "x", 1, 1); break;          /* fragmented */
      case 2: memcpy(buf, nonminimal, n = sizeof nonminimal); break;
      case 3: memcpy(buf, msb64, n = sizeof msb64); break;
      case 4: memcpy(buf, rsv, n = sizeof rsv); break;
      case 5: n = frame(buf, 1, 3, "x", 1, 1); break;                   /* reserved opcodes */
      case 6: n = frame(buf, 1, 0xb, "x", 1, 1); break;
      case 7: n = frame(buf, 1, WSLAY_CONTINUATION_FRAME, "x", 1, 1); break;
    }
    dcm__ws_feed(&ws, buf, n);
    CHECK_EQ(server_close_code(&s), 1002);
    CHECK_EQ(dcm__ws_close_code(&ws), 1002);
    CHECK(dcm__ws_done(&ws));
    size_t out = s.outlen;
    dcm__ws_feed(&ws, buf, n); /* nothing more is read or written */
    CHECK(dcm__ws_send(&ws, "x", 1) != 0);
    CHECK_EQ(s.outlen, out);
    dcm__ws_free(&ws);
  }
}

static void client_framing_error_close_is_masked(void) {
  static uint8_t big[126];
  uint8_t buf[256];
  dcm__ws_t ws; sink_t s;
  memset(big, 'p', sizeof big);
  memset(&s, 0, sizeof s);
  CHECK_EQ(dcm__ws_init(&ws, 1, 1024, &cbs, &s), 0);
  size_t n = frame(buf, 1, WSLAY_PING, big, sizeof big, 0); /* servers do not mask */
  CHECK(dcm__ws_feed(&ws, buf, n) < 0);
  CHECK(s.out[1] & 0x80);
  CHECK_EQ(server_close_code(&s), 1002);
  dcm__ws_free(&ws);
}

static void only_the_latest_pong_waits(void) {
  dcm__ws_t ws; sink_t s; uint8_t buf[256];
  session(&ws, &s, 1024);
  s.busy = 1;
  size_t n = frame(buf, 1, WSLAY_PING, "one", 3, 1);
  n += frame(buf + n, 1, WSLAY_PING, "two", 3, 1);
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  n = frame(buf, 1, WSLAY_PING, "three", 5, 1);
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  CHECK_EQ(s.outlen, 0); /* held while the transport is busy */
  CHECK_EQ(dcm__ws_drained(&ws), 0); /* still busy */
  CHECK_EQ(s.outlen, 0);
  s.busy = 0;
  CHECK_EQ(dcm__ws_drained(&ws), 0);
  CHECK_EQ(s.outlen, 7);
  CHECK(s.out[0] == (0x80 | WSLAY_PONG) && s.out[1] == 5 && memcmp(s.out + 2, "three", 5) == 0);
  CHECK_EQ(dcm__ws_drained(&ws), 0); /* one pong per ping answered */
  CHECK_EQ(s.outlen, 7);
  n = frame(buf, 1, WSLAY_PING, "now", 3, 1); /* idle: answered at once */
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  CHECK_EQ(s.outlen, 12);
  /* a held pong never follows our close */
  s.busy = 1;
  s.outlen = 0;
  n = frame(buf, 1, WSLAY_PING, "late", 4, 1);
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  CHECK_EQ(dcm__ws_close(&ws, 1000, NULL), 0);
  s.busy = 0;
  CHECK_EQ(dcm__ws_drained(&ws), 0);
  CHECK_EQ(s.out[0], 0x80 | WSLAY_CONNECTION_CLOSE);
  CHECK_EQ(s.outlen, 4);
  dcm__ws_free(&ws);
}

static int pair_write(dcm__ws_t *ws, const uint8_t *data, size_t len) {
  return dcm__ws_feed(ws->data, data, len) == 0 ? 0 : -1;
}

static void client_to_server(void) {
  /* The client side masks; the server side accepts it. */
  dcm__ws_t client, server; sink_t s;
  static const dcm__ws_cbs_t ccbs = {on_message, pair_write, NULL};
  session(&server, &s, 1024);
  CHECK_EQ(dcm__ws_init(&client, 1, 1024, &ccbs, &server), 0);
  CHECK_EQ(dcm__ws_send(&client, "{\"o\":0}", 7), 0);
  CHECK_EQ(s.nmsgs, 1);
  CHECK(memcmp(s.msgs[0], "{\"o\":0}", 7) == 0);
  dcm__ws_free(&client);
  dcm__ws_free(&server);
}

/* ---- contexts borrowed from a pool ---------------------------------------- */

static void pooled(dcm__ws_t *ws, dcm__ws_pool_t *pool, sink_t *s) {
  CHECK_EQ(dcm__ws_init_pooled(ws, pool, 1024, &cbs, s), 0);
}

static void idle_sessions_hold_no_context(void) {
  enum { N = 100 };
  static dcm__ws_t ws[N];
  static sink_t s;
  static char text[200];
  uint8_t buf[256];
  dcm__ws_pool_t *pool = dcm__ws_pool_new(0);
  CHECK(pool != NULL);
  memset(&s, 0, sizeof s);
  memset(text, 't', sizeof text);
  /* short ASCII messages (heartbeats) never borrow a context */
  size_t n = frame(buf, 1, WSLAY_TEXT_FRAME, "{\"o\":9}", 7, 1);
  for (int i = 0; i < N; i++) {
    pooled(&ws[i], pool, &s);
    s.nmsgs = 0;
    CHECK_EQ(dcm__ws_feed(&ws[i], buf, n), 0);
    CHECK_EQ(s.nmsgs, 1);
    CHECK(s.msglen[0] == 7 && memcmp(s.msgs[0], "{\"o\":9}", 7) == 0);
    s.outlen = 0;
    CHECK_EQ(dcm__ws_send(&ws[i], "{\"o\":3}", 7), 0);
    CHECK(s.outlen == 9 && s.out[0] == (0x80 | WSLAY_TEXT_FRAME) && s.out[1] == 7);
    CHECK(ws[i].slot == NULL && ws[i].msg == NULL);
  }
  CHECK_EQ(dcm__ws_pool_contexts(pool), 0);
  /* longer ones go through wslay: one context, lent in turn */
  n = frame(buf, 1, WSLAY_TEXT_FRAME, text, sizeof text, 1);
  for (int i = 0; i < N; i++) {
    s.nmsgs = 0;
    CHECK_EQ(dcm__ws_feed(&ws[i], buf, n), 0);
    CHECK(s.nmsgs == 1 && s.msglen[0] == sizeof text);
    CHECK(ws[i].slot == NULL && ws[i].msg == NULL);
  }
  CHECK_EQ(dcm__ws_pool_contexts(pool), 1);
  for (int i = 0; i < N; i++) dcm__ws_free(&ws[i]);
  dcm__ws_pool_free(pool);
}

/* What the short-message path delivers (without wslay) is what wslay
   delivers: in order with other frames, and every frame it does not take
   (non-ASCII, over the bound, partial, invalid) gets wslay's answer. */
static void short_messages_match_wslay(void) {
  static sink_t s;
  static uint8_t buf[1024];
  dcm__ws_t ws;
  dcm__ws_pool_t *pool = dcm__ws_pool_new(0);
  size_t n;
  /* several in one read, a ping among them, an empty one */
  memset(&s, 0, sizeof s);
  pooled(&ws, pool, &s);
  n = frame(buf, 1, WSLAY_TEXT_FRAME, "one", 3, 1);
  n += frame(buf + n, 1, WSLAY_TEXT_FRAME, "two", 3, 1);
  n += frame(buf + n, 1, WSLAY_PING, "abc", 3, 1);
  n += frame(buf + n, 1, WSLAY_TEXT_FRAME, "", 0, 1);
  n += frame(buf + n, 1, WSLAY_TEXT_FRAME, "\x01\x7f", 2, 1); /* control bytes are ASCII */
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  CHECK_EQ(s.nmsgs, 4);
  CHECK(s.msglen[0] == 3 && memcmp(s.msgs[0], "one", 3) == 0);
  CHECK(s.msglen[1] == 3 && memcmp(s.msgs[1], "two", 3) == 0);
  CHECK_EQ(s.msglen[2], 0);
  CHECK(s.msglen[3] == 2 && memcmp(s.msgs[3], "\x01\x7f", 2) == 0);
  CHECK(s.outlen == 5 && s.out[0] == (0x80 | WSLAY_PONG) && memcmp(s.out + 2, "abc", 3) == 0);
  CHECK(ws.slot == NULL);
  /* a frame cut anywhere: delivered once, when whole */
  n = frame(buf, 1, WSLAY_TEXT_FRAME, "{\"o\":9}", 7, 1);
  for (size_t cut = 1; cut < n; cut++) {
    s.nmsgs = 0;
    CHECK_EQ(dcm__ws_feed(&ws, buf, cut), 0);
    CHECK_EQ(s.nmsgs, 0);
    CHECK_EQ(dcm__ws_feed(&ws, buf + cut, n - cut), 0);
    CHECK(s.nmsgs == 1 && s.msglen[0] == 7 && memcmp(s.msgs[0], "{\"o\":9}", 7) == 0);
  }
  /* valid UTF-8 beyond ASCII: wslay delivers it */
  s.nmsgs = 0;
  n = frame(buf, 1, WSLAY_TEXT_FRAME, "caf\xc3\xa9", 5, 1);
  n += frame(buf + n, 1, WSLAY_TEXT_FRAME, "ok", 2, 1);
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  CHECK(s.nmsgs == 2 && s.msglen[0] == 5 && memcmp(s.msgs[0], "caf\xc3\xa9", 5) == 0);
  CHECK(s.msglen[1] == 2 && memcmp(s.msgs[1], "ok", 2) == 0);
  dcm__ws_free(&ws);
  /* invalid or unfinished UTF-8 after a good message: 1007, nothing more */
  static const char *const bad[] = {"\xff", "ab\xc3", "\xed\xa0\x80"};
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
    memset(&s, 0, sizeof s);
    pooled(&ws, pool, &s);
    n = frame(buf, 1, WSLAY_TEXT_FRAME, "fine", 4, 1);
    n += frame(buf + n, 1, WSLAY_TEXT_FRAME, bad[k], strlen(bad[k]), 1);
    n += frame(buf + n, 1, WSLAY_TEXT_FRAME, "late", 4, 1);
    dcm__ws_feed(&ws, buf, n);
    CHECK(s.nmsgs == 1 && memcmp(s.msgs[0], "fine", 4) == 0);
    CHECK_EQ(server_close_code(&s), 1007);
    dcm__ws_free(&ws);
  }
  /* over a small bound: 1009 as before */
  memset(&s, 0, sizeof s);
  CHECK_EQ(dcm__ws_init_pooled(&ws, pool, 4, &cbs, &s), 0);
  n = frame(buf, 1, WSLAY_TEXT_FRAME, "four", 4, 1);
  n += frame(buf + n, 1, WSLAY_TEXT_FRAME, "fives", 5, 1);
  dcm__ws_feed(&ws, buf, n);
  CHECK(s.nmsgs == 1 && s.msglen[0] == 4);
  CHECK_EQ(server_close_code(&s), 1009);
  dcm__ws_free(&ws);
  /* after a close from inside a message, the rest goes to wslay as before */
  memset(&s, 0, sizeof s);
  pooled(&ws, pool, &s);
  s.echo_close = 1;
  n = frame(buf, 1, WSLAY_TEXT_FRAME, "x", 1, 1);
  n += frame(buf + n, 1, WSLAY_PING, "p", 1, 1);
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  CHECK_EQ(s.nmsgs, 1);
  CHECK_EQ(server_close_code(&s), 4002);
  CHECK(s.out[0] == (0x80 | WSLAY_CONNECTION_CLOSE) && ws.slot != NULL);
  dcm__ws_free(&ws);
  dcm__ws_pool_free(pool);
}

/* Counts messages "m0000", "m0001", ... and checks their order. */
typedef struct {
  int n, wrong;
  dcm__ws_t *other; /* fed other_buf from inside the first message */
  const uint8_t *other_buf;
  size_t other_len;
} numbered_t;

static void numbered_message(dcm__ws_t *ws, const char *msg, size_t len) {
  numbered_t *c = ws->data;
  char want[16];
  snprintf(want, sizeof want, "m%04d", c->n++);
  if (len != 5 || memcmp(msg, want, 5) != 0) c->wrong++;
  if (c->other) {
    dcm__ws_t *o = c->other;
    c->other = NULL;
    CHECK_EQ(dcm__ws_feed(o, c->other_buf, c->other_len), 0);
  }
}

static int discard(dcm__ws_t *ws, const uint8_t *data, size_t len) {
  (void)ws;
  (void)data;
  (void)len;
  return 0;
}

static size_t numbered(uint8_t *buf, int from, int count) {
  size_t n = 0;
  char text[16];
  for (int i = from; i < from + count; i++) {
    snprintf(text, sizeof text, "m%04d", i);
    n += frame(buf + n, 1, WSLAY_TEXT_FRAME, text, 5, 1);
  }
  return n;
}

/* The pool's frame reader holds nothing from one read to the next: what
   a read leaves in it (frames after one it did not take, a frame cut
   short) is never delivered again, nor to another session. */
static void the_frame_reader_starts_clean_every_read(void) {
  static const dcm__ws_cbs_t ncbs = {numbered_message, discard, NULL};
  static uint8_t buf[8192], other[64];
  static sink_t s;
  numbered_t c = {0}, d = {0};
  dcm__ws_t a, b, ws;
  size_t n;
  dcm__ws_pool_t *pool = dcm__ws_pool_new(0);
  CHECK_EQ(dcm__ws_init_pooled(&a, pool, 1024, &ncbs, &c), 0);
  CHECK_EQ(dcm__ws_init_pooled(&b, pool, 1024, &ncbs, &d), 0);
  /* a ping, then short messages: all of them after the ping go to wslay */
  n = frame(buf, 1, WSLAY_PING, "p", 1, 1);
  n += numbered(buf + n, 0, 2);
  CHECK_EQ(dcm__ws_feed(&a, buf, n), 0);
  n = numbered(buf, 2, 1);
  CHECK_EQ(dcm__ws_feed(&a, buf, n), 0);
  CHECK(c.n == 3 && c.wrong == 0 && a.slot == NULL);
  /* a message, then part of the next: the rest comes in the next read */
  n = numbered(buf, 3, 2);
  CHECK_EQ(dcm__ws_feed(&a, buf, n - 4), 0);
  CHECK(c.n == 4 && a.slot != NULL);
  CHECK_EQ(dcm__ws_feed(&b, buf, numbered(buf, 0, 1)), 0); /* b meanwhile */
  CHECK(d.n == 1 && d.wrong == 0 && b.slot == NULL);
  n = numbered(buf, 3, 2);
  CHECK_EQ(dcm__ws_feed(&a, buf + n - 4, 4), 0);
  CHECK(c.n == 5 && c.wrong == 0 && a.slot == NULL);
  /* more than wslay's 4096-byte read buffer at once: a frame across its
     end goes to wslay with the rest */
  n = numbered(buf, 5, 700);
  CHECK(n > 4096 && n <= sizeof buf);
  CHECK_EQ(dcm__ws_feed(&a, buf, n), 0);
  CHECK(c.n == 705 && c.wrong == 0 && a.slot == NULL);
  n = numbered(buf, 705, 1);
  CHECK_EQ(dcm__ws_feed(&a, buf, n), 0);
  CHECK(c.n == 706 && c.wrong == 0);
  /* a feed from inside a message (another session of the pool) leaves the
     read under way alone */
  c.other = &b;
  c.other_buf = other;
  c.other_len = numbered(other, 1, 2);
  n = numbered(buf, 706, 3);
  CHECK_EQ(dcm__ws_feed(&a, buf, n), 0);
  CHECK(c.n == 709 && c.wrong == 0 && d.n == 3 && d.wrong == 0);
  CHECK(a.slot == NULL && b.slot == NULL);
  dcm__ws_free(&a);
  dcm__ws_free(&b);
  /* RSV bits (no extension was agreed): 1002, as wslay answers */
  memset(&s, 0, sizeof s);
  pooled(&ws, pool, &s);
  n = frame(buf, 1, WSLAY_TEXT_FRAME, "ok", 2, 1);
  n += frame(buf + n, 1, WSLAY_TEXT_FRAME, "rsv", 3, 1);
  n += frame(buf + n, 1, WSLAY_TEXT_FRAME, "late", 4, 1);
  buf[n - 19] |= 0x40; /* RSV1 of "rsv" */
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  CHECK(s.nmsgs == 1 && memcmp(s.msgs[0], "ok", 2) == 0);
  CHECK_EQ(server_close_code(&s), 1002);
  CHECK(dcm__ws_close_sent(&ws) && ws.slot != NULL);
  dcm__ws_free(&ws);
  dcm__ws_pool_free(pool);
}

static void a_session_inside_a_frame_keeps_its_context(void) {
  static sink_t sa, sb;
  dcm__ws_t a, b;
  uint8_t buf[256], one[256];
  dcm__ws_pool_t *pool = dcm__ws_pool_new(0);
  pooled(&a, pool, &sa);
  pooled(&b, pool, &sb);
  memset(&sa, 0, sizeof sa);
  memset(&sb, 0, sizeof sb);
  /* a: one whole frame, then the first bytes of the next (header cut short) */
  size_t n = frame(buf, 1, WSLAY_TEXT_FRAME, "first", 5, 1);
  size_t m = frame(buf + n, 1, WSLAY_TEXT_FRAME, "second", 6, 1);
  char big[200]; /* over the short-message bound: b goes through wslay */
  memset(big, 'b', sizeof big);
  size_t one_n = frame(one, 1, WSLAY_TEXT_FRAME, big, sizeof big, 1);
  size_t cuts[] = {1, 2, 4, 6, 9}; /* in the header, the mask, the payload */
  for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
    sa.nmsgs = sb.nmsgs = 0;
    CHECK_EQ(dcm__ws_feed(&a, buf, n + cuts[k]), 0);
    CHECK_EQ(sa.nmsgs, 1);
    CHECK(a.slot != NULL); /* wslay holds part of the next frame */
    CHECK_EQ(dcm__ws_feed(&b, one, one_n), 0); /* b borrows another meanwhile */
    CHECK_EQ(sb.nmsgs, 1);
    CHECK(b.slot == NULL);
    CHECK_EQ(dcm__ws_pool_contexts(pool), 2);
    CHECK_EQ(dcm__ws_feed(&a, buf + n + cuts[k], m - cuts[k]), 0);
    CHECK_EQ(sa.nmsgs, 2);
    CHECK(sa.msglen[1] == 6 && memcmp(sa.msgs[1], "second", 6) == 0);
    CHECK(a.slot == NULL);
  }
  /* a fragmented message keeps it between its frames too */
  sa.nmsgs = 0;
  n = frame(buf, 0, WSLAY_TEXT_FRAME, "hel", 3, 1);
  CHECK_EQ(dcm__ws_feed(&a, buf, n), 0);
  CHECK(a.slot != NULL);
  CHECK_EQ(dcm__ws_feed(&b, one, one_n), 0);
  n = frame(buf, 1, WSLAY_CONTINUATION_FRAME, "lo", 2, 1);
  CHECK_EQ(dcm__ws_feed(&a, buf, n), 0);
  CHECK(sa.nmsgs == 1 && sa.msglen[0] == 5 && memcmp(sa.msgs[0], "hello", 5) == 0);
  CHECK(a.slot == NULL);
  /* a continuation without a start is still refused after a handover */
  n = frame(buf, 1, WSLAY_CONTINUATION_FRAME, "x", 1, 1);
  dcm__ws_feed(&b, buf, n);
  CHECK_EQ(server_close_code(&sb), 1002);
  dcm__ws_free(&a);
  dcm__ws_free(&b);
  dcm__ws_pool_free(pool);
}

static void a_held_pong_or_a_close_keeps_the_context(void) {
  static sink_t s;
  dcm__ws_t ws;
  uint8_t buf[64];
  dcm__ws_pool_t *pool = dcm__ws_pool_new(0);
  memset(&s, 0, sizeof s);
  pooled(&ws, pool, &s);
  s.busy = 1;
  size_t n = frame(buf, 1, WSLAY_PING, "p", 1, 1);
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
  CHECK(ws.slot != NULL && s.outlen == 0);
  s.busy = 0;
  CHECK_EQ(dcm__ws_drained(&ws), 0);
  CHECK(s.outlen == 3 && s.out[0] == (0x80 | WSLAY_PONG));
  CHECK(ws.slot == NULL);
  CHECK_EQ(dcm__ws_close(&ws, 4001, "bye"), 0);
  CHECK(ws.slot != NULL && dcm__ws_close_sent(&ws));
  CHECK_EQ(dcm__ws_close_code(&ws), 4001);
  dcm__ws_free(&ws);
  CHECK_EQ(dcm__ws_pool_contexts(pool), 0);
  dcm__ws_pool_free(pool);
}

static void spare_contexts_are_bounded(void) {
  enum { N = 3 * DCM_WS_POOL_SPARE };
  static dcm__ws_t ws[N];
  static sink_t s;
  uint8_t buf[64];
  dcm__ws_pool_t *pool = dcm__ws_pool_new(0);
  memset(&s, 0, sizeof s);
  size_t n = frame(buf, 1, WSLAY_TEXT_FRAME, "x", 1, 1);
  for (int i = 0; i < N; i++) {
    pooled(&ws[i], pool, &s);
    CHECK_EQ(dcm__ws_feed(&ws[i], buf, 3), 0); /* inside the header */
  }
  CHECK_EQ(dcm__ws_pool_contexts(pool), N);
  for (int i = 0; i < N; i++) {
    s.nmsgs = 0;
    CHECK_EQ(dcm__ws_feed(&ws[i], buf + 3, n - 3), 0);
    CHECK_EQ(s.nmsgs, 1);
  }
  CHECK_EQ(dcm__ws_pool_contexts(pool), DCM_WS_POOL_SPARE);
  for (int i = 0; i < N; i++) dcm__ws_free(&ws[i]);
  dcm__ws_pool_free(pool);
}

static void heartbeats_allocate_nothing(void) {
  static sink_t s;
  dcm__ws_t ws;
  uint8_t buf[64];
  dcm__ws_pool_t *pool = dcm__ws_pool_new(0);
  memset(&s, 0, sizeof s);
  pooled(&ws, pool, &s);
  size_t n = frame(buf, 1, WSLAY_TEXT_FRAME, "{\"o\":9,\"d\":{\"loadavg\":0.5}}", 27, 1);
  CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0); /* the pool's context and buffer exist now */
  size_t before = heap_used();
  for (int i = 0; i < 1000; i++) {
    s.nmsgs = 0;
    s.outlen = 0;
    CHECK_EQ(dcm__ws_feed(&ws, buf, n), 0);
    CHECK_EQ(dcm__ws_send(&ws, "{\"o\":1,\"d\":{\"o\":9}}", 19), 0);
    CHECK_EQ(dcm__ws_send_frame(&ws, s.out, 21), 0); /* the ack framed once */
    CHECK(s.nmsgs == 1 && s.outlen == 42);
  }
  CHECK_EQ(heap_used(), before);
  dcm__ws_free(&ws);
  dcm__ws_pool_free(pool);
}

/* A frame made once by dcm__ws_encode goes out as dcm__ws_send would
   write the text, under the same rules (nothing after our close). */
static void a_frame_encoded_once_is_sent_as_text_is(void) {
  static sink_t s, t;
  static char big[DCM_WS_JOIN];
  dcm__ws_t ws, wt;
  uint8_t f[64], small[8];
  const char *ack = "{\"o\":1,\"d\":{\"o\":9}}";
  dcm__ws_pool_t *pool = dcm__ws_pool_new(0), *client = dcm__ws_pool_new(1);
  size_t n = dcm__ws_encode(pool, ack, strlen(ack), f, sizeof f);
  CHECK_EQ(n, 2 + strlen(ack));
  session(&wt, &t, 1024);
  CHECK_EQ(dcm__ws_send(&wt, ack, strlen(ack)), 0);
  CHECK(t.outlen == n && memcmp(t.out, f, n) == 0);
  pooled(&ws, pool, &s);
  memset(&s, 0, sizeof s);
  for (int i = 0; i < 3; i++) CHECK_EQ(dcm__ws_send_frame(&ws, f, n), 0);
  CHECK(s.outlen == 3 * n && memcmp(s.out + 2 * n, f, n) == 0);
  /* no room, a client's (masked) frame, over the join buffer: 0, nothing written */
  CHECK_EQ(dcm__ws_encode(pool, ack, strlen(ack), small, sizeof small), 0);
  CHECK_EQ(dcm__ws_encode(client, ack, strlen(ack), f, sizeof f), 0);
  memset(big, 'x', sizeof big);
  static uint8_t bigf[2 * DCM_WS_JOIN];
  CHECK_EQ(dcm__ws_encode(pool, big, sizeof big, bigf, sizeof bigf), 0);
  /* the pool's writer is whole after those: a send still frames right */
  s.outlen = 0;
  CHECK_EQ(dcm__ws_send(&ws, "{\"o\":5}", 7), 0);
  CHECK(s.outlen == 9 && s.out[1] == 7 && memcmp(s.out + 2, "{\"o\":5}", 7) == 0);
  s.outlen = 0;
  CHECK_EQ(dcm__ws_close(&ws, 4001, "bye"), 0);
  s.outlen = 0;
  CHECK_EQ(dcm__ws_send_frame(&ws, f, n), DCM_ESTATE);
  CHECK_EQ(s.outlen, 0);
  dcm__ws_free(&ws);
  dcm__ws_free(&wt);
  dcm__ws_pool_free(pool);
  dcm__ws_pool_free(client);
}

static void a_large_frame_is_written_whole(void) {
  static sink_t s;
  static char text[3 * DCM_WS_JOIN];
  dcm__ws_t ws;
  memset(text, 'q', sizeof text);
  session(&ws, &s, 1024);
  CHECK_EQ(dcm__ws_send(&ws, text, sizeof text), 0);
  CHECK_EQ(s.outlen, 4 + sizeof text);
  CHECK(s.out[1] == 126 && (s.out[2] << 8 | s.out[3]) == (int)sizeof text);
  CHECK(s.out[4] == 'q' && s.out[s.outlen - 1] == 'q');
  dcm__ws_free(&ws);
}

int main(void) {
  RUN(text_message);
  RUN(byte_by_byte_and_fragments);
  RUN(ping_gets_pong);
  RUN(peer_close_is_answered);
  RUN(peer_close_reason_is_kept);
  RUN(split_close_still_ends_the_session);
  RUN(too_big_closes_1009);
  RUN(too_big_across_fragments);
  RUN(unmasked_client_frame_is_a_protocol_error);
  RUN(binary_is_refused);
  RUN(garbage_never_crashes);
  RUN(server_send_and_close_handshake);
  RUN(close_from_inside_a_message);
  RUN(client_to_server);
  RUN(one_byte_fragments_cost_the_message_only);
  RUN(fragments_up_to_the_bound_pass);
  RUN(fragmented_binary_is_refused_at_once);
  RUN(framing_errors_close_1002);
  RUN(client_framing_error_close_is_masked);
  RUN(only_the_latest_pong_waits);
  RUN(idle_sessions_hold_no_context);
  RUN(short_messages_match_wslay);
  RUN(the_frame_reader_starts_clean_every_read);
  RUN(a_session_inside_a_frame_keeps_its_context);
  RUN(a_held_pong_or_a_close_keeps_the_context);
  RUN(spare_contexts_are_bounded);
  RUN(heartbeats_allocate_nothing);
  RUN(a_large_frame_is_written_whole);
  RUN(a_frame_encoded_once_is_sent_as_text_is);
  return 0;
}
