/* The identify queue and budget (identify.c), driven by a fake clock. */
#include "check.h"
#include "identify.h"

#define MAXG 256

typedef struct {
  int shard[MAXG];
  void *owner[MAXG];
  uint64_t at[MAXG];
  int n;
  uint64_t now;
  void *refuse; /* grant() fails for this owner */
} log_t;

static int grant(void *arg, int shard, void *owner) {
  log_t *g = arg;
  if (owner == g->refuse) return -1;
  CHECK(g->n < MAXG);
  g->shard[g->n] = shard;
  g->owner[g->n] = owner;
  g->at[g->n++] = g->now;
  return 0;
}

/* Runs the queue like the coordinator's timer: wake at each due time. */
static void run_until(dcm__idq_t *q, log_t *g, uint64_t end) {
  for (;;) {
    uint64_t next = dcm__idq_run(q, g->now, grant, g);
    if (next == DCM_IDQ_NEVER || next > end) break;
    g->now = next > g->now ? next : g->now;
  }
  g->now = end;
}

static int A, B; /* owners */

static void pace_per_bucket(void) {
  /* 8 shards, 2 buckets, 5 s: buckets in parallel, shard order, 5 s apart */
  dcm__idq_t *q = dcm__idq_new(8, 2, 5000);
  log_t g = {0};
  for (int s = 7; s >= 0; s--) CHECK_EQ(dcm__idq_request(q, s, &A), 0);
  CHECK_EQ(dcm__idq_waiting(q), 8);
  CHECK_EQ(dcm__idq_depth(q, 0), 4);
  run_until(q, &g, 60000);
  CHECK_EQ(g.n, 8);
  int want[] = {0, 1, 2, 3, 4, 5, 6, 7};
  uint64_t at[] = {0, 0, 5000, 5000, 10000, 10000, 15000, 15000};
  for (int i = 0; i < 8; i++) {
    CHECK_EQ(g.shard[i], want[i]);
    CHECK_EQ(g.at[i], at[i]);
  }
  CHECK_EQ(dcm__idq_waiting(q), 0);
  CHECK_EQ(dcm__idq_granted(q), 8);
  dcm__idq_free(q);
}

static void never_closer_than_interval(void) {
  /* requests trickle in at odd times; no two grants of a bucket < interval */
  dcm__idq_t *q = dcm__idq_new(64, 4, 5000);
  log_t g = {0};
  uint64_t t = 0;
  for (int s = 0; s < 64; s++) {
    t += (uint64_t)(s * 7919 % 3000);
    run_until(q, &g, t);
    dcm__idq_request(q, (s * 37) % 64, &A);
  }
  run_until(q, &g, t + 400000);
  CHECK_EQ(g.n, 64);
  for (int i = 0; i < g.n; i++)
    for (int j = i + 1; j < g.n; j++)
      if (g.shard[i] % 4 == g.shard[j] % 4) CHECK(g.at[j] - g.at[i] >= 5000);
  dcm__idq_free(q);
}

static void shard_order_within_bucket(void) {
  /* a lower shard asked later still goes before higher ones still queued */
  dcm__idq_t *q = dcm__idq_new(10, 1, 1000);
  log_t g = {0};
  dcm__idq_request(q, 5, &A);
  dcm__idq_request(q, 9, &A);
  run_until(q, &g, 10); /* 5 granted at 0 */
  dcm__idq_request(q, 2, &A);
  run_until(q, &g, 5000);
  CHECK_EQ(g.n, 3);
  CHECK_EQ(g.shard[0], 5);
  CHECK_EQ(g.shard[1], 2);
  CHECK_EQ(g.shard[2], 9);
  CHECK_EQ(g.at[1], 1000);
  CHECK_EQ(g.at[2], 2000);
  dcm__idq_free(q);
}

static void duplicates_and_owner_change(void) {
  dcm__idq_t *q = dcm__idq_new(4, 1, 1000);
  log_t g = {0};
  dcm__idq_request(q, 1, &A);
  dcm__idq_request(q, 1, &A);
  dcm__idq_request(q, 1, &B); /* moved: the new owner gets it */
  CHECK_EQ(dcm__idq_waiting(q), 1);
  CHECK_EQ(dcm__idq_request(q, 4, &A), -1);
  CHECK_EQ(dcm__idq_request(q, -1, &A), -1);
  run_until(q, &g, 100);
  CHECK_EQ(g.n, 1);
  CHECK(g.owner[0] == &B);
  dcm__idq_free(q);
}

