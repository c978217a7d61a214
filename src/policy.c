/* policy.c: policy generations, calls and result validation; see policy.h. */
#include "policy.h"
#include "policy_internal.h"

#include <lauxlib.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define POLICY_KEY "dcm.policy"
#define MAX_SHARDS 1000000
#define MAX_MACHINES 100000
/* Per-call allowances on top of the fixed budget and memory cap. */
#define BUDGET_PER_ITEM 100LL
#define MEMORY_PER_SHARD 64u
#define MEMORY_PER_MACHINE 1024u

/* A VM whose job was abandoned (see sandbox.h) leaves its slot NULL. */
typedef struct {
  dcm__pvm_t *def;  /* default.lua alone: the fallback */
  dcm__pvm_t *user; /* the user's file over default.lua; NULL without one */
} gen_t;

struct dcm__policy_s {
  char *path;         /* the user's file, NULL for the default alone */
  char *default_path; /* default.lua */
  double time;        /* seconds per DCM__PVM_BUDGET units */
  dcm__log_t *log;
  gen_t *gen;
  int strict;
  dcm__policy_stats_t stats;
};

/* The live fleet a reload is checked against (NULL: the synthetic one). */
typedef struct {
  const dcm__pmachine_t *machines;
  size_t n;
  dcm__pctx_t ctx;
} live_t;

enum { OP_ALLOCATE, OP_FAILOVER, OP_RATIO };
static const char *const op_names[] = {"allocate", "failover", "ratio"};

/* One call into a VM, run as a protected C function. */
typedef struct {
  int op;
  dcm__pvm_t *vm;
  const dcm__pmachine_t *dead;
  const dcm__pmachine_t *machines;
  size_t n;
  const dcm__pctx_t *ctx;
  int *owner;
  int *pos; /* failover: shard -> index in dead->shards, or -1 */
  long long budget;
  int rc;                     /* 0, DCM_EPOLICY or DCM_EINVAL */
  char where[160];            /* the function's file:line */
  char err[DCM__PVM_ERRLEN];  /* why rc != 0 */
} call_t;

#define CALL_FAIL(c, code, ...)                        \
  do {                                                 \
    snprintf((c)->err, sizeof (c)->err, __VA_ARGS__);  \
    (c)->rc = (code);                                  \
    return 0;                                          \
  } while (0)

/* Names a value without converting it in place (lua_next needs keys). */
static const char *describe(lua_State *L, int idx, char *buf, size_t n) {
  switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx))
        snprintf(buf, n, "%lld", (long long)lua_tointeger(L, idx));
      else if (isnan(lua_tonumber(L, idx)))
        snprintf(buf, n, "nan"); /* printf may say -nan */
      else
        snprintf(buf, n, "%.17g", lua_tonumber(L, idx));
      return buf;
    case LUA_TSTRING:
      snprintf(buf, n, "'%.64s'", lua_tostring(L, idx));
      return buf;
    default:
      snprintf(buf, n, "a %s", luaL_typename(L, idx));
      return buf;
  }
}

