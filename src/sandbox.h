/*
 * sandbox.h: the one Lua sandbox under the policies (policy_vm.c) and the
 * config file (config.c). It owns the lua_State's allocator (a memory cap,
 * a string length cap, optional wiping of freed blocks), the budgets of a
 * run (units of work, about VM instructions, and time), the allowed library
 * and the thread runs execute on; hosts add their own few globals on top.
 *
 * A count hook never runs inside one C call, so every library function is
 * charged from its argument sizes before it runs, or replaced (the audit
 * is atop sandbox.c). Allocations are charged by size too, which covers
 * what single VM instructions build (concatenation, table growth) and the
 * garbage collector's work. The same hook reads a monotonic clock, so work
 * no count sees (long comparisons and conversions, colliding table keys)
 * still ends at the time budget. One VM step can outlast any hook (a table
 * rehash over colliding keys, a weak table's collection are quadratic), so
 * hosts run sandboxed code as jobs on the sandbox's own thread and wait at
 * most the time budget plus DCM_SANDBOX_GRACE_MS: past that the job is
 * abandoned to its thread, which frees the sandbox when the step ends.
 * Depends on Lua 5.4 (and reads the sizes of its tables, verified when a
 * sandbox opens), libuv's threads and clock.
 */
#ifndef DCM_SANDBOX_H
#define DCM_SANDBOX_H

#include <lua.h>
#include <stddef.h>
#include <stdint.h>

/* The longest string (bytes) sandboxed code may make: one VM instruction
 * compares or converts a string in time linear in its length. */
#define DCM_SANDBOX_STRING_MAX 4096
/* The most extra arguments a vararg Lua function may receive: the VARARG
 * instruction copies them all. */
#define DCM_SANDBOX_VARARG_MAX 64

/*
 * How long past a job's time budget its host still waits (ms). The hook
 * ends a run within its time budget plus one stretch of HOOK_EVERY
 * instructions (measured at the 4096-byte cap: up to about 13 ms of NUL-
 * laden string comparisons, 10 ms of numeric string conversions, 30 ms
 * of lookups along the longest colliding-key chain a 1 s run can build;
 * README "The sandbox"); a job still running after this is abandoned.
 */
#define DCM_SANDBOX_GRACE_MS 250
/* Abandoned jobs still running, process-wide, past which hosts start no
 * new sandbox (each holds a thread and its state's memory until it ends). */
#define DCM_SANDBOX_ABANDONED_MAX 4

typedef struct dcm__sandbox_s dcm__sandbox_t;
typedef struct dcm__sb_thread_s dcm__sb_thread_t;

struct dcm__sandbox_s {
  lua_State *L;
  size_t used;       /* bytes the state holds now */
  size_t limit;      /* allocations beyond this fail */
  long long budget;  /* units left in the current run */
  uint64_t deadline; /* uv_hrtime() when the current run's time is up; 0: none */
  uint64_t job_end;  /* the same for the current job: no run armed in it goes past */
  int exhausted;     /* a budget ran out: every instruction raises */
  int timed_out;     /* ... and it was the time budget */
  int wipe;          /* zero blocks before freeing them: the state holds secrets */
  int refused;       /* why the last allocation failed: 0 or one of DCM__SB_* */
  int host_strings;  /* host code (a traceback) is building a string: no length cap */
  int exact_tables;  /* table sizes are read exactly (see table_slots) */
  /* Frees the host's data once an abandoned job has ended, on the sandbox's
   * thread after the state is closed (sb itself may live in that data). */
  void (*release)(dcm__sandbox_t *sb, void *job);
  dcm__sb_thread_t *thread; /* where jobs run; NULL until a job starts it */
  uint64_t idle_ns;          /* the thread ends after this long without a job */
};

/* Policies run in bursts (a join, a loss, a reload) and starting a thread
 * costs ~50 us, while the kernel takes a reference on a socket's file for
 * every read and write of a process with a second thread. */
#define DCM__SB_IDLE_NS ((uint64_t)1000000000)

enum { DCM__SB_MEMORY = 1, DCM__SB_STRING };
/* dcm__sandbox_run's status when it stopped waiting (not a LUA_* status). */
#define DCM__SB_ABANDONED (-1)

/*
 * A fresh state in sb, with the library in its globals and disarmed (any
 * Lua code dies at once until dcm__sandbox_arm). limit: bytes; wipe: see
 * above; release: see above (needed once a job may be abandoned). 0, or
 * DCM_ENOMEM.
 */
int dcm__sandbox_open(dcm__sandbox_t *sb, size_t limit, int wipe,
                      void (*release)(dcm__sandbox_t *sb, void *job));
/* Closes the state and stops the thread (never for an abandoned job's). */
void dcm__sandbox_close(dcm__sandbox_t *sb);

/* The sandbox a state belongs to (its allocator's data). */
dcm__sandbox_t *dcm__sandbox_of(lua_State *L);

/* Gives the next run budget units and time_ns nanoseconds (0: only what
 * is left of the job's). Inside a job only. */
void dcm__sandbox_arm(dcm__sandbox_t *sb, long long budget, uint64_t time_ns);
/* Ends a run: from now on any instruction raises the budget error. */
void dcm__sandbox_disarm(dcm__sandbox_t *sb);

/*
 * Charges units to the current run; once the budget is gone, raises
 * "<where>: instruction budget exceeded" (where: the Lua code calling the
 * C function that charges). Past the time budget, any instruction raises
 * "<where>: time budget exceeded".
 */
void dcm__sandbox_charge(lua_State *L, long long units);

/*
 * Runs fn(L) protected, with job as a light userdata argument, on the
 * sandbox's thread, and waits for it at most time_ns plus
 * DCM_SANDBOX_GRACE_MS; runs armed inside it end within time_ns. Returns
 * lua_pcall's status, fn's results (or the error) left on the stack, or
 * DCM__SB_ABANDONED: the job still runs, and from then on the sandbox and
 * job belong to the thread, which closes the state and calls sb->release
 * once the job ends. The host must forget both (never close the sandbox).
 * DCM_ENOMEM when the thread cannot be started. Only one thread may call
 * into a sandbox at a time; the host touches L only between jobs.
 */
int dcm__sandbox_run(dcm__sandbox_t *sb, lua_CFunction fn, void *job, uint64_t time_ns);

/* Abandoned jobs still running, process-wide. */
int dcm__sandbox_abandoned(void);

/*
 * After LUA_ERRMEM: why, in one line ("memory limit of 32 MiB exceeded" or
 * "a string longer than 4096 bytes").
 */
const char *dcm__sandbox_memerr(const dcm__sandbox_t *sb, char *buf, size_t n);

#endif
