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

/* Invalid UTF-8 (a cluster's raw output) becomes '?': JSON lines stay valid. */
static void utf8_scrub(char *s) {
  unsigned char *p = (unsigned char *)s;
  while (*p) {
    int n = *p < 0x80 ? 0 : (*p & 0xe0) == 0xc0 ? 1 : (*p & 0xf0) == 0xe0 ? 2
            : (*p & 0xf8) == 0xf0 ? 3 : -1;
    int ok = n >= 0;
    for (int i = 1; ok && i <= n; i++) ok = (p[i] & 0xc0) == 0x80;
    if (ok && n == 1) ok = *p >= 0xc2;                        /* overlong */
    if (ok && n == 2) ok = (*p != 0xe0 || p[1] >= 0xa0) &&    /* overlong */
                           (*p != 0xed || p[1] < 0xa0);       /* surrogates */
    if (ok && n == 3) ok = (*p != 0xf0 || p[1] >= 0x90) && (*p < 0xf4 || (*p == 0xf4 && p[1] < 0x90));
    if (!ok) {
      *p++ = '?';
      continue;
    }
    p += n + 1;
  }
}

/* Arguments: ts, level, machine (or nil), msg, cluster (or nil), stream (or nil). */
static int encode_json(lua_State *L) {
  lua_createtable(L, 0, 6);
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "ts");
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, "level");
  if (!lua_isnil(L, 3)) {
    lua_pushvalue(L, 3);
    lua_setfield(L, -2, "machine");
  }
  if (!lua_isnil(L, 5)) {
    lua_pushvalue(L, 5);
    lua_setfield(L, -2, "cluster");
  }
  if (!lua_isnil(L, 6)) {
    lua_pushvalue(L, 6);
    lua_setfield(L, -2, "stream");
  }
  lua_pushvalue(L, 4);
  lua_setfield(L, -2, "msg");
  lua_getfield(L, LUA_REGISTRYINDEX, "dcm.encode");
  lua_insert(L, -2);
  lua_call(L, 1, 1);
  return 1;
}

/* cluster < 0: none. */
static void emit(dcm__log_t *lg, dcm_log_level level, const char *machine, int cluster,
                 const char *stream, const char *fmt, va_list ap) {
  if (lg == NULL || level < lg->level) return;
  char msg[LOG_LINE_MAX];
  char ts[40];
  char line[LOG_LINE_MAX + 512];
  vsnprintf(msg, sizeof msg, fmt, ap);
  timestamp(ts, sizeof ts);
  if (lg->format == DCM_LOG_JSON && lg->json) {
    lua_State *L = lg->json;
    utf8_scrub(msg);
    lua_settop(L, 0);
    lua_pushcfunction(L, encode_json);
    lua_pushstring(L, ts);
    lua_pushstring(L, dcm__log_level_name(level));
    if (machine) lua_pushstring(L, machine); else lua_pushnil(L);
    lua_pushstring(L, msg);
    if (cluster >= 0) lua_pushinteger(L, cluster); else lua_pushnil(L);
    if (stream) lua_pushstring(L, stream); else lua_pushnil(L);
    if (lua_pcall(L, 6, 1, 0) == LUA_OK) {
      size_t len;
      const char *s = lua_tolstring(L, -1, &len);
      lg->cb(level, s, len, lg->arg);
      lua_settop(L, 0);
      return;
    }
    lua_settop(L, 0); /* fall back to text rather than lose the line */
  }
  scrub(msg);
  char what[192] = "";
  if (cluster >= 0)
    snprintf(what, sizeof what, "cluster %d%s%.32s: ", cluster, stream ? " " : "",
             stream ? stream : "");
  int n;
  if (machine) {
    char mach[160];
    snprintf(mach, sizeof mach, "%s", machine);
    scrub(mach);
    n = snprintf(line, sizeof line, "%s %-5s [%s] %s%s", ts, dcm__log_level_name(level), mach,
                 what, msg);
  } else {
    n = snprintf(line, sizeof line, "%s %-5s %s%s", ts, dcm__log_level_name(level), what, msg);
  }
  if (n < 0) return;
  if ((size_t)n >= sizeof line) n = (int)sizeof line - 1;
  lg->cb(level, line, (size_t)n, lg->arg);
}

void dcm__vlog(dcm__log_t *lg, dcm_log_level level, const char *machine,
               const char *fmt, va_list ap) {
  emit(lg, level, machine, -1, NULL, fmt, ap);
}

void dcm__log_cluster(dcm__log_t *lg, dcm_log_level level, const char *machine, int cluster,
                      const char *stream, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  emit(lg, level, machine, cluster < 0 ? 0 : cluster, stream, fmt, ap);
  va_end(ap);
}

void dcm__log(dcm__log_t *lg, dcm_log_level level, const char *machine,
              const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  dcm__vlog(lg, level, machine, fmt, ap);
  va_end(ap);
}