static void push_machine(lua_State *L, const dcm__pmachine_t *m) {
  lua_createtable(L, 0, 5);
  lua_pushstring(L, m->id);
  lua_setfield(L, -2, "id");
  lua_pushinteger(L, m->cores);
  lua_setfield(L, -2, "cores");
  lua_pushnumber(L, m->loadavg);
  lua_setfield(L, -2, "loadavg");
  lua_pushboolean(L, m->standby);
  lua_setfield(L, -2, "standby");
  lua_createtable(L, (int)m->nshards, 0);
  for (size_t i = 0; i < m->nshards; i++) {
    lua_pushinteger(L, m->shards[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "shards");
}

/* Pushes the machines array and fills the id -> index table at idx;
 * 0, or -1 on a missing or repeated id. */
static int push_machines(lua_State *L, call_t *c, int idx) {
  lua_createtable(L, (int)c->n, 0);
  for (size_t i = 0; i < c->n; i++) {
    const dcm__pmachine_t *m = &c->machines[i];
    if (m->id == NULL) {
      snprintf(c->err, sizeof c->err, "machine %zu has no id", i);
      return -1;
    }
    lua_pushstring(L, m->id);
    if (lua_rawget(L, idx) != LUA_TNIL ||
        (c->dead && strcmp(c->dead->id, m->id) == 0)) {
      snprintf(c->err, sizeof c->err, "machine id '%.64s' appears twice",
               m->id);
      return -1;
    }
    lua_pop(L, 1);
    lua_pushstring(L, m->id);
    lua_pushinteger(L, (lua_Integer)i);
    lua_rawset(L, idx);
    push_machine(L, m);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 0;
}

static void push_ctx(lua_State *L, const dcm__pctx_t *ctx) {
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, ctx->shard_count);
  lua_setfield(L, -2, "shard_count");
  lua_pushinteger(L, ctx->max_concurrency);
  lua_setfield(L, -2, "max_concurrency");
}

/*
 * Checks res (a table {[id] = {shards}}) against the machines in idx.
 * Allocate (pos NULL): every shard 0..count-1 exactly once, owner[s] = i.
 * Failover: exactly the dead shards, owner[pos[s]] = i.
 */
static int check_result(lua_State *L, call_t *c, int res, int idx) {
  char a[96], b[96];
  const char *what = op_names[c->op];
  int count = c->ctx->shard_count;
  size_t want = c->pos ? c->dead->nshards : (size_t)count;
  size_t got = 0;
  if (!lua_istable(L, res))
    CALL_FAIL(c, DCM_EPOLICY, "%s returned %s, expected a table {[id] = {shard, ...}}",
              what, describe(L, res, a, sizeof a));
  for (size_t i = 0; i < want; i++) c->owner[i] = -1;
  lua_pushnil(L);
  while (lua_next(L, res)) {
    int key = lua_gettop(L) - 1, list = key + 1;
    if (lua_type(L, key) != LUA_TSTRING)
      CALL_FAIL(c, DCM_EPOLICY, "%s result has the key %s; keys must be machine ids",
                what, describe(L, key, a, sizeof a));
    lua_pushvalue(L, key);
    if (lua_rawget(L, idx) != LUA_TNUMBER)
      CALL_FAIL(c, DCM_EPOLICY, "%s result names unknown machine %s", what,
                describe(L, key, a, sizeof a));
    int mi = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (!lua_istable(L, list))
      CALL_FAIL(c, DCM_EPOLICY, "%s result for %s is %s, expected an array of shard ids",
                what, describe(L, key, a, sizeof a), describe(L, list, b, sizeof b));
    lua_Integer len = (lua_Integer)lua_rawlen(L, list), seen = 0;
    lua_pushnil(L);
    while (lua_next(L, list)) {
      int ok = 0;
      if (!lua_isinteger(L, -2) || lua_tointeger(L, -2) < 1 ||
          lua_tointeger(L, -2) > len)
        CALL_FAIL(c, DCM_EPOLICY, "%s result for %s is not an array (key %s)",
                  what, describe(L, key, a, sizeof a), describe(L, -2, b, sizeof b));
      lua_Integer s = 0;
      if (lua_type(L, -1) == LUA_TNUMBER) s = lua_tointegerx(L, -1, &ok);
      if (!ok)
        CALL_FAIL(c, DCM_EPOLICY, "%s result for %s holds %s, expected integer shard ids",
                  what, describe(L, key, a, sizeof a), describe(L, -1, b, sizeof b));
      if (s < 0 || s >= count)
        CALL_FAIL(c, DCM_EPOLICY, "%s result for %s holds shard %lld, outside 0-%d",
                  what, describe(L, key, a, sizeof a), (long long)s, count - 1);
      int slot = c->pos ? c->pos[s] : (int)s;
      if (slot < 0)
        CALL_FAIL(c, DCM_EPOLICY, "failover result for %s holds shard %lld, "
                  "which the dead machine '%.64s' did not run",
                  describe(L, key, a, sizeof a), (long long)s, c->dead->id);
      if (c->owner[slot] >= 0)
        CALL_FAIL(c, DCM_EPOLICY, "%s result gives shard %lld to both '%.64s' and '%.64s'",
                  what, (long long)s, c->machines[c->owner[slot]].id,
                  c->machines[mi].id);
      c->owner[slot] = mi;
      seen++;
      got++;
      lua_pop(L, 1);
    }
    if (seen != len)
      CALL_FAIL(c, DCM_EPOLICY, "%s result for %s is not an array (holes)",
                what, describe(L, key, a, sizeof a));
    lua_pop(L, 1);
  }
  if (got != want) {
    size_t first = 0;
    while (first < want && c->owner[first] >= 0) first++;
    CALL_FAIL(c, DCM_EPOLICY, "%s result leaves %zu shard(s) out, the first is %d",
              what, want - got, c->pos ? c->dead->shards[first] : (int)first);
  }
  return 0;
}

static int run_call(lua_State *L) {
  call_t *c = lua_touserdata(L, 1);
  lua_settop(L, 0);
  lua_getfield(L, LUA_REGISTRYINDEX, POLICY_KEY);
  lua_pushstring(L, op_names[c->op]);
  if (lua_rawget(L, 1) != LUA_TFUNCTION)
    CALL_FAIL(c, DCM_EPOLICY, "policy.%s is not a function", op_names[c->op]);
  lua_Debug ar;
  lua_pushvalue(L, 2);
  lua_getinfo(L, ">S", &ar);
  snprintf(c->where, sizeof c->where, "%s:%d", ar.short_src, ar.linedefined);
  if (c->op == OP_RATIO) {
    push_machine(L, c->machines);
    if (dcm__pvm_call(c->vm, 1, c->budget, c->err, sizeof c->err) != 0) {
      c->rc = DCM_EPOLICY;
      return 0;
    }
    char a[96];
    double r = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : NAN;
    if (!(r > 0) || !isfinite(r))
      CALL_FAIL(c, DCM_EPOLICY, "ratio(%.64s) returned %s; expected a positive finite number",
                c->machines->id, describe(L, -1, a, sizeof a));
    return 0;
  }
  /* stack: 1 policy, 2 function, 3 idx, 4 function, [dead], machines, ctx */
  lua_createtable(L, 0, (int)c->n);
  lua_pushvalue(L, 2);
  if (c->op == OP_FAILOVER) push_machine(L, c->dead);
  if (push_machines(L, c, 3) != 0) {
    c->rc = DCM_EINVAL;
    return 0;
  }
  push_ctx(L, c->ctx);
  int nargs = c->op == OP_FAILOVER ? 3 : 2;
  if (dcm__pvm_call(c->vm, nargs, c->budget, c->err, sizeof c->err) != 0) {
    c->rc = DCM_EPOLICY;
    return 0;
  }
  return check_result(L, c, 4, 3);
}

/* Shards and machines a call passes in: its budgets grow with them. */
static size_t call_items(const call_t *c) {
  size_t items = c->n + (size_t)c->ctx->shard_count;
  for (size_t i = 0; i < c->n; i++) items += c->machines[i].nshards;
  if (c->dead) items += c->dead->nshards;
  return items;
}

static long long call_budget(const call_t *c) {
  return DCM__PVM_BUDGET + BUDGET_PER_ITEM * (long long)call_items(c);
}

/* Runs one call in vm, inside a job; 0, DCM_EPOLICY or DCM_EINVAL with
 * c->err set. */
static int run_in_vm(dcm__pvm_t *vm, call_t *c) {
  size_t items = call_items(c);
  c->vm = vm;
  c->rc = 0;
  c->err[0] = c->where[0] = '\0';
  c->budget = call_budget(c);
  vm->sb.limit = DCM__PVM_MEMORY + MEMORY_PER_SHARD * (items - c->n) +
              MEMORY_PER_MACHINE * c->n;
  lua_State *L = vm->sb.L;
  lua_pushcfunction(L, run_call);
  lua_pushlightuserdata(L, c);
  int st = lua_pcall(L, 1, 0, 0);
  if (st != LUA_OK) { /* only the marshalling can fail here: memory */
    snprintf(c->err, sizeof c->err, "memory limit of %zu MiB exceeded",
             vm->sb.limit >> 20);
    c->rc = DCM_EPOLICY;
  }
  lua_settop(L, 0);
  vm->sb.limit = DCM__PVM_MEMORY;
  return c->rc;
}

/*
 * A decision's call with copies of what it reads and writes, in one block:
 * an abandoned job outlives the caller's arrays.
 */
typedef struct {
  call_t c;
  dcm__pvm_t *vm;
} call_job_t;

static size_t owner_len(const call_t *c) {
  return c->op == OP_RATIO ? 0 : c->pos ? c->dead->nshards : (size_t)c->ctx->shard_count;
}

static call_job_t *call_copy(const call_t *src) {
  size_t nm = src->n + (src->dead ? 1 : 0), ints = owner_len(src), chars = 0;
  if (src->pos) ints += (size_t)src->ctx->shard_count;
  for (size_t i = 0; i < nm; i++) {
    const dcm__pmachine_t *m = i < src->n ? &src->machines[i] : src->dead;
    ints += m->nshards;
    chars += m->id ? strlen(m->id) + 1 : 0;
  }
  call_job_t *j = malloc(sizeof *j + sizeof(dcm__pctx_t) + nm * sizeof(dcm__pmachine_t) +
                         ints * sizeof(int) + chars);
  if (j == NULL) return NULL;
  memset(j, 0, sizeof *j);
  dcm__pctx_t *ctx = (dcm__pctx_t *)(j + 1);
  dcm__pmachine_t *ms = (dcm__pmachine_t *)(ctx + 1);
  int *ip = (int *)(ms + nm);
  char *cp = (char *)(ip + ints);
  *ctx = *src->ctx;
  j->c.op = src->op;
  j->c.ctx = ctx;
  j->c.n = src->n;
  j->c.machines = ms;
  for (size_t i = 0; i < nm; i++) {
    const dcm__pmachine_t *m = i < src->n ? &src->machines[i] : src->dead;
    ms[i] = *m;
    if (m->id) {
      size_t len = strlen(m->id) + 1;
      ms[i].id = memcpy(cp, m->id, len);
      cp += len;
    }
    if (m->nshards) ms[i].shards = memcpy(ip, m->shards, m->nshards * sizeof(int));
    ip += m->nshards;
  }
  if (src->dead) j->c.dead = &ms[src->n];
  if (src->pos) {
    j->c.pos = memcpy(ip, src->pos, (size_t)ctx->shard_count * sizeof(int));
    ip += ctx->shard_count;
  }
  if (src->owner) j->c.owner = ip;
  return j;
}

static int call_job(lua_State *L) {
  call_job_t *j = lua_touserdata(L, 1);
  run_in_vm(j->vm, &j->c);
  return 0;
}

#define ABANDONED 1 /* vm_run: the job was abandoned, and the VM with it */

/*
 * Runs c in *slot as a job on its thread; 0, DCM_EPOLICY or DCM_EINVAL
 * with c->err set, DCM_ENOMEM, or ABANDONED (*slot is NULL then).
 */
static int vm_run(dcm__pvm_t **slot, call_t *c) {
  call_job_t *j = call_copy(c);
  c->err[0] = c->where[0] = '\0';
  if (j == NULL) return DCM_ENOMEM;
  j->vm = *slot;
  uint64_t time_ns = dcm__pvm_time(*slot, call_budget(c));
  int rc = dcm__pvm_job(*slot, call_job, j, time_ns, c->err, sizeof c->err);
  if (rc == DCM__SB_ABANDONED) {
    *slot = NULL;
    snprintf(c->err, sizeof c->err,
             "still running %d ms past its time budget of %llu ms; abandoned", DCM_SANDBOX_GRACE_MS,
             (unsigned long long)(time_ns / 1000000u));
    return ABANDONED;
  }
  if (rc == 0) {
    rc = j->c.rc;
    memcpy(c->err, j->c.err, sizeof c->err);
    memcpy(c->where, j->c.where, sizeof c->where);
    if (rc == 0 && c->owner) memcpy(c->owner, j->c.owner, owner_len(c) * sizeof(int));
  }
  free(j);
  return rc;
}

static int build_vm(dcm__policy_t *p, const char *user, const live_t *lv, dcm__pvm_t **out,
                    char *err, size_t n);

/* " (file:line)" of the function a call ran, or nothing when unknown (an
 * abandoned call's). */
static const char *where_of(const call_t *c, char *buf, size_t n) {
  snprintf(buf, n, c->where[0] ? " (%s)" : "%s", c->where);
  return buf;
}

/* Runs op in the user's VM, then in the default one if that fails. */
static int decide(dcm__policy_t *p, call_t *c) {
  gen_t *g = p->gen;
  const char *what = op_names[c->op];
  char wh[sizeof c->where + 4];
  int tried_user = g->user != NULL;
  p->stats.calls++;
  if (tried_user) {
    int rc = vm_run(&g->user, c);
    if (rc != DCM_EPOLICY && rc != ABANDONED) return rc;
    p->stats.errors++;
    if (rc == ABANDONED)
      dcm__warn(p->log, NULL,
                "policy %s: %s is %s; its thread frees it when the step it is stuck in "
                "ends, and decisions use the default policy until the next reload",
                p->path, what, c->err);
    if (p->strict) {
      dcm__error(p->log, NULL, "policy %s: %s%s rejected: %s", p->path, what,
                 where_of(c, wh, sizeof wh), c->err);
      return DCM_EPOLICY;
    }
    dcm__warn(p->log, NULL,
              "policy %s: %s%s rejected: %s; this decision uses the default policy",
              p->path, what, where_of(c, wh, sizeof wh), c->err);
  }
  int rc = 0;
  if (g->def == NULL) { /* abandoned by an earlier call: load it again */
    rc = build_vm(p, NULL, NULL, &g->def, c->err, sizeof c->err);
    if (rc == DCM_ENOMEM) return rc;
  }
  if (rc == 0) rc = vm_run(&g->def, c);
  if (rc == ABANDONED) rc = DCM_EPOLICY;
  if (rc == DCM_EPOLICY && !tried_user) p->stats.errors++; /* else counted once above */
  if (rc == DCM_EPOLICY)
    dcm__error(p->log, NULL, "default policy %s: %s%s failed: %s", p->default_path, what,
               where_of(c, wh, sizeof wh), c->err);
  return rc;
}

/* ---- generations ---- */

/* A policy table holds functions (or nothing) under the contract's names
 * and a sane load_floor. Raw reads: no metamethod runs here. */
static int check_table(lua_State *L, int t, const char *path, char *err,
                       size_t n) {
  char a[96];
  if (!lua_istable(L, t)) {
    snprintf(err, n, "%s returned %s, expected a table of functions", path,
             describe(L, t, a, sizeof a));
    return DCM_EPOLICY;
  }
  for (int i = 0; i < 3; i++) {
    lua_pushstring(L, op_names[i]);
    int ty = lua_rawget(L, t);
    lua_pop(L, 1);
    if (ty != LUA_TNIL && ty != LUA_TFUNCTION) {
      snprintf(err, n, "%s: field '%s' is a %s, expected a function", path,
               op_names[i], lua_typename(L, ty));
      return DCM_EPOLICY;
    }
  }
  lua_pushliteral(L, "load_floor");
  int ty = lua_rawget(L, t);
  double lf = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (ty != LUA_TNIL && (ty != LUA_TNUMBER || !(lf > 0) || !isfinite(lf))) {
    snprintf(err, n, "%s: load_floor must be a positive finite number", path);
    return DCM_EPOLICY;
  }
  return 0;
}

typedef struct {
  const char *default_path, *path;
  char *err;
  size_t n;
  int rc;
} overlay_t;

/* Stack: default table, user table or nil. Copies the user's fields over
 * the default's and stores the result as the policy. */
static int overlay(lua_State *L) {
  overlay_t *o = lua_touserdata(L, 3);
  lua_settop(L, 2);
  o->rc = check_table(L, 1, o->default_path, o->err, o->n);
  if (o->rc == 0 && o->path) o->rc = check_table(L, 2, o->path, o->err, o->n);
  if (o->rc != 0) return 0;
  if (o->path) {
    lua_pushnil(L);
    while (lua_next(L, 2)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, 1);
    }
  }
  for (int i = 0; i < 3; i++) {
    lua_pushstring(L, op_names[i]);
    if (lua_rawget(L, 1) != LUA_TFUNCTION)
      luaL_error(L, "the policy has no %s function", op_names[i]);
    lua_pop(L, 1);
  }
  lua_settop(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, POLICY_KEY);
  return 0;
}

/* Runs default.lua and the user's file (or none) in vm and overlays them. */
static int load_into(dcm__pvm_t *vm, const char *default_path,
                     const char *user_path, char *err, size_t n) {
  lua_State *L = vm->sb.L;
  overlay_t o = {default_path, user_path, err, n, DCM_EPOLICY};
  if (dcm__pvm_dofile(vm, default_path, err, n) != 0) return DCM_EPOLICY;
  if (user_path == NULL) {
    lua_pushnil(L);
  } else if (dcm__pvm_dofile(vm, user_path, err, n) != 0) {
    lua_settop(L, 0);
    return DCM_EPOLICY;
  }
  lua_pushcfunction(L, overlay);
  lua_insert(L, -3);
  lua_pushlightuserdata(L, &o);
  if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
    snprintf(err, n, "%s: %s", default_path,
             lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                            : "not enough memory");
    o.rc = DCM_EPOLICY;
  }
  lua_settop(L, 0);
  return o.rc;
}

