/*
 * identify.h: the fleet's identify queue and Discord's session-start budget.
 *
 * Discord starts at most one session (IDENTIFY) per rate-limit bucket
 * (shard % max_concurrency) per interval, for the whole bot, and a daily
 * budget of them. One queue per bucket; buckets run in parallel; within a
 * bucket grants go in shard order and no two are closer than the interval.
 * Every grant spends one identify of the budget, and grants stop while the
 * next one would take the budget below the reserve. A grant returned unused
 * gives its identify back (the bucket's interval still holds).
 *
 * Pure bookkeeping: the caller passes the clock (uv_now) and delivers the
 * grants; no I/O, no timers, no allocation after dcm__idq_new except the
 * per-bucket queues growing. Owners are opaque pointers (machines) that the
 * caller drops before freeing them. Depends on nothing.
 */
#ifndef DCM_IDENTIFY_H
#define DCM_IDENTIFY_H

#include <stddef.h>
#include <stdint.h>

#define DCM_IDQ_NEVER UINT64_MAX
/* How long after a grant a `release` may still return it to the budget. */
#define DCM_IDQ_RETURN_MS 60000

typedef struct dcm__idq_s dcm__idq_t;

/* NULL on out of memory. interval_ms: the least gap between two grants of
   one bucket. The budget starts unknown (unlimited) until set. */
dcm__idq_t *dcm__idq_new(int shard_count, int max_concurrency, uint64_t interval_ms);
void dcm__idq_free(dcm__idq_t *q);

/* Discord's figures: remaining < 0 means unknown (no Discord: only pacing). */
void dcm__idq_set_budget(dcm__idq_t *q, long remaining, long total, long reserve);
/* Identifies spent outside the queue (CONTROLs that do not ask for grants). */
void dcm__idq_spend(dcm__idq_t *q, long n);

/* Queues shard for owner. Asking again changes nothing but the owner.
   Returns 0, or -1 for a shard out of range. */
int dcm__idq_request(dcm__idq_t *q, int shard, void *owner);

enum { DCM_IDQ_NOTHING = 0, DCM_IDQ_DEQUEUED = 1, DCM_IDQ_RETURNED = 2 };
/* The owner no longer needs shard: leaves the queue, or a grant sent less
   than DCM_IDQ_RETURN_MS ago goes back to the budget. One of the above. */
int dcm__idq_release(dcm__idq_t *q, int shard, void *owner, uint64_t now);

/* Forgets every request and grant of owner (it disconnected or is gone). */
void dcm__idq_drop_owner(dcm__idq_t *q, void *owner);

/*
 * Delivers the grants due at now through grant(), in bucket order, at most
 * one per bucket. grant() returns 0 when it sent the grant (the interval and
 * the budget are spent), or -1 when the owner cannot take it (the request is
 * dropped; nothing is spent). Returns when the next grant may be due:
 * DCM_IDQ_NEVER when every queue is empty or the budget blocks them all.
 */
typedef int (*dcm__idq_grant_fn)(void *arg, int shard, void *owner);
uint64_t dcm__idq_run(dcm__idq_t *q, uint64_t now, dcm__idq_grant_fn grant, void *arg);

/* No grant in bucket before `until` (a grant made elsewhere: an earlier
   leader's, read back after a takeover). Never moves a bucket earlier. */
void dcm__idq_hold(dcm__idq_t *q, int bucket, uint64_t until);

/* ---- what /status and the log show -------------------------------------- */

int dcm__idq_buckets(const dcm__idq_t *q);
size_t dcm__idq_depth(const dcm__idq_t *q, int bucket); /* shards waiting */
size_t dcm__idq_waiting(const dcm__idq_t *q);            /* over every bucket */
/* When the bucket may grant next (ms, the caller's clock); 0 = now. */
uint64_t dcm__idq_next_at(const dcm__idq_t *q, int bucket);
/* 1 when requests wait and the budget blocks them. */
int dcm__idq_budget_blocked(const dcm__idq_t *q);
long dcm__idq_remaining(const dcm__idq_t *q); /* < 0: unknown */
long dcm__idq_reserve(const dcm__idq_t *q);
uint64_t dcm__idq_granted(const dcm__idq_t *q);  /* grants sent, ever */
uint64_t dcm__idq_returned(const dcm__idq_t *q); /* grants given back */

#endif
