/*
 * sessions.h: the agent's store of Discord sessions, the latest one per
 * shard, as its clusters reported them in SESSION lines or MASTER handed
 * them over in connect.sessions; and the queue of entries changed since
 * they were last relayed to MASTER in `sessions`. Pure (no libuv, no I/O)
 * so unit tests drive it directly.
 * Bounds: one entry per shard below the slot count (the bot's
 * shard_count), so at most shard_count entries of sizeof(dcm__ctl_sess_t)
 * plus one pointer per shard for the index, allocated at the first entry.
 */
#ifndef DCM_CTL_SESSIONS_H
#define DCM_CTL_SESSIONS_H

#include <stddef.h>

#include "protocol.h"

typedef struct dcm__ctl_sess_s dcm__ctl_sess_t;

struct dcm__ctl_sess_s {
  dcm__session_t s;
  dcm__ctl_sess_t *next; /* in the relay queue */
  int queued;
};

typedef struct {
  dcm__ctl_sess_t **by_shard; /* nslots entries, NULL: no session known */
  size_t nslots;
  size_t count;
  dcm__ctl_sess_t *head, *tail; /* the relay queue, oldest change first */
  size_t nqueued;
} dcm__ctl_sessions_t;

/* Forgets everything and sizes the store for shards 0..nslots-1. */
void dcm__ctl_sessions_reset(dcm__ctl_sessions_t *st, size_t nslots);
void dcm__ctl_sessions_free(dcm__ctl_sessions_t *st);

/* The session of shard, or NULL. */
const dcm__session_t *dcm__ctl_sessions_get(const dcm__ctl_sessions_t *st, int shard);

/*
 * Stores s as its shard's latest session. Returns 1 if that changed what
 * the store held (then, with queue set, the entry joins the relay queue
 * unless it is in it already), 0 if it held exactly this, -1 if the shard
 * is out of range or memory ran out.
 */
int dcm__ctl_sessions_put(dcm__ctl_sessions_t *st, const dcm__session_t *s, int queue);

/* Drops shard's entry unless it waits in the relay queue; 1 if dropped. */
int dcm__ctl_sessions_drop(dcm__ctl_sessions_t *st, int shard);

/* Queues every entry not queued yet, in shard order (a full report). */
void dcm__ctl_sessions_queue_all(dcm__ctl_sessions_t *st);

/* Up to max queued entries, oldest first, into out (not dequeued). */
size_t dcm__ctl_sessions_peek(const dcm__ctl_sessions_t *st, const dcm__session_t **out,
                              size_t max);

/* Dequeues the n oldest queued entries. */
void dcm__ctl_sessions_pop(dcm__ctl_sessions_t *st, size_t n);

#endif
