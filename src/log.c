/* log.c: see log.h. */
#include "log.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <lua-cjson.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define LOG_LINE_MAX 4096

static const char *const level_names[] = {"debug", "info", "warn", "error"};

const char *dcm__log_level_name(dcm_log_level level) {
  if ((unsigned)level > DCM_LOG_ERROR) return "?";
  return level_names[level];
}

static void stderr_sink(dcm_log_level level, const char *line, size_t len,
                        void *arg) {
  (void)level;
  (void)arg;
  fprintf(stderr, "%.*s\n", (int)len, line);
}

int dcm__log_init(dcm__log_t *lg, dcm_log_level level, dcm_log_format format,
                  dcm_log_cb cb, void *arg) {
  memset(lg, 0, sizeof(*lg));
  lg->level = level;
  lg->format = format;
  lg->cb = cb ? cb : stderr_sink;
  lg->arg = arg;
  if (format == DCM_LOG_JSON) {
    lg->json = luaL_newstate();
    if (lg->json == NULL) return DCM_ENOMEM;
    luaL_requiref(lg->json, "cjson", luaopen_cjson, 0);
    lua_getfield(lg->json, -1, "encode");
    lua_setfield(lg->json, LUA_REGISTRYINDEX, "dcm.encode");
    lua_settop(lg->json, 0);
  }
  return 0;
}

void dcm__log_close(dcm__log_t *lg) {
  if (lg->json) lua_close(lg->json);
  lg->json = NULL;
}

/* Wall-clock time is right here: it labels lines, it never times anything. */
static size_t timestamp(char *buf, size_t n) {
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  size_t k = strftime(buf, n, "%Y-%m-%dT%H:%M:%S", &tm);
  k += (size_t)snprintf(buf + k, n - k, ".%03ldZ", ts.tv_nsec / 1000000);
  return k;
}

/* Peer-supplied text must not forge extra lines. */
static void scrub(char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20) *s = '?';
}

static int encode_json(lua_State *L) {
  /* upvalues are not needed: arguments are ts, level, machine, msg */
  lua_createtable(L, 0, 4);
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "ts");
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, "level");
  if (!lua_isnil(L, 3)) {
    lua_pushvalue(L, 3);
    lua_setfield(L, -2, "machine");
  }
  lua_pushvalue(L, 4);
  lua_setfield(L, -2, "msg");
  lua_getfield(L, LUA_REGISTRYINDEX, "dcm.encode");
  lua_insert(L, -2);
  lua_call(L, 1, 1);
  return 1;
}

void dcm__vlog(dcm__log_t *lg, dcm_log_level level, const char *machine,
               const char *fmt, va_list ap) {
  if (lg == NULL || level < lg->level) return;
  char msg[LOG_LINE_MAX];
  char ts[40];
  char line[LOG_LINE_MAX + 256];
  vsnprintf(msg, sizeof msg, fmt, ap);
  timestamp(ts, sizeof ts);
  if (lg->format == DCM_LOG_JSON && lg->json) {
    lua_State *L = lg->json;
    lua_settop(L, 0);
    lua_pushcfunction(L, encode_json);
    lua_pushstring(L, ts);
    lua_pushstring(L, dcm__log_level_name(level));
    if (machine) lua_pushstring(L, machine); else lua_pushnil(L);
    lua_pushstring(L, msg);
    if (lua_pcall(L, 4, 1, 0) == LUA_OK) {
      size_t len;
      const char *s = lua_tolstring(L, -1, &len);
      lg->cb(level, s, len, lg->arg);
      lua_settop(L, 0);
      return;
    }
    lua_settop(L, 0); /* fall back to text rather than lose the line */
  }
  scrub(msg);
  int n;
  if (machine) {
    char mach[160];
    snprintf(mach, sizeof mach, "%s", machine);
    scrub(mach);
    n = snprintf(line, sizeof line, "%s %-5s [%s] %s", ts,
                 dcm__log_level_name(level), mach, msg);
  } else {
    n = snprintf(line, sizeof line, "%s %-5s %s", ts,
                 dcm__log_level_name(level), msg);
  }
  if (n < 0) return;
  if ((size_t)n >= sizeof line) n = (int)sizeof line - 1;
  lg->cb(level, line, (size_t)n, lg->arg);
}

void dcm__log(dcm__log_t *lg, dcm_log_level level, const char *machine,
              const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  dcm__vlog(lg, level, machine, fmt, ap);
  va_end(ap);
}
