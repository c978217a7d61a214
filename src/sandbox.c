/*
 * sandbox.c: see sandbox.h.
 *
 * What the sandbox exposes, and why each is bounded (Lua 5.4). A unit is
 * about one VM instruction (~8 ns with the hooks on); the costs below were
 * measured against it with spec/bench/bench_sandbox.
 *
 * Every call, Lua or C, costs CALL_UNITS (hook()). Every library C function
 * is wrapped (charged()) or replaced, and first pays one unit per argument
 * and one per ARG_BYTES bytes of its string arguments (charge_args(): a
 * number parameter converts a numeric string by reading all of it; string
 * functions are linear in their strings). On top of that, from argument
 * sizes, before they run (cost_of()):
 *   string.byte, utf8.codepoint        the positions i..j they return
 *   utf8.len, utf8.offset              the bytes they decode
 *   utf8.codes                         its iterator: the bytes each step skips
 *   string.format/pack/packsize/unpack the format's bytes; %q, each quoted byte
 *   table.concat                       elements i..j and the separators
 *   table.insert, table.remove         #t (they shift the rest)
 *   table.move                         elements f..e
 *   table.unpack                       elements i..j
 *   table.sort                         n log n comparisons, each by the longest
 *                                      string element (a Lua comparator is a
 *                                      call, charged as any)
 * Replaced:
 *   next, pairs                        charged by the slots of the table's
 *                                      array and hash parts when a traversal
 *                                      starts (lua_next passes empty slots)
 *   ipairs                             its iterator charged as a library call
 *   string.rep                         results and counts at most
 *                                      DCM_SANDBOX_STRING_MAX, charged per piece
 *   string.find                        plain only, by memmem (linear), charged
 *                                      per byte searched
 *   setmetatable                       refuses __gc (a finalizer runs with no
 *                                      budget armed)
 * Otherwise constant time besides their arguments, or linear in their
 * output, which is an allocation and charged as one: assert error
 * getmetatable pcall rawequal rawget rawlen rawset select tonumber tostring
 * type warn; string.char/len/lower/reverse/sub/upper; table.pack; utf8.char;
 * all of math; os.time, os.clock; the string metatable's __add ... __unm.
 * Allocations cost a unit per ALLOC_BYTES; a refused one the heap's size,
 * since Lua collects the whole heap before it gives up.
 * Removed: collectgarbage (a full collection is heap-sized work), dofile,
 *   load, loadfile (no code from text at run time), print (hosts supply
 *   their own), xpcall (its handler runs with hooks off after the budget
 *   error), string.dump, string.match/gmatch/gsub (pattern backtracking);
 *   no io, package, debug, coroutine, rest of os.
 *
 * What no hook or wrapper sees, bounded by the caps and the time budget
 * instead: one VM instruction comparing strings (<, ==) or converting a
 * numeric string (for-loop bounds) works in time linear in the string, at
 * most DCM_SANDBOX_STRING_MAX bytes (strcoll: the C locale, which
 * discluster-master keeps; piece by piece between NUL bytes, so 4 KiB of
 * NULs take about 50 us); VARARG copies at most DCM_SANDBOX_VARARG_MAX
 * values; a table lookup walks the keys colliding in its hash part
 * (integer keys can be chosen to collide; building a chain is quadratic,
 * so a run builds a long one only as fast as the clock allows). The count
 * hook reads the clock every HOOK_EVERY instructions: such a run ends
 * within one stretch of them past its time budget.
 *
 * Unbounded in one VM step, so left to the job's thread (dcm__sandbox_run
 * abandons it): a rehash reinserting keys that all collide at the new size
 * (quadratic: seconds to minutes at the memory cap), a collection of a
 * weak-keyed table whose entries chain into each other (the collector
 * marks one link per pass), and the parser's table of a chunk's constants
 * when they collide (a 700 KB file of them parses for seconds).
 */
#define _GNU_SOURCE /* memmem */
#include "sandbox.h"

#include <lauxlib.h>
#include <limits.h>
#include <lualib.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "discluster/master.h"

/* Instructions between two budget and clock checks: the hook costs about
 * 2% more than with 1000 on a bare instruction loop, and a run ends at
 * most one stretch of the costliest instructions (about 10-30 ms, see
 * DCM_SANDBOX_GRACE_MS) past its time budget. */
#define HOOK_EVERY 250
/* Units for work done in C, measured against a plain VM instruction: */
#define ALLOC_BYTES 16   /* bytes allocated */
#define ARG_BYTES 8      /* bytes of a C function's string arguments (converting a
                            numeric string to a number reads it all) */