/*
 * Every generation must handle a fleet before it is used: the live one when
 * MASTER runs one (a policy may name real machine ids), else a synthetic one.
 * Live: ratio for each machine, allocate over all of them, and the failover
 * of the first machine's shards onto the others.
 */
static int live_check(dcm__pvm_t *vm, const live_t *lv, const char **step, call_t *c) {
  int rc = 0;
  int *owner = malloc((size_t)lv->ctx.shard_count * sizeof *owner);
  int *pos = malloc((size_t)lv->ctx.shard_count * sizeof *pos);
  if (owner == NULL || pos == NULL) rc = DCM_ENOMEM;
  for (size_t i = 0; i < lv->n && rc == 0; i++) {
    *c = (call_t){.op = OP_RATIO, .machines = &lv->machines[i], .n = 1, .ctx = &lv->ctx};
    *step = "ratio (live fleet)";
    rc = run_in_vm(vm, c);
  }
  if (rc == 0) {
    *c = (call_t){.op = OP_ALLOCATE, .machines = lv->machines, .n = lv->n, .ctx = &lv->ctx,
                  .owner = owner};
    *step = "allocate (live fleet)";
    rc = run_in_vm(vm, c);
  }
  const dcm__pmachine_t *dead = &lv->machines[0];
  if (rc == 0 && lv->n >= 2 && dead->nshards > 0) {
    for (int s = 0; s < lv->ctx.shard_count; s++) pos[s] = -1;
    for (size_t i = 0; i < dead->nshards; i++)
      if (dead->shards[i] >= 0 && dead->shards[i] < lv->ctx.shard_count)
        pos[dead->shards[i]] = (int)i;
    *c = (call_t){.op = OP_FAILOVER, .dead = dead, .machines = lv->machines + 1,
                  .n = lv->n - 1, .ctx = &lv->ctx, .owner = owner, .pos = pos};
    *step = "failover (live fleet)";
    rc = run_in_vm(vm, c);
  }
  free(owner);
  free(pos);
  return rc;
}

