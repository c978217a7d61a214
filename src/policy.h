/*
 * policy.h: Lua 5.4 policy generations. A generation is one sandboxed
 * lua_State holding the user's policy over policies/default.lua; it decides
 * allocation and failover, and every result is validated here in C before
 * the core sees it. A rejected result or a policy error falls back to the
 * default policy for that decision. Reload is transactional. Every call
 * runs on its state's thread and returns within its time budget plus
 * DCM_SANDBOX_GRACE_MS (sandbox.h).
 * Depends on Lua 5.4 and log.h; knows nothing about sockets.
 */
#ifndef DCM_POLICY_H
#define DCM_POLICY_H

#include <stddef.h>
#include <stdint.h>
#include "log.h"

/* One machine as a policy sees it (borrowed for the call's duration). */
typedef struct {
  const char *id;
  int cores;
  double loadavg;
  int standby;
  const int *shards; /* shards it runs now */
  size_t nshards;
} dcm__pmachine_t;

typedef struct {
  int shard_count;
  int max_concurrency;
} dcm__pctx_t;

typedef struct dcm__policy_s dcm__policy_t;

/*
 * Loads path (NULL: the default policy alone) over default.lua found in
 * policy_dir (NULL: search next to the binary, then the source and install
 * trees). Runs the self-check. time: the time budget (seconds) of a call
 * with no shards or machines, growing with them as the instruction budget
 * does; 0 for the default (1). DCM_EPOLICY with a logged reason on failure.
 */
int dcm__policy_new(const char *path, const char *policy_dir, double time,
                    dcm__log_t *log, dcm__policy_t **out);
void dcm__policy_free(dcm__policy_t *p);

/* Rebuilds the generation from the same files; on error the old one stays.
   The self-check runs on the live fleet when one is given (n > 0), else on
   a synthetic one. */
int dcm__policy_reload(dcm__policy_t *p, const dcm__pmachine_t *live, size_t n,
                       const dcm__pctx_t *ctx);

/*
 * machines: the active (non-standby) machines, n >= 1.
 * On success owner[s] is the index in machines of shard s's machine, for
 * every s in 0..ctx->shard_count-1.
 */
int dcm__policy_allocate(dcm__policy_t *p, const dcm__pmachine_t *machines,
                         size_t n, const dcm__pctx_t *ctx, int *owner);

/*
 * machines: the live machines, standby ones included (n may be 0).
 * On success owner[i] is the index in machines that takes dead->shards[i],
 * or -1 for every i when no machine is eligible (shards stay unassigned).
 */
int dcm__policy_failover(dcm__policy_t *p, const dcm__pmachine_t *dead,
                         const dcm__pmachine_t *machines, size_t n,
                         const dcm__pctx_t *ctx, int *owner);

/* What /metrics shows: counts since dcm__policy_new. */
typedef struct {
  uint64_t calls;           /* allocate and failover decisions asked */
  uint64_t errors;          /* calls whose policy failed or was rejected */
  uint64_t reloads;         /* successful reloads */
  uint64_t reload_failures; /* reloads that kept the running policy */
} dcm__policy_stats_t;
void dcm__policy_stats(const dcm__policy_t *p, dcm__policy_stats_t *out);

/* The user's policy file, or the default's path. */
const char *dcm__policy_path(const dcm__policy_t *p);

#endif
