/*
 * election.h: MASTER leader election on etcd (docs: HA on etcd). Every
 * MASTER campaigns for /discluster/<cluster>/leader with a txn that
 * creates the key bound to its own lease when the key is absent; the
 * winner's epoch is that key's create_revision (strictly increasing from
 * term to term). The leader renews its lease every ttl/4 and trusts its
 * leadership only until valid_until = send time of the last successful
 * renewal (or grant) + ttl - ttl/3, on the loop's monotonic clock; a
 * renewal not through by then steps it down. Followers campaign again every
 * min(ttl/8, 0.5 s) and learn the leader's URL from the same txn. With etcd
 * unreachable: one error line per outage, DCM_ELECT_UNAVAILABLE once per
 * outage (when not leading), retries backing off 0.5 s doubling to 5 s.
 * The leader's records (/discluster/<cluster>/<name>) are written fenced on
 * its epoch. Events come from the loop, never inside a call into this
 * unit. Depends on etcd.c (and through it http.c), log.c, libuv.
 */
#ifndef DCM_ELECTION_H
#define DCM_ELECTION_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "log.h"

#define DCM_ELECT_MAX_NAME 64     /* cluster and record names: [A-Za-z0-9._-]{1,64} */
#define DCM_ELECT_MAX_URL 120     /* bytes of self_url: fits a close reason (123) */
#define DCM_ELECT_MAX_PUTS 16     /* records waiting to be written (distinct names) */
#define DCM_ELECT_MAX_GETS 16     /* reads in flight */

typedef struct dcm__elect_s dcm__elect_t;

typedef enum {
  DCM_ELECT_LEADING,     /* this process leads: dcm__elect_epoch() is the term */
  DCM_ELECT_FOLLOWING,   /* another leads (or none yet); also sent again when
                            the known leader URL changes */
  DCM_ELECT_STEPPED_DOWN,/* was leading, stopped (renewal late, lease lost or
                            record fenced out); campaigning again */
  DCM_ELECT_UNAVAILABLE  /* etcd unreachable; retrying */
} dcm__elect_event;

typedef void (*dcm__elect_cb)(void *arg, dcm__elect_event ev);

typedef struct {
  const char *endpoints;   /* comma list of http:// or https:// URLs */
  const char *cluster;     /* key prefix /discluster/<cluster>/ */
  const char *self_url;    /* value of the leader key */
  double ttl;              /* seconds, 2..60 */
  const char *cacert, *cert, *key; /* TLS to etcd, may be NULL */
} dcm__elect_opts_t;

/* DCM_EINVAL for a bad option (nothing logged: the caller says which). */
int dcm__elect_new(uv_loop_t *loop, dcm__log_t *log, const dcm__elect_opts_t *o,
                   dcm__elect_cb cb, void *arg, dcm__elect_t **out);

/* Starts campaigning; never blocks. DCM_ESTATE when started or closing. */
int dcm__elect_start(dcm__elect_t *e);

/* 1 while this process may act as leader: elected and uv_now() <
 * valid_until. Cheap: call it before every decision. */
int dcm__elect_leading(dcm__elect_t *e);

/* etcd's cluster id (decimal text) the epoch counts in: a new etcd cluster
   (a restore into an empty data dir) starts its revisions again. "" if unknown. */
const char *dcm__elect_cluster_id(const dcm__elect_t *e);
uint64_t dcm__elect_epoch(const dcm__elect_t *e);     /* 0 unless leading */
const char *dcm__elect_leader(const dcm__elect_t *e); /* known leader URL or NULL */
double dcm__elect_ttl(const dcm__elect_t *e);         /* seconds, as given */

/* Writes /discluster/<cluster>/<name> = value fenced on the epoch (txn:
 * create_revision(leader key) == epoch). Fire and forget, applied in
 * order; a record of a name still waiting is replaced. DCM_ESTATE when not
 * leading, DCM_EINVAL for a bad name ("leader" is the election's own) or a
 * value over DCM_ETCD_MAX_VALUE (etcd.h),
 * DCM_ENOMEM past DCM_ELECT_MAX_PUTS waiting. A write fenced out means
 * another term began: logged, the rest dropped, and this process steps
 * down. */
int dcm__elect_put(dcm__elect_t *e, const char *name, const char *value, size_t len);

/* Reads /discluster/<cluster>/<name>; cb (from the loop) gets NULL when
 * absent or on error, else the value (NUL-terminated, valid during the
 * call). Not called once e is closing. DCM_ESTATE past DCM_ELECT_MAX_GETS
 * in flight or when closing, DCM_EINVAL for a bad name. */
int dcm__elect_get(dcm__elect_t *e, const char *name,
                   void (*cb)(void *arg, const char *value, size_t len), void *arg);

/* Stops campaigning, revokes the lease if any (when leading, a follower
 * takes over at once; bounded by one second per endpoint), closes every
 * handle and frees e, then done(arg) from a close callback. No event after
 * this call. */
void dcm__elect_close(dcm__elect_t *e, void (*done)(void *arg), void *arg);

const char *dcm__elect_event_name(dcm__elect_event ev);

#endif