static int self_check(dcm__pvm_t *vm, const char *path, const live_t *lv, char *err,
                      size_t n) {
  static const int run_a[] = {0, 1, 2, 3, 4, 5};
  dcm__pmachine_t fleet[4] = {
      {"alpha", 4, 0.5, 0, NULL, 0},
      {"bravo", 8, 2.0, 0, NULL, 0},
      {"charlie", 2, 0.0, 0, NULL, 0},
      {"delta", 4, 0.1, 1, NULL, 0},
  };
  static const dcm__pctx_t ctxs[2] = {{16, 1}, {16, 4}};
  int owner[16];
  call_t c;
  memset(&c, 0, sizeof c);
  vm->quiet = 1;
  int rc = 0;
  const char *step = "";
  if (lv && lv->n > 0) {
    rc = live_check(vm, lv, &step, &c);
    goto done;
  }
  for (int i = 0; i < 4 && rc == 0; i++) {
    c = (call_t){.op = OP_RATIO, .machines = &fleet[i], .n = 1, .ctx = &ctxs[0]};
    step = "ratio";
    rc = run_in_vm(vm, &c);
  }
  for (int i = 0; i < 2 && rc == 0; i++) {
    c = (call_t){.op = OP_ALLOCATE, .machines = fleet, .n = 3, .ctx = &ctxs[i],
                 .owner = owner};
    step = "allocate";
    rc = run_in_vm(vm, &c);
  }
  /* alpha dies: first with the standby live, then without it */
  dcm__pmachine_t dead = {"alpha", 4, 0.5, 0, run_a, 6};
  int pos[16];
  for (int i = 0; i < 16; i++) pos[i] = i < 6 ? i : -1;
  for (int i = 0; i < 2 && rc == 0; i++) {
    c = (call_t){.op = OP_FAILOVER, .dead = &dead, .machines = fleet + 1,
                 .n = i == 0 ? 3 : 2, .ctx = &ctxs[0], .owner = owner, .pos = pos};
    step = "failover";
    rc = run_in_vm(vm, &c);
  }
done:
  vm->quiet = 0;
  if (rc != 0)
    snprintf(err, n, "%s: self-check %s (%s) failed: %s", path, step, c.where,
             c.err);
  return rc ? DCM_EPOLICY : 0;
}

