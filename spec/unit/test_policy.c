/*
 * test_policy.c: the policy engine on its own: the default policy through
 * C, bad policies of every kind rejected at load, at reload and at call
 * time (with the default deciding instead), result validation, sandbox
 * escapes, the instruction budget and the memory cap.
 */
#include <dirent.h>
#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "policy.h"
#include "policy_internal.h"

static int failures;
#define CHECK(cond)                                                      \
  do {                                                                   \
    if (!(cond)) {                                                       \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                        \
    }                                                                    \
  } while (0)

/* ---- log capture ---- */

static char logbuf[1 << 16];
static size_t loglen;

static void capture(dcm_log_level level, const char *line, size_t len,
                    void *arg) {
  (void)level;
  (void)arg;
  if (getenv("DCM_TEST_VERBOSE")) fprintf(stderr, "%.*s\n", (int)len, line);
  if (loglen + len + 2 >= sizeof logbuf) loglen = 0;
  memcpy(logbuf + loglen, line, len);
  loglen += len;
  logbuf[loglen++] = '\n';
  logbuf[loglen] = '\0';
}

static void log_clear(void) {
  loglen = 0;
  logbuf[0] = '\0';
}

static int logged(const char *s) { return strstr(logbuf, s) != NULL; }

#define CHECK_LOG(s)                                                     \
  do {                                                                   \
    if (!logged(s)) {                                                    \
      fprintf(stderr, "%s:%d: log lacks \"%s\"; log was:\n%s\n", __FILE__, \
              __LINE__, s, logbuf);                                      \
      failures++;                                                        \
    }                                                                    \
  } while (0)

/* ---- files ---- */

static char tmpdir[256];
static char policy_dir[1024];
static char fixtures[1024];

static const char *write_file(const char *name, const char *text) {
  static char path[8][512];
  static int k;
  char *p = path[k++ % 8];
  snprintf(p, 512, "%s/%s", tmpdir, name);
  FILE *f = fopen(p, "w");
  if (f == NULL) {
    perror(p);
    exit(2);
  }
  fputs(text, f);
  fclose(f);
  return p;
}

static const char *fixture(const char *name) {
  static char p[1200];
  snprintf(p, sizeof p, "%s/%s", fixtures, name);
  return p;
}

/* ---- fleets ---- */

static dcm__pmachine_t fleet3[3] = {
    {"alpha", 4, 0.5, 0, NULL, 0},
    {"bravo", 8, 2.0, 0, NULL, 0},
    {"charlie", 2, 0.0, 0, NULL, 0},
};

/* owner[] is a contiguous split in id order with these counts. */
static int is_split(const dcm__pmachine_t *m, const int *owner, int shards,
                    const int *counts, size_t n) {
  int s = 0;
  for (size_t i = 0; i < n; i++)
    for (int k = 0; k < counts[i]; k++, s++)
      if (s >= shards || strcmp(m[owner[s]].id, m[i].id) != 0) return 0;
  return s == shards;
}

/* The policies' time budget (seconds); 0: the default. */
static double policy_time;

static dcm__policy_t *open_policy(const char *path) {
  dcm__policy_t *p = NULL;
  static dcm__log_t lg;
  dcm__log_init(&lg, DCM_LOG_DEBUG, DCM_LOG_TEXT, capture, NULL);
  int rc = dcm__policy_new(path, policy_dir, policy_time, &lg, &p);
  if (rc != 0) {
    fprintf(stderr, "dcm__policy_new(%s): %s\n%s", path ? path : "NULL",
            dcm_strerror(rc), logbuf);
    exit(1);
  }
  return p;
}

static int try_open(const char *path, const char *dir, dcm__policy_t **p) {
  static dcm__log_t lg;
  dcm__log_init(&lg, DCM_LOG_DEBUG, DCM_LOG_TEXT, capture, NULL);
  return dcm__policy_new(path, dir, policy_time, &lg, p);
}

/* ---- the default policy through C ---- */