#define ARG_UNITS 1      /* one argument of a C function */
#define CALL_UNITS 8     /* a call, Lua or C, besides its instructions */
#define ELEM_UNITS 2     /* a table element or string position read or pushed */
#define CONCAT_UNITS 16  /* an element table.concat appends */
#define SLOT_UNITS 1     /* a table slot lua_next passes over */
#define COMPARE_UNITS 3  /* a comparison of table.sort (a Lua comparator is a
                            call, charged as one), plus its strings: */
#define COMPARE_BYTES 64 /* bytes compared */
#define DECODE_UNITS 1   /* a byte utf8.len or utf8.offset decodes */
#define QUOTE_UNITS 8    /* a byte string.format quotes with %q */
#define FIND_UNITS 1     /* a byte string.find searches */
/* A string's block: the TString header (24 bytes in 5.4), the bytes, a NUL. */
#define STRING_BLOCK(len) ((len) + 25)

/* ---- the allocator ---- */

static void *sb_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  dcm__sandbox_t *sb = ud;
  size_t old = ptr ? osize : 0; /* without ptr, osize is the new object's type */
  if (nsize == 0) {
    if (ptr) {
      if (sb->wipe) explicit_bzero(ptr, old);
      free(ptr);
      sb->used -= old;
    }
    return NULL;
  }
  if (nsize > old) {
    int why = 0;
    if (ptr == NULL && osize == LUA_TSTRING && !sb->host_strings &&
        nsize > STRING_BLOCK(DCM_SANDBOX_STRING_MAX))
      why = DCM__SB_STRING;
    else if (sb->used - old + nsize > sb->limit)
      why = DCM__SB_MEMORY;
    if (why) {
      /* Lua collects the whole heap and retries: that is charged as well. */
      sb->budget -= (long long)((sb->used + nsize) / ALLOC_BYTES);
      sb->refused = why;
      return NULL;
    }
    sb->budget -= (long long)(nsize / ALLOC_BYTES);
  }
  void *np;
  if (!sb->wipe) {
    np = realloc(ptr, nsize);
  } else {
    np = malloc(nsize);
    if (np != NULL && ptr != NULL) {
      memcpy(np, ptr, old < nsize ? old : nsize);
      explicit_bzero(ptr, old);
      free(ptr);
    }
  }
  if (np == NULL) {
    if (nsize > old) {
      sb->refused = DCM__SB_MEMORY;
      return NULL;
    }
    /* Lua requires a shrink to succeed: keep the block, wipe its tail. */
    if (sb->wipe) explicit_bzero((char *)ptr + nsize, old - nsize);
    np = ptr;
  }
  sb->used = sb->used - old + nsize;
  return np;
}

dcm__sandbox_t *dcm__sandbox_of(lua_State *L) {
  void *ud;
  lua_getallocf(L, &ud);
  return ud;
}

const char *dcm__sandbox_memerr(const dcm__sandbox_t *sb, char *buf, size_t n) {
  if (sb->refused == DCM__SB_STRING)
    snprintf(buf, n, "a string longer than %d bytes", DCM_SANDBOX_STRING_MAX);
  else
    snprintf(buf, n, "memory limit of %zu MiB exceeded", sb->limit >> 20);
  return buf;
}

/* ---- the budget ---- */

static void hook(lua_State *L, lua_Debug *ar);

static void exhaust(lua_State *L, dcm__sandbox_t *sb) {
  sb->exhausted = 1;
  lua_sethook(L, hook, LUA_MASKCOUNT | LUA_MASKCALL, 1);
}

static void budget_error(lua_State *L, int level) {
  luaL_where(L, level);
  if (dcm__sandbox_of(L)->timed_out)
    lua_pushliteral(L, "time budget exceeded");
  else
    lua_pushliteral(L, "instruction budget exceeded");
  lua_concat(L, 2);
  lua_error(L);
}

/* The time budget is gone (the clock read every HOOK_EVERY instructions). */
static int out_of_time(dcm__sandbox_t *sb) {
  if (sb->deadline == 0 || uv_hrtime() < sb->deadline) return 0;
  sb->timed_out = 1;
  return 1;
}

/*
 * Count events spend the budget and read the clock. Once either is gone
 * the hook fires on every instruction, so a pcall in the sandboxed code
 * that catches the error gets no instruction to run before the next one:
 * the error climbs out through every pcall. Call events cost CALL_UNITS (a
 * call and its return take several instructions' time) and refuse more
 * than DCM_SANDBOX_VARARG_MAX varargs to a Lua function: the VARARG
 * instruction copies them all, in one instruction.
 */
static void hook(lua_State *L, lua_Debug *ar) {
  if (ar->event == LUA_HOOKCOUNT) {
    dcm__sandbox_t *sb = dcm__sandbox_of(L);
    if (!sb->exhausted) {
      sb->budget -= HOOK_EVERY;
      if (sb->budget > 0 && !out_of_time(sb)) return;
      exhaust(L, sb);
    }
    budget_error(L, 0);
  }
  dcm__sandbox_of(L)->budget -= CALL_UNITS; /* the count event after raises */
  if (lua_getlocal(L, ar, -(DCM_SANDBOX_VARARG_MAX + 1)) != NULL) {
    lua_pop(L, 1);
    luaL_error(L, "more than %d extra arguments to a vararg function",
               DCM_SANDBOX_VARARG_MAX);
  }
}