static void gen_free(gen_t *g) {
  if (g == NULL) return;
  dcm__pvm_close(g->def);
  dcm__pvm_close(g->user);
  free(g);
}

static size_t live_items(const live_t *lv) {
  size_t items = 0;
  if (lv == NULL) return 0;
  items = lv->n + (size_t)lv->ctx.shard_count;
  for (size_t i = 0; i < lv->n; i++) items += lv->machines[i].nshards;
  return items;
}

/*
 * Loading a VM and its self-check, with copies of what they read (the
 * file names, the live fleet), in one block: an abandoned job outlives
 * them.
 */
typedef struct {
  dcm__pvm_t *vm;
  const char *default_path, *user;
  live_t lv;
  int has_lv;
  int rc;
  char err[DCM__PVM_ERRLEN + 256];
} build_job_t;

static build_job_t *build_copy(const char *default_path, const char *user, const live_t *lv) {
  size_t n = lv ? lv->n : 0, ints = 0, chars = strlen(default_path) + 1;
  if (user) chars += strlen(user) + 1;
  for (size_t i = 0; i < n; i++) {
    ints += lv->machines[i].nshards;
    chars += lv->machines[i].id ? strlen(lv->machines[i].id) + 1 : 0;
  }
  build_job_t *j = malloc(sizeof *j + n * sizeof(dcm__pmachine_t) + ints * sizeof(int) + chars);
  if (j == NULL) return NULL;
  memset(j, 0, sizeof *j);
  dcm__pmachine_t *ms = (dcm__pmachine_t *)(j + 1);
  int *ip = (int *)(ms + n);
  char *cp = (char *)(ip + ints);
  j->default_path = strcpy(cp, default_path);
  cp += strlen(cp) + 1;
  if (user) {
    j->user = strcpy(cp, user);
    cp += strlen(cp) + 1;
  }
  if (lv) {
    j->has_lv = 1;
    j->lv = *lv;
    j->lv.machines = ms;
    for (size_t i = 0; i < n; i++) {
      const dcm__pmachine_t *m = &lv->machines[i];
      ms[i] = *m;
      if (m->id) {
        ms[i].id = strcpy(cp, m->id);
        cp += strlen(cp) + 1;
      }
      if (m->nshards) ms[i].shards = memcpy(ip, m->shards, m->nshards * sizeof(int));
      ip += m->nshards;
    }
  }
  return j;
}

