/*
 * unauth.c: unidentified connections (from accept until `info`) counted per
 * source address (IPv4, or IPv6 /64): past max_unauthenticated_per_address
 * the address's oldest one is closed, and at max_unauthenticated the oldest
 * one of the address holding the most. A newcomer always gets in, so
 * held-open slow heads (or stalled TLS handshakes) cannot lock honest
 * CONTROLs out. O(1) per accept: addresses sit in a hash table and in lists
 * by count. server.c calls it at accept, upgrade and detach.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define ADDR_BUCKETS (sizeof(((dcm_master_t *)0)->addr_hash) / sizeof(dcm__addr_t *))

struct dcm__addr_s {
  unsigned char key[16]; /* IPv4 as ::ffff:a.b.c.d; IPv6 cut to its /64 */
  char name[INET6_ADDRSTRLEN + 4];
  int count;             /* its unidentified connections */
  dcm__link_t conns;     /* those, oldest first */
  dcm__link_t by_count;  /* in m->addr_counts[count], oldest first */
  dcm__addr_t *hnext;
};

/* FNV-1a from a random seed, then a final mix: chains are not predictable. */
static uint32_t addr_hash(const dcm_master_t *m, const unsigned char key[16]) {
  uint32_t h = 2166136261u ^ m->addr_seed;
  for (int i = 0; i < 16; i++) h = (h ^ key[i]) * 16777619u;
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  return h;
}

static dcm__addr_t *addr_find(const dcm_master_t *m, const unsigned char key[16]) {
  dcm__addr_t *a = m->addr_hash[addr_hash(m, key) % ADDR_BUCKETS];
  while (a && memcmp(a->key, key, 16) != 0) a = a->hnext;
  return a;
}

/* Moves a to the list of its (new) count, at the tail. */
static void addr_recount(dcm_master_t *m, dcm__addr_t *a, int count) {
  dcm__list_remove(&a->by_count);
  a->count = count;
  if (count > 0) dcm__list_push(&m->addr_counts[count], &a->by_count);
  if (count > m->addr_top) m->addr_top = count;
  while (m->addr_top > 0 && dcm__list_empty(&m->addr_counts[m->addr_top])) m->addr_top--;
}

/* The table outlives no connection: freed once stopping and empty. */
void dcm__unauth_release(dcm_master_t *m) {
  if (m->stopping && m->naddrs == 0) {
    free(m->addr_counts);
    m->addr_counts = NULL;
  }
}

void dcm__unauth_unlink(dcm__conn_t *c) {
  dcm_master_t *m = c->m;
  dcm__addr_t *a = c->addr;
  if (a == NULL) return;
  c->addr = NULL;
  dcm__list_remove(&c->addr_link);
  addr_recount(m, a, a->count - 1);
  if (a->count > 0) return;
  dcm__addr_t **p = &m->addr_hash[addr_hash(m, a->key) % ADDR_BUCKETS];
  while (*p != a) p = &(*p)->hnext;
  *p = a->hnext;
  free(a);
  m->naddrs--;
  dcm__unauth_release(m);
}

int dcm__unauth_link(dcm__conn_t *c, const unsigned char key[16], const char *name) {
  dcm_master_t *m = c->m;
  dcm__addr_t *a = addr_find(m, key);
  if (a && a->count >= m->addr_count_max) return DCM_ESTATE; /* make_room prevents it */
  if (a == NULL) {
    a = calloc(1, sizeof *a);
    if (a == NULL) return DCM_ENOMEM;
    memcpy(a->key, key, 16);
    snprintf(a->name, sizeof a->name, "%s", name);
    dcm__list_init(&a->conns);
    dcm__list_init(&a->by_count);
    uint32_t b = addr_hash(m, key) % ADDR_BUCKETS;
    a->hnext = m->addr_hash[b];
    m->addr_hash[b] = a;
    m->naddrs++;
  }
  c->addr = a;
  dcm__list_push(&a->conns, &c->addr_link);
  addr_recount(m, a, a->count + 1);
  return 0;
}

/* Upgraded: the connection counts as new again, last to be evicted. */
void dcm__unauth_touch(dcm__conn_t *c) {
  dcm__addr_t *a = c->addr;
  if (a == NULL) return;
  dcm__list_remove(&c->addr_link);
  dcm__list_push(&a->conns, &c->addr_link);
  dcm__list_remove(&a->by_count);
  dcm__list_push(&c->m->addr_counts[a->count], &a->by_count);
}