static void test_default(void) {
  dcm__policy_t *p = open_policy(NULL);
  CHECK(strstr(dcm__policy_path(p), "default.lua") != NULL);
  int owner[16];
  dcm__pctx_t ctx = {16, 1};
  CHECK(dcm__policy_allocate(p, fleet3, 3, &ctx, owner) == 0);
  /* ratios 4, 4, 2 of 16: 6.4, 6.4, 3.2 -> 7 (tie by id), 6, 3 */
  const int want[] = {7, 6, 3};
  CHECK(is_split(fleet3, owner, 16, want, 3));

  /* input order does not matter */
  dcm__pmachine_t rev[3] = {fleet3[2], fleet3[0], fleet3[1]};
  int owner2[16];
  CHECK(dcm__policy_allocate(p, rev, 3, &ctx, owner2) == 0);
  for (int s = 0; s < 16; s++)
    CHECK(strcmp(rev[owner2[s]].id, fleet3[owner[s]].id) == 0);

  /* max_concurrency 4: boundaries on multiples of 4 */
  dcm__pctx_t ctx4 = {16, 4};
  CHECK(dcm__policy_allocate(p, fleet3, 3, &ctx4, owner) == 0);
  for (int s = 1; s < 16; s++)
    if (owner[s] != owner[s - 1]) CHECK(s % 4 == 0);

  /* loads and cores that must not produce inf or NaN */
  dcm__pmachine_t odd[4] = {
      {"a", 0, 0.0, 0, NULL, 0},
      {"b", 4, -3.0, 0, NULL, 0},
      {"c", 4, NAN, 0, NULL, 0},
      {"d", 4, INFINITY, 0, NULL, 0},
  };
  log_clear();
  int owner3[10];
  dcm__pctx_t ctx10 = {10, 1};
  CHECK(dcm__policy_allocate(p, odd, 4, &ctx10, owner3) == 0);
  CHECK(!logged("rejected") && !logged("failed"));

  /* failover to the standby; then split over survivors, who keep theirs */
  const int dead_shards[] = {0, 1, 2, 3, 4, 5, 6};
  dcm__pmachine_t dead = {"alpha", 4, 0.5, 0, dead_shards, 7};
  const int bravo_runs[] = {7, 8, 9, 10, 11, 12};
  dcm__pmachine_t live[3] = {
      {"bravo", 8, 2.0, 0, bravo_runs, 6},
      {"charlie", 2, 0.0, 0, NULL, 0},
      {"delta", 1, 3.0, 1, NULL, 0},
  };
  int fo[7];
  CHECK(dcm__policy_failover(p, &dead, live, 3, &ctx, fo) == 0);
  for (int i = 0; i < 7; i++) CHECK(fo[i] == 2);
  CHECK(dcm__policy_failover(p, &dead, live, 2, &ctx, fo) == 0);
  /* ratios 4 and 2 over 7 shards: 4.67, 2.33 -> 5, 2 */
  for (int i = 0; i < 7; i++) CHECK(fo[i] == (i < 5 ? 0 : 1));
  /* no live machine: nothing eligible, every shard stays unassigned */
  CHECK(dcm__policy_failover(p, &dead, NULL, 0, &ctx, fo) == 0);
  for (int i = 0; i < 7; i++) CHECK(fo[i] == -1);

  /* a big fleet within the per-call allowances */
  enum { N = 1000, S = 1000000 };
  static dcm__pmachine_t big[N];
  static char ids[N][16];
  for (int i = 0; i < N; i++) {
    snprintf(ids[i], sizeof ids[i], "m%04d", i);
    big[i] = (dcm__pmachine_t){ids[i], 1 + i % 64, (i % 7) * 0.5, 0, NULL, 0};
  }
  int *bo = malloc(sizeof *bo * S);
  dcm__pctx_t bctx = {S, 16};
  log_clear();
  CHECK(dcm__policy_allocate(p, big, N, &bctx, bo) == 0);
  CHECK(!logged("rejected") && !logged("failed"));
  free(bo);
  dcm__policy_free(p);
}

static void test_bad_input(void) {
  dcm__policy_t *p = open_policy(NULL);
  int owner[16];
  dcm__pctx_t ctx = {16, 1}, zero = {0, 1}, nomc = {16, 0};
  dcm__pmachine_t dup[2] = {fleet3[0], fleet3[0]};
  CHECK(dcm__policy_allocate(p, fleet3, 0, &ctx, owner) == DCM_EINVAL);
  CHECK(dcm__policy_allocate(p, fleet3, 3, &zero, owner) == DCM_EINVAL);
  CHECK(dcm__policy_allocate(p, fleet3, 3, &nomc, owner) == DCM_EINVAL);
  CHECK(dcm__policy_allocate(p, dup, 2, &ctx, owner) == DCM_EINVAL);
  const int out_of_range[] = {3, 16};
  const int twice[] = {3, 3};
  dcm__pmachine_t dead = {"zulu", 1, 0, 0, out_of_range, 2};
  CHECK(dcm__policy_failover(p, &dead, fleet3, 3, &ctx, owner) == DCM_EINVAL);
  dead.shards = twice;
  CHECK(dcm__policy_failover(p, &dead, fleet3, 3, &ctx, owner) == DCM_EINVAL);
  dcm__pmachine_t self = {"alpha", 1, 0, 0, (const int[]){1}, 1};
  CHECK(dcm__policy_failover(p, &self, fleet3, 3, &ctx, owner) == DCM_EINVAL);
  dcm__policy_free(p);
}

/* ---- bad policies at load and at reload ---- */