static int build_job(lua_State *L) {
  build_job_t *j = lua_touserdata(L, 1);
  j->rc = load_into(j->vm, j->default_path, j->user, j->err, sizeof j->err);
  if (j->rc == 0)
    j->rc = self_check(j->vm, j->user ? j->user : j->default_path, j->has_lv ? &j->lv : NULL,
                       j->err, sizeof j->err);
  return 0;
}

/*
 * A VM with default.lua and the user's file (NULL: none) loaded and
 * self-checked (on lv when given), as one job: the whole gets twice the
 * time budget of an allocate over the live fleet.
 */
static int build_vm(dcm__policy_t *p, const char *user, const live_t *lv, dcm__pvm_t **out,
                    char *err, size_t n) {
  const char *path = user ? user : p->default_path;
  *out = NULL;
  if (dcm__sandbox_abandoned() >= DCM_SANDBOX_ABANDONED_MAX) {
    snprintf(err, n, "%s: not loaded: %d abandoned policy calls are still running", path,
             dcm__sandbox_abandoned());
    return DCM_EPOLICY;
  }
  dcm__pvm_t *vm;
  int rc = dcm__pvm_open(&vm, p->log, path, p->time);
  if (rc != 0) return rc;
  build_job_t *j = build_copy(p->default_path, user, lv);
  if (j == NULL) {
    dcm__pvm_close(vm);
    return DCM_ENOMEM;
  }
  j->vm = vm;
  uint64_t time_ns =
      2 * dcm__pvm_time(vm, DCM__PVM_BUDGET + BUDGET_PER_ITEM * (long long)live_items(lv));
  rc = dcm__pvm_job(vm, build_job, j, time_ns, err, n);
  if (rc == DCM__SB_ABANDONED) {
    snprintf(err, n, "%s: loading and self-check still running %d ms past their time budget "
             "of %llu ms; abandoned", path, DCM_SANDBOX_GRACE_MS,
             (unsigned long long)(time_ns / 1000000u));
    return DCM_EPOLICY;
  }
  if (rc == 0 && j->rc != 0) {
    rc = j->rc;
    snprintf(err, n, "%s", j->err);
  }
  free(j);
  if (rc != 0) {
    dcm__pvm_close(vm);
    return rc;
  }
  *out = vm;
  return 0;
}

