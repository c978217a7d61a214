/* policy_vm.c: the policy sandbox; see policy_internal.h. */
#include "policy_internal.h"

#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sandbox.h"

#define HOOK_EVERY 1000 /* instructions between budget checks */

static void *pvm_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  dcm__pvm_t *vm = ud;
  size_t old = ptr ? osize : 0; /* without ptr, osize is a type tag */
  if (nsize == 0) {
    free(ptr);
    vm->used -= old;
    return NULL;
  }
  /* Lua runs an emergency collection and retries when this fails. */
  if (nsize > old && vm->used - old + nsize > vm->limit) return NULL;
  void *np = realloc(ptr, nsize);
  if (np == NULL) return NULL;
  vm->used = vm->used - old + nsize;
  return np;
}

static dcm__pvm_t *vm_of(lua_State *L) {
  void *ud;
  lua_getallocf(L, &ud);
  return ud;
}

/*
 * Once the budget is gone the hook fires on every instruction, so a pcall
 * in the policy that catches the error gets no instruction to run before
 * the next one: the error climbs out through every pcall.
 */
static void pvm_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  dcm__pvm_t *vm = vm_of(L);
  if (!vm->exhausted) {
    vm->budget -= HOOK_EVERY;
    if (vm->budget > 0) return;
    vm->exhausted = 1;
    lua_sethook(L, pvm_hook, LUA_MASKCOUNT, 1);
  }
  luaL_where(L, 0);
  lua_pushliteral(L, "instruction budget exceeded");
  lua_concat(L, 2);
  lua_error(L);
}

static void disarm(dcm__pvm_t *vm) {
  /* Between calls no policy code should run; if any did, it dies at once. */
  vm->exhausted = 1;
  lua_sethook(vm->L, pvm_hook, LUA_MASKCOUNT, 1);
}

static void pvm_emit(lua_State *L, dcm_log_level level, const char *msg) {
  dcm__pvm_t *vm = vm_of(L);
  if (vm->logs > DCM__PVM_MAX_LOGS) return;
  if (vm->quiet) level = DCM_LOG_DEBUG;
  if (vm->logs++ == DCM__PVM_MAX_LOGS)
    dcm__log(vm->log, DCM_LOG_WARN, NULL,
             "policy %s: more than %d log lines in one call; dropping the rest",
             vm->name, DCM__PVM_MAX_LOGS);
  else
    dcm__log(vm->log, level, NULL, "policy %s: %.1024s", vm->name, msg);
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

/* print(...) logs at info: stdout belongs to the host (check-policy's JSON). */
static int pvm_print(lua_State *L) {
  int n = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 1; i <= n; i++) {
    if (i > 1) luaL_addchar(&b, ' '); /* a tab would be scrubbed */
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  pvm_emit(L, DCM_LOG_INFO, lua_tostring(L, -1));
  return 0;
}

/* A finalizer would run outside any call, where no budget is armed. */
static int pvm_setmetatable(lua_State *L) {
  if (lua_type(L, 2) == LUA_TTABLE) {
    lua_pushliteral(L, "__gc");
    if (lua_rawget(L, 2) != LUA_TNIL)
      return luaL_error(L, "__gc metamethods are not allowed in a policy");
    lua_pop(L, 1);
  }
  lua_settop(L, 2);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, 2, 1);
  return 1;
}

static int pvm_setup(lua_State *L) {
  static const char *const removed[] = {"load", "loadfile", "dofile",
                                        "require", "collectgarbage", NULL};
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
  lua_getfield(L, 1, "string");
  lua_pushnil(L);
  lua_setfield(L, -2, "dump"); /* bytecode could only be made, never run */
  dcm__sandbox_harden(L, 1, -1);
  lua_pop(L, 1);
  /* os with only time and clock; the full library leaves the registry. */
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE); /* 2 */
  lua_getfield(L, 2, LUA_OSLIBNAME);                        /* 3 */
  lua_createtable(L, 0, 2);
  lua_getfield(L, 3, "time");
  lua_setfield(L, -2, "time");
  lua_getfield(L, 3, "clock");
  lua_setfield(L, -2, "clock");
  lua_setfield(L, 1, LUA_OSLIBNAME);
  lua_pushnil(L);
  lua_setfield(L, 2, LUA_OSLIBNAME);
  lua_settop(L, 1);
  lua_getfield(L, 1, "setmetatable");
  lua_pushcclosure(L, pvm_setmetatable, 1);
  lua_setfield(L, 1, "setmetatable");
  lua_pushcfunction(L, pvm_log);
  lua_setfield(L, 1, "log");
  lua_pushcfunction(L, pvm_print);
  lua_setfield(L, 1, "print");
  return 0;
}

int dcm__pvm_open(dcm__pvm_t *vm, dcm__log_t *log, const char *path) {
  memset(vm, 0, sizeof(*vm));
  vm->log = log;
  vm->limit = DCM__PVM_MEMORY;
  const char *base = strrchr(path, '/');
  snprintf(vm->name, sizeof vm->name, "%s", base ? base + 1 : path);
  vm->L = lua_newstate(pvm_alloc, vm);
  if (vm->L == NULL) return DCM_ENOMEM;
  lua_pushcfunction(vm->L, pvm_setup);
  if (lua_pcall(vm->L, 0, 0, 0) != LUA_OK) {
    dcm__pvm_close(vm);
    return DCM_ENOMEM;
  }
  disarm(vm);
  return 0;
}

void dcm__pvm_close(dcm__pvm_t *vm) {
  if (vm->L) lua_close(vm->L);
  vm->L = NULL;
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
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int dcm__pvm_call(dcm__pvm_t *vm, int nargs, long long budget, char *err,
                  size_t n) {
  lua_State *L = vm->L;
  int base = lua_gettop(L) - nargs; /* the function */
  lua_pushcfunction(L, pvm_traceback);
  lua_insert(L, base);
  vm->budget = budget;
  vm->exhausted = 0;
  vm->logs = 0;
  lua_sethook(L, pvm_hook, LUA_MASKCOUNT, HOOK_EVERY);
  int st = lua_pcall(L, nargs, 1, base);
  int exhausted = vm->exhausted;
  disarm(vm);
  lua_remove(L, base);
  if (st == LUA_OK && !exhausted) return 0;
  if (st == LUA_OK) {
    lua_pop(L, 1); /* the policy caught the budget error: still rejected */
    snprintf(err, n, "instruction budget of %lld exceeded", budget);
  } else if (st == LUA_ERRMEM) {
    lua_pop(L, 1);
    snprintf(err, n, "memory limit of %zu MiB exceeded", vm->limit >> 20);
  } else if (st == LUA_ERRERR) {
    lua_pop(L, 1);
    snprintf(err, n, "error while handling an error%s",
             exhausted ? " (instruction budget exceeded)" : "");
  } else {
    flatten(err, n, lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
    lua_pop(L, 1);
  }
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
    flatten(d->err, d->n, st == LUA_ERRMEM ? "not enough memory"
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
  lua_State *L = vm->L;
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