static const struct {
  const char *file, *why;
} bad_loads[] = {
    {"syntax.lua", "syntax.lua:5: unexpected symbol"},
    {"runtime.lua", "runtime.lua:3: attempt to index a nil value"},
    {"infinite.lua", "instruction budget exceeded"},
    {"pcall_infinite.lua", "instruction budget exceeded"},
    {"memory_bomb.lua", "memory limit of 32 MiB exceeded"},
    {"io.lua", "io.lua:2: attempt to index a nil value (global 'io')"},
    {"os_execute.lua", "attempt to call a nil value (field 'execute')"},
    {"require.lua", "attempt to call a nil value (global 'require')"},
    {"load.lua", "attempt to call a nil value (global 'load')"},
    {"not_table.lua", "returned 42, expected a table"},
    {"bad_field.lua", "field 'allocate' is a string, expected a function"},
    {"bad_load_floor.lua", "load_floor must be a positive finite number"},
    {"bad_ratio.lua", "ratio(charlie) returned"},
    {"bad_shape.lua", "allocate result has the key 1"},
    {"gc.lua", "__gc metamethods are not allowed"},
    {"xpcall_handler.lua", "attempt to call a nil value (global 'xpcall')"},
    {"rep_bomb.lua", "string.rep: result longer than 4096 bytes"},
    {"pattern_bomb.lua", "attempt to call a nil value (field 'match')"},
    {"no-such-file.lua", "cannot open"},
    /* work inside one C call, or one VM instruction, charged or capped */
    {"move_bomb.lua", "move_bomb.lua:3: instruction budget exceeded"},
    {"find_bomb.lua", "find_bomb.lua:6: instruction budget exceeded"},
    {"concat_bomb.lua", "concat_bomb.lua:5: instruction budget exceeded"},
    {"sort_bomb.lua", "sort_bomb.lua:7: instruction budget exceeded"},
    {"unpack_bomb.lua", "unpack_bomb.lua:5: instruction budget exceeded"},
    {"shift_bomb.lua", "shift_bomb.lua:7: instruction budget exceeded"},
    {"string_bomb.lua", "string_bomb.lua:6: instruction budget exceeded"},
    {"utf8_bomb.lua", "utf8_bomb.lua:7: instruction budget exceeded"},
    {"next_bomb.lua", "next_bomb.lua:6: instruction budget exceeded"},
    {"pairs_bomb.lua", "pairs_bomb.lua:6: instruction budget exceeded"},
    {"compare_bomb.lua", "compare_bomb.lua:9: instruction budget exceeded"},
    {"vararg_bomb.lua", "more than 64 extra arguments to a vararg function"},
    /* the heap is full: the error says so, after few full collections */
    {"gc_bomb.lua", "memory limit of 32 MiB exceeded"},
};

static int write_chunk(lua_State *L, const void *b, size_t n, void *ud) {
  (void)L;
  return fwrite(b, 1, n, ud) == n ? 0 : 1;
}

static const char *bytecode_file(void) {
  static char path[512];
  snprintf(path, sizeof path, "%s/bytecode.luac", tmpdir);
  lua_State *L = luaL_newstate();
  luaL_loadstring(L, "return {}");
  FILE *f = fopen(path, "wb");
  lua_dump(L, write_chunk, f, 0);
  fclose(f);
  lua_close(L);
  return path;
}

static void test_bad_loads(void) {
  /* a time budget no attack here reaches first, even where sanitizers
   * intercept strcmp: each is stopped by what it attacks */
  policy_time = 60;
  for (size_t i = 0; i < sizeof bad_loads / sizeof bad_loads[0]; i++) {
    dcm__policy_t *p = NULL;
    log_clear();
    int rc = try_open(fixture(bad_loads[i].file), policy_dir, &p);
    if (rc != DCM_EPOLICY) fprintf(stderr, "loading %s\n", bad_loads[i].file);
    CHECK(rc == DCM_EPOLICY);
    CHECK(p == NULL);
    CHECK_LOG(bad_loads[i].why);
  }
  dcm__policy_t *p = NULL;
  log_clear();
  CHECK(try_open(bytecode_file(), policy_dir, &p) == DCM_EPOLICY);
  CHECK_LOG("precompiled bytecode");
  /* a broken or missing default.lua */
  log_clear();
  CHECK(try_open(NULL, tmpdir, &p) == DCM_EPOLICY);
  CHECK_LOG("default.lua");
  /* default.lua found without a policy_dir */
  CHECK(try_open(NULL, NULL, &p) == 0);
  dcm__policy_free(p);
  policy_time = 0;
}