static int gen_build(dcm__policy_t *p, const live_t *lv, gen_t **out, char *err, size_t n) {
  gen_t *g = calloc(1, sizeof *g);
  if (g == NULL) return DCM_ENOMEM;
  int rc = build_vm(p, NULL, lv, &g->def, err, n);
  if (rc == 0 && p->path) rc = build_vm(p, p->path, lv, &g->user, err, n);
  if (rc == DCM_ENOMEM) snprintf(err, n, "out of memory building a Lua state");
  if (rc != 0) {
    gen_free(g);
    return rc;
  }
  *out = g;
  return 0;
}

static char *dup_str(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* dir + rel, readable; out is the resolved path (no "bin/.." in logs). */
static int readable(const char *dir, const char *rel, char *out, size_t n) {
  char joined[PATH_MAX], real[PATH_MAX];
  int k = snprintf(joined, sizeof joined, "%s%s", dir, rel);
  if (k <= 0 || (size_t)k >= sizeof joined || access(joined, R_OK) != 0)
    return 0;
  const char *use = realpath(joined, real) ? real : joined;
  return (size_t)snprintf(out, n, "%s", use) < n;
}

/* Next to the binary (source tree or install tree), then the build's dirs. */
static int find_default(char *out, size_t n) {
  char exe[4096];
  ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (k > 0) {
    exe[k] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) {
      *slash = '\0';
      if (readable(exe, "/../policies/default.lua", out, n) ||
          readable(exe, "/../share/discluster/policies/default.lua", out, n))
        return 0;
    }
  }
  if (readable(DCM_SOURCE_POLICY_DIR, "/default.lua", out, n) ||
      readable(DCM_INSTALL_POLICY_DIR, "/default.lua", out, n))
    return 0;
  return -1;
}

