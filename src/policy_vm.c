/* policy_vm.c: the policy sandbox; see policy_internal.h. */
#include "policy_internal.h"

#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sandbox.h"

#define LOG_TEXT 1024 /* bytes of a log() or print() message logged */
/* Bytes of log() lines one job holds for the host (a job may make many calls). */
#define HOLD_MAX ((DCM__PVM_MAX_LOGS + 1) * (LOG_TEXT + 2))

/* The sandbox is the first member, so its allocator data is the VM. */
static dcm__pvm_t *vm_of(lua_State *L) {
  return (dcm__pvm_t *)(void *)dcm__sandbox_of(L);
}

/*
 * Keeps a line for dcm__pvm_job to log once the job is over: jobs run on
 * the sandbox's thread, and the log (its callback) belongs to the host's.
 */
static void hold(dcm__pvm_t *vm, dcm_log_level level, const char *msg) {
  size_t len = strnlen(msg, LOG_TEXT);
  if (vm->held_len + len + 2 > HOLD_MAX) return;
  if (vm->held_len + len + 2 > vm->held_cap) {
    size_t cap = vm->held_cap ? vm->held_cap * 2 : 4096;
    while (cap < vm->held_len + len + 2) cap *= 2;
    if (cap > HOLD_MAX) cap = HOLD_MAX;
    char *p = realloc(vm->held, cap);
    if (p == NULL) return;
    vm->held = p;
    vm->held_cap = cap;
  }
  vm->held[vm->held_len++] = (char)level;
  memcpy(vm->held + vm->held_len, msg, len);
  vm->held_len += len;
  vm->held[vm->held_len++] = '\0';
}

static void pvm_emit(lua_State *L, dcm_log_level level, const char *msg) {
  dcm__pvm_t *vm = vm_of(L);
  if (vm->logs > DCM__PVM_MAX_LOGS) return;
  if (vm->quiet) level = DCM_LOG_DEBUG;
  if (vm->logs++ == DCM__PVM_MAX_LOGS) {
    char line[96];
    snprintf(line, sizeof line, "more than %d log lines in one call; dropping the rest",
             DCM__PVM_MAX_LOGS);
    hold(vm, DCM_LOG_WARN, line);
  } else {
    hold(vm, level, msg);
  }
}

/* Logs the held lines, on the host's thread. */
static void flush(dcm__pvm_t *vm) {
  for (size_t k = 0; k < vm->held_len;) {
    dcm_log_level level = (dcm_log_level)vm->held[k++];
    const char *msg = vm->held + k;
    dcm__log(vm->log, level, NULL, "policy %s: %s", vm->name, msg);
    k += strlen(msg) + 1;
  }
  vm->held_len = 0;
}

/* log(level, message) */
static int pvm_log(lua_State *L) {
  static const char *const names[] = {"debug", "info", "warn", "error", NULL};
  static const dcm_log_level levels[] = {DCM_LOG_DEBUG, DCM_LOG_INFO,
                                         DCM_LOG_WARN, DCM_LOG_ERROR};
  int lvl = luaL_checkoption(L, 1, NULL, names);
  pvm_emit(L, levels[lvl], luaL_tolstring(L, 2, NULL));
  return 0;
}

/* print(...) logs at info: stdout belongs to the host (check-policy's JSON).
 * Only what a log line shows is kept. */
static int pvm_print(lua_State *L) {
  int n = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 1; i <= n; i++) {
    size_t len, room = luaL_bufflen(&b) < LOG_TEXT ? LOG_TEXT - luaL_bufflen(&b) : 0;
    if (i > 1 && room > 0) { /* a tab would be scrubbed */
      luaL_addchar(&b, ' ');
      room--;
    }
    const char *s = luaL_tolstring(L, i, &len);
    if (len > room) {
      lua_pushlstring(L, s, room);
      lua_remove(L, -2);
    }
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  pvm_emit(L, DCM_LOG_INFO, lua_tostring(L, -1));
  return 0;
}

/* The policy's own globals over the sandbox's library. */
static int pvm_globals(lua_State *L) {
  lua_pushcfunction(L, pvm_log);
  lua_setglobal(L, "log");
  lua_pushcfunction(L, pvm_print);
  lua_setglobal(L, "print");
  return 0;
}