void dcm__sandbox_arm(dcm__sandbox_t *sb, long long budget, uint64_t time_ns) {
  uint64_t now = uv_hrtime();
  sb->budget = budget;
  sb->deadline = time_ns && (sb->job_end == 0 || now + time_ns < sb->job_end)
                     ? now + time_ns
                     : sb->job_end;
  sb->exhausted = 0;
  sb->timed_out = 0;
  sb->refused = 0;
  sb->host_strings = 0;
  lua_sethook(sb->L, hook, LUA_MASKCOUNT | LUA_MASKCALL, HOOK_EVERY);
}

void dcm__sandbox_disarm(dcm__sandbox_t *sb) {
  exhaust(sb->L, sb);
}

void dcm__sandbox_charge(lua_State *L, long long units) {
  dcm__sandbox_t *sb = dcm__sandbox_of(L);
  sb->budget -= units;
  if (sb->budget > 0 && !sb->exhausted) return;
  exhaust(L, sb);
  budget_error(L, 1);
}

/*
 * Charges the running C function for its arguments, plus extra: one unit
 * for the call, one per argument, and the bytes of its string arguments
 * (a number parameter converts a numeric string by reading all of it).
 */
static void charge_args(lua_State *L, long long extra) {
  int n = lua_gettop(L);
  size_t bytes = 0;
  for (int i = 1; i <= n; i++)
    if (lua_type(L, i) == LUA_TSTRING) bytes += lua_rawlen(L, i);
  dcm__sandbox_charge(L, 1 + (long long)n * ARG_UNITS + (long long)(bytes / ARG_BYTES) + extra);
}

/* ---- costs ---- */

/* n * per, saturated well below overflow. */
static long long times(lua_Unsigned n, long long per) {
  const long long big = LLONG_MAX / 4;
  if (per <= 0) return 0;
  return n > (lua_Unsigned)(big / per) ? big : (long long)n * per;
}

/* Argument i as an integer, or def when absent or not one. */
static lua_Integer int_arg(lua_State *L, int i, lua_Integer def) {
  int ok;
  lua_Integer v = lua_tointegerx(L, i, &ok);
  return ok ? v : def;
}

/* How many of positions i..j (1-based, negative from the end) lie in 1..len. */
static lua_Unsigned positions(size_t len, lua_Integer i, lua_Integer j) {
  lua_Integer n = (lua_Integer)len;
  if (i < 0) i = i < -n ? 1 : n + i + 1;
  if (i == 0) i = 1;
  if (j < 0) j = j < -n ? 0 : n + j + 1;
  if (j > n) j = n;
  return j >= i ? (lua_Unsigned)(j - i) + 1 : 0;
}

/* Elements f..e, without overflow. */
static lua_Unsigned span(lua_Integer f, lua_Integer e) {
  if (e < f) return 0;
  lua_Unsigned n = (lua_Unsigned)e - (lua_Unsigned)f;
  return n == (lua_Unsigned)-1 ? n : n + 1;
}

/* #t as the table functions see it (__len may run); 0 for what they refuse. */
static lua_Unsigned table_len(lua_State *L) {
  int t = lua_type(L, 1);
  if (t != LUA_TTABLE && t != LUA_TSTRING) return 0;
  lua_Integer n = luaL_len(L, 1);
  return n > 0 ? (lua_Unsigned)n : 0;
}

#if LUA_VERSION_NUM == 504
/* The head of Lua 5.4's Table (lobject.h; the same from 5.4.0 to 5.4.8). */
typedef struct {
  void *next;
  unsigned char tt, marked, flags, lsizenode;
  unsigned int alimit;
} lua54_table_t;
#endif

/*
 * The slots lua_next may pass over in the table at idx: its array part
 * (at most twice alimit) and its hash part. Lua has no API for these sizes,
 * so they are read from the table's head when dcm__sandbox_open verified
 * that reading; otherwise every slot the heap could hold is assumed.
 */
static lua_Unsigned table_slots(lua_State *L, int idx) {
  dcm__sandbox_t *sb = dcm__sandbox_of(L);
#if LUA_VERSION_NUM == 504
  if (sb->exact_tables) {
    lua54_table_t t;
    memcpy(&t, lua_topointer(L, idx), sizeof t);
    return 2 * (lua_Unsigned)t.alimit + ((lua_Unsigned)1 << t.lsizenode);
  }
#endif
  return sb->used / 16; /* the smallest slot is a 16-byte TValue */
}

