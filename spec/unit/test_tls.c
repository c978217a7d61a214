/*
 * TLS sessions (tls.c) fed in memory: a client and a server pumped into
 * each other one byte at a time, large writes, a callback that stops the
 * feed, a queue that refuses bytes, close_notify, bytes that are not TLS,
 * verification failures, and the server context's errors. Certificates are
 * made here with libcrypto (self-signed, P-256) into a temp dir.
 */
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "discluster/master.h"
#include "tls.h"

static char dir[64];

/* A self-signed certificate for localhost valid from now + from_s for
   span_s seconds, and its key; paths in cert and key. */
static void make_pair(const char *name, long from_s, long span_s, char *cert, char *key) {
  EVP_PKEY *pk = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  CHECK(pk && x);
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
  X509_gmtime_adj(X509_getm_notBefore(x), from_s);
  X509_gmtime_adj(X509_getm_notAfter(x), from_s + span_s);
  X509_set_pubkey(x, pk);
  X509_NAME *n = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1, 0);
  X509_set_issuer_name(x, n);
  X509_EXTENSION *san = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name,
                                            "DNS:localhost,IP:127.0.0.1");
  CHECK(san && X509_add_ext(x, san, -1));
  X509_EXTENSION_free(san);
  CHECK(X509_sign(x, pk, EVP_sha256()) > 0);
  snprintf(cert, 128, "%s/%s.pem", dir, name);
  snprintf(key, 128, "%s/%s.key", dir, name);
  FILE *f = fopen(cert, "w");
  CHECK(f && PEM_write_X509(f, x));
  fclose(f);
  f = fopen(key, "w");
  CHECK(f && PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL));
  fclose(f);
  X509_free(x);
  EVP_PKEY_free(pk);
}

/* ---- one side of a session in memory ----------------------------------- */

typedef struct {
  dcm__tls_t t;
  char *out; /* ciphertext written, not yet pumped */
  size_t outlen;
  char *got; /* plaintext received */
  size_t gotlen, maxpiece;
  int stop_after; /* on_plain returns 1 after this many bytes (0: never) */
  int refuse;     /* on_cipher fails with this */
  int readies;
} side_t;

static int on_plain(dcm__tls_t *t, const char *data, size_t len) {
  side_t *s = t->data;
  CHECK(len > 0 && len <= 16384);
  s->got = realloc(s->got, s->gotlen + len);
  memcpy(s->got + s->gotlen, data, len);
  s->gotlen += len;
  if (len > s->maxpiece) s->maxpiece = len;
  return s->stop_after && s->gotlen >= (size_t)s->stop_after;
}

static int on_cipher(dcm__tls_t *t, const void *data, size_t len) {
  side_t *s = t->data;
  if (s->refuse) return s->refuse;
  s->out = realloc(s->out, s->outlen + len);
  memcpy(s->out + s->outlen, data, len);
  s->outlen += len;
  return 0;
}

static int on_ready(dcm__tls_t *t) {
  ((side_t *)t->data)->readies++;
  return 0;
}

static const dcm__tls_cbs_t cbs = {on_plain, on_cipher, on_ready};

static void side_free(side_t *s) {
  dcm__tls_free(&s->t);
  free(s->out);
  free(s->got);
  memset(s, 0, sizeof *s);
}

/* Moves what from wrote into to, step bytes per feed; the last feed's result. */
static int pump(side_t *from, side_t *to, size_t step) {
  static char buf[16384];
  int r = 0;
  size_t off = 0;
  while (off < from->outlen && r == 0) {
    size_t k = from->outlen - off < step ? from->outlen - off : step;
    r = dcm__tls_feed(&to->t, from->out + off, k, buf, sizeof buf);
    off += k;
  }
  memmove(from->out, from->out + off, from->outlen - off);
  from->outlen -= off;
  return r;
}

/* Handshake with step-byte feeds; both sides ready. */
static void connect_pair(SSL_CTX *sctx, SSL_CTX *cctx, side_t *srv, side_t *cli, size_t step) {
  memset(srv, 0, sizeof *srv);
  memset(cli, 0, sizeof *cli);
  CHECK_EQ(dcm__tls_init(&srv->t, sctx, NULL, &cbs, srv), 0);
  CHECK_EQ(dcm__tls_init(&cli->t, cctx, "localhost", &cbs, cli), 0);
  CHECK_EQ(dcm__tls_start(&cli->t), 0);
  for (int i = 0; i < 20 && !(srv->t.ready && cli->t.ready); i++) {
    CHECK_EQ(pump(cli, srv, step), 0);
    CHECK_EQ(pump(srv, cli, step), 0);
  }
  CHECK(srv->t.ready && cli->t.ready);
  CHECK_EQ(cli->readies, 1);
  CHECK_EQ(srv->readies, 1);
}