/* The sandbox from inside: what must be there and what must not. */
static void test_sandbox(void) {
  const char *probe = write_file(
      "probe.lua",
      "assert(io == nil and debug == nil and package == nil)\n"
      "assert(coroutine == nil and type(print) == 'function')\n"
      "assert(load == nil and loadfile == nil and dofile == nil)\n"
      "assert(require == nil and collectgarbage == nil)\n"
      "assert(string.dump == nil and string.format and string.rep)\n"
      "assert(os.time and os.clock and os.execute == nil and os.getenv == nil)\n"
      "assert(os.remove == nil and os.exit == nil)\n"
      "assert(table.sort and math.floor and utf8.char)\n"
      "assert(pcall and error and setmetatable and type(log) == 'function')\n"
      "assert(xpcall == nil and string.match == nil and string.gsub == nil)\n"
      "assert(string.find('a.b', '.') == 2) -- plain\n"
      /* strings stop at 4 KiB; varargs at 64 */
      "assert(#string.rep('ab', 2048) == 4096 and not pcall(string.rep, 'x', 4097))\n"
      "assert(not pcall(function() return string.rep('x', 4096) .. 'y' end))\n"
      "local t64 = {} for i = 1, 64 do t64[i] = i end\n"
      "local function count(...) return select('#', ...) end\n"
      "assert(count(table.unpack(t64)) == 64)\n"
      "t64[65] = 65 assert(not pcall(count, table.unpack(t64)))\n"
      /* the charged functions still do their job, errors named as before */
      "local t = {3, 1, 2} table.sort(t) assert(table.concat(t, ',') == '1,2,3')\n"
      "table.insert(t, 1, 0) assert(table.remove(t, 1) == 0 and #t == 3)\n"
      "table.move(t, 1, 3, 2) assert(table.concat(t, ',') == '1,1,2,3')\n"
      "assert(select('#', table.unpack(t)) == 4 and ('abc'):byte(1, -1) == 97)\n"
      "math.randomseed(7) local r = math.random(1000)\n"
      "math.randomseed(7) assert(math.random(1000) == r) -- its state is an upvalue\n"
      "local ok, e = pcall(function() return math.random(2, 1) end)\n"
      "assert(e:find(\"bad argument #1 to 'random'\", 1, true), e)\n"
      "ok, e = pcall(function() table.insert(nil, 1) end)\n"
      "assert(e:find(\"bad argument #1 to 'insert'\", 1, true), e)\n"
      "local n = 0 for p, c in utf8.codes('h\\u{e9}llo') do n = n + 1 end\n"
      "assert(n == 5 and utf8.len('h\\u{e9}llo') == 5 and utf8.offset('h\\u{e9}llo', 3) == 4)\n"
      /* next and pairs: plain traversals, nested ones, __pairs */
      "local kv = {a = 1, b = 2, c = 3}\n"
      "local c = 0 for k, v in next, kv do c = c + v end assert(c == 6)\n"
      "c = 0 for k in pairs(kv) do for j in pairs(kv) do c = c + 1 end end assert(c == 9)\n"
      "assert(next({}) == nil and next(kv) ~= nil)\n"
      "local proxy = setmetatable({}, {__pairs = function(t) return next, kv, nil end})\n"
      "c = 0 for k, v in pairs(proxy) do c = c + v end assert(c == 6)\n"
      /* a small table's traversal stays cheap in a big heap: only its own
         slots are charged */
      "local big = {} for i = 1, 1 << 19 do big[i] = i end\n"
      "local small = {x = 1}\n"
      "for i = 1, 50000 do for _ in pairs(small) do end end\n"
      "log('info', 'sandbox probe ran')\n"
      "print('printed', 1, nil)\n"
      "return {}\n");
  dcm__policy_t *p = NULL;
  log_clear();
  CHECK(try_open(probe, policy_dir, &p) == 0);
  CHECK_LOG("policy probe.lua: sandbox probe ran");
  CHECK_LOG("policy probe.lua: printed 1 nil");
  dcm__policy_free(p);
  CHECK(access("/tmp/dcm-policy-escaped", F_OK) != 0);
}

/* ---- bad results at call time ---- */

/* A policy that behaves in the self-check (16 shards) and misbehaves with
 * 100 shards. */
static const char *misbehave(const char *alloc_body, const char *fail_body) {
  static char text[4096];
  snprintf(text, sizeof text,
           "local function first(machines, ctx)\n"
           "  local t = {}\n"
           "  for s = 0, ctx.shard_count - 1 do t[s + 1] = s end\n"
           "  return { [machines[1].id] = t }\n"
           "end\n"
           "return {\n"
           "  allocate = function(machines, ctx)\n"
           "    if ctx.shard_count ~= 100 then return first(machines, ctx) end\n"
           "    %s\n"
           "  end,\n"
           "  failover = function(dead, machines, ctx)\n"
           "    if ctx.shard_count ~= 100 then return { [machines[1].id] = dead.shards } end\n"
           "    %s\n"
           "  end,\n"
           "}\n",
           alloc_body, fail_body);
  return text;
}