enum {
  C_ARGS,   /* nothing besides the arguments */
  C_RANGE,  /* positions i..j of the string at 1 (default j = i) */
  C_ULEN,    /* utf8.len(s, i, j): the bytes i..j it decodes */
  C_UOFFSET, /* utf8.offset(s, n, i): up to n characters' bytes */
  C_FORMAT, /* a format string at 1: each of its bytes; %q: each byte quoted */
  C_CONCAT,
  C_SHIFT, /* insert, remove */
  C_MOVE,
  C_UNPACK,
  C_SORT,
  C_CODES,     /* utf8.codes: its iterator is charged per step */
  C_CODES_STEP /* that iterator: the continuation bytes it skips */
};

static long long sort_cost(lua_State *L) {
  lua_Unsigned n = table_len(L), log = 1;
  if (n < 2) return 1;
  while (log < 64 && ((lua_Unsigned)1 << log) < n) log++;
  /* The longest string element, read raw; behind metamethods assume the cap. */
  dcm__sandbox_charge(L, times(n, ELEM_UNITS));
  size_t longest = DCM_SANDBOX_STRING_MAX;
  if (lua_type(L, 1) == LUA_TTABLE && !lua_getmetatable(L, 1)) {
    longest = 0;
    for (lua_Unsigned i = 1; i <= n; i++) {
      if (lua_rawgeti(L, 1, (lua_Integer)i) == LUA_TSTRING && lua_rawlen(L, -1) > longest)
        longest = lua_rawlen(L, -1);
      lua_pop(L, 1);
    }
  } else if (lua_type(L, 1) == LUA_TTABLE) {
    lua_pop(L, 1); /* the metatable */
  }
  return times(times(n, (long long)log), COMPARE_UNITS + (long long)(longest / COMPARE_BYTES));
}

static long long cost_of(lua_State *L, int kind) {
  int top = lua_gettop(L);
  long long units = 0;
  switch (kind) {
    case C_RANGE: {
      size_t len = lua_type(L, 1) == LUA_TSTRING ? lua_rawlen(L, 1) : 0;
      lua_Integer i = int_arg(L, 2, 1);
      units += times(positions(len, i, int_arg(L, 3, i)), ELEM_UNITS);
      break;
    }
    case C_ULEN: {
      size_t len = lua_type(L, 1) == LUA_TSTRING ? lua_rawlen(L, 1) : 0;
      units += times(positions(len, int_arg(L, 2, 1), int_arg(L, 3, -1)), DECODE_UNITS);
      break;
    }
    case C_UOFFSET: {
      size_t len = lua_type(L, 1) == LUA_TSTRING ? lua_rawlen(L, 1) : 0;
      lua_Integer n = int_arg(L, 2, 0);
      lua_Unsigned chars = n < 0 ? (lua_Unsigned)0 - (lua_Unsigned)n : (lua_Unsigned)n;
      units += times(chars < len / 4 ? 4 * chars + 4 : len, DECODE_UNITS);
      break;
    }
    case C_FORMAT:
      if (lua_type(L, 1) == LUA_TSTRING) {
        size_t len;
        const char *fmt = lua_tolstring(L, 1, &len);
        units += (long long)len;
        if (memmem(fmt, len, "%q", 2) != NULL) {
          size_t quoted = 0;
          for (int i = 2; i <= top; i++)
            if (lua_type(L, i) == LUA_TSTRING) quoted += lua_rawlen(L, i);
          units += times(quoted, QUOTE_UNITS);
        }
      }
      break;
    case C_CONCAT: {
      lua_Integer i = int_arg(L, 3, 1);
      lua_Integer j = lua_isnoneornil(L, 4) ? (lua_Integer)table_len(L) : int_arg(L, 4, 0);
      lua_Unsigned n = span(i, j);
      size_t sep = lua_type(L, 2) == LUA_TSTRING ? lua_rawlen(L, 2) : 0;
      units += times(n, CONCAT_UNITS) + times(n, (long long)(sep / ARG_BYTES));
      break;
    }
    case C_SHIFT:
      units += times(table_len(L) + 1, ELEM_UNITS);
      break;
    case C_MOVE:
      units += times(span(int_arg(L, 2, 1), int_arg(L, 3, 0)), ELEM_UNITS);
      break;
    case C_UNPACK: {
      lua_Integer i = int_arg(L, 2, 1);
      lua_Integer j = lua_isnoneornil(L, 3) ? (lua_Integer)table_len(L) : int_arg(L, 3, 0);
      lua_Unsigned n = span(i, j);
      /* past the stack limit it fails at once ("too many results") */
      units += times(n < LUAI_MAXSTACK ? n : LUAI_MAXSTACK, ELEM_UNITS);
      break;
    }
    case C_SORT:
      units += sort_cost(L);
      break;
    case C_CODES_STEP:
      if (lua_type(L, 1) == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, 1, &len);
        lua_Integer at = int_arg(L, 2, 0);
        size_t k = at > 0 ? (size_t)at : 0, from = k;
        while (k < len && ((unsigned char)s[k] & 0xC0) == 0x80) k++;
        units += (long long)((k - from) / ARG_BYTES);
      }
      break;
    default:
      break;
  }
  lua_settop(L, top);
  return units;
}