static SSL_CTX *sctx, *cctx;
static char cert[128], key[128];

static void contexts(void) {
  char err[256];
  make_pair("good", 0, 3600, cert, key);
  CHECK_EQ(dcm__tls_server_ctx(cert, key, &sctx, err, sizeof err), 0);
  CHECK_EQ(dcm__tls_client_ctx(cert, &cctx, err, sizeof err), 0);
  char what[256];
  CHECK_EQ(dcm__tls_ctx_describe(sctx, what, sizeof what), 0);
  CHECK(strstr(what, "/CN=localhost, valid until 2") == what);
}

static void one_byte_feeds_both_ways(void) {
  side_t s, c;
  connect_pair(sctx, cctx, &s, &c, 1);
  CHECK_EQ(dcm__tls_write(&c.t, "GET / HTTP/1.1\r\n\r\n", 18), 0);
  CHECK_EQ(pump(&c, &s, 1), 0);
  CHECK(s.gotlen == 18 && memcmp(s.got, "GET / HTTP/1.1\r\n\r\n", 18) == 0);
  CHECK_EQ(dcm__tls_write(&s.t, "HTTP/1.1 101", 12), 0);
  CHECK_EQ(pump(&s, &c, 3), 0);
  CHECK(c.gotlen == 12 && memcmp(c.got, "HTTP/1.1 101", 12) == 0);
  side_free(&s);
  side_free(&c);
}

static void large_writes_arrive_whole(void) {
  side_t s, c;
  size_t n = 200000;
  char *big = malloc(n);
  for (size_t i = 0; i < n; i++) big[i] = (char)(i * 7);
  connect_pair(sctx, cctx, &s, &c, 4096);
  CHECK_EQ(dcm__tls_write(&s.t, big, n), 0);
  CHECK(s.outlen > n); /* records, each with its overhead, all handed over */
  CHECK_EQ(pump(&s, &c, 65536), 0);
  CHECK(c.gotlen == n && memcmp(c.got, big, n) == 0);
  CHECK(c.maxpiece <= 16384);
  free(big);
  side_free(&s);
  side_free(&c);
}

static void a_callback_stops_the_feed(void) {
  side_t s, c;
  connect_pair(sctx, cctx, &s, &c, 4096);
  char block[20000];
  memset(block, 'x', sizeof block);
  CHECK_EQ(dcm__tls_write(&c.t, block, sizeof block), 0);
  s.stop_after = 1;
  CHECK_EQ(pump(&c, &s, sizeof block * 2), 1);
  CHECK(s.gotlen > 0 && s.gotlen < sizeof block); /* the rest was dropped */
  side_free(&s);
  side_free(&c);
}

static void a_refused_write_fails_the_session(void) {
  side_t s, c;
  connect_pair(sctx, cctx, &s, &c, 4096);
  s.refuse = -105; /* UV_ENOBUFS */
  CHECK_EQ(dcm__tls_write(&s.t, "hello", 5), -105);
  CHECK(s.t.failed);
  CHECK_EQ(dcm__tls_write(&s.t, "again", 5), DCM_ESTATE);
  CHECK_EQ(dcm__tls_close(&s.t), 0); /* no close_notify after a failure */
  side_free(&s);
  side_free(&c);
}

static void close_notify_reaches_the_peer(void) {
  side_t s, c;
  connect_pair(sctx, cctx, &s, &c, 4096);
  CHECK_EQ(dcm__tls_close(&s.t), 0);
  CHECK(s.outlen > 0);
  CHECK_EQ(dcm__tls_write(&s.t, "late", 4), DCM_ESTATE);
  CHECK(pump(&s, &c, 4096) < 0);
  CHECK(c.t.peer_closed && !c.t.failed);
  side_free(&s);
  side_free(&c);
}

static void bytes_that_are_not_tls(void) {
  static char buf[16384];
  side_t s;
  memset(&s, 0, sizeof s);
  CHECK_EQ(dcm__tls_init(&s.t, sctx, NULL, &cbs, &s), 0);
  CHECK(dcm__tls_feed(&s.t, "GET /healthz HTTP/1.1\r\n", 23, buf, sizeof buf) < 0);
  CHECK(s.t.plain_http && s.t.failed && !s.t.ready);
  CHECK_EQ(dcm__tls_close(&s.t), 0);
  side_free(&s);
  CHECK_EQ(dcm__tls_init(&s.t, sctx, NULL, &cbs, &s), 0);
  CHECK(dcm__tls_feed(&s.t, "\x16\x03\x01\xff\xff\x01\x00", 7, buf, sizeof buf) < 0);
  CHECK(!s.t.plain_http && s.t.why[0] != '\0');
  CHECK(dcm__tls_feed(&s.t, "more", 4, buf, sizeof buf) < 0); /* stays failed */
  side_free(&s);
}