static const struct {
  const char *body, *why;
} bad_allocs[] = {
    {"return nil", "allocate returned a nil"},
    {"return 7", "allocate returned 7"},
    {"return { [1] = {} }", "has the key 1"},
    {"return { ghost = {} }", "unknown machine 'ghost'"},
    {"return { alpha = 'all' }", "for 'alpha' is 'all', expected an array"},
    {"local t = first(machines, ctx); t.alpha[1] = 0.5; return t", "holds 0.5"},
    {"local t = first(machines, ctx); t.alpha[1] = '0'; return t", "holds '0'"},
    {"local t = first(machines, ctx); t.alpha[1] = 0/0; return t", "holds nan,"},
    {"local t = first(machines, ctx); t.alpha[1] = 100; return t", "shard 100, outside 0-99"},
    {"local t = first(machines, ctx); t.alpha[1] = -1; return t", "shard -1, outside"},
    {"local t = first(machines, ctx); t.alpha[1] = 1; return t", "gives shard 1 to both 'alpha' and 'alpha'"},
    {"local t = first(machines, ctx); t.bravo = {5}; return t", "gives shard 5 to both"},
    {"local t = first(machines, ctx); t.alpha[100] = nil; return t", "leaves 1 shard(s) out, the first is 99"},
    {"local t = first(machines, ctx); t.alpha[50] = nil; return t", "not an array"},
    {"local t = first(machines, ctx); t.alpha.x = 1; return t", "not an array (key 'x')"},
    {"return {}", "leaves 100 shard(s) out, the first is 0"},
    {"error('policy gave up')", "p.lua:9: policy gave up | stack traceback: | [C]: in function 'error' | "},
    {"error({})", "error object is a table value"},
    {"local x = nil; return x.y", "attempt to index a nil value"},
    {"while true do end", "instruction budget exceeded"},
    {"local n = 0 while true do pcall(function() while true do n = n + 1 end end) end",
     "instruction budget exceeded"},
    {"local ok = pcall(function() while true do end end) return first(machines, ctx)",
     "instruction budget"},
    {"local t, s = {}, string.rep('y', 4000) for i = 1, math.huge do t[i] = s .. i end",
     "memory limit of"},
    {"local s = string.rep('y', 4096) .. 'z'", "a string longer than 4096 bytes"},
    {"table.move({}, 1, math.maxinteger, 1)", "p.lua:9: instruction budget exceeded"},
    {"local t = {} for i = 1, 200 do t[i] = i end local function f(...) end f(table.unpack(t))",
     "p.lua:9: more than 64 extra arguments to a vararg function"},
    {"for i = 1, 1000 do log('info', 'spam') end return nil", "dropping the rest"},
    {"log('nonsense', 'x')", "bad argument #1 to 'log'"},
    /* the memory cap stops runaway recursion before Lua's stack limit */
    {"local function f() return 1 + f() end return f()", "memory limit of"},
    {"allocate_missing()", "attempt to call a nil value (global 'allocate_missing')"},
};

static void check_default_allocation(const int *owner, int shards) {
  /* ratios 4, 4, 2 of 100 */
  const int want[] = {40, 40, 20};
  CHECK(is_split(fleet3, owner, shards, want, 3));
}

static void test_bad_results(void) {
  dcm__pctx_t ctx = {100, 1};
  int owner[100];
  for (size_t i = 0; i < sizeof bad_allocs / sizeof bad_allocs[0]; i++) {
    const char *path = write_file("p.lua", misbehave(bad_allocs[i].body, "return nil"));
    dcm__policy_t *p = open_policy(path);
    log_clear();
    int rc = dcm__policy_allocate(p, fleet3, 3, &ctx, owner);
    if (rc != 0 || !logged(bad_allocs[i].why))
      fprintf(stderr, "bad allocate case %zu: %s\n", i, bad_allocs[i].body);
    CHECK(rc == 0);
    CHECK_LOG(bad_allocs[i].why);
    CHECK_LOG("this decision uses the default policy");
    CHECK_LOG("p.lua:7) rejected");
    check_default_allocation(owner, 100);
    /* the next decision still works, and strict mode refuses instead */
    CHECK(dcm__policy_allocate(p, fleet3, 3, &ctx, owner) == 0);
    dcm__policy_set_strict(p, 1);
    CHECK(dcm__policy_allocate(p, fleet3, 3, &ctx, owner) == DCM_EPOLICY);
    dcm__policy_free(p);
  }
}

static const struct {
  const char *body, *why;
} bad_failovers[] = {
    {"return nil", "failover returned a nil"},
    {"return { bravo = {0, 1} }", "leaves 1 shard(s) out, the first is 7"},
    {"return { bravo = {0, 1, 7, 8} }", "did not run"},
    {"return { alpha = dead.shards }", "unknown machine 'alpha'"},
    {"return { bravo = {0, 1}, charlie = {1, 7} }", "gives shard 1 to both"},
    {"return {}", "leaves 3 shard(s) out, the first is 0"},
    {"while true do end", "instruction budget exceeded"},
};

