/*
 * http.h: asynchronous HTTP(S) requests on a libuv loop through libcurl's
 * multi-socket API (one uv_poll_t per socket curl hands us, one uv_timer_t
 * for curl's timeout), the shape of curl's docs/examples/multi-uv.c. The
 * project's one copy of that glue: discord.c and etcd.c use it.
 * Every request is bounded: a total timeout, a connect timeout, a response
 * body of at most max_body bytes (DCM_HTTP_MAX_BODY by default and at
 * most), headers kept up to DCM_HTTP_MAX_HEADERS bytes, at most
 * DCM_HTTP_MAX_REQUESTS in flight. Callbacks run from the loop, never
 * inside a call into http.c. Depends on libuv and libcurl.
 */
#ifndef DCM_HTTP_H
#define DCM_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define DCM_HTTP_MAX_BODY (1u << 20)  /* response body bytes */
#define DCM_HTTP_MAX_HEADERS 8192     /* header bytes kept; the rest dropped */
#define DCM_HTTP_MAX_REQUESTS 64      /* in flight on one dcm__http_t */

/* Transport failures (resp->status < 0); resp->error says more. */
enum {
  DCM_HTTP_ETRANSPORT = -31001, /* connect, TLS, reset, no answer ... */
  DCM_HTTP_ETIMEDOUT = -31002,  /* timeout_ms or connect_timeout_ms passed */
  DCM_HTTP_ETOOBIG = -31003,    /* the body is larger than max_body */
  DCM_HTTP_EURL = -31004        /* malformed URL or protocol not allowed */
};

typedef struct dcm__http_s dcm__http_t;
typedef struct dcm__http_req_s dcm__http_req_t;

typedef struct {
  const char *method;           /* NULL: GET (POST when body is set) */
  const char *url;
  const char *body;             /* copied; NULL: none */
  size_t body_len;
  const char *const *headers;   /* "Name: value" lines, copied and wiped
                                   after use (they may hold credentials) */
  size_t nheaders;
  const char *protocols;        /* curl's list; NULL: "http,https" */
  const char *user_agent;       /* NULL: none */
  uint64_t timeout_ms;          /* whole request; 0: 30000 */
  uint64_t connect_timeout_ms;  /* 0: min(timeout_ms, 10000) */
  size_t max_body;              /* 0 or above DCM_HTTP_MAX_BODY: that */
  const char *cacert;           /* PEM file of CAs; NULL: the system store */
  const char *cert, *key;       /* PEM client certificate and key, or NULL */
  int reuse;                    /* 1: the connection may serve later requests */
} dcm__http_opts_t;

typedef struct {
  int status;           /* HTTP status, or DCM_HTTP_E* (< 0) */
  const char *body;     /* NUL-terminated ("" when empty) */
  size_t len;
  const char *error;    /* status < 0: curl's error and detail, for logs */
  const char *location; /* a redirect's target, or NULL */
  const char *headers;  /* the final response's header lines */
  size_t headers_len;
} dcm__http_resp_t;

/* r and everything it points at live only during the call. */
typedef void (*dcm__http_cb)(void *arg, const dcm__http_resp_t *r);

int dcm__http_new(uv_loop_t *loop, dcm__http_t **out);

/* Starts a request; cb runs once from the loop unless the request is
 * canceled or h closed first. *out (may be NULL) is valid until then.
 * DCM_EINVAL (bad options), DCM_ESTATE (closing, or DCM_HTTP_MAX_REQUESTS
 * in flight), DCM_ENOMEM. */
int dcm__http_request(dcm__http_t *h, const dcm__http_opts_t *o, dcm__http_cb cb, void *arg,
                      dcm__http_req_t **out);

/* Drops a request not yet answered; its cb is not called. Safe from any
 * callback, including another request's. */
void dcm__http_cancel(dcm__http_req_t *r);

/* The value of header name (case-insensitive) in r, trimmed, or NULL. */
const char *dcm__http_header(const dcm__http_resp_t *r, const char *name, size_t *len);

const char *dcm__http_strerror(int err);

/* Cancels every request, closes every handle, frees h, then calls
 * done(arg) from a close callback. Safe inside a request's cb. */
void dcm__http_close(dcm__http_t *h, void (*done)(void *arg), void *arg);

#endif