static void release_dequeues_and_returns(void) {
  dcm__idq_t *q = dcm__idq_new(4, 1, 1000);
  log_t g = {0};
  dcm__idq_set_budget(q, 10, 10, 0);
  dcm__idq_request(q, 0, &A);
  dcm__idq_request(q, 1, &A);
  CHECK_EQ(dcm__idq_release(q, 1, &B, 0), DCM_IDQ_NOTHING); /* not B's */
  CHECK_EQ(dcm__idq_release(q, 1, &A, 0), DCM_IDQ_DEQUEUED);
  CHECK_EQ(dcm__idq_release(q, 1, &A, 0), DCM_IDQ_NOTHING);
  run_until(q, &g, 10);
  CHECK_EQ(g.n, 1);
  CHECK_EQ(dcm__idq_remaining(q), 9);
  /* returned unused: the identify comes back, the interval stays */
  CHECK_EQ(dcm__idq_release(q, 0, &A, 20), DCM_IDQ_RETURNED);
  CHECK_EQ(dcm__idq_remaining(q), 10);
  CHECK_EQ(dcm__idq_returned(q), 1);
  dcm__idq_request(q, 1, &A); /* queued again after a release */
  run_until(q, &g, 999);
  CHECK_EQ(g.n, 1);
  run_until(q, &g, 1000);
  CHECK_EQ(g.n, 2);
  CHECK_EQ(g.at[1], 1000);
  /* too late to return: nothing changes */
  CHECK_EQ(dcm__idq_release(q, 1, &A, 1000 + DCM_IDQ_RETURN_MS), DCM_IDQ_NOTHING);
  CHECK_EQ(dcm__idq_remaining(q), 9);
  /* re-queued then released again: its old heap entry is skipped */
  dcm__idq_request(q, 3, &A);
  dcm__idq_release(q, 3, &A, 1000);
  dcm__idq_request(q, 3, &A);
  dcm__idq_release(q, 3, &A, 1000);
  run_until(q, &g, 10000);
  CHECK_EQ(g.n, 2);
  CHECK_EQ(dcm__idq_waiting(q), 0);
  dcm__idq_free(q);
}

static void budget_reserve(void) {
  dcm__idq_t *q = dcm__idq_new(10, 2, 100);
  log_t g = {0};
  dcm__idq_set_budget(q, 8, 1000, 5); /* 3 grants, then the reserve */
  for (int s = 0; s < 10; s++) dcm__idq_request(q, s, &A);
  run_until(q, &g, 100000);
  CHECK_EQ(g.n, 3);
  CHECK_EQ(dcm__idq_remaining(q), 5);
  CHECK(dcm__idq_budget_blocked(q));
  CHECK_EQ(dcm__idq_run(q, g.now, grant, &g), DCM_IDQ_NEVER);
  /* legacy peers' identifies are spent outside the queue */
  dcm__idq_spend(q, 2);
  CHECK_EQ(dcm__idq_remaining(q), 3);
  dcm__idq_spend(q, 100);
  CHECK_EQ(dcm__idq_remaining(q), 0);
  /* Discord's reset: grants resume */
  dcm__idq_set_budget(q, 1000, 1000, 5);
  CHECK(!dcm__idq_budget_blocked(q));
  run_until(q, &g, 200000);
  CHECK_EQ(g.n, 10);
  CHECK_EQ(dcm__idq_remaining(q), 993);
  /* unknown budget (fixed shards, no Discord): only pacing */
  dcm__idq_t *u = dcm__idq_new(3, 1, 10);
  log_t h = {0};
  for (int s = 0; s < 3; s++) dcm__idq_request(u, s, &A);
  run_until(u, &h, 1000);
  CHECK_EQ(h.n, 3);
  CHECK(dcm__idq_remaining(u) < 0);
  dcm__idq_free(u);
  dcm__idq_free(q);
}

static void drop_owner_and_refused_grant(void) {
  dcm__idq_t *q = dcm__idq_new(6, 1, 100);
  log_t g = {0};
  dcm__idq_set_budget(q, 100, 100, 0);
  for (int s = 0; s < 6; s++) dcm__idq_request(q, s, s < 3 ? (void *)&A : (void *)&B);
  dcm__idq_drop_owner(q, &A);
  CHECK_EQ(dcm__idq_waiting(q), 3);
  g.refuse = &B; /* B cannot take a grant: dropped, nothing spent */
  uint64_t next = dcm__idq_run(q, 0, grant, &g);
  CHECK_EQ(g.n, 0);
  CHECK_EQ(next, DCM_IDQ_NEVER);
  CHECK_EQ(dcm__idq_waiting(q), 0);
  CHECK_EQ(dcm__idq_remaining(q), 100);
  CHECK_EQ(dcm__idq_next_at(q, 0), 0);
  g.refuse = NULL;
  dcm__idq_request(q, 4, &B);
  run_until(q, &g, 0);
  CHECK_EQ(g.n, 1);
  dcm__idq_drop_owner(q, &B); /* a granted shard is forgotten: no return */
  CHECK_EQ(dcm__idq_release(q, 4, &B, 1), DCM_IDQ_NOTHING);
  dcm__idq_free(q);
}

static void more_buckets_than_shards(void) {
  dcm__idq_t *q = dcm__idq_new(2, 16, 5000);
  log_t g = {0};
  CHECK_EQ(dcm__idq_buckets(q), 2);
  dcm__idq_request(q, 0, &A);
  dcm__idq_request(q, 1, &A);
  run_until(q, &g, 0);
  CHECK_EQ(g.n, 2);
  CHECK(dcm__idq_new(0, 1, 1) == NULL);
  dcm__idq_free(q);
}

int main(void) {
  RUN(pace_per_bucket);
  RUN(never_closer_than_interval);
  RUN(shard_order_within_bucket);
  RUN(duplicates_and_owner_change);
  RUN(release_dequeues_and_returns);
  RUN(budget_reserve);
  RUN(drop_owner_and_refused_grant);
  RUN(more_buckets_than_shards);
  return 0;
}