static void test_bad_failovers(void) {
  dcm__pctx_t ctx = {100, 1};
  const int shards[] = {0, 1, 7};
  dcm__pmachine_t dead = {"alpha", 4, 0.5, 0, shards, 3};
  int owner[3];
  for (size_t i = 0; i < sizeof bad_failovers / sizeof bad_failovers[0]; i++) {
    const char *path =
        write_file("p.lua", misbehave("return nil", bad_failovers[i].body));
    dcm__policy_t *p = open_policy(path);
    log_clear();
    int rc = dcm__policy_failover(p, &dead, fleet3 + 1, 2, &ctx, owner);
    if (rc != 0 || !logged(bad_failovers[i].why))
      fprintf(stderr, "bad failover case %zu: %s\n", i, bad_failovers[i].body);
    CHECK(rc == 0);
    CHECK_LOG(bad_failovers[i].why);
    CHECK_LOG("this decision uses the default policy");
    /* the default: bravo (ratio 4) and charlie (2) split 3 shards 2:1 */
    CHECK(owner[0] == 0 && owner[1] == 0 && owner[2] == 1);
    dcm__policy_free(p);
  }
}

/* The default itself failing at call time is the one DCM_EPOLICY. */
static void test_default_fails(void) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s/broken", tmpdir);
  mkdir(dir, 0700);
  char path[600];
  snprintf(path, sizeof path, "%s/default.lua", dir);
  FILE *f = fopen(path, "w");
  /* a default needs all three functions */
  const char *text = misbehave("error('broken default')", "return nil");
  const char *tail = strstr(text, "  allocate = function");
  fprintf(f, "%.*s  ratio = function(m) return 1 end,\n%s", (int)(tail - text),
          text, tail);
  fclose(f);
  dcm__policy_t *p = NULL;
  CHECK(try_open(NULL, dir, &p) == 0);
  dcm__pctx_t ctx = {100, 1};
  int owner[100];
  log_clear();
  CHECK(dcm__policy_allocate(p, fleet3, 3, &ctx, owner) == DCM_EPOLICY);
  CHECK_LOG("broken default");
  dcm__policy_free(p);
  /* and a user policy over it: both fail, still DCM_EPOLICY */
  const char *user = write_file("u.lua", misbehave("return nil", "return nil"));
  CHECK(try_open(user, dir, &p) == 0);
  log_clear();
  CHECK(dcm__policy_allocate(p, fleet3, 3, &ctx, owner) == DCM_EPOLICY);
  CHECK_LOG("allocate returned a nil");
  CHECK_LOG("broken default");
  dcm__policy_free(p);
}

/* ---- the time budget ---- */

/* Work no count sees: each is one VM instruction of some length, repeated;
 * the time budget stops them. As load-time fixtures and as allocate
 * bodies (the self-check passes, the call with 100 shards attacks). */
static const struct {
  const char *fixture, *body;
} time_attacks[] = {
    /* (a) lookups along one chain of colliding integer keys */
    {"collide_bomb.lua",
     "local m, t = (1 << 13) - 1, {} for i = 1, (1 << 12) + 1 do t[i * m] = true end "
     "while true do local _ = t[3 * m] end"},
    /* (b) comparisons of 4 KiB strings of NULs (strcoll per piece) */
    {"compare_nul_bomb.lua",
     "local z = string.rep('\\0', 4095) local a, b = z .. 'a', z .. 'b' "
     "while true do if a < b then end end"},
    /* (c) 4 KiB numeric strings converted by a for loop's FORPREP */
    {"convert_bomb.lua",
     "local d = '1' .. string.rep('0', 300) .. '.' .. string.rep('0', 3700) .. '1' "
     "local a, b = '-' .. d, d while true do for _ = a, b, a do end end"},
    /* a weak table's collection (quadratic in one step): abandoned */
    {"weak_bomb.lua", NULL},
};

/* Abandoned steps (tests end with none) finish: at most a minute. */
static void wait_abandoned(void) {
  for (int i = 0; i < 6000 && dcm__sandbox_abandoned() > 0; i++) usleep(10000);
  CHECK(dcm__sandbox_abandoned() == 0);
}

static void test_time_budget(void) {
  policy_time = 0.1; /* 0.1 s a call, 0.2 s a load, plus the grace */
  dcm__pctx_t ctx = {100, 1};
  int owner[100];
  for (size_t i = 0; i < sizeof time_attacks / sizeof time_attacks[0]; i++) {
    dcm__policy_t *p = NULL;
    log_clear();
    /* at load: the file is refused, with the budget's error */
    int rc = try_open(fixture(time_attacks[i].fixture), policy_dir, &p);
    if (rc != DCM_EPOLICY || !logged("time budget"))
      fprintf(stderr, "loading %s\n", time_attacks[i].fixture);
    CHECK(rc == DCM_EPOLICY);
    CHECK_LOG("time budget");
    wait_abandoned();
    if (time_attacks[i].body == NULL) continue;
    /* at call time: rejected like any failure, the default decides, and
     * the policy still answers the next call */
    const char *path = write_file("p.lua", misbehave(time_attacks[i].body, "return nil"));
    p = open_policy(path);
    log_clear();
    rc = dcm__policy_allocate(p, fleet3, 3, &ctx, owner);
    if (rc != 0 || !logged("time budget exceeded"))
      fprintf(stderr, "time attack %zu: %s\n%s", i, time_attacks[i].body, logbuf);
    CHECK(rc == 0);
    CHECK_LOG("p.lua:9: time budget exceeded");
    CHECK_LOG("this decision uses the default policy");
    check_default_allocation(owner, 100);
    dcm__pctx_t small = {16, 1};
    log_clear();
    CHECK(dcm__policy_allocate(p, fleet3, 3, &small, owner) == 0);
    CHECK(!logged("rejected"));
    for (int s = 0; s < 16; s++) CHECK(owner[s] == 0); /* the user's split */
    dcm__policy_free(p);
  }
  policy_time = 0;
}

