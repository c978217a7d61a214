/*
 * tls.h: TLS 1.2+ (OpenSSL 3) under one byte stream, independent of any
 * socket, like ws.h: the peer's ciphertext comes in through dcm__tls_feed
 * and leaves as plaintext through on_plain; plaintext written with
 * dcm__tls_write leaves as ciphertext through on_cipher. The owner keeps
 * its transport (libuv stream, bounded outbound queue) and its bounds.
 *
 * The SSL object reads and writes through a BIO over memory: reads take
 * the bytes being fed in place (nothing copied, nothing kept once a feed
 * returns), writes hand each record straight to on_cipher (nothing
 * buffered). OpenSSL's own record buffers are released while idle
 * (SSL_MODE_RELEASE_BUFFERS), so an idle session holds only the SSL
 * state. A plain memory BIO would keep the largest size it ever held.
 *
 * Server side: a context from a certificate chain and key file (PEM,
 * no passphrase), no session cache and no tickets (CONTROLs connect
 * rarely; nothing grows with the number of peers). Client side: the peer's
 * chain verified against the system store or a CA file, its name checked
 * (DNS name or IP address) and sent as SNI (DNS names only).
 * Depends on OpenSSL (libssl, libcrypto).
 */
#ifndef DCM_TLS_H
#define DCM_TLS_H

#include <stddef.h>

struct ssl_st;
struct ssl_ctx_st;

typedef struct dcm__tls_s dcm__tls_t;

typedef struct {
  /* Decrypted bytes (valid during the call). Return 0 to go on, non-zero
     when the owner is done with the stream: the feed stops there. */
  int (*on_plain)(dcm__tls_t *t, const char *data, size_t len);
  /* Encrypted bytes for the wire; copy them. 0, or < 0: the error the
     writing call returns (the session is then failed). */
  int (*on_cipher)(dcm__tls_t *t, const void *data, size_t len);
  /* The handshake completed. May write. Return as for on_plain. NULL: none. */
  int (*on_ready)(dcm__tls_t *t);
} dcm__tls_cbs_t;

struct dcm__tls_s {
  struct ssl_st *ssl;
  const dcm__tls_cbs_t *cbs;
  void *data;        /* the owner's */
  const char *in;    /* the ciphertext being fed */
  size_t inlen;
  int write_err;     /* on_cipher's error */
  int ready;         /* handshake done */
  int failed;        /* a fatal error: no more TLS calls */
  int closed;        /* close_notify sent */
  int peer_closed;   /* close_notify received */
  int plain_http;    /* the handshake failed on a plaintext HTTP request */
  char why[200];     /* the failure, for the owner's one log line */
};

/* A server context: cert (chain) and key files, PEM. 0, or DCM_EINVAL
   with one line in err naming the file and OpenSSL's reason. */
int dcm__tls_server_ctx(const char *cert, const char *key, struct ssl_ctx_st **out,
                        char *err, size_t n);
/* A client context verifying against ca_file, or the system store when
   NULL. 0, or DCM_EINVAL with one line in err. */
int dcm__tls_client_ctx(const char *ca_file, struct ssl_ctx_st **out, char *err, size_t n);
void dcm__tls_ctx_free(struct ssl_ctx_st *ctx);
/* "subject, valid until date" of a server context's certificate; returns
   1 if it has expired (or is not yet valid) by the wall clock, else 0. */
int dcm__tls_ctx_describe(struct ssl_ctx_st *ctx, char *out, size_t n);

/* host NULL: server side. Else client side for host (name or IP literal). */
int dcm__tls_init(dcm__tls_t *t, struct ssl_ctx_st *ctx, const char *host,
                  const dcm__tls_cbs_t *cbs, void *data);
void dcm__tls_free(dcm__tls_t *t);

/* Client: sends the ClientHello. 0, or < 0 (why set). */
int dcm__tls_start(dcm__tls_t *t);

/*
 * Feeds len bytes from the peer; plaintext goes to on_plain in pieces of
 * at most cap bytes, decrypted into buf (cap >= 16384: one record). 0: more
 * welcome; 1: a callback stopped the feed; < 0: the session failed (why
 * set; an alert may have been written) or the peer closed it (peer_closed).
 */
int dcm__tls_feed(dcm__tls_t *t, const void *in, size_t len, char *buf, size_t cap);

/* Encrypts and writes len bytes. 0, on_cipher's error, or DCM_ESTATE. */
int dcm__tls_write(dcm__tls_t *t, const void *data, size_t len);

/* Sends close_notify once (not after a failure). 0 or an error. */
int dcm__tls_close(dcm__tls_t *t);

#endif