/*
 * upvalues: the library function, its cost kind. It is called in this
 * frame, so its errors still name it as the caller did.
 */
static int charged(lua_State *L) {
  int kind = (int)lua_tointeger(L, lua_upvalueindex(2));
  charge_args(L, kind == C_ARGS ? 0 : cost_of(L, kind));
  int r = lua_tocfunction(L, lua_upvalueindex(1))(L);
  if (kind == C_CODES && r == 3) {
    int it = lua_gettop(L) - 2;
    lua_pushvalue(L, it);
    lua_pushinteger(L, C_CODES_STEP);
    lua_pushcclosure(L, charged, 2);
    lua_replace(L, it);
  }
  return r;
}

/* ---- replacements ---- */

/*
 * next(t [, k]) with upvalues (last table, last key): a call that carries
 * on from the key the previous call returned costs one unit, since the
 * traversal's scan was paid when it started; any other call pays for
 * every slot of t. pairs() gives each loop a closure of its own.
 */
static int sb_next(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 2);
  int more = !lua_isnil(L, 2) && lua_rawequal(L, 1, lua_upvalueindex(1)) &&
             lua_rawequal(L, 2, lua_upvalueindex(2));
  charge_args(L, more ? 0 : times(table_slots(L, 1), SLOT_UNITS));
  if (lua_next(L, 1)) {
    lua_pushvalue(L, 1);
    lua_replace(L, lua_upvalueindex(1));
    lua_pushvalue(L, -2);
    lua_replace(L, lua_upvalueindex(2));
    return 2;
  }
  lua_pushnil(L);
  lua_replace(L, lua_upvalueindex(2));
  lua_pushnil(L);
  return 1;
}

static int sb_pairs(lua_State *L) {
  charge_args(L, 0);
  luaL_checkany(L, 1);
  if (luaL_getmetafield(L, 1, "__pairs") != LUA_TNIL) {
    lua_pushvalue(L, 1);
    lua_call(L, 1, 3);
    return 3;
  }
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  lua_pushcclosure(L, sb_next, 2);
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  return 3;
}

/* string.rep(s, n [, sep]): at most DCM_SANDBOX_STRING_MAX bytes, and n at
 * most that too (an empty string would loop n times). */
static int sb_rep(lua_State *L) {
  size_t l, lsep;
  luaL_checklstring(L, 1, &l);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_optlstring(L, 3, "", &lsep);
  if (n <= 0) {
    lua_pushliteral(L, "");
    return 1;
  }
  if ((lua_Unsigned)n > DCM_SANDBOX_STRING_MAX ||
      l + lsep > (DCM_SANDBOX_STRING_MAX + lsep) / (size_t)n)
    return luaL_error(L, "string.rep: result longer than %d bytes", DCM_SANDBOX_STRING_MAX);
  charge_args(L, n / 2); /* for its pieces; the result is charged as allocated */
  return lua_tocfunction(L, lua_upvalueindex(1))(L);
}

/* string.find(s, text [, init]): a plain search, linear in both strings. */
static int sb_find(lua_State *L) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  lua_Integer init = luaL_optinteger(L, 3, 1);
  size_t at; /* 0-based start, as lstrlib's posrelatI */
  if (init > 0)
    at = (size_t)init - 1;
  else if (init == 0 || init < -(lua_Integer)ls)
    at = 0;
  else
    at = ls + (size_t)init;
  if (at > ls) {
    luaL_pushfail(L);
    return 1;
  }
  charge_args(L, (long long)(ls - at + lp) * FIND_UNITS);
  const char *hit = memmem(s + at, ls - at, p, lp);
  if (hit == NULL) {
    luaL_pushfail(L);
    return 1;
  }
  lua_pushinteger(L, (hit - s) + 1);
  lua_pushinteger(L, (hit - s) + (lua_Integer)lp);
  return 2;
}

/* setmetatable(t, mt), refusing __gc: a finalizer runs outside any budget. */
static int sb_setmetatable(lua_State *L) {
  charge_args(L, 0);
  if (lua_type(L, 2) == LUA_TTABLE) {
    lua_pushliteral(L, "__gc");
    if (lua_rawget(L, 2) != LUA_TNIL)
      return luaL_error(L, "__gc metamethods are not allowed in the sandbox");
    lua_pop(L, 1);
  }
  return lua_tocfunction(L, lua_upvalueindex(1))(L);
}

