/*
 * sandbox.h: the one Lua sandbox under the policies (policy_vm.c) and the
 * config file (config.c). It owns the lua_State's allocator (a memory cap,
 * a string length cap, optional wiping of freed blocks), the budget (units
 * of work, about VM instructions, that a run may spend) and the allowed
 * library; hosts add their own few globals on top.
 *
 * A count hook never runs inside one C call, so every library function is
 * charged from its argument sizes before it runs, or replaced (the audit
 * is atop sandbox.c). Allocations are charged by size too, which covers
 * what single VM instructions build (concatenation, table growth) and the
 * garbage collector's work. Depends on Lua 5.4 (and reads the sizes of its
 * tables, verified when a sandbox opens).
 */
#ifndef DCM_SANDBOX_H
#define DCM_SANDBOX_H

#include <lua.h>
#include <stddef.h>

/* The longest string (bytes) sandboxed code may make: one VM instruction
 * compares or converts a string in time linear in its length. */
#define DCM_SANDBOX_STRING_MAX 4096
/* The most extra arguments a vararg Lua function may receive: the VARARG
 * instruction copies them all. */
#define DCM_SANDBOX_VARARG_MAX 64

typedef struct {
  lua_State *L;
  size_t used;       /* bytes the state holds now */
  size_t limit;      /* allocations beyond this fail */
  long long budget;  /* units left in the current run */
  int exhausted;     /* the budget ran out: every instruction raises */
  int wipe;          /* zero blocks before freeing them: the state holds secrets */
  int refused;       /* why the last allocation failed: 0 or one of DCM__SB_* */
  int host_strings;  /* host code (a traceback) is building a string: no length cap */
  int exact_tables;  /* table sizes are read exactly (see table_slots) */
} dcm__sandbox_t;

enum { DCM__SB_MEMORY = 1, DCM__SB_STRING };

/*
 * A fresh state in sb, with the library in its globals and disarmed (any
 * Lua code dies at once until dcm__sandbox_arm). limit: bytes; wipe: see
 * above. 0, or DCM_ENOMEM.
 */
int dcm__sandbox_open(dcm__sandbox_t *sb, size_t limit, int wipe);
void dcm__sandbox_close(dcm__sandbox_t *sb);

/* The sandbox a state belongs to (its allocator's data). */
dcm__sandbox_t *dcm__sandbox_of(lua_State *L);

/* Gives the next run budget units. */
void dcm__sandbox_arm(dcm__sandbox_t *sb, long long budget);
/* Ends a run: from now on any instruction raises the budget error. */
void dcm__sandbox_disarm(dcm__sandbox_t *sb);

/*
 * Charges units to the current run; once the budget is gone, raises
 * "<where>: instruction budget exceeded" (where: the Lua code calling the
 * C function that charges).
 */
void dcm__sandbox_charge(lua_State *L, long long units);

/*
 * After LUA_ERRMEM: why, in one line ("memory limit of 32 MiB exceeded" or
 * "a string longer than 4096 bytes").
 */
const char *dcm__sandbox_memerr(const dcm__sandbox_t *sb, char *buf, size_t n);

#endif
