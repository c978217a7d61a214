/* identify.c: see identify.h. */
#include "identify.h"

#include <stdlib.h>

enum { IDLE = 0, QUEUED = 1, GRANTED = 2 };

typedef struct {
  void *owner;         /* who asked (QUEUED) or was granted (GRANTED) */
  uint64_t granted_at; /* GRANTED: when */
  uint8_t state;
  uint8_t in_heap; /* an entry is in its bucket's heap (at most one) */
} slot_t;

typedef struct {
  int *heap; /* min-heap of shard ids; entries no longer QUEUED are skipped */
  size_t len, cap;
  size_t depth;     /* shards QUEUED in this bucket */
  uint64_t next_at; /* no grant before this */
} bucket_t;

struct dcm__idq_s {
  int shard_count, nbuckets;
  uint64_t interval;
  slot_t *slot;
  bucket_t *bucket;
  size_t waiting;
  long remaining, total, reserve; /* remaining < 0: unknown */
  uint64_t granted, returned;
};

dcm__idq_t *dcm__idq_new(int shard_count, int max_concurrency, uint64_t interval_ms) {
  if (shard_count < 1 || max_concurrency < 1) return NULL;
  dcm__idq_t *q = calloc(1, sizeof *q);
  if (q == NULL) return NULL;
  q->shard_count = shard_count;
  q->nbuckets = max_concurrency < shard_count ? max_concurrency : shard_count;
  q->interval = interval_ms;
  q->remaining = -1;
  q->slot = calloc((size_t)shard_count, sizeof *q->slot);
  q->bucket = calloc((size_t)q->nbuckets, sizeof *q->bucket);
  if (q->slot == NULL || q->bucket == NULL) {
    dcm__idq_free(q);
    return NULL;
  }
  return q;
}

void dcm__idq_free(dcm__idq_t *q) {
  if (q == NULL) return;
  for (int b = 0; q->bucket && b < q->nbuckets; b++) free(q->bucket[b].heap);
  free(q->bucket);
  free(q->slot);
  free(q);
}

void dcm__idq_set_budget(dcm__idq_t *q, long remaining, long total, long reserve) {
  q->remaining = remaining;
  q->total = total;
  q->reserve = reserve < 0 ? 0 : reserve;
}

void dcm__idq_spend(dcm__idq_t *q, long n) {
  if (q->remaining < 0) return;
  q->remaining = q->remaining > n ? q->remaining - n : 0;
}

/* ---- the per-bucket heap ------------------------------------------------- */

static int heap_push(bucket_t *b, int shard) {
  if (b->len == b->cap) {
    size_t ncap = b->cap ? b->cap * 2 : 16;
    int *h = realloc(b->heap, ncap * sizeof *h);
    if (h == NULL) return -1;
    b->heap = h;
    b->cap = ncap;
  }
  size_t i = b->len++;
  while (i > 0 && b->heap[(i - 1) / 2] > shard) {
    b->heap[i] = b->heap[(i - 1) / 2];
    i = (i - 1) / 2;
  }
  b->heap[i] = shard;
  return 0;
}

static void heap_pop(bucket_t *b) {
  int last = b->heap[--b->len];
  size_t i = 0;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= b->len) break;
    if (c + 1 < b->len && b->heap[c + 1] < b->heap[c]) c++;
    if (b->heap[c] >= last) break;
    b->heap[i] = b->heap[c];
    i = c;
  }
  if (b->len) b->heap[i] = last;
}

/* ---- requests ------------------------------------------------------------ */

static bucket_t *bucket_of(dcm__idq_t *q, int shard) {
  return &q->bucket[shard % q->nbuckets];
}

static void unqueue(dcm__idq_t *q, int shard) {
  q->slot[shard].state = IDLE;
  q->slot[shard].owner = NULL;
  bucket_of(q, shard)->depth--;
  q->waiting--;
}