/* ipairs(t), its iterator (upvalue) charged like any library function. */
static int sb_ipairs(lua_State *L) {
  charge_args(L, 0);
  luaL_checkany(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 1);
  lua_pushinteger(L, 0);
  return 3;
}

/*
 * The same for a library function with upvalues of its own (math.random's
 * state): this closure holds copies of them first, so the function finds
 * them where it expects, then the function. Only the cost C_ARGS.
 */
static int charged_up(lua_State *L) {
  int n = 1; /* upvalues: past the last one the index is invalid */
  while (lua_type(L, lua_upvalueindex(n + 1)) != LUA_TNONE) n++;
  charge_args(L, 0);
  return lua_tocfunction(L, lua_upvalueindex(n))(L);
}

/* Replaces t[name] (t at idx) with f, the original as its upvalue. */
static void replace_field(lua_State *L, int idx, const char *name, lua_CFunction f) {
  lua_getfield(L, idx, name);
  lua_pushcclosure(L, f, 1);
  lua_setfield(L, idx, name);
}

/* ---- the library ---- */

/* 1 when table_slots() may read Lua 5.4's table heads: checked on tables
 * of known sizes. */
static int tables_readable(lua_State *L) {
#if LUA_VERSION_NUM == 504
  static const struct {
    int narr, nrec;
    unsigned alimit, lsize;
  } probe[] = {{100, 0, 100, 0}, {0, 100, 0, 7}, {3, 1000, 3, 10}};
  for (size_t i = 0; i < sizeof probe / sizeof probe[0]; i++) {
    lua54_table_t t;
    lua_createtable(L, probe[i].narr, probe[i].nrec);
    memcpy(&t, lua_topointer(L, -1), sizeof t);
    lua_pop(L, 1);
    if (t.tt != LUA_TTABLE || t.alimit != probe[i].alimit || t.lsizenode != probe[i].lsize)
      return 0;
  }
  return 1;
#else
  (void)L;
  return 0;
#endif
}

/* What a library function costs besides its arguments (default C_ARGS). */
static const struct {
  const char *lib, *name;
  int kind;
} costs[] = {
    {LUA_STRLIBNAME, "byte", C_RANGE},
    {LUA_STRLIBNAME, "format", C_FORMAT},
    {LUA_STRLIBNAME, "pack", C_FORMAT},
    {LUA_STRLIBNAME, "packsize", C_FORMAT},
    {LUA_STRLIBNAME, "unpack", C_FORMAT},
    {LUA_TABLIBNAME, "concat", C_CONCAT},
    {LUA_TABLIBNAME, "insert", C_SHIFT},
    {LUA_TABLIBNAME, "remove", C_SHIFT},
    {LUA_TABLIBNAME, "move", C_MOVE},
    {LUA_TABLIBNAME, "unpack", C_UNPACK},
    {LUA_TABLIBNAME, "sort", C_SORT},
    {LUA_UTF8LIBNAME, "codepoint", C_RANGE},
    {LUA_UTF8LIBNAME, "len", C_ULEN},
    {LUA_UTF8LIBNAME, "offset", C_UOFFSET},
    {LUA_UTF8LIBNAME, "codes", C_CODES},
};

static int is_replacement(lua_CFunction f) {
  return f == sb_next || f == sb_pairs || f == sb_ipairs || f == sb_setmetatable ||
         f == sb_rep || f == sb_find || f == charged || f == charged_up;
}

/* Wraps every C function in the table at t (library lib) in charged(). */
static void charge_library(lua_State *L, int t, const char *lib) {
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_CFunction f = lua_tocfunction(L, -1);
    if (f == NULL || is_replacement(f) || lua_type(L, -2) != LUA_TSTRING) {
      lua_pop(L, 1);
      continue;
    }
    int kind = C_ARGS, up = 0;
    for (size_t i = 0; i < sizeof costs / sizeof costs[0]; i++)
      if (strcmp(costs[i].lib, lib) == 0 && strcmp(costs[i].name, lua_tostring(L, -2)) == 0)
        kind = costs[i].kind;
    int fn = lua_gettop(L);
    while (lua_getupvalue(L, fn, up + 1) != NULL) up++;
    if (up > 0) {
      lua_pushvalue(L, fn);
      lua_pushcclosure(L, charged_up, up + 1);
      lua_replace(L, fn);
    } else {
      lua_pushinteger(L, kind);
      lua_pushcclosure(L, charged, 2);
    }
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, t); /* an existing key: allowed while traversing */
  }
}

