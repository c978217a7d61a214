/*
 * fuzz_ws.c: a WebSocket session (ws.c over wslay, server role, as
 * server.c runs it) fed a peer's bytes. Byte 0 picks the options, the rest
 * is the wire:
 *   bits 0-1  max_message 1024, 4096, 65536 or 1 MiB
 *   bit 2     every message is echoed back from on_message (session.c replies there)
 *   bit 3     the first message is answered with close 4002 from on_message
 *   bit 4     also: a transport that is busy at random (held pongs, drained)
 *   bit 5     also: the same bytes to a client-role session
 * The bytes go in as one chunk and again split at random points (stopping,
 * like server.c, once a feed fails or the session is done); both runs must
 * deliver the same messages, write the same frames (pongs aside: a later
 * ping may replace a held pong) and end the same way. Every write is whole
 * frames. One known exception: wslay checks a close frame's reason for
 * UTF-8 per read, skipping the first two bytes of each (meant for the
 * code), so a close whose reason is split across reads may be refused
 * (1007, or just reads stopped when our close is out) where one read is
 * not, or the other way round. When the peer sends a close with a reason,
 * the last close written and how the session ended are not compared.
 */
#include <string.h>
#include <wslay/wslay.h>

#include "fuzz.h"
#include "ws.h"

typedef struct {
  uint8_t *p;
  size_t len, cap;
} buf_t;

static void put(buf_t *b, const void *data, size_t len) {
  if (b->len + len > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + len) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    FUZZ_CHECK(p != NULL);
    b->p = p;
    b->cap = cap;
  }
  if (len) memcpy(b->p + b->len, data, len);
  b->len += len;
}

typedef struct {
  buf_t out;  /* bytes written to the wire */
  buf_t msgs; /* messages received: 4-byte length, then the bytes */
  int echo, close_first, nmsgs;
  int busy_random;
  fuzz_rng_t rng;
} sink_t;

static void on_message(dcm__ws_t *ws, const char *msg, size_t len) {
  sink_t *s = ws->data;
  uint32_t l = (uint32_t)len;
  put(&s->msgs, &l, sizeof l);
  put(&s->msgs, msg, len);
  s->nmsgs++;
  if (s->echo) dcm__ws_send(ws, msg, len);
  if (s->close_first && s->nmsgs == 1) dcm__ws_close(ws, 4002, "bad info");
}

static int on_write(dcm__ws_t *ws, const uint8_t *data, size_t len) {
  put(&((sink_t *)ws->data)->out, data, len);
  return 0;
}

static int idle(dcm__ws_t *ws) {
  sink_t *s = ws->data;
  return s->busy_random ? (int)(fuzz_next(&s->rng) & 1) : 1;
}

static const dcm__ws_cbs_t cbs = {on_message, on_write, idle};

/* Appends the frames of out to keep, pongs left out; out must be whole
   frames (a server's: unmasked). */
static void frames(const buf_t *out, buf_t *keep, int masked) {
  size_t i = 0;
  while (i < out->len) {
    FUZZ_CHECK(out->len - i >= 2);
    const uint8_t *f = out->p + i;
    uint64_t plen = f[1] & 0x7f;
    size_t hdr = 2;
    if (plen == 126) hdr = 4;
    if (plen == 127) hdr = 10;
    FUZZ_CHECK(out->len - i >= hdr);
    if (hdr > 2) {
      plen = 0;
      for (size_t k = 2; k < hdr; k++) plen = plen << 8 | f[k];
    }
    FUZZ_CHECK(((f[1] & 0x80) != 0) == masked);
    if (masked) hdr += 4;
    FUZZ_CHECK(out->len - i >= hdr && out->len - i - hdr >= plen);
    if ((f[0] & 0x0f) != WSLAY_PONG) put(keep, f, hdr + (size_t)plen);
    i += hdr + (size_t)plen;
  }
}

/* The code of keep's last frame if it is a close with a code, else 0; *at
   is where that frame starts. */
static uint16_t last_close(const buf_t *keep, size_t *at) {
  size_t i = 0, last = 0;
  *at = 0;
  if (keep->len == 0) return 0;
  while (i < keep->len) { /* whole frames (checked by frames()) */
    const uint8_t *f = keep->p + i;
    uint64_t plen = f[1] & 0x7f;
    size_t hdr = plen == 126 ? 4 : plen == 127 ? 10 : 2;
    if (hdr > 2) {
      plen = 0;
      for (size_t k = 2; k < hdr; k++) plen = plen << 8 | f[k];
    }
    if (f[1] & 0x80) hdr += 4;
    last = i;
    i += hdr + (size_t)plen;
  }
  *at = last;
  const uint8_t *f = keep->p + last;
  if ((f[0] & 0x0f) != WSLAY_CONNECTION_CLOSE || (f[1] & 0x7f) < 2) return 0;
  size_t hdr = f[1] & 0x80 ? 6 : 2;
  uint8_t k0 = f[1] & 0x80 ? f[2] : 0, k1 = f[1] & 0x80 ? f[3] : 0;
  return (uint16_t)((f[hdr] ^ k0) << 8 | (f[hdr + 1] ^ k1));
}

