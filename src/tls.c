/* tls.c: see tls.h. */
#include "tls.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "discluster/master.h"

/* ---- the BIO over memory ------------------------------------------------ */

/* Made once per process and never changed (OpenSSL's own run-once). */
static CRYPTO_ONCE method_once = CRYPTO_ONCE_STATIC_INIT;
static BIO_METHOD *method;

/* Reads take the bytes being fed, in place; none left: retry later. */
static int bio_read(BIO *b, char *out, size_t len, size_t *got) {
  dcm__tls_t *t = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  if (t->inlen == 0) {
    BIO_set_retry_read(b);
    return 0;
  }
  size_t k = len < t->inlen ? len : t->inlen;
  memcpy(out, t->in, k);
  t->in += k;
  t->inlen -= k;
  *got = k;
  return 1;
}

/* Writes go to the owner's queue at once: nothing is buffered here. */
static int bio_write(BIO *b, const char *data, size_t len, size_t *put) {
  dcm__tls_t *t = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  int r = t->cbs->on_cipher(t, data, len);
  if (r != 0) {
    t->write_err = r;
    return 0;
  }
  *put = len;
  return 1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
  (void)b, (void)num, (void)ptr;
  return cmd == BIO_CTRL_FLUSH ? 1 : 0; /* written already */
}

static int bio_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

static void make_method(void) {
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "discluster");
  if (m == NULL) return;
  if (!BIO_meth_set_read_ex(m, bio_read) || !BIO_meth_set_write_ex(m, bio_write) ||
      !BIO_meth_set_ctrl(m, bio_ctrl) || !BIO_meth_set_create(m, bio_create)) {
    BIO_meth_free(m);
    return;
  }
  method = m;
}

/* ---- errors ------------------------------------------------------------- */

/* OpenSSL's reason for the oldest queued error, then the queue cleared. */
static void reason(char *out, size_t n, const char *fallback) {
  unsigned long e = ERR_peek_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  snprintf(out, n, "%s", r ? r : fallback);
  ERR_clear_error();
}

static int ctx_fail(SSL_CTX *ctx, char *err, size_t n, const char *what, const char *file) {
  char r[128];
  reason(r, sizeof r, "unknown error");
  snprintf(err, n, "%s: cannot load '%s': %s", what, file, r);
  SSL_CTX_free(ctx);
  return DCM_EINVAL;
}

/* A key with a passphrase would make OpenSSL prompt on the terminal. */
static int no_password(char *buf, int size, int rwflag, void *u) {
  (void)buf, (void)size, (void)rwflag, (void)u;
  return 0;
}

/* ---- contexts ----------------------------------------------------------- */

static SSL_CTX *ctx_new(const SSL_METHOD *how) {
  SSL_CTX *ctx = SSL_CTX_new(how);
  if (ctx == NULL) return NULL;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_default_passwd_cb(ctx, no_password);
  return ctx;
}

int dcm__tls_server_ctx(const char *cert, const char *key, SSL_CTX **out, char *err,
                        size_t n) {
  ERR_clear_error();
  SSL_CTX *ctx = ctx_new(TLS_server_method());
  if (ctx == NULL) {
    snprintf(err, n, "tls: out of memory");
    return DCM_ENOMEM;
  }
  SSL_CTX_set_num_tickets(ctx, 0);
  if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
    return ctx_fail(ctx, err, n, "tls_cert", cert);
  if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 &&
      ERR_GET_REASON(ERR_peek_last_error()) != X509_R_KEY_VALUES_MISMATCH)
    return ctx_fail(ctx, err, n, "tls_key", key);
  if (SSL_CTX_check_private_key(ctx) != 1) {
    ERR_clear_error();
    snprintf(err, n, "tls_key: '%s' is not the key of the certificate in '%s'", key, cert);
    SSL_CTX_free(ctx);
    return DCM_EINVAL;
  }
  *out = ctx;
  return 0;
}

int dcm__tls_client_ctx(const char *ca_file, SSL_CTX **out, char *err, size_t n) {
  ERR_clear_error();
  SSL_CTX *ctx = ctx_new(TLS_client_method());
  if (ctx == NULL) {
    snprintf(err, n, "tls: out of memory");
    return DCM_ENOMEM;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  if (ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1
              : SSL_CTX_set_default_verify_paths(ctx) != 1)
    return ctx_fail(ctx, err, n, ca_file ? "CA file" : "CA store",
                    ca_file ? ca_file : "the system's default");
  *out = ctx;
  return 0;
}

void dcm__tls_ctx_free(SSL_CTX *ctx) { SSL_CTX_free(ctx); }

int dcm__tls_ctx_describe(SSL_CTX *ctx, char *out, size_t n) {
  X509 *x = SSL_CTX_get0_certificate(ctx);
  char subject[160] = "?", until[32] = "?";
  struct tm tm;
  if (x == NULL) {
    snprintf(out, n, "no certificate");
    return 0;
  }
  X509_NAME_oneline(X509_get_subject_name(x), subject, sizeof subject);
  if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1)
    strftime(until, sizeof until, "%Y-%m-%dT%H:%M:%SZ", &tm);
  int bad = X509_cmp_current_time(X509_get0_notAfter(x)) <= 0 ||
            X509_cmp_current_time(X509_get0_notBefore(x)) >= 0;
  snprintf(out, n, "%s, valid until %s", subject, until);
  ERR_clear_error();
  return bad;
}