static int open_library(lua_State *L) {
  static const char *const removed[] = {"collectgarbage", "dofile", "load", "loadfile",
                                        "print", "xpcall", NULL};
  static const char *const patterns[] = {"dump", "match", "gmatch", "gsub", NULL};
  static const char *const libs[] = {LUA_STRLIBNAME, LUA_TABLIBNAME, LUA_MATHLIBNAME,
                                     LUA_UTF8LIBNAME, LUA_OSLIBNAME, NULL};
  dcm__sandbox_t *sb = lua_touserdata(L, 1);
  luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
  luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
  luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
  luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
  luaL_requiref(L, LUA_UTF8LIBNAME, luaopen_utf8, 1);
  luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 0);
  lua_settop(L, 0);
  lua_pushglobaltable(L); /* 1 */
  for (int i = 0; removed[i]; i++) {
    lua_pushnil(L);
    lua_setfield(L, 1, removed[i]);
  }
  /* os with only time and clock; the full library leaves the registry. */
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE); /* 2 */
  lua_getfield(L, 2, LUA_OSLIBNAME);                        /* 3 */
  lua_createtable(L, 0, 3);
  lua_getfield(L, 3, "time");
  lua_setfield(L, -2, "time");
  lua_getfield(L, 3, "clock");
  lua_setfield(L, -2, "clock");
  lua_setfield(L, 1, LUA_OSLIBNAME);
  lua_pushnil(L);
  lua_setfield(L, 2, LUA_OSLIBNAME);
  lua_settop(L, 1);
  lua_getfield(L, 1, LUA_STRLIBNAME); /* 2 */
  for (int i = 0; patterns[i]; i++) {
    lua_pushnil(L);
    lua_setfield(L, 2, patterns[i]);
  }
  replace_field(L, 2, "rep", sb_rep);
  lua_pushcfunction(L, sb_find);
  lua_setfield(L, 2, "find");
  lua_settop(L, 1);
  replace_field(L, 1, "setmetatable", sb_setmetatable);
  lua_pushnil(L);
  lua_pushnil(L);
  lua_pushcclosure(L, sb_next, 2);
  lua_setfield(L, 1, "next");
  lua_pushcfunction(L, sb_pairs);
  lua_setfield(L, 1, "pairs");
  lua_getfield(L, 1, "ipairs"); /* its iterator, charged */
  lua_newtable(L);
  lua_call(L, 1, 1);
  lua_pushinteger(L, C_ARGS);
  lua_pushcclosure(L, charged, 2);
  lua_pushcclosure(L, sb_ipairs, 1);
  lua_setfield(L, 1, "ipairs");
  charge_library(L, 1, LUA_GNAME);
  for (int i = 0; libs[i]; i++) {
    lua_getfield(L, 1, libs[i]);
    charge_library(L, 2, libs[i]);
    lua_settop(L, 1);
  }
  lua_pushliteral(L, ""); /* the string metatable: __add ... coerce strings */
  lua_getmetatable(L, -1);
  charge_library(L, 3, "");
  lua_settop(L, 1);
  sb->exact_tables = tables_readable(L);
  return 0;
}

int dcm__sandbox_open(dcm__sandbox_t *sb, size_t limit, int wipe,
                      void (*release)(dcm__sandbox_t *sb, void *job)) {
  memset(sb, 0, sizeof *sb);
  sb->limit = limit;
  sb->wipe = wipe;
  sb->release = release;
  sb->idle_ns = DCM__SB_IDLE_NS;
  sb->L = lua_newstate(sb_alloc, sb);
  if (sb->L == NULL) return DCM_ENOMEM;
  lua_pushcfunction(sb->L, open_library);
  lua_pushlightuserdata(sb->L, sb);
  if (lua_pcall(sb->L, 1, 0, 0) != LUA_OK) {
    dcm__sandbox_close(sb);
    return DCM_ENOMEM;
  }
  dcm__sandbox_disarm(sb);
  return 0;
}

/* ---- the thread jobs run on ---- */

/*
 * One per sandbox, started by a job when none runs. The host hands a job
 * over and waits on cv; between jobs the thread waits on cv, and ends after
 * sb->idle_ns without one: while a process has a second thread, the kernel
 * takes a reference on a socket's file on every read and write, which a
 * busy loop (10,000 heartbeats a second) pays twice per message.
 * Everything below is under mu. Once abandoned, the host forgets the
 * sandbox: the thread alone touches it, and frees it when the job ends.
 */
struct dcm__sb_thread_s {
  uv_thread_t id;
  uv_mutex_t mu;
  uv_cond_t cv;
  lua_CFunction fn; /* the job handed over; NULL once taken */
  void *job;
  int busy;         /* a job was handed over and has not ended */
  int status;       /* lua_pcall's, when it ended */
  int quit;         /* the sandbox closes: the thread ends */
  int abandoned;    /* the host stopped waiting */
  int idle;         /* ended for want of jobs: the host joins it */
};

static atomic_int abandoned_jobs;

int dcm__sandbox_abandoned(void) {
  return atomic_load(&abandoned_jobs);
}

