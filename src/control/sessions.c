/* sessions.c: see sessions.h. */
#include "sessions.h"

#include <stdlib.h>
#include <string.h>

void dcm__ctl_sessions_free(dcm__ctl_sessions_t *st) {
  for (size_t i = 0; st->by_shard && i < st->nslots; i++) free(st->by_shard[i]);
  free(st->by_shard);
  memset(st, 0, sizeof *st);
}

void dcm__ctl_sessions_reset(dcm__ctl_sessions_t *st, size_t nslots) {
  dcm__ctl_sessions_free(st);
  st->nslots = nslots;
}

const dcm__session_t *dcm__ctl_sessions_get(const dcm__ctl_sessions_t *st, int shard) {
  if (shard < 0 || (size_t)shard >= st->nslots || st->by_shard == NULL) return NULL;
  dcm__ctl_sess_t *e = st->by_shard[shard];
  return e ? &e->s : NULL;
}

static void enqueue(dcm__ctl_sessions_t *st, dcm__ctl_sess_t *e) {
  if (e->queued) return;
  e->queued = 1;
  e->next = NULL;
  if (st->tail) st->tail->next = e; else st->head = e;
  st->tail = e;
  st->nqueued++;
}

int dcm__ctl_sessions_put(dcm__ctl_sessions_t *st, const dcm__session_t *s, int queue) {
  if (s->shard < 0 || (size_t)s->shard >= st->nslots) return -1;
  if (st->by_shard == NULL && (st->by_shard = calloc(st->nslots, sizeof *st->by_shard)) == NULL)
    return -1;
  dcm__ctl_sess_t *e = st->by_shard[s->shard];
  if (e && e->s.seq == s->seq && strcmp(e->s.session_id, s->session_id) == 0 &&
      strcmp(e->s.resume_url, s->resume_url) == 0)
    return 0;
  if (e == NULL) {
    if ((e = calloc(1, sizeof *e)) == NULL) return -1;
    st->by_shard[s->shard] = e;
    st->count++;
  }
  e->s = *s;
  if (queue) enqueue(st, e);
  return 1;
}

int dcm__ctl_sessions_drop(dcm__ctl_sessions_t *st, int shard) {
  if (shard < 0 || (size_t)shard >= st->nslots || st->by_shard == NULL) return 0;
  dcm__ctl_sess_t *e = st->by_shard[shard];
  if (e == NULL || e->queued) return 0;
  st->by_shard[shard] = NULL;
  st->count--;
  free(e);
  return 1;
}

void dcm__ctl_sessions_queue_all(dcm__ctl_sessions_t *st) {
  for (size_t i = 0; st->by_shard && i < st->nslots; i++)
    if (st->by_shard[i]) enqueue(st, st->by_shard[i]);
}

size_t dcm__ctl_sessions_peek(const dcm__ctl_sessions_t *st, const dcm__session_t **out,
                              size_t max) {
  size_t n = 0;
  for (const dcm__ctl_sess_t *e = st->head; e && n < max; e = e->next) out[n++] = &e->s;
  return n;
}

void dcm__ctl_sessions_pop(dcm__ctl_sessions_t *st, size_t n) {
  while (n-- > 0 && st->head) {
    dcm__ctl_sess_t *e = st->head;
    st->head = e->next;
    e->next = NULL;
    e->queued = 0;
    st->nqueued--;
  }
  if (st->head == NULL) st->tail = NULL;
}
