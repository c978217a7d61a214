/*
 * etcd.h: a small etcd v3 client over etcd's JSON gateway (/v3/...), on the
 * loop through http.c: lease grant, keepalive and revoke, range get, put,
 * and two transactions (create-if-absent bound to a lease; a put fenced on
 * another key's create_revision). Keys and values travel base64 (wskey.c),
 * answers are decoded by lua-cjson (json.c), requests encoded by json.c.
 * Endpoints are tried in turn: a transport failure or an etcd "unavailable"
 * answer moves to the next one, each at most once per operation. Bounded:
 * at most DCM_ETCD_MAX_ENDPOINTS endpoints, DCM_ETCD_MAX_OPS operations in
 * flight, keys of DCM_ETCD_MAX_KEY bytes, values of DCM_ETCD_MAX_VALUE
 * bytes, one request timeout per attempt. Log lines name the endpoint; no
 * credentials (an endpoint with user info is refused). Depends on http.c,
 * json.c, wskey.c, log.c, libuv.
 */
#ifndef DCM_ETCD_H
#define DCM_ETCD_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "log.h"

#define DCM_ETCD_MAX_ENDPOINTS 8
#define DCM_ETCD_MAX_ENDPOINT 256      /* bytes of one endpoint URL */
#define DCM_ETCD_MAX_OPS 32
#define DCM_ETCD_MAX_KEY 1024
#define DCM_ETCD_MAX_VALUE (512 * 1024) /* its base64 fits etcd's 1.5 MiB request limit */

/* Besides DCM_HTTP_E* (the last endpoint's transport failure). */
enum {
  DCM_ETCD_ENOLEASE = -31101,     /* the lease has expired or was revoked */
  DCM_ETCD_EFENCED = -31102,      /* a fenced put's compare failed */
  DCM_ETCD_EUNAVAILABLE = -31103, /* etcd answered but cannot serve (no leader, 5xx) */
  DCM_ETCD_ESERVER = -31104,      /* etcd refused the request; detail says why */
  DCM_ETCD_EPROTO = -31105        /* the answer is not what etcd sends */
};

typedef struct dcm__etcd_s dcm__etcd_t;
typedef struct dcm__etcd_op_s dcm__etcd_op_t;

typedef struct {
  const char *endpoints;  /* "http://host:port,https://host:port" */
  const char *cacert;     /* TLS to etcd: CA file, client certificate, key */
  const char *cert, *key; /* (PEM paths); NULL: the system store, no client cert */
  double timeout;         /* one attempt, seconds; 0: 2 */
} dcm__etcd_opts_t;

typedef struct {
  int err;               /* 0, DCM_ETCD_E* or DCM_HTTP_E* */
  const char *endpoint;  /* the endpoint that answered or failed last */
  const char *detail;    /* err: what failed, for logs (curl's or etcd's words) */
  int succeeded;         /* txn: the compare held */
  int64_t revision;      /* the store's revision in the answer's header */
  char cluster_id[24];   /* the header's cluster_id (decimal), "" if absent */
  int64_t id, ttl;       /* lease grant and keepalive */
  int found;             /* get, create's failure branch: the key exists */
  int64_t create_revision, mod_revision, lease; /* that key's */
  const char *value;     /* its value, decoded and NUL-terminated */
  size_t value_len;
} dcm__etcd_result_t;

/* r lives only during the call. */
typedef void (*dcm__etcd_cb)(void *arg, const dcm__etcd_result_t *r);

/* DCM_EINVAL for a bad endpoint list or TLS path. */
int dcm__etcd_new(uv_loop_t *loop, dcm__log_t *log, const dcm__etcd_opts_t *o,
                  dcm__etcd_t **out);

/* The timeout of each later attempt, milliseconds (at least 50). */
void dcm__etcd_set_timeout(dcm__etcd_t *e, uint64_t ms);

/* Each operation calls cb once from the loop unless canceled or e closed
 * first; *op (may be NULL) is valid until then. They return DCM_EINVAL,
 * DCM_ESTATE (closing, or DCM_ETCD_MAX_OPS in flight) or DCM_ENOMEM. */
int dcm__etcd_grant(dcm__etcd_t *e, int64_t ttl, dcm__etcd_cb cb, void *arg,
                    dcm__etcd_op_t **op);
/* DCM_ETCD_ENOLEASE when the lease is gone. */
int dcm__etcd_keepalive(dcm__etcd_t *e, int64_t id, dcm__etcd_cb cb, void *arg,
                        dcm__etcd_op_t **op);
int dcm__etcd_revoke(dcm__etcd_t *e, int64_t id, dcm__etcd_cb cb, void *arg,
                     dcm__etcd_op_t **op);
int dcm__etcd_get(dcm__etcd_t *e, const char *key, dcm__etcd_cb cb, void *arg,
                  dcm__etcd_op_t **op);
/* lease 0: none. */
int dcm__etcd_put(dcm__etcd_t *e, const char *key, const char *value, size_t len,
                  int64_t lease, dcm__etcd_cb cb, void *arg, dcm__etcd_op_t **op);
/* Creates key = value bound to lease if key does not exist (succeeded = 1,
 * create_revision = the new key's); otherwise reads it (succeeded = 0,
 * found and the holder's fields). DCM_ETCD_ENOLEASE for a dead lease. */
int dcm__etcd_create(dcm__etcd_t *e, const char *key, const char *value, size_t len,
                     int64_t lease, dcm__etcd_cb cb, void *arg, dcm__etcd_op_t **op);
/* Puts key = value only while fence's create_revision is fence_rev, else
 * DCM_ETCD_EFENCED. */
int dcm__etcd_put_fenced(dcm__etcd_t *e, const char *fence, int64_t fence_rev,
                         const char *key, const char *value, size_t len, dcm__etcd_cb cb,
                         void *arg, dcm__etcd_op_t **op);

/* Drops an operation; its cb is not called. Not from inside its own cb. */
void dcm__etcd_cancel(dcm__etcd_op_t *op);

/* 1 when err means no etcd could be reached or serve (worth retrying). */
int dcm__etcd_transient(int err);

const char *dcm__etcd_strerror(int err);

/* Cancels every operation, closes every handle, frees e, then calls
 * done(arg) from a close callback. */
void dcm__etcd_close(dcm__etcd_t *e, void (*done)(void *arg), void *arg);

#endif
