/*
 * metrics.h: GET /metrics in the Prometheus text exposition format 0.0.4.
 * Two parts: a writer for the format (families, samples, label escaping,
 * a bounded buffer), shared with the CONTROL agent's own /metrics; and
 * MASTER's page, rendered from the master's state on each request. The
 * event counters below live in the master struct and are bumped where the
 * events happen (coordinator, handoff, server). Depends on libc only; the
 * page itself on internal.h (metrics.c).
 */
#ifndef DCM_METRICS_H
#define DCM_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "discluster/master.h"

/* Events since the master started; only ever incremented. */
typedef struct {
  uint64_t failovers;      /* machines declared dead, their shards moved */
  uint64_t drains;         /* machines that sent `offload` */
  uint64_t resumes_handed; /* shards sent in a `connect` with a session */
  uint64_t rebalances;     /* rebalances started (or restarted) */
  uint64_t bytes_in, bytes_out;     /* TCP payload, every connection */
  uint64_t packets_in, packets_out; /* WebSocket messages */
} dcm__counters_t;

/* ---- the text format ----------------------------------------------------- */

/* A page is at most this long; a longer one fails (the reply is 500). */
#define DCM_PROM_MAX (2u << 20)

typedef struct {
  char *buf;
  size_t len, cap;
  int failed; /* out of memory or over DCM_PROM_MAX: the page is void */
} dcm__prom_t;

void dcm__prom_init(dcm__prom_t *p);
void dcm__prom_free(dcm__prom_t *p);

/* The # HELP and # TYPE lines of a family; type is "counter" or "gauge".
   Every sample of the family follows before the next family. */
void dcm__prom_family(dcm__prom_t *p, const char *name, const char *type, const char *help);

/* One sample: name{k1="v1",...} value. labels: NULL, or key, value pairs
   ending with a NULL key; values are escaped (\\, \" and \n). _num writes
   three decimals (seconds to the millisecond). */
void dcm__prom_int(dcm__prom_t *p, const char *name, const char *const *labels, uint64_t v);
void dcm__prom_num(dcm__prom_t *p, const char *name, const char *const *labels, double v);

/* The page, NUL-terminated, handed to the caller (free()); NULL if failed. */
char *dcm__prom_take(dcm__prom_t *p, size_t *len);

/* ---- MASTER's page ------------------------------------------------------- */

/* Heartbeat ages are listed for at most this many machines (the first
   ones in the fleet's order); the maximum age covers them all. */
#define DCM_METRICS_MACHINES_MAX 5000

/* The page for GET /metrics (free() it), or NULL out of memory. */
char *dcm__metrics_text(dcm_master_t *m, size_t *len);

#endif