/*
 * One VM step no hook interrupts: a table insert whose rehash reinserts
 * 32768 colliding keys, seconds in one instruction. The call returns at
 * its time budget plus the grace, the default decides, and the state is
 * abandoned to its thread: later decisions use the default alone until a
 * reload. The thread frees the state when the step ends.
 */
static void test_abandoned(void) {
  policy_time = 0.05;
  const char *body = "local m, t = (1 << 16) - 1, {} "
                     "for i = 1, 1 << 15 do t[i * m] = true end "
                     "t[((1 << 15) + 1) * m] = true";
  const char *path = write_file("p.lua", misbehave(body, "return nil"));
  dcm__policy_t *p = open_policy(path);
  dcm__pctx_t ctx = {100, 1};
  int owner[100];
  log_clear();
  CHECK(dcm__policy_allocate(p, fleet3, 3, &ctx, owner) == 0);
  CHECK_LOG("past its time budget of 50 ms; abandoned");
  CHECK_LOG("decisions use the default policy until the next reload");
  CHECK_LOG("this decision uses the default policy");
  check_default_allocation(owner, 100);
  /* the next decision: the default alone, nothing rejected */
  log_clear();
  CHECK(dcm__policy_allocate(p, fleet3, 3, &ctx, owner) == 0);
  CHECK(!logged("rejected"));
  check_default_allocation(owner, 100);
  dcm__policy_stats_t st;
  dcm__policy_stats(p, &st);
  CHECK(st.calls == 2 && st.errors == 1);
  /* a reload brings the user's policy back */
  write_file("p.lua", "return { allocate = function(machines, ctx)\n"
                      "  local t = {} for s = 0, ctx.shard_count - 1 do t[s + 1] = s end\n"
                      "  return { [machines[3].id] = t } end }\n");
  CHECK(dcm__policy_reload(p, NULL, 0, NULL) == 0);
  CHECK(dcm__policy_allocate(p, fleet3, 3, &ctx, owner) == 0);
  for (int s = 0; s < 100; s++) CHECK(owner[s] == 2);
  dcm__policy_free(p);
  wait_abandoned();
  policy_time = 0;
}

/* ---- reload ---- */

static void test_reload(void) {
  const char *v1 = "return { allocate = function(machines, ctx)\n"
                   "  local t = {} for s = 0, ctx.shard_count - 1 do t[s + 1] = s end\n"
                   "  return { [machines[1].id] = t } end }\n";
  const char *v2 = "return { allocate = function(machines, ctx)\n"
                   "  local t = {} for s = 0, ctx.shard_count - 1 do t[s + 1] = s end\n"
                   "  return { [machines[#machines].id] = t } end }\n";
  const char *path = write_file("r.lua", v1);
  dcm__policy_t *p = open_policy(path);
  dcm__pctx_t ctx = {16, 1};
  int owner[16], before[16];
  CHECK(dcm__policy_allocate(p, fleet3, 3, &ctx, owner) == 0);
  for (int s = 0; s < 16; s++) CHECK(owner[s] == 0);
  memcpy(before, owner, sizeof owner);

  /* every kind of broken file: the reload fails, the old generation stays */
  static const char *const bad[] = {"syntax.lua", "infinite.lua",
                                    "pcall_infinite.lua", "memory_bomb.lua",
                                    "io.lua", "bad_shape.lua", "gc.lua"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char text[4096];
    FILE *f = fopen(fixture(bad[i]), "r");
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    write_file("r.lua", text);
    log_clear();
    CHECK(dcm__policy_reload(p, NULL, 0, NULL) == DCM_EPOLICY);
    CHECK_LOG("reload failed, keeping the running policy");
    CHECK(dcm__policy_allocate(p, fleet3, 3, &ctx, owner) == 0);
    CHECK(memcmp(owner, before, sizeof owner) == 0);
  }
  unlink(path);
  log_clear();
  CHECK(dcm__policy_reload(p, NULL, 0, NULL) == DCM_EPOLICY);
  CHECK_LOG("cannot open");
  CHECK(dcm__policy_allocate(p, fleet3, 3, &ctx, owner) == 0);
  CHECK(memcmp(owner, before, sizeof owner) == 0);

  /* a good reload changes the next decision only */
  write_file("r.lua", v2);
  log_clear();
  CHECK(dcm__policy_reload(p, NULL, 0, NULL) == 0);
  CHECK_LOG("policy: reloaded");
  CHECK(memcmp(owner, before, sizeof owner) == 0);
  CHECK(dcm__policy_allocate(p, fleet3, 3, &ctx, owner) == 0);
  for (int s = 0; s < 16; s++) CHECK(owner[s] == 2);
  dcm__policy_free(p);
}