int dcm__policy_new(const char *path, const char *policy_dir, double time,
                    dcm__log_t *log, dcm__policy_t **out) {
  char def[4096];
  if (out == NULL) return DCM_EINVAL;
  if (policy_dir) {
    if (!readable(policy_dir, "/default.lua", def, sizeof def)) {
      dcm__error(log, NULL, "policy: cannot read %s/default.lua", policy_dir);
      return DCM_EPOLICY;
    }
  } else if (find_default(def, sizeof def) != 0) {
    dcm__error(log, NULL, "policy: default.lua not found next to the binary, "
               "in " DCM_SOURCE_POLICY_DIR " or in " DCM_INSTALL_POLICY_DIR);
    return DCM_EPOLICY;
  }
  dcm__policy_t *p = calloc(1, sizeof *p);
  if (p == NULL) return DCM_ENOMEM;
  p->log = log;
  p->time = time > 0 ? time : DCM__PVM_TIME;
  p->default_path = dup_str(def);
  p->path = path ? dup_str(path) : NULL;
  if (p->default_path == NULL || (path && p->path == NULL)) {
    dcm__policy_free(p);
    return DCM_ENOMEM;
  }
  char err[DCM__PVM_ERRLEN + 256];
  int rc = gen_build(p, NULL, &p->gen, err, sizeof err);
  if (rc != 0) {
    dcm__error(log, NULL, "policy: %s", err);
    dcm__policy_free(p);
    return rc == DCM_ENOMEM ? rc : DCM_EPOLICY;
  }
  dcm__info(log, NULL, "policy: loaded %s%s%s", path ? path : def,
            path ? " over " : "", path ? def : "");
  *out = p;
  return 0;
}

void dcm__policy_free(dcm__policy_t *p) {
  if (p == NULL) return;
  gen_free(p->gen);
  free(p->path);
  free(p->default_path);
  free(p);
}

static int check_ctx(const dcm__pctx_t *ctx);

int dcm__policy_reload(dcm__policy_t *p, const dcm__pmachine_t *live, size_t n,
                       const dcm__pctx_t *ctx) {
  gen_t *g = NULL;
  char err[DCM__PVM_ERRLEN + 256];
  live_t lv = {live, n, ctx ? *ctx : (dcm__pctx_t){0, 0}};
  int rc = gen_build(p, live && n && check_ctx(ctx) ? &lv : NULL, &g, err, sizeof err);
  if (rc != 0) {
    p->stats.reload_failures++;
    dcm__error(p->log, NULL, "policy: reload failed, keeping the running policy: %s", err);
    return rc == DCM_ENOMEM ? rc : DCM_EPOLICY;
  }
  gen_free(p->gen);
  p->gen = g;
  p->stats.reloads++;
  dcm__debug(p->log, NULL, "policy: reloaded %s", dcm__policy_path(p));
  return 0;
}

static int check_ctx(const dcm__pctx_t *ctx) {
  return ctx && ctx->shard_count >= 1 && ctx->shard_count <= MAX_SHARDS &&
         ctx->max_concurrency >= 1 && ctx->max_concurrency <= 65536;
}

int dcm__policy_allocate(dcm__policy_t *p, const dcm__pmachine_t *machines,
                         size_t n, const dcm__pctx_t *ctx, int *owner) {
  if (p == NULL || machines == NULL || n < 1 || n > MAX_MACHINES ||
      !check_ctx(ctx) || owner == NULL)
    return DCM_EINVAL;
  call_t c = {.op = OP_ALLOCATE, .machines = machines, .n = n, .ctx = ctx,
              .owner = owner};
  return decide(p, &c);
}

int dcm__policy_failover(dcm__policy_t *p, const dcm__pmachine_t *dead,
                         const dcm__pmachine_t *machines, size_t n,
                         const dcm__pctx_t *ctx, int *owner) {
  if (p == NULL || dead == NULL || dead->id == NULL || n > MAX_MACHINES ||
      (n > 0 && machines == NULL) || !check_ctx(ctx) ||
      (dead->nshards > 0 && (dead->shards == NULL || owner == NULL)))
    return DCM_EINVAL;
  /* Every live machine is eligible: with none, nothing to decide. */
  if (n == 0 || dead->nshards == 0) {
    for (size_t i = 0; i < dead->nshards; i++) owner[i] = -1;
    return 0;
  }
  int *pos = malloc(sizeof *pos * (size_t)ctx->shard_count);
  if (pos == NULL) return DCM_ENOMEM;
  for (int s = 0; s < ctx->shard_count; s++) pos[s] = -1;
  int rc = 0;
  for (size_t i = 0; i < dead->nshards && rc == 0; i++) {
    int s = dead->shards[i];
    if (s < 0 || s >= ctx->shard_count || pos[s] >= 0) rc = DCM_EINVAL;
    else pos[s] = (int)i;
  }
  if (rc == 0) {
    call_t c = {.op = OP_FAILOVER, .dead = dead, .machines = machines, .n = n,
                .ctx = ctx, .owner = owner, .pos = pos};
    rc = decide(p, &c);
  }
  free(pos);
  return rc;
}

void dcm__policy_stats(const dcm__policy_t *p, dcm__policy_stats_t *out) {
  static const dcm__policy_stats_t none;
  *out = p ? p->stats : none;
}

const char *dcm__policy_path(const dcm__policy_t *p) {
  return p->path ? p->path : p->default_path;
}

void dcm__policy_set_strict(dcm__policy_t *p, int strict) {
  p->strict = strict;
}
