/*
 * coordinator.h: the calls between the coordinator layer's own files:
 * coordinator.c (the lifecycle: fetch, collect, allocate, connect, machine
 * events, fatal), grants.c (the identify queue's grants and the budget wait)
 * and handoff.c (sessions, stop before start, rebalance). The layers below
 * (session.c and the transport) reach the coordinator only through the
 * dcm__coord_* entry points in internal.h; nothing here calls up.
 */
#ifndef DCM_COORDINATOR_H
#define DCM_COORDINATOR_H

#include "internal.h"

/* coordinator.c */
/* x is owed a `connect`; dcm__coord_pump sends it once the decision is whole. */
void dcm__coord_queue_connect(dcm_master_t *m, dcm__machine_t *x);
/* Sends every `connect` owed (all in this turn: pacing is the queue's job). */
void dcm__coord_pump(dcm_master_t *m);
void dcm__coord_fetch_gateway(dcm_master_t *m);
/* The allocation policy's split of every shard over xs: owner[s] indexes xs. */
int dcm__coord_plan(dcm_master_t *m, dcm__machine_t **xs, size_t n, int *owner);

/* grants.c */
int dcm__grants_start(dcm_master_t *m); /* the queue, once the shard count is known */
void dcm__grants_kick(dcm_master_t *m); /* run the queue on the next loop turn */
void dcm__grants_refetch_in(dcm_master_t *m, uint64_t ms); /* ask Discord again then */

/* handoff.c */
/* Shard s is now `to`'s. If `from` (which confirms stops) still runs it,
   `to` waits for its `stopped`; otherwise `to` is owed a `connect`. */
void dcm__handoff_give(dcm_master_t *m, int s, dcm__machine_t *from, dcm__machine_t *to);
/* s stopped where it ran (or nobody waits any more): its new owner may start. */
void dcm__handoff_done(dcm_master_t *m, int s);
void dcm__handoff_arm(dcm_master_t *m); /* re-arms the timer to the first deadline */
/* After an event that may end a rebalance step (ready, stopped, a loss). */
void dcm__handoff_progress(dcm_master_t *m);

#endif