/* ---- overlay: a policy that only sets load_floor or ratio ---- */

static void test_overlay(void) {
  const char *path = write_file("floor.lua", "return { load_floor = 4.0 }\n");
  dcm__policy_t *p = open_policy(path);
  dcm__pctx_t ctx = {16, 1};
  int owner[16];
  /* all loads under 4: ratios are cores / 4 = 1, 2, 0.5 -> 4.57, 9.14, 2.29 */
  CHECK(dcm__policy_allocate(p, fleet3, 3, &ctx, owner) == 0);
  const int want[] = {5, 9, 2};
  CHECK(is_split(fleet3, owner, 16, want, 3));
  dcm__policy_free(p);

  path = write_file("cores.lua", "return { ratio = function(m) return m.cores end }\n");
  p = open_policy(path);
  CHECK(dcm__policy_allocate(p, fleet3, 3, &ctx, owner) == 0);
  /* 4, 8, 2 of 14: 4.57, 9.14, 2.29 -> 5, 9, 2 */
  CHECK(is_split(fleet3, owner, 16, want, 3));
  dcm__policy_free(p);
}

/* This process's threads, from /proc. */
static int threads(void) {
  DIR *d = opendir("/proc/self/task");
  int n = 0;
  if (d == NULL) return -1;
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

static int add_job(lua_State *L) {
  int *x = lua_touserdata(L, 1);
  *x += 1;
  return 0;
}

/* The sandbox's thread ends when idle (a busy single-threaded loop pays
 * less per socket syscall) and the next job starts another. */
static void test_idle_thread(void) {
  dcm__sandbox_t sb;
  int x = 0;
  wait_abandoned(); /* an abandoned job's thread may still be exiting: */
  for (int i = 0; i < 500 && threads() > 1; i++) usleep(10000);
  int base = threads();
  CHECK(base == 1); /* every other sandbox here is closed */
  CHECK(dcm__sandbox_open(&sb, 1 << 20, 0, NULL) == 0);
  CHECK(sb.idle_ns == DCM__SB_IDLE_NS);
  sb.idle_ns = 600 * (uint64_t)1000000000; /* no timing below depends on the machine */
  CHECK(threads() == base); /* no job yet, no thread */
  CHECK(dcm__sandbox_run(&sb, add_job, &x, 1000000000u) == LUA_OK && x == 1);
  CHECK(threads() == base + 1);
  sb.idle_ns = 1000000; /* read by the thread's next wait, after this job */
  for (int i = 1; i <= 50; i++) { /* jobs racing the idle end: each runs, once */
    usleep((unsigned)(i % 4) * 400);
    CHECK(dcm__sandbox_run(&sb, add_job, &x, 1000000000u) == LUA_OK && x == 1 + i);
  }
  for (int i = 0; i < 500 && threads() > base; i++) usleep(10000);
  CHECK(threads() == base);
  CHECK(dcm__sandbox_run(&sb, add_job, &x, 1000000000u) == LUA_OK && x == 52);
  for (int i = 0; i < 500 && threads() > base; i++) usleep(10000);
  dcm__sandbox_close(&sb); /* joins a thread that ended idle */
  CHECK(dcm__sandbox_open(&sb, 1 << 20, 0, NULL) == 0);
  CHECK(dcm__sandbox_run(&sb, add_job, &x, 1000000000u) == LUA_OK && x == 53);
  dcm__sandbox_close(&sb); /* stops a waiting one */
  CHECK(threads() == base);
  CHECK(dcm__sandbox_abandoned() == 0);
}

int main(void) {
  const char *src = getenv("DCM_SOURCE_DIR");
  if (src == NULL) src = ".";
  snprintf(policy_dir, sizeof policy_dir, "%s/policies", src);
  snprintf(fixtures, sizeof fixtures, "%s/spec/policy/fixtures/bad", src);
  snprintf(tmpdir, sizeof tmpdir, "/tmp/dcm-test-policy-XXXXXX");
  if (mkdtemp(tmpdir) == NULL) {
    perror("mkdtemp");
    return 2;
  }
  test_default();
  test_bad_input();
  test_bad_loads();
  test_sandbox();
  test_bad_results();
  test_bad_failovers();
  test_default_fails();
  test_time_budget();
  test_abandoned();
  test_reload();
  test_overlay();
  test_idle_thread();
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
  if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
  return failures ? 1 : 0;
}
