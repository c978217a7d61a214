/*
 * policy_internal.h: a policy's Lua VM under policy.c: one sandbox
 * (sandbox.h: capped allocator, budgets, allowed library, the thread its
 * jobs run on) plus log() and print(), and the one switch check-policy
 * needs. Internal to policy.c, policy_vm.c and check_policy.c. Depends on
 * Lua 5.4, sandbox.h and log.h.
 */
#ifndef DCM_POLICY_INTERNAL_H
#define DCM_POLICY_INTERNAL_H

#include <lua.h>
#include <stddef.h>
#include <stdint.h>
#include "log.h"
#include "policy.h"
#include "sandbox.h"

#define DCM__PVM_MEMORY (32u << 20)   /* bytes a state may hold at rest */
#define DCM__PVM_BUDGET 10000000LL    /* units (about instructions) per call, at least */
#define DCM__PVM_TIME 1.0             /* seconds per DCM__PVM_BUDGET units: a call's time
                                         budget grows with its unit budget */
#define DCM__PVM_ERRLEN 1536          /* room for a message and traceback */
#define DCM__PVM_MAX_FILE (1u << 20)  /* largest policy file read */
#define DCM__PVM_MAX_LOGS 100         /* log() lines per call */

typedef struct {
  dcm__sandbox_t sb; /* first: the allocator's data is the VM */
  int logs;          /* log() lines in the current call */
  int quiet;         /* self-check: log() lines go out at debug level */
  double time;       /* seconds per DCM__PVM_BUDGET units */
  dcm__log_t *log;   /* only on the host's thread: see dcm__pvm_flush */
  char *held;        /* log() lines of the current job: level byte, text, NUL */
  size_t held_len, held_cap;
  char name[64];     /* the file's base name, for log() lines */
} dcm__pvm_t;

/*
 * A sandboxed state (on the heap: an abandoned job frees it, see
 * sandbox.h); time: seconds per DCM__PVM_BUDGET units, 0 for
 * DCM__PVM_TIME. DCM_ENOMEM if it cannot be built.
 */
int dcm__pvm_open(dcm__pvm_t **out, dcm__log_t *log, const char *path, double time);
void dcm__pvm_close(dcm__pvm_t *vm);

/* The time budget (ns) that goes with a budget of units. */
uint64_t dcm__pvm_time(const dcm__pvm_t *vm, long long budget);

/*
 * Runs fn(job) as a job on vm's thread for at most time_ns (see
 * dcm__sandbox_run) and logs what log() and print() said meanwhile. 0;
 * DCM_EPOLICY with the error in err (n bytes) when the job raised;
 * DCM__SB_ABANDONED, after which vm and job belong to the thread (it
 * frees both with free()); DCM_ENOMEM.
 */
int dcm__pvm_job(dcm__pvm_t *vm, lua_CFunction fn, void *job, uint64_t time_ns,
                 char *err, size_t n);

/*
 * Reads path (a text chunk, at most DCM__PVM_MAX_FILE bytes), runs it
 * under the budgets and leaves the value it returns on the stack. Inside
 * a job. 0, or DCM_EPOLICY with one line in err.
 */
int dcm__pvm_dofile(dcm__pvm_t *vm, const char *path, char *err, size_t n);

/*
 * Calls the function below nargs arguments with a traceback handler and
 * the budgets armed (units, and the time that goes with them), leaving one
 * result. Must run inside a protected call, inside a job. 0, or
 * DCM_EPOLICY with the message and traceback flattened into err.
 */
int dcm__pvm_call(dcm__pvm_t *vm, int nargs, long long budget, char *err,
                  size_t n);

/* check-policy: a rejected result fails the call instead of falling back. */
void dcm__policy_set_strict(dcm__policy_t *p, int strict);

#endif