static void verification_failures(void) {
  side_t s, c;
  char other_cert[128], other_key[128], err[256];
  SSL_CTX *other;
  /* a name the certificate does not carry */
  memset(&s, 0, sizeof s);
  memset(&c, 0, sizeof c);
  CHECK_EQ(dcm__tls_init(&s.t, sctx, NULL, &cbs, &s), 0);
  CHECK_EQ(dcm__tls_init(&c.t, cctx, "wrong.example", &cbs, &c), 0);
  CHECK_EQ(dcm__tls_start(&c.t), 0);
  CHECK_EQ(pump(&c, &s, 4096), 0);
  CHECK(pump(&s, &c, 4096) < 0);
  CHECK(strstr(c.t.why, "certificate verify failed: hostname mismatch"));
  CHECK_EQ(c.readies, 0);
  CHECK(c.outlen > 0); /* the alert for the server */
  CHECK(pump(&c, &s, 4096) < 0);
  CHECK(strstr(s.t.why, "alert"));
  side_free(&s);
  side_free(&c);
  /* an IP address the certificate carries, then one it does not */
  CHECK_EQ(dcm__tls_init(&c.t, cctx, "127.0.0.1", &cbs, &c), 0);
  side_free(&c);
  /* an expired certificate, trusted */
  make_pair("old", -7200, 3600, other_cert, other_key);
  CHECK_EQ(dcm__tls_server_ctx(other_cert, other_key, &other, err, sizeof err), 0);
  char what[256];
  CHECK_EQ(dcm__tls_ctx_describe(other, what, sizeof what), 1);
  SSL_CTX *trust_old;
  CHECK_EQ(dcm__tls_client_ctx(other_cert, &trust_old, err, sizeof err), 0);
  memset(&s, 0, sizeof s);
  memset(&c, 0, sizeof c);
  CHECK_EQ(dcm__tls_init(&s.t, other, NULL, &cbs, &s), 0);
  CHECK_EQ(dcm__tls_init(&c.t, trust_old, "localhost", &cbs, &c), 0);
  CHECK_EQ(dcm__tls_start(&c.t), 0);
  CHECK_EQ(pump(&c, &s, 4096), 0);
  CHECK(pump(&s, &c, 4096) < 0);
  CHECK(strstr(c.t.why, "certificate verify failed: certificate has expired"));
  side_free(&s);
  side_free(&c);
  dcm__tls_ctx_free(trust_old);
  dcm__tls_ctx_free(other);
}

static void context_errors(void) {
  char err[256], other_cert[128], other_key[128];
  SSL_CTX *ctx = NULL;
  CHECK_EQ(dcm__tls_server_ctx("/nonexistent/c.pem", key, &ctx, err, sizeof err), DCM_EINVAL);
  CHECK(strstr(err, "tls_cert: cannot load '/nonexistent/c.pem': ") == err);
  CHECK_EQ(dcm__tls_server_ctx(cert, cert, &ctx, err, sizeof err), DCM_EINVAL);
  CHECK(strstr(err, "tls_key: cannot load") == err);
  make_pair("other", 0, 3600, other_cert, other_key);
  CHECK_EQ(dcm__tls_server_ctx(cert, other_key, &ctx, err, sizeof err), DCM_EINVAL);
  CHECK(strstr(err, "is not the key of the certificate in"));
  CHECK_EQ(dcm__tls_client_ctx("/nonexistent/ca.pem", &ctx, err, sizeof err), DCM_EINVAL);
  CHECK(strstr(err, "CA file: cannot load '/nonexistent/ca.pem'") == err);
  CHECK(ctx == NULL);
}

int main(void) {
  snprintf(dir, sizeof dir, "/tmp/dcm-tls-XXXXXX");
  CHECK(mkdtemp(dir) != NULL);
  RUN(contexts);
  RUN(one_byte_feeds_both_ways);
  RUN(large_writes_arrive_whole);
  RUN(a_callback_stops_the_feed);
  RUN(a_refused_write_fails_the_session);
  RUN(close_notify_reaches_the_peer);
  RUN(bytes_that_are_not_tls);
  RUN(verification_failures);
  RUN(context_errors);
  dcm__tls_ctx_free(sctx);
  dcm__tls_ctx_free(cctx);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK_EQ(system(cmd), 0);
  return 0;
}