/* An abandoned job ended: its thread frees the VM and the job. */
static void pvm_release(dcm__sandbox_t *sb, void *job) {
  dcm__pvm_t *vm = (dcm__pvm_t *)(void *)sb;
  free(vm->held);
  free(vm);
  free(job);
}

int dcm__pvm_open(dcm__pvm_t **out, dcm__log_t *log, const char *path, double time) {
  dcm__pvm_t *vm = calloc(1, sizeof *vm);
  *out = NULL;
  if (vm == NULL) return DCM_ENOMEM;
  vm->log = log;
  vm->time = time > 0 ? time : DCM__PVM_TIME;
  const char *base = strrchr(path, '/');
  snprintf(vm->name, sizeof vm->name, "%s", base ? base + 1 : path);
  int rc = dcm__sandbox_open(&vm->sb, DCM__PVM_MEMORY, 0, pvm_release);
  if (rc != 0) {
    free(vm);
    return rc;
  }
  lua_pushcfunction(vm->sb.L, pvm_globals);
  if (lua_pcall(vm->sb.L, 0, 0, 0) != LUA_OK) {
    dcm__pvm_close(vm);
    return DCM_ENOMEM;
  }
  *out = vm;
  return 0;
}

void dcm__pvm_close(dcm__pvm_t *vm) {
  if (vm == NULL) return;
  dcm__sandbox_close(&vm->sb);
  free(vm->held);
  free(vm);
}

uint64_t dcm__pvm_time(const dcm__pvm_t *vm, long long budget) {
  double ns = vm->time * 1e9 * ((double)budget / (double)DCM__PVM_BUDGET);
  return ns < 1e6 ? 1000000u : ns > 1e15 ? (uint64_t)1e15 : (uint64_t)ns;
}

/* Flattens a message and traceback into one log-friendly line. */
static void flatten(char *err, size_t n, const char *msg) {
  size_t k = 0;
  for (const char *s = msg; *s && k + 4 < n; s++) {
    if (*s == '\n') {
      memcpy(err + k, " | ", 3);
      k += 3;
    } else if (*s == '\t') {
      continue;
    } else {
      err[k++] = (unsigned char)*s < 0x20 ? '?' : *s;
    }
  }
  err[k] = '\0';
}

/* luv style: keep the message, add where it came from. */
static int pvm_traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) /* no __tostring: that would run policy code */
    msg = lua_pushfstring(L, "(error object is a %s value)",
                          luaL_typename(L, 1));
  else if (lua_rawlen(L, 1) > DCM__PVM_ERRLEN)
    msg = lua_pushlstring(L, msg, DCM__PVM_ERRLEN);
  dcm__sandbox_of(L)->host_strings = 1; /* a traceback may pass the cap */
  luaL_traceback(L, L, msg, 1);
  dcm__sandbox_of(L)->host_strings = 0;
  return 1;
}

