/* fleet.c: see fleet.h. */
#include "fleet.h"

#include <stdlib.h>
#include <stdio.h>
#include <string.h>

static size_t hash_id(const char *id) {
  size_t h = 1469598103934665603ull;
  for (; *id; id++) h = (h ^ (unsigned char)*id) * 1099511628211ull;
  return h;
}

int dcm__fleet_init(dcm_master_t *m) {
  dcm__list_init(&m->machines);
  m->hsize = 64;
  m->htab = calloc(m->hsize, sizeof *m->htab);
  return m->htab ? 0 : DCM_ENOMEM;
}

static void free_sessions(dcm_master_t *m) {
  for (int s = 0; m->session && s < m->shard_count; s++) free(m->session[s]);
  free(m->session);
  m->session = NULL;
}

void dcm__fleet_free(dcm_master_t *m) {
  free(m->htab);
  free(m->owner);
  free(m->leaving);
  free_sessions(m);
  m->htab = NULL;
  m->owner = NULL;
  m->leaving = NULL;
}

int dcm__fleet_set_shards(dcm_master_t *m, int shard_count) {
  dcm__machine_t **owner = calloc((size_t)shard_count, sizeof *owner);
  dcm__machine_t **leaving = calloc((size_t)shard_count, sizeof *leaving);
  dcm__session_t **session = calloc((size_t)shard_count, sizeof *session);
  if (owner == NULL || leaving == NULL || session == NULL) {
    free(owner);
    free(leaving);
    free(session);
    return DCM_ENOMEM;
  }
  free(m->owner);
  free(m->leaving);
  free_sessions(m);
  m->owner = owner;
  m->leaving = leaving;
  m->session = session;
  m->shard_count = shard_count;
  m->nunassigned = (size_t)shard_count;
  return 0;
}

int dcm__fleet_set_session(dcm_master_t *m, const dcm__session_t *s) {
  if (s->shard < 0 || s->shard >= m->shard_count) return DCM_EINVAL;
  dcm__session_t *slot = m->session[s->shard];
  if (slot == NULL && (slot = m->session[s->shard] = malloc(sizeof *slot)) == NULL)
    return DCM_ENOMEM;
  *slot = *s;
  return 0;
}

dcm__machine_t *dcm__fleet_find(dcm_master_t *m, const char *id) {
  dcm__machine_t *x = m->htab[hash_id(id) & (m->hsize - 1)];
  while (x && strcmp(x->id, id) != 0) x = x->hnext;
  return x;
}

static void rehash(dcm_master_t *m) {
  size_t nsize = m->hsize * 2;
  dcm__machine_t **nt = calloc(nsize, sizeof *nt);
  if (nt == NULL) return; /* longer chains, still correct */
  for (size_t i = 0; i < m->hsize; i++) {
    dcm__machine_t *x = m->htab[i];
    while (x) {
      dcm__machine_t *next = x->hnext;
      size_t b = hash_id(x->id) & (nsize - 1);
      x->hnext = nt[b];
      nt[b] = x;
      x = next;
    }
  }
  free(m->htab);
  m->htab = nt;
  m->hsize = nsize;
}

dcm__machine_t *dcm__fleet_add(dcm_master_t *m, const char *id) {
  dcm__machine_t *x = dcm__calloc_lines(sizeof *x);
  if (x == NULL) return NULL;
  snprintf(x->id, sizeof x->id, "%s", id);
  x->m = m;
  x->state = DCM_MACHINE_LIVE;
  uv_timer_init(m->loop, &x->timer);
  x->timer.data = x;
  m->open_handles++;
  dcm__list_push(&m->machines, &x->link);
  dcm__list_init(&x->queue_link);
  if (m->nmachines + 1 > m->hsize) rehash(m);
  size_t b = hash_id(id) & (m->hsize - 1);
  x->hnext = m->htab[b];
  m->htab[b] = x;
  m->nmachines++;
  return x;
}

static void machine_free_cb(uv_handle_t *h) {
  dcm__machine_t *x = h->data;
  dcm_master_t *m = x->m;
  free(x->shards);
  free(x->reported);
  free(x->sent);
  free(x->failed_clusters);
  free(x->failed);
  free(x);
  dcm__master_release(m);
}

void dcm__fleet_remove(dcm_master_t *m, dcm__machine_t *x) {
  dcm__fleet_release(m, x);
  dcm__machine_t **pp = &m->htab[hash_id(x->id) & (m->hsize - 1)];
  while (*pp && *pp != x) pp = &(*pp)->hnext;
  if (*pp) *pp = x->hnext;
  dcm__list_remove(&x->link);
  dcm__list_remove(&x->queue_link);
  m->nmachines--;
  x->state = DCM_MACHINE_DEAD;
  if (x->conn) x->conn->machine = NULL;
  x->conn = NULL;
  uv_close((uv_handle_t *)&x->timer, machine_free_cb);
}

int dcm__fleet_give(dcm_master_t *m, dcm__machine_t *x, int s) {
  if (s < 0 || s >= m->shard_count || m->owner[s] != NULL) return DCM_EINVAL;
  if (x->nshards == x->cap) {
    size_t ncap = x->cap ? x->cap * 2 : 16;
    int *n = realloc(x->shards, ncap * sizeof *n);
    if (n == NULL) return DCM_ENOMEM;
    x->shards = n;
    x->cap = ncap;
  }
  /* keep the list sorted: appends are the common case */
  size_t i = x->nshards;
  while (i > 0 && x->shards[i - 1] > s) {
    x->shards[i] = x->shards[i - 1];
    i--;
  }
  x->shards[i] = s;
  x->nshards++;
  m->owner[s] = x;
  m->nunassigned--;
  return 0;
}

int dcm__fleet_take(dcm_master_t *m, dcm__machine_t *x, int s) {
  if (s < 0 || s >= m->shard_count || m->owner[s] != x) return DCM_EINVAL;
  size_t i = 0;
  while (i < x->nshards && x->shards[i] != s) i++;
  if (i == x->nshards) return DCM_EINVAL;
  memmove(x->shards + i, x->shards + i + 1, (x->nshards - i - 1) * sizeof *x->shards);
  x->nshards--;
  m->owner[s] = NULL;
  m->nunassigned++;
  return 0;
}

void dcm__fleet_release(dcm_master_t *m, dcm__machine_t *x) {
  for (size_t i = 0; i < x->nshards; i++)
    if (x->shards[i] < m->shard_count && m->owner[x->shards[i]] == x) {
      m->owner[x->shards[i]] = NULL;
      m->nunassigned++;
    }
  x->nshards = 0;
}

size_t dcm__fleet_unassigned(const dcm_master_t *m, int *out) {
  size_t n = 0;
  for (int s = 0; s < m->shard_count; s++)
    if (m->owner[s] == NULL) out[n++] = s;
  return n;
}

static int cmp_machine(const void *a, const void *b) {
  return strcmp((*(dcm__machine_t *const *)a)->id, (*(dcm__machine_t *const *)b)->id);
}

size_t dcm__fleet_live(dcm_master_t *m, dcm__machine_t **out, int standby_too) {
  size_t n = 0;
  for (dcm__link_t *l = m->machines.next; l != &m->machines; l = l->next) {
    dcm__machine_t *x = DCM_CONTAINER(l, dcm__machine_t, link);
    if (x->state == DCM_MACHINE_LIVE && (standby_too || !x->standby)) out[n++] = x;
  }
  qsort(out, n, sizeof *out, cmp_machine);
  return n;
}