/* ---- sessions ----------------------------------------------------------- */

int dcm__tls_init(dcm__tls_t *t, SSL_CTX *ctx, const char *host, const dcm__tls_cbs_t *cbs,
                  void *data) {
  memset(t, 0, sizeof *t);
  t->cbs = cbs;
  t->data = data;
  CRYPTO_THREAD_run_once(&method_once, make_method);
  if (method == NULL) return DCM_ENOMEM;
  ERR_clear_error();
  SSL *ssl = SSL_new(ctx);
  BIO *b = ssl ? BIO_new(method) : NULL;
  if (b == NULL) {
    SSL_free(ssl);
    ERR_clear_error();
    return DCM_ENOMEM;
  }
  BIO_set_data(b, t);
  SSL_set_bio(ssl, b, b); /* one BIO both ways: one reference taken */
  t->ssl = ssl;
  if (host == NULL) {
    SSL_set_accept_state(ssl);
    return 0;
  }
  SSL_set_connect_state(ssl);
  unsigned char ip[16];
  int ok;
  if (inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1)
    ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host); /* no SNI for IPs */
  else
    ok = SSL_set_tlsext_host_name(ssl, host) == 1 && SSL_set1_host(ssl, host) == 1;
  if (!ok) {
    ERR_clear_error();
    dcm__tls_free(t);
    return DCM_EINVAL;
  }
  return 0;
}

void dcm__tls_free(dcm__tls_t *t) {
  SSL_free(t->ssl); /* and its BIO */
  t->ssl = NULL;
}

/* After an SSL call returned ret <= 0: 0 when it only waits for bytes. */
static int check(dcm__tls_t *t, int ret) {
  int e = SSL_get_error(t->ssl, ret);
  if (e == SSL_ERROR_WANT_READ) {
    ERR_clear_error();
    return 0;
  }
  if (e == SSL_ERROR_ZERO_RETURN) {
    t->peer_closed = 1;
    snprintf(t->why, sizeof t->why, "the peer closed TLS");
    ERR_clear_error();
    return DCM_EINVAL;
  }
  t->failed = 1;
  if (t->write_err) {
    snprintf(t->why, sizeof t->why, "write failed");
    ERR_clear_error();
    return t->write_err;
  }
  unsigned long first = ERR_peek_error();
  if (ERR_GET_LIB(first) == ERR_LIB_SSL && ERR_GET_REASON(first) == SSL_R_HTTP_REQUEST)
    t->plain_http = 1;
  long v = SSL_is_server(t->ssl) ? X509_V_OK : SSL_get_verify_result(t->ssl);
  char r[128];
  reason(r, sizeof r, "protocol error");
  if (v != X509_V_OK)
    snprintf(t->why, sizeof t->why, "certificate verify failed: %s",
             X509_verify_cert_error_string(v));
  else
    snprintf(t->why, sizeof t->why, "%s", r);
  return DCM_EINVAL;
}

int dcm__tls_start(dcm__tls_t *t) {
  ERR_clear_error();
  int r = SSL_do_handshake(t->ssl);
  return r == 1 ? 0 : check(t, r);
}

int dcm__tls_feed(dcm__tls_t *t, const void *in, size_t len, char *buf, size_t cap) {
  int rc = 0;
  if (t->failed || t->peer_closed) return DCM_EINVAL;
  t->in = in;
  t->inlen = len;
  while (rc == 0) {
    ERR_clear_error();
    if (!t->ready) {
      int r = SSL_do_handshake(t->ssl);
      if (r != 1) {
        rc = check(t, r);
        break;
      }
      t->ready = 1;
      if (t->cbs->on_ready && t->cbs->on_ready(t) != 0) rc = 1;
      continue;
    }
    size_t got = 0;
    if (SSL_read_ex(t->ssl, buf, cap, &got) != 1) {
      rc = check(t, 0);
      break;
    }
    if (t->cbs->on_plain(t, buf, got) != 0) rc = 1;
  }
  /* what was not taken is dropped: the owner stopped or the session failed */
  t->in = NULL;
  t->inlen = 0;
  return rc;
}

int dcm__tls_write(dcm__tls_t *t, const void *data, size_t len) {
  size_t put = 0;
  if (t->failed || t->closed || !t->ready) return DCM_ESTATE;
  if (len == 0) return 0;
  ERR_clear_error();
  if (SSL_write_ex(t->ssl, data, len, &put) == 1 && put == len) return 0;
  int r = check(t, 0);
  t->failed = 1;
  return r ? r : DCM_EINVAL;
}

int dcm__tls_close(dcm__tls_t *t) {
  if (t->ssl == NULL || t->failed || t->closed) return 0;
  t->closed = 1;
  if (!t->ready) return 0; /* no close_notify inside a handshake */
  ERR_clear_error();
  if (SSL_shutdown(t->ssl) < 0) {
    ERR_clear_error();
    t->failed = 1;
    return t->write_err ? t->write_err : DCM_EINVAL;
  }
  return 0;
}