int dcm__idq_request(dcm__idq_t *q, int shard, void *owner) {
  if (shard < 0 || shard >= q->shard_count) return -1;
  slot_t *s = &q->slot[shard];
  bucket_t *b = bucket_of(q, shard);
  if (s->state == QUEUED) {
    s->owner = owner;
    return 0;
  }
  if (!s->in_heap) {
    if (heap_push(b, shard) != 0) return -1;
    s->in_heap = 1;
  }
  s->state = QUEUED;
  s->owner = owner;
  b->depth++;
  q->waiting++;
  return 0;
}

int dcm__idq_release(dcm__idq_t *q, int shard, void *owner, uint64_t now) {
  if (shard < 0 || shard >= q->shard_count) return DCM_IDQ_NOTHING;
  slot_t *s = &q->slot[shard];
  if (s->owner != owner) return DCM_IDQ_NOTHING;
  if (s->state == QUEUED) {
    unqueue(q, shard);
    return DCM_IDQ_DEQUEUED;
  }
  if (s->state == GRANTED) {
    int fresh = now - s->granted_at < DCM_IDQ_RETURN_MS;
    s->state = IDLE;
    s->owner = NULL;
    if (!fresh) return DCM_IDQ_NOTHING;
    q->returned++;
    if (q->remaining >= 0 && q->remaining < q->total) q->remaining++;
    return DCM_IDQ_RETURNED;
  }
  return DCM_IDQ_NOTHING;
}

void dcm__idq_drop_owner(dcm__idq_t *q, void *owner) {
  for (int i = 0; i < q->shard_count; i++) {
    slot_t *s = &q->slot[i];
    if (s->owner != owner) continue;
    if (s->state == QUEUED) {
      unqueue(q, i);
    } else {
      s->state = IDLE;
      s->owner = NULL;
    }
  }
}

/* ---- grants -------------------------------------------------------------- */

static int budget_allows(const dcm__idq_t *q) {
  return q->remaining < 0 || q->remaining - 1 >= q->reserve;
}

uint64_t dcm__idq_run(dcm__idq_t *q, uint64_t now, dcm__idq_grant_fn grant, void *arg) {
  uint64_t wake = DCM_IDQ_NEVER;
  for (int i = 0; i < q->nbuckets; i++) {
    bucket_t *b = &q->bucket[i];
    while (b->depth > 0 && b->next_at <= now && budget_allows(q)) {
      int shard = b->heap[0];
      slot_t *s = &q->slot[shard];
      heap_pop(b);
      s->in_heap = 0;
      if (s->state != QUEUED) continue; /* released or dropped meanwhile */
      void *owner = s->owner;
      unqueue(q, shard);
      if (grant(arg, shard, owner) != 0) continue; /* nothing spent */
      s->state = GRANTED;
      s->owner = owner;
      s->granted_at = now;
      b->next_at = now + q->interval;
      q->granted++;
      if (q->remaining > 0) q->remaining--;
    }
    if (b->depth > 0 && budget_allows(q) && b->next_at < wake) wake = b->next_at;
  }
  return wake;
}

/* ---- views --------------------------------------------------------------- */

int dcm__idq_buckets(const dcm__idq_t *q) { return q->nbuckets; }

size_t dcm__idq_depth(const dcm__idq_t *q, int bucket) { return q->bucket[bucket].depth; }

size_t dcm__idq_waiting(const dcm__idq_t *q) { return q->waiting; }

void dcm__idq_hold(dcm__idq_t *q, int bucket, uint64_t until) {
  if (bucket < 0 || bucket >= q->nbuckets) return;
  if (q->bucket[bucket].next_at < until) q->bucket[bucket].next_at = until;
}

uint64_t dcm__idq_next_at(const dcm__idq_t *q, int bucket) { return q->bucket[bucket].next_at; }

int dcm__idq_budget_blocked(const dcm__idq_t *q) { return q->waiting > 0 && !budget_allows(q); }

long dcm__idq_remaining(const dcm__idq_t *q) { return q->remaining; }

long dcm__idq_reserve(const dcm__idq_t *q) { return q->reserve; }

uint64_t dcm__idq_granted(const dcm__idq_t *q) { return q->granted; }

uint64_t dcm__idq_returned(const dcm__idq_t *q) { return q->returned; }