static void thread_free(dcm__sb_thread_t *t) {
  uv_cond_destroy(&t->cv);
  uv_mutex_destroy(&t->mu);
  free(t);
}

static void worker(void *arg) {
  dcm__sandbox_t *sb = arg;
  dcm__sb_thread_t *t = sb->thread;
  void *job = NULL;
  uv_mutex_lock(&t->mu);
  for (;;) {
    while (t->fn == NULL && !t->quit && !t->idle)
      if (uv_cond_timedwait(&t->cv, &t->mu, sb->idle_ns) == UV_ETIMEDOUT && t->fn == NULL)
        t->idle = 1;
    if (t->quit || t->idle) break;
    lua_CFunction fn = t->fn;
    job = t->job;
    t->fn = NULL;
    uv_mutex_unlock(&t->mu);
    lua_pushcfunction(sb->L, fn);
    lua_pushlightuserdata(sb->L, job);
    int st = lua_pcall(sb->L, 1, LUA_MULTRET, 0);
    dcm__sandbox_disarm(sb);
    sb->job_end = 0;
    uv_mutex_lock(&t->mu);
    t->status = st;
    t->busy = 0;
    if (t->abandoned) break;
    uv_cond_signal(&t->cv);
  }
  int abandoned = t->abandoned;
  uv_mutex_unlock(&t->mu);
  if (!abandoned) return; /* quit or idle: the host joins and frees */
  thread_free(t);
  sb->thread = NULL;
  dcm__sandbox_close(sb);
  sb->release(sb, job);
  atomic_fetch_sub(&abandoned_jobs, 1);
}

/* The thread, with every signal blocked: they belong to the host's loop.
   Returns with mu held, so the job is handed over before the thread can
   wait for one (and end idle meanwhile). */
static int thread_start(dcm__sandbox_t *sb) {
  dcm__sb_thread_t *t = calloc(1, sizeof *t);
  if (t == NULL) return DCM_ENOMEM;
  if (uv_mutex_init(&t->mu) != 0) {
    free(t);
    return DCM_ENOMEM;
  }
  if (uv_cond_init(&t->cv) != 0) {
    uv_mutex_destroy(&t->mu);
    free(t);
    return DCM_ENOMEM;
  }
  uv_mutex_lock(&t->mu);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  sb->thread = t;
  int rc = uv_thread_create(&t->id, worker, sb);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    uv_mutex_unlock(&t->mu);
    sb->thread = NULL;
    thread_free(t);
    return DCM_ENOMEM;
  }
  return 0;
}

/* The thread a job goes to, with its mu held: one that ended idle is
   joined and another started. Checking idle and handing the job over in
   one hold of mu is what keeps a job from going to a thread that ended. */
static dcm__sb_thread_t *thread_take(dcm__sandbox_t *sb) {
  dcm__sb_thread_t *t = sb->thread;
  if (t) {
    uv_mutex_lock(&t->mu);
    if (!t->idle) return t;
    uv_mutex_unlock(&t->mu);
    uv_thread_join(&t->id);
    thread_free(t);
    sb->thread = NULL;
  }
  return thread_start(sb) == 0 ? sb->thread : NULL;
}

int dcm__sandbox_run(dcm__sandbox_t *sb, lua_CFunction fn, void *job, uint64_t time_ns) {
  dcm__sb_thread_t *t = thread_take(sb);
  if (t == NULL) return DCM_ENOMEM;
  uint64_t start = uv_hrtime();
  uint64_t end = start + time_ns + (uint64_t)DCM_SANDBOX_GRACE_MS * 1000000u;
  sb->job_end = start + time_ns;
  t->fn = fn;
  t->job = job;
  t->busy = 1;
  uv_cond_signal(&t->cv);
  while (t->busy) {
    uint64_t now = uv_hrtime();
    if (now >= end) {
      uv_thread_t id = t->id; /* t is the thread's from now on */
      t->abandoned = 1;
      atomic_fetch_add(&abandoned_jobs, 1);
      uv_mutex_unlock(&t->mu);
      pthread_detach(id); /* it frees itself: see worker() */
      return DCM__SB_ABANDONED;
    }
    uv_cond_timedwait(&t->cv, &t->mu, end - now);
  }
  int st = t->status;
  uv_mutex_unlock(&t->mu);
  return st;
}

void dcm__sandbox_close(dcm__sandbox_t *sb) {
  dcm__sb_thread_t *t = sb->thread;
  if (t) {
    uv_mutex_lock(&t->mu);
    t->quit = 1;
    uv_cond_signal(&t->cv);
    uv_mutex_unlock(&t->mu);
    uv_thread_join(&t->id);
    thread_free(t);
    sb->thread = NULL;
  }
  if (sb->L) lua_close(sb->L);
  sb->L = NULL;
}