/* 1 if the peer's bytes, read as frames, hold a close with a reason. */
static int peer_close_reason(const uint8_t *wire, size_t len) {
  size_t i = 0;
  while (len - i >= 2) {
    const uint8_t *f = wire + i;
    uint64_t plen = f[1] & 0x7f;
    size_t hdr = plen == 126 ? 4 : plen == 127 ? 10 : 2;
    if (len - i < hdr) return 0;
    if (hdr > 2) {
      plen = 0;
      for (size_t k = 2; k < hdr; k++) plen = plen << 8 | f[k];
    }
    if ((f[0] & 0x0f) == WSLAY_CONNECTION_CLOSE && plen > 2) return 1;
    if (f[1] & 0x80) hdr += 4;
    if (len - i < hdr || len - i - hdr < plen) return 0;
    i += hdr + (size_t)plen;
  }
  return 0;
}

/* wslay's per-read UTF-8 check of close reasons (see above): with a peer's
   close that has a reason, the last close written (ours or the answer) and
   how the session ended may differ; the messages and the frames before it
   may not. */
static void forgive_close_utf8(buf_t *x, buf_t *y) {
  size_t ax, ay;
  if (last_close(x, &ax)) x->len = ax;
  if (last_close(y, &ay)) y->len = ay;
}

typedef struct {
  int failed, done, close_sent;
  uint16_t code;
} end_t;

/* Feeds the chunks ending at ends[0..n) as server.c does. */
static end_t run(sink_t *s, int client, uint64_t max, const uint8_t *wire, const size_t *ends,
                 size_t n, int drain) {
  dcm__ws_t ws;
  end_t e = {0, 0, 0, 0};
  FUZZ_CHECK(dcm__ws_init(&ws, client, max, &cbs, s) == 0);
  size_t at = 0;
  for (size_t i = 0; i < n; i++) {
    if (dcm__ws_feed(&ws, wire + at, ends[i] - at) != 0) e.failed = 1;
    at = ends[i];
    if (e.failed || dcm__ws_done(&ws)) break;
    if (drain && dcm__ws_drained(&ws) != 0) break;
  }
  e.done = dcm__ws_done(&ws);
  e.close_sent = dcm__ws_close_sent(&ws);
  e.code = dcm__ws_close_code(&ws);
  if (e.failed) FUZZ_CHECK(e.done);
  dcm__ws_free(&ws);
  return e;
}

static int same(const buf_t *x, const buf_t *y) {
  return x->len == y->len && (x->len == 0 || memcmp(x->p, y->p, x->len) == 0);
}

/* Shows both runs before a failed comparison aborts. */
static void dump(const char *what, const buf_t *x, const buf_t *y, const size_t *ends, size_t n) {
  if (same(x, y)) return;
  fprintf(stderr, "%s differ; cuts at", what);
  for (size_t i = 0; i < n; i++) fprintf(stderr, " %zu", ends[i]);
  const buf_t *b[2] = {x, y};
  for (int k = 0; k < 2; k++) {
    fprintf(stderr, "\n%s:", k ? "split" : "whole");
    for (size_t i = 0; i < b[k]->len && i < 256; i++) fprintf(stderr, " %02x", b[k]->p[i]);
  }
  fprintf(stderr, "\n");
}

static void sink_free(sink_t *s) {
  free(s->out.p);
  free(s->msgs.p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const uint64_t maxes[4] = {1024, 4096, 65536, 1u << 20};
  if (size < 1) return 0;
  uint8_t flags = data[0];
  const uint8_t *wire = data + 1;
  size_t len = size - 1;
  uint64_t max = maxes[flags & 3];
  fuzz_rng_t rng = fuzz_rng(data, size);
  size_t whole[1] = {len}, ends[17];
  size_t nends = fuzz_cuts(&rng, len, ends, 16);

  sink_t a = {.echo = flags >> 2 & 1, .close_first = flags >> 3 & 1};
  sink_t b = a;
  end_t ea = run(&a, 0, max, wire, whole, 1, 0);
  end_t eb = run(&b, 0, max, wire, ends, nends, 0);
  dump("messages", &a.msgs, &b.msgs, ends, nends);
  FUZZ_CHECK(same(&a.msgs, &b.msgs));
  buf_t fa = {0}, fb = {0};
  frames(&a.out, &fa, 0);
  frames(&b.out, &fb, 0);
  int forgiven = peer_close_reason(wire, len);
  if (forgiven) forgive_close_utf8(&fa, &fb);
  dump("frames written", &fa, &fb, ends, nends);
  FUZZ_CHECK(same(&fa, &fb));
  FUZZ_CHECK(forgiven || (ea.failed == eb.failed && ea.done == eb.done &&
                          ea.close_sent == eb.close_sent && ea.code == eb.code));
  free(fa.p);
  free(fb.p);
  sink_free(&a);
  sink_free(&b);

  if (flags & 0x10) { /* a transport that is busy now and then */
    sink_t c = {.echo = flags >> 2 & 1, .close_first = flags >> 3 & 1, .busy_random = 1,
                .rng = rng};
    run(&c, 0, max, wire, ends, nends, 1);
    buf_t fc = {0};
    frames(&c.out, &fc, 0);
    free(fc.p);
    sink_free(&c);
  }
  if (flags & 0x20) { /* the agent's side: MASTER's frames are unmasked */
    sink_t d = {.echo = flags >> 2 & 1, .close_first = flags >> 3 & 1};
    run(&d, 1, max, wire, ends, nends, 0);
    buf_t fd = {0};
    frames(&d.out, &fd, 1);
    free(fd.p);
    sink_free(&d);
  }
  return 0;
}