/* "host:port" for logs, and the key and name its address is counted under. */
void dcm__unauth_peer(uv_tcp_t *t, char *out, size_t n, unsigned char key[16], char *addr,
                      size_t addrn) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  char host[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  memset(key, 0, 16);
  ss.ss_family = AF_UNSPEC; /* unknown peers share one key */
  if (uv_tcp_getpeername(t, (struct sockaddr *)&ss, &len) == 0) {
    if (ss.ss_family == AF_INET6) {
      struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
      uv_ip6_name(a, host, sizeof host);
      port = ntohs(a->sin6_port);
      memcpy(key, &a->sin6_addr, 16);
    } else if (ss.ss_family == AF_INET) { /* a socketpair (AF_UNIX) has no address */
      struct sockaddr_in *a = (struct sockaddr_in *)&ss;
      uv_ip4_name(a, host, sizeof host);
      port = ntohs(a->sin_port);
      key[10] = key[11] = 0xff; /* as IPv4-mapped IPv6: one key for both */
      memcpy(key + 12, &a->sin_addr, 4);
    }
  }
  static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (ss.ss_family == AF_INET6 && memcmp(key, mapped, 12) != 0) {
    /* One IPv6 host usually holds a whole /64: count the prefix. */
    memset(key + 8, 0, 8);
    struct sockaddr_in6 p;
    memset(&p, 0, sizeof p);
    p.sin6_family = AF_INET6;
    memcpy(&p.sin6_addr, key, 16);
    char prefix[INET6_ADDRSTRLEN] = "?";
    uv_ip6_name(&p, prefix, sizeof prefix);
    snprintf(addr, addrn, "%s/64", prefix);
  } else {
    snprintf(addr, addrn, "%s", host);
  }
  snprintf(out, n, "%s:%d", host, port);
}

static int rate_ok(dcm_master_t *m, int which) {
  uint64_t now = uv_now(m->loop);
  if (m->last_evict_log[which] && now - m->last_evict_log[which] < 10000) return 0;
  m->last_evict_log[which] = now;
  return 1;
}

/*
 * Room for one more unidentified connection from key: over the address's
 * limit its own oldest goes; at the global cap the oldest of the address
 * that would hold the most, the newcomer's counted (an honest CONTROL
 * holds one, briefly).
 */
void dcm__unauth_make_room(dcm_master_t *m, const unsigned char key[16], const char *name) {
  dcm__addr_t *a = addr_find(m, key);
  dcm__conn_t *victim;
  int global = m->unauth >= m->o.max_unauthenticated;
  if (a && (a->count >= m->o.max_unauthenticated_per_address ||
            (global && a->count >= m->addr_top))) {
    victim = DCM_CONTAINER(a->conns.next, dcm__conn_t, addr_link);
    m->evicted++;
    if (a->count < m->o.max_unauthenticated_per_address) {
      if (rate_ok(m, 1))
        dcm__warn(&m->log, NULL, "over %d unidentified connections: closing the oldest of %s, "
                  "which holds %d (%lu closed so far)", m->o.max_unauthenticated, name,
                  a->count, m->evicted);
    } else if (rate_ok(m, 0)) {
      dcm__warn(&m->log, NULL, "over %d unidentified connections from %s: closing its oldest "
                "(%lu closed so far)", m->o.max_unauthenticated_per_address, name, m->evicted);
    }
  } else if (global && m->addr_top > 0) {
    a = DCM_CONTAINER(m->addr_counts[m->addr_top].next, dcm__addr_t, by_count);
    victim = DCM_CONTAINER(a->conns.next, dcm__conn_t, addr_link);
    m->evicted++;
    if (rate_ok(m, 1))
      dcm__warn(&m->log, NULL, "over %d unidentified connections: closing the oldest of %s, "
                "which holds %d (%lu closed so far)", m->o.max_unauthenticated, a->name,
                a->count, m->evicted);
  } else {
    return;
  }
  dcm__conn_evict(victim);
}

int dcm__unauth_init(dcm_master_t *m) {
  /* Counts never exceed the smaller limit: one list per possible count. */
  int top = m->o.max_unauthenticated_per_address < m->o.max_unauthenticated
                ? m->o.max_unauthenticated_per_address : m->o.max_unauthenticated;
  m->addr_counts = malloc(((size_t)top + 1) * sizeof *m->addr_counts);
  if (m->addr_counts == NULL) return UV_ENOMEM;
  for (int i = 0; i <= top; i++) dcm__list_init(&m->addr_counts[i]);
  m->addr_count_max = top;
  if (uv_random(NULL, NULL, &m->addr_seed, sizeof m->addr_seed, 0, NULL) != 0)
    m->addr_seed = (uint32_t)uv_hrtime();
  return 0;
}