int dcm__pvm_call(dcm__pvm_t *vm, int nargs, long long budget, char *err,
                  size_t n) {
  lua_State *L = vm->sb.L;
  int base = lua_gettop(L) - nargs; /* the function */
  lua_pushcfunction(L, pvm_traceback);
  lua_insert(L, base);
  vm->logs = 0;
  uint64_t time_ns = dcm__pvm_time(vm, budget);
  dcm__sandbox_arm(&vm->sb, budget, time_ns);
  int st = lua_pcall(L, nargs, 1, base);
  int exhausted = vm->sb.exhausted, timed_out = vm->sb.timed_out;
  dcm__sandbox_disarm(&vm->sb);
  lua_remove(L, base);
  if (st == LUA_OK && !exhausted) return 0;
  if (st == LUA_OK) {
    lua_pop(L, 1); /* the policy caught the budget error: still rejected */
    if (timed_out)
      snprintf(err, n, "time budget of %llu ms exceeded",
               (unsigned long long)(time_ns / 1000000u));
    else
      snprintf(err, n, "instruction budget of %lld exceeded", budget);
  } else if (st == LUA_ERRMEM) {
    lua_pop(L, 1);
    dcm__sandbox_memerr(&vm->sb, err, n);
  } else if (st == LUA_ERRERR) {
    lua_pop(L, 1);
    snprintf(err, n, "error while handling an error%s",
             !exhausted ? "" : timed_out ? " (time budget exceeded)"
                                         : " (instruction budget exceeded)");
  } else {
    flatten(err, n, lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
    lua_pop(L, 1);
  }
  return DCM_EPOLICY;
}

int dcm__pvm_job(dcm__pvm_t *vm, lua_CFunction fn, void *job, uint64_t time_ns,
                 char *err, size_t n) {
  int st = dcm__sandbox_run(&vm->sb, fn, job, time_ns);
  if (st == DCM__SB_ABANDONED) return st;
  flush(vm);
  if (st == DCM_ENOMEM) {
    snprintf(err, n, "cannot start the policy's thread");
    return DCM_ENOMEM;
  }
  if (st == LUA_OK) return 0;
  lua_State *L = vm->sb.L;
  if (st == LUA_ERRMEM)
    dcm__sandbox_memerr(&vm->sb, err, n);
  else
    flatten(err, n, lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
  lua_settop(L, 0);
  return DCM_EPOLICY;
}

typedef struct {
  dcm__pvm_t *vm;
  const char *buf;
  size_t len;
  const char *chunkname;
  char *err;
  size_t n;
  int rc;
} dofile_t;

static int pvm_dochunk(lua_State *L) {
  dofile_t *d = lua_touserdata(L, 1);
  lua_settop(L, 0);
  int st = luaL_loadbufferx(L, d->buf, d->len, d->chunkname, "t");
  if (st != LUA_OK) {
    char why[64];
    flatten(d->err, d->n, st == LUA_ERRMEM ? dcm__sandbox_memerr(&d->vm->sb, why, sizeof why)
                                            : lua_tostring(L, -1));
    d->rc = DCM_EPOLICY;
    return 0;
  }
  d->rc = dcm__pvm_call(d->vm, 0, DCM__PVM_BUDGET, d->err, d->n);
  return d->rc == 0 ? 1 : 0;
}

static char *read_file(const char *path, size_t *len, char *err, size_t n) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    snprintf(err, n, "cannot open %s: %s", path, strerror(errno));
    return NULL;
  }
  char *buf = malloc(DCM__PVM_MAX_FILE + 1);
  size_t got = buf ? fread(buf, 1, DCM__PVM_MAX_FILE + 1, f) : 0;
  int bad = buf == NULL || ferror(f);
  fclose(f);
  if (bad) {
    snprintf(err, n, "cannot read %s", path);
    free(buf);
    return NULL;
  }
  if (got > DCM__PVM_MAX_FILE) {
    snprintf(err, n, "%s is larger than %u bytes", path, DCM__PVM_MAX_FILE);
    free(buf);
    return NULL;
  }
  *len = got;
  return buf;
}

int dcm__pvm_dofile(dcm__pvm_t *vm, const char *path, char *err, size_t n) {
  size_t len;
  char *buf = read_file(path, &len, err, n);
  if (buf == NULL) return DCM_EPOLICY;
  if (len > 0 && buf[0] == LUA_SIGNATURE[0]) {
    free(buf); /* the loader would say the same; this says it plainly */
    snprintf(err, n, "%s is precompiled bytecode; only Lua source is loaded",
             path);
    return DCM_EPOLICY;
  }
  char chunkname[512];
  snprintf(chunkname, sizeof chunkname, "@%s", path);
  dofile_t d = {vm, buf, len, chunkname, err, n, DCM_EPOLICY};
  lua_State *L = vm->sb.L;
  int top = lua_gettop(L);
  lua_pushcfunction(L, pvm_dochunk);
  lua_pushlightuserdata(L, &d);
  int st = lua_pcall(L, 1, 1, 0);
  free(buf);
  if (st != LUA_OK) {
    snprintf(err, n, "%s: not enough memory to load it", path);
    lua_settop(L, top);
    return DCM_EPOLICY;
  }
  if (d.rc != 0) lua_settop(L, top);
  return d.rc;
}
