/*
 * config.c: see config.h. One table of keys drives the flags, the Lua file
 * and the help text, so the three cannot drift apart. Values are checked
 * where they are given (flag, file:line, environment) so each error names
 * its source; dcm__options_validate() then checks the merged whole.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "options.h"
#include "sandbox.h"

#define CFG_FILE_MAX (1u << 20)   /* bytes of config source */
#define CFG_MEM_MAX (16u << 20)   /* bytes of Lua heap */
#define CFG_BUDGET 10000000       /* sandbox units (about VM instructions) */
#define CFG_TIME_NS 1000000000u   /* and time: the policies' default for the same budget */
#define CHECK_UNITS 256           /* a checked assignment (a path: a system call), getenv */
#define TIME_MAX 1e7              /* seconds; same bound as options.c */

typedef enum {
  K_LISTEN, K_SHARDS, K_COUNT, K_URL, K_PATH, K_TIME, K_FORMAT, K_LEVEL, K_SECRET,
  K_TEXT, /* a string options.c validates */
  K_BOOL /* a flag without a value; true or false in the file */
} kind_t;

typedef struct {
  const char *name;  /* config key */
  const char *flag;  /* NULL: file and environment only (secrets) */
  kind_t kind;
  size_t off;        /* field in dcm_options_t */
  int max;           /* K_COUNT upper bound; K_TIME: 1 = must be > 0 */
  const char *arg;   /* for --help */
  const char *help;
} ckey_t;

#define OFF(f) offsetof(dcm_options_t, f)
static const ckey_t keys[] = {
  {"listen", "--listen", K_LISTEN, OFF(listen_host), 0, "HOST:PORT",
   "address; [IPv6]:PORT; port 0 = any free"},
  {"shards", "--shards", K_SHARDS, OFF(shards), 1000000, "N|auto",
   "shard count, or auto: ask Discord (needs a token)"},
  {"max_concurrency", "--max-concurrency", K_COUNT, OFF(max_concurrency), 1024, "N",
   "identify concurrency; 0 = from Discord"},
  {"api_base", "--api-base", K_URL, OFF(api_base), 0, "URL", "Discord REST API base"},
  {"policy", "--policy", K_PATH, OFF(policy), 0, "FILE",
   "allocation policy (Lua); default: default.lua"},
  {"policy_timeout", "--policy-timeout", K_TIME, OFF(policy_timeout), 1, "S",
   "time budget of a policy call (more with big fleets)"},
  {"collect_window", "--collect-window", K_TIME, OFF(collect_window), 0, "S",
   "seconds to collect CONTROLs before allocating"},
  {"expected_machines", "--expected-machines", K_COUNT, OFF(expected_machines), 1000000, "N",
   "end the window when N machines joined; 0 = no"},
  {"heartbeat_interval", "--heartbeat-interval", K_TIME, OFF(heartbeat_interval), 1, "S",
   "heartbeat interval sent to CONTROLs"},
  {"heartbeat_grace", "--heartbeat-grace", K_TIME, OFF(heartbeat_grace), 0, "S",
   "extra silence before a CONTROL is dead (4001)"},
  {"reconnect_grace", "--reconnect-grace", K_TIME, OFF(reconnect_grace), 0, "S",
   "how long a dropped CONTROL keeps its shards"},
  {"connect_timeout", "--connect-timeout", K_TIME, OFF(connect_timeout), 1, "S",
   "how long a CONTROL may take to report ready"},
  {"handshake_timeout", "--handshake-timeout", K_TIME, OFF(handshake_timeout), 1, "S",
   "info must arrive within this after the upgrade"},
  {"identify_interval", "--identify-interval", K_TIME, OFF(identify_interval), 1, "S",
   "least gap between identifies of one bucket"},
  {"identify_reserve", "--identify-reserve", K_COUNT, OFF(identify_reserve), 1000000, "N",
   "identifies of the daily budget never granted"},
  {"gateway_url", "--gateway-url", K_URL, OFF(gateway_url), 1, "URL",
   "gateway for clusters; default: Discord's"},
  {"handoff_timeout", "--handoff-timeout", K_TIME, OFF(handoff_timeout), 1, "S",
   "a planned move waits this long for the stop"},
  {"rebalance_batch", "--rebalance-batch", K_COUNT, OFF(rebalance_batch), 1000000, "N",
   "shards a rebalance moves at a time"},
  {"log_format", "--log-format", K_FORMAT, OFF(log_format), 0, "text|json", "log line format"},
  {"log_level", "--log-level", K_LEVEL, OFF(log_level), 0, "debug|info|warn|error",
   "lowest level logged"},
  {"head_timeout", "--head-timeout", K_TIME, OFF(head_timeout), 1, "S",
   "the HTTP request head must arrive within this"},
  {"max_unauthenticated_per_address", "--max-unauthenticated-per-address", K_COUNT,
   OFF(max_unauthenticated_per_address), 1000000, "N",
   "unidentified connections per IP (IPv6: per /64)"},
  {"tls_cert", "--tls-cert", K_PATH, OFF(tls_cert), 0, "FILE",
   "PEM certificate chain: serve wss:// and https://"},
  {"tls_key", "--tls-key", K_PATH, OFF(tls_key), 0, "FILE", "PEM private key of --tls-cert"},
  {"no_auth", "--no-auth", K_BOOL, OFF(no_auth), 0, NULL,
   "run without a CONTROL secret (loopback only)"},
  {"allow_plaintext", "--allow-plaintext", K_BOOL, OFF(allow_plaintext), 0, NULL,
   "listen off loopback without TLS (token in cleartext)"},
  {"etcd", "--etcd", K_TEXT, OFF(etcd), 0, "URL[,URL]",
   "etcd endpoints: one of several MASTERs, one leads"},
  {"cluster", "--cluster", K_TEXT, OFF(cluster), 0, "NAME",
   "etcd key prefix, so one etcd serves several bots"},
  {"lease_ttl", "--lease-ttl", K_TIME, OFF(lease_ttl), 1, "S",
   "leader lease: a dead leader is replaced after this"},
  {"advertise", "--advertise", K_URL, OFF(advertise_url), 1, "URL",
   "ws[s]:// URL agents reach this MASTER at (HA)"},
  {"etcd_cacert", "--etcd-cacert", K_PATH, OFF(etcd_cacert), 0, "FILE", "CA bundle for https etcd"},
  {"etcd_cert", "--etcd-cert", K_PATH, OFF(etcd_cert), 0, "FILE", "client certificate for etcd"},
  {"etcd_key", "--etcd-key", K_PATH, OFF(etcd_key), 0, "FILE", "private key of --etcd-cert"},
  {"token", NULL, K_SECRET, OFF(token), 0, NULL, NULL},
  {"auth", NULL, K_SECRET, OFF(auth), 0, NULL, NULL},
  {"status_auth", NULL, K_SECRET, OFF(status_auth), 0, NULL, NULL},
};
#define NKEYS (sizeof(keys) / sizeof(keys[0]))
_Static_assert(NKEYS <= 64, "load() keeps one bit per key");

static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char *const format_names[] = {"text", "json"};

static int fail(char *err, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t n, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, n, fmt, ap);
  va_end(ap);
  return DCM_EINVAL;
}

/* A user value made safe to echo: one line, bounded. */
static const char *quote(const char *s, char *buf, size_t n) {
  size_t i = 0, max = n - 4; /* room for "..." and NUL */
  for (; s[i] && i < max; i++)
    buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
  if (s[i]) buf[i++] = '.', buf[i++] = '.', buf[i++] = '.';
  buf[i] = '\0';
  return buf;
}

static const ckey_t *find_key(const char *name) {
  for (size_t i = 0; i < NKEYS; i++)
    if (strcmp(keys[i].name, name) == 0) return &keys[i];
  return NULL;
}

static const ckey_t *find_flag(const char *flag, size_t len) {
  for (size_t i = 0; i < NKEYS; i++)
    if (keys[i].flag && strlen(keys[i].flag) == len && memcmp(keys[i].flag, flag, len) == 0)
      return &keys[i];
  return NULL;
}

static const char **str_field(dcm_options_t *o, const ckey_t *k) {
  return (const char **)(void *)((char *)o + k->off);
}
static int *int_field(dcm_options_t *o, const ckey_t *k) {
  return (int *)(void *)((char *)o + k->off);
}
static double *time_field(dcm_options_t *o, const ckey_t *k) {
  return (double *)(void *)((char *)o + k->off);
}

static void wipe_free(char *s) {
  if (s == NULL) return;
  explicit_bzero(s, strlen(s));
  free(s);
}

/* Stores an owned copy of s (length len) in *slot, reusing slot's old copy. */
static int set_str(dcm__config_t *cfg, const char **slot, const char *s, size_t len) {
  char *copy = malloc(len + 1);
  if (copy == NULL) return DCM_ENOMEM;
  memcpy(copy, s, len);
  copy[len] = '\0';
  for (int i = 0; i < cfg->nstrings; i++)
    if (cfg->strings[i] == *slot) {
      wipe_free(cfg->strings[i]);
      cfg->strings[i] = copy;
      *slot = copy;
      return 0;
    }
  if (cfg->nstrings == (int)(sizeof(cfg->strings) / sizeof(cfg->strings[0]))) {
    free(copy);
    return DCM_ENOMEM;
  }
  cfg->strings[cfg->nstrings++] = copy;
  *slot = copy;
  return 0;
}

/* Strict: digits, sign, point, exponent only; no blanks, hex, inf or nan. */
static int parse_double(const char *s, double *out) {
  char *end;
  if (*s == '\0' || strspn(s, "0123456789.eE+-") != strlen(s)) return -1;
  errno = 0;
  *out = strtod(s, &end);
  if (*end != '\0' || errno == ERANGE || !isfinite(*out)) return -1;
  return 0;
}

static int parse_uint(const char *s, long long max, long long *out) {
  long long v = 0;
  if (*s == '\0') return -1;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return -1;
    v = v * 10 + (*s - '0');
    if (v > max) return -1;
  }
  *out = v;
  return 0;
}

/* HOST:PORT or [IPv6]:PORT; host is an IP literal or "localhost". */
static int parse_listen(const char *s, char *host, size_t hostn, int *port) {
  const char *colon, *h = s;
  size_t hl;
  unsigned char buf[16];
  long long p;
  if (*s == '[') {
    const char *close = strchr(s, ']');
    if (close == NULL || close[1] != ':') return -1;
    h = s + 1;
    hl = (size_t)(close - h);
    colon = close + 1;
  } else {
    colon = strrchr(s, ':');
    if (colon == NULL) return -1;
    hl = (size_t)(colon - s);
    if (memchr(s, ':', hl)) return -1; /* bare IPv6 needs brackets */
  }
  if (hl == 0 || hl >= hostn) return -1;
  memcpy(host, h, hl);
  host[hl] = '\0';
  if (*s == '[' ? inet_pton(AF_INET6, host, buf) != 1
                : strcmp(host, "localhost") != 0 && inet_pton(AF_INET, host, buf) != 1)
    return -1;
  if (strlen(colon + 1) > 5 || parse_uint(colon + 1, 65535, &p) != 0) return -2;
  *port = (int)p;
  return 0;
}

static int has_ctl(const char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f) return 1;
  return 0;
}

/* Applies a number to key k; name is what errors call the key. */
static int apply_number(dcm__config_t *cfg, const ckey_t *k, const char *name, double v,
                        char *err, size_t n) {
  dcm_options_t *o = &cfg->opts;
  switch (k->kind) {
    case K_TIME:
      if (!isfinite(v)) return fail(err, n, "%s: must be a finite number of seconds", name);
      if (v < 0) return fail(err, n, "%s: must not be negative", name);
      if (k->max && v == 0) return fail(err, n, "%s: must be more than 0 seconds", name);
      if (v > TIME_MAX) return fail(err, n, "%s: must be at most %.0f seconds", name, TIME_MAX);
      *time_field(o, k) = v;
      return 0;
    case K_SHARDS:
    case K_COUNT: {
      int lo = k->kind == K_SHARDS ? 1 : 0;
      if (v != floor(v) || v < lo || v > k->max) {
        if (k->kind == K_SHARDS)
          return fail(err, n, "%s: must be auto or an integer 1-%d", name, k->max);
        return fail(err, n, "%s: must be an integer 0-%d", name, k->max);
      }
      *int_field(o, k) = (int)v;
      return 0;
    }
    default:
      return fail(err, n, "%s: expected a string, got number", name);
  }
}

/*
 * Applies the text form of a value (every flag; string values in the file).
 * dir: the config file's directory for a relative policy path, else NULL.
 */
static int apply_string(dcm__config_t *cfg, const ckey_t *k, const char *name, const char *s,
                        const char *dir, char *err, size_t n) {
  dcm_options_t *o = &cfg->opts;
  char q[52];
  double d;
  long long ll;
  switch (k->kind) {
    case K_LISTEN: {
      char host[INET6_ADDRSTRLEN + 1];
      int port, rc = parse_listen(s, host, sizeof(host), &port);
      if (rc == -2) return fail(err, n, "%s: '%s' has no valid port 0-65535", name, quote(s, q, sizeof q));
      if (rc) return fail(err, n, "%s: '%s' is not HOST:PORT or [IPv6]:PORT with an IP address or localhost",
                          name, quote(s, q, sizeof q));
      o->listen_port = port;
      return set_str(cfg, &o->listen_host, host, strlen(host));
    }
    case K_SHARDS:
      if (strcmp(s, "auto") == 0) {
        o->shards = 0;
        return 0;
      }
      if (parse_uint(s, k->max, &ll) != 0 || ll < 1)
        return fail(err, n, "%s: '%s' is not auto or an integer 1-%d", name, quote(s, q, sizeof q), k->max);
      return apply_number(cfg, k, name, (double)ll, err, n);
    case K_COUNT:
      if (parse_uint(s, k->max, &ll) != 0)
        return fail(err, n, "%s: '%s' is not an integer 0-%d", name, quote(s, q, sizeof q), k->max);
      return apply_number(cfg, k, name, (double)ll, err, n);
    case K_TIME:
      if (parse_double(s, &d) != 0)
        return fail(err, n, "%s: '%s' is not a number of seconds", name, quote(s, q, sizeof q));
      return apply_number(cfg, k, name, d, err, n);
    case K_URL:
      if (!dcm__url_ok(s, k->max) || has_ctl(s) || strlen(s) > 2048)
        return fail(err, n, "%s: '%s' is not a%s URL", name, quote(s, q, sizeof q),
                    k->max ? " wss:// (or ws://)" : "n https:// (or http://)");
      return set_str(cfg, str_field(o, k), s, strlen(s));
    case K_PATH: {
      char path[PATH_MAX], qp[256];
      if (*s == '\0' || has_ctl(s)) return fail(err, n, "%s: must be a file name", name);
      if (dir && *s != '/')
        snprintf(path, sizeof path, "%s/%s", dir, s);
      else
        snprintf(path, sizeof path, "%s", s);
      if (access(path, R_OK) != 0)
        return fail(err, n, "%s: cannot read '%s': %s", name, quote(path, qp, sizeof qp), strerror(errno));
      return set_str(cfg, str_field(o, k), path, strlen(path));
    }
    case K_FORMAT:
    case K_LEVEL: {
      const char *const *names = k->kind == K_FORMAT ? format_names : level_names;
      int count = k->kind == K_FORMAT ? 2 : 4;
      for (int i = 0; i < count; i++)
        if (strcmp(s, names[i]) == 0) {
          *int_field(o, k) = i;
          return 0;
        }
      if (k->kind == K_FORMAT) return fail(err, n, "%s: '%s' is not text or json", name, quote(s, q, sizeof q));
      return fail(err, n, "%s: '%s' is not debug, info, warn or error", name, quote(s, q, sizeof q));
    }
    case K_BOOL:
      return fail(err, n, "%s: expected a boolean, got string", name);
    case K_TEXT:
      if (*s == '\0' || has_ctl(s) || strlen(s) > 4096)
        return fail(err, n, "%s: must be 1-4096 printable bytes", name);
      return set_str(cfg, str_field(o, k), s, strlen(s));
    case K_SECRET:
      /* Never echoed: the value is a secret. Control bytes would break headers. */
      if (has_ctl(s)) return fail(err, n, "%s: must not contain control characters", name);
      if (strlen(s) > 4096) return fail(err, n, "%s: is longer than 4096 bytes", name);
      return set_str(cfg, str_field(o, k), s, strlen(s));
  }
  return fail(err, n, "%s: unsupported", name);
}

/* Copies key k's value from one config to another (flags over the file). */
static int copy_key(dcm__config_t *to, const dcm__config_t *from, const ckey_t *k) {
  dcm_options_t *t = &to->opts;
  dcm_options_t *f = (dcm_options_t *)&from->opts;
  switch (k->kind) {
    case K_LISTEN:
      t->listen_port = f->listen_port;
      return set_str(to, &t->listen_host, f->listen_host, strlen(f->listen_host));
    case K_URL:
    case K_PATH:
    case K_TEXT:
    case K_SECRET:
      return set_str(to, str_field(t, k), *str_field(f, k), strlen(*str_field(f, k)));
    case K_TIME:
      *time_field(t, k) = *time_field(f, k);
      return 0;
    default:
      *int_field(t, k) = *int_field(f, k);
      return 0;
  }
}

/*
 * Masks every occurrence of a secret in err (belt and braces), and of any
 * prefix of it 8 characters or longer: quote() cuts long values short, so a
 * misplaced secret may show only its start.
 */
static void scrub(char *err, const char *secret) {
  size_t sl = secret ? strlen(secret) : 0;
  size_t min = sl < 8 ? sl : 8;
  if (sl == 0) return;
  for (char *p = err; *p; p++) {
    size_t k = 0;
    while (k < sl && p[k] == secret[k]) k++;
    if (k < min) continue;
    size_t stars = k < 3 ? k : 3;
    memset(p, '*', stars);
    memmove(p + stars, p + k, strlen(p + k) + 1);
    p += stars - 1;
  }
}

/* ---- the Lua file ---- */

/* On the heap: an abandoned job frees it (see sandbox.h). */
typedef struct {
  dcm__sandbox_t box;    /* first; wipes what it frees: the file may hold secrets */
  dcm__config_t scratch; /* assignments are checked here, as they happen */
  const char *dir;
  char *src;             /* the file's text until the job has loaded it */
  size_t len;
  char *chunk;           /* "@path" */
  int status;            /* the job's: loading, then running the file */
  char err[256];
  char dirbuf[PATH_MAX];
} sandbox_t;

static int sb_getenv(lua_State *L) {
  dcm__sandbox_charge(L, CHECK_UNITS); /* a walk of the environment */
  const char *v = getenv(luaL_checkstring(L, 1));
  if (v) lua_pushstring(L, v); else lua_pushnil(L);
  return 1;
}

static const char *lua_type_name(lua_State *L, int idx) {
  return lua_typename(L, lua_type(L, idx));
}

/*
 * Checks `key = value` (key at -2, value at -1) against the scratch config.
 * 0, or -1 with a message in sb->err (no location).
 */
static int sb_check(lua_State *L, sandbox_t *sb) {
  char q[52];
  const ckey_t *k;
  size_t n = sizeof(sb->err);
  if (lua_type(L, -2) != LUA_TSTRING) {
    snprintf(sb->err, n, "global with a %s key is not a config key", lua_type_name(L, -2));
    return -1;
  }
  k = find_key(lua_tostring(L, -2));
  if (k == NULL) {
    snprintf(sb->err, n, "unknown key '%s' (use local for helper variables)",
             quote(lua_tostring(L, -2), q, sizeof q));
    return -1;
  }
  switch (lua_type(L, -1)) {
    case LUA_TNIL:
      return 0;
    case LUA_TBOOLEAN:
      if (k->kind == K_BOOL) return 0;
      break;
    case LUA_TNUMBER:
      if (k->kind == K_TIME || k->kind == K_COUNT || k->kind == K_SHARDS)
        return apply_number(&sb->scratch, k, k->name, lua_tonumber(L, -1), sb->err, n) ? -1 : 0;
      break;
    case LUA_TSTRING:
      if (k->kind != K_TIME && k->kind != K_COUNT && k->kind != K_BOOL &&
          (k->kind != K_SHARDS || strcmp(lua_tostring(L, -1), "auto") == 0)) {
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        if (strlen(s) != len) {
          snprintf(sb->err, n, "%s: must not contain NUL bytes", k->name);
          return -1;
        }
        return apply_string(&sb->scratch, k, k->name, s, sb->dir, sb->err, n) ? -1 : 0;
      }
      break;
    default:
      break;
  }
  snprintf(sb->err, n, "%s: expected %s, got %s", k->name,
           k->kind == K_TIME ? "a number of seconds"
           : k->kind == K_COUNT ? "an integer"
           : k->kind == K_BOOL ? "a boolean"
           : k->kind == K_SHARDS ? "\"auto\" or an integer"
           : "a string",
           lua_type_name(L, -1));
  return -1;
}

/* __newindex(env, k, v): every global assignment in the file lands here. */
static int sb_newindex(lua_State *L) {
  sandbox_t *sb = lua_touserdata(L, lua_upvalueindex(1));
  dcm__sandbox_charge(L, CHECK_UNITS);
  lua_settop(L, 3);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 3);
  if (sb_check(L, sb) != 0)
    return luaL_error(L, "%s", sb->err); /* prefixed with the assignment's file:line */
  lua_settop(L, 3);
  lua_rawset(L, lua_upvalueindex(2));
  return 0;
}

/* __index(env, k): the file's own values, then the allowed libraries. */
static int sb_index(lua_State *L) {
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(2));
  return 1;
}

/*
 * The file's environment over the sandbox's library (the globals), plus
 * os.getenv; leaves [values, env]. Runs protected.
 */
static int sb_open(lua_State *L) {
  sandbox_t *sb = lua_touserdata(L, 1);
  lua_settop(L, 0);
  lua_pushglobaltable(L); /* 1: the library */
  lua_getfield(L, 1, "os");
  lua_pushcfunction(L, sb_getenv);
  lua_setfield(L, -2, "getenv");
  lua_pop(L, 1);
  lua_newtable(L); /* 2: values */
  lua_newtable(L); /* 3: env */
  lua_pushvalue(L, 3);
  lua_setfield(L, 1, "_G");
  lua_createtable(L, 0, 3);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 1);
  lua_pushcclosure(L, sb_index, 2);
  lua_setfield(L, -2, "__index");
  lua_pushlightuserdata(L, sb);
  lua_pushvalue(L, 2);
  lua_pushcclosure(L, sb_newindex, 2);
  lua_setfield(L, -2, "__newindex");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable"); /* the file cannot swap the proxy out */
  lua_setmetatable(L, 3);
  return 2;
}

static int read_file(const char *path, char **out, size_t *len, char *err, size_t n) {
  FILE *f = fopen(path, "rb");
  char qp[256];
  size_t cap = 4096, used = 0;
  char *buf;
  if (f == NULL) return fail(err, n, "%s: cannot open: %s", quote(path, qp, sizeof qp), strerror(errno));
  buf = malloc(cap);
  for (;;) {
    size_t got;
    if (buf == NULL) {
      fclose(f);
      return DCM_ENOMEM;
    }
    got = fread(buf + used, 1, cap - used, f);
    used += got;
    if (used > CFG_FILE_MAX) {
      fclose(f);
      free(buf);
      return fail(err, n, "%s: larger than %u bytes", quote(path, qp, sizeof qp), CFG_FILE_MAX);
    }
    if (got == 0) break;
    if (used == cap) {
      char *nb = realloc(buf, cap * 2);
      if (nb == NULL) free(buf);
      buf = nb;
      cap *= 2;
    }
  }
  if (ferror(f)) {
    int e = errno;
    fclose(f);
    free(buf);
    return fail(err, n, "%s: cannot read: %s", quote(path, qp, sizeof qp), strerror(e));
  }
  fclose(f);
  *out = buf;
  *len = used;
  return 0;
}

static void forget_src(sandbox_t *sb) {
  if (sb->src) explicit_bzero(sb->src, sb->len);
  free(sb->src);
  sb->src = NULL;
}

static void sb_free(sandbox_t *sb) {
  forget_src(sb);
  free(sb->chunk);
  dcm__config_free(&sb->scratch);
  free(sb);
}

/* An abandoned job ended: its thread frees the rest. */
static void sb_release(dcm__sandbox_t *box, void *job) {
  (void)job;
  sb_free((sandbox_t *)(void *)box);
}

/* The job: the environment, then the file loaded and run under the
 * budgets; leaves [values, env] and, on an error, its message. */
static int sb_job(lua_State *L) {
  sandbox_t *sb = lua_touserdata(L, 1);
  lua_settop(L, 0);
  lua_pushcfunction(L, sb_open);
  lua_pushlightuserdata(L, sb);
  lua_call(L, 1, 2);
  dcm__sandbox_arm(&sb->box, CFG_BUDGET, CFG_TIME_NS);
  sb->status = luaL_loadbufferx(L, sb->src, sb->len, sb->chunk, "t");
  forget_src(sb);
  if (sb->status == LUA_OK) {
    lua_pushvalue(L, -2);
    lua_setupvalue(L, -2, 1); /* _ENV of the main chunk */
    sb->status = lua_pcall(L, 0, 0, 0);
  }
  return lua_gettop(L);
}

/* Runs the file and applies its globals to cfg. */
static int load_file(dcm__config_t *cfg, const char *path, char *err, size_t n) {
  sandbox_t *sb;
  lua_State *L;
  char qp[256];
  const char *slash;
  char *src = NULL;
  size_t len = 0;
  int rc = read_file(path, &src, &len, err, n);
  if (rc) return rc;

  sb = calloc(1, sizeof *sb);
  if (sb == NULL) {
    explicit_bzero(src, len);
    free(src);
    return DCM_ENOMEM;
  }
  sb->src = src;
  sb->len = len;
  dcm_options_init(&sb->scratch.opts);
  slash = strrchr(path, '/');
  if (slash == path) {
    sb->dir = "/";
  } else if (slash && (size_t)(slash - path) < sizeof(sb->dirbuf)) {
    memcpy(sb->dirbuf, path, (size_t)(slash - path));
    sb->dirbuf[slash - path] = '\0';
    sb->dir = sb->dirbuf;
  }
  sb->chunk = malloc(strlen(path) + 2);
  if (sb->chunk == NULL || dcm__sandbox_open(&sb->box, CFG_MEM_MAX, 1, sb_release) != 0) {
    sb_free(sb);
    return DCM_ENOMEM;
  }
  L = sb->box.L;
  sb->chunk[0] = '@';
  strcpy(sb->chunk + 1, path);
  rc = dcm__sandbox_run(&sb->box, sb_job, sb, CFG_TIME_NS);
  if (rc == DCM__SB_ABANDONED) /* sb is the thread's now */
    return fail(err, n, "%s: still running %d ms past its time budget of %u ms; abandoned",
                quote(path, qp, sizeof qp), DCM_SANDBOX_GRACE_MS, CFG_TIME_NS / 1000000u);
  if (rc == DCM_ENOMEM) {
    dcm__sandbox_close(&sb->box);
    sb_free(sb);
    return DCM_ENOMEM;
  }
  if (rc == LUA_OK) rc = sb->status;
  if (rc != LUA_OK) {
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    const char *colon = msg ? strchr(msg, ':') : NULL;
    size_t pl = strlen(path), tl = colon ? (size_t)(colon - msg) : 0;
    char why[64];
    if (rc == LUA_ERRMEM)
      fail(err, n, "%s: %s", quote(path, qp, sizeof qp), dcm__sandbox_memerr(&sb->box, why, sizeof why));
    else if (msg == NULL)
      fail(err, n, "%s: error object is not a string", quote(path, qp, sizeof qp));
    else if (strncmp(msg, path, pl) == 0 && msg[pl] == ':')
      fail(err, n, "%s", msg);
    else if (strncmp(msg, "...", 3) == 0 && tl - 3 <= pl && tl >= 3 &&
             memcmp(msg + 3, path + pl - (tl - 3), tl - 3) == 0)
      fail(err, n, "%s%s", quote(path, qp, sizeof qp), colon); /* Lua shortened the name */
    else
      fail(err, n, "%s: %s", quote(path, qp, sizeof qp), msg);
    rc = DCM_EINVAL;
  } else {
    /* The checked values, then anything rawset() put straight into the env
     * (it bypasses __newindex). Nothing here allocates, so no Lua runs. */
    int tabs[2] = {lua_absindex(L, -2), lua_absindex(L, -1)};
    rc = 0;
    for (int i = 0; i < 2 && rc == 0; i++) {
      lua_pushnil(L);
      while (rc == 0 && lua_next(L, tabs[i])) {
        const ckey_t *k;
        if (sb_check(L, sb) != 0) {
          rc = fail(err, n, "%s: %s", quote(path, qp, sizeof qp), sb->err);
          break;
        }
        k = find_key(lua_tostring(L, -2));
        if (lua_type(L, -1) == LUA_TBOOLEAN)
          *int_field(&cfg->opts, k) = lua_toboolean(L, -1);
        else if (lua_type(L, -1) == LUA_TNUMBER)
          rc = apply_number(cfg, k, k->name, lua_tonumber(L, -1), err, n);
        else
          rc = apply_string(cfg, k, k->name, lua_tostring(L, -1), sb->dir, err, n);
        lua_pop(L, 1);
      }
    }
  }
  if (rc) {
    scrub(err, sb->scratch.opts.token);
    scrub(err, sb->scratch.opts.auth);
    scrub(err, sb->scratch.opts.status_auth);
  }
  dcm__sandbox_close(&sb->box);
  sb_free(sb);
  return rc;
}

/* ---- flags ---- */

static void usage(FILE *out) {
  dcm_options_t d;
  dcm_options_init(&d);
  fprintf(out,
          "Usage: discluster-master [-c FILE] [OPTION...]\n"
          "       discluster-master check-policy FILE --fleet FLEET.json [...]\n"
          "       discluster-master rebalance [--master https://HOST:PORT] [--ca-file FILE]\n"
          "\nCoordinates the CONTROL agents of one Discord bot (protocol v%d).\n\n"
          "  -c, --config FILE                Lua config file; keys as below with '_' for '-',\n"
          "                                   plus token, auth and status_auth; flags\n"
          "                                   override it\n",
          DCM_PROTOCOL_VERSION);
  for (size_t i = 0; i < NKEYS; i++) {
    const ckey_t *k = &keys[i];
    char left[64], def[64];
    if (k->flag == NULL) continue;
    snprintf(left, sizeof left, "%s%s%s", k->flag, k->arg ? " " : "", k->arg ? k->arg : "");
    switch (k->kind) {
      case K_LISTEN: snprintf(def, sizeof def, "%s:%d", d.listen_host, d.listen_port); break;
      case K_SHARDS: snprintf(def, sizeof def, "auto"); break;
      case K_COUNT: snprintf(def, sizeof def, "%d", *int_field(&d, k)); break;
      case K_URL:
      case K_TEXT: snprintf(def, sizeof def, "%s", *str_field(&d, k) ? *str_field(&d, k) : ""); break;
      case K_TIME: snprintf(def, sizeof def, "%g", *time_field(&d, k)); break;
      case K_FORMAT: snprintf(def, sizeof def, "%s", format_names[d.log_format]); break;
      case K_LEVEL: snprintf(def, sizeof def, "%s", level_names[d.log_level]); break;
      default: def[0] = '\0'; break;
    }
    if (strlen(left) > 28) fprintf(out, "      %s\n", left), left[0] = '\0';
    fprintf(out, "      %-28s %s%s%s%s\n", left, k->help, def[0] ? " (" : "", def,
            def[0] ? ")" : "");
  }
  fprintf(out,
          "  -h, --help                       print this help and exit\n"
          "  -V, --version                    print the version and exit\n"
          "\nTimes are seconds and may be fractions (0.25). Flags also take --flag=VALUE.\n"
          "Secrets: DISCORD_TOKEN, DISCLUSTER_AUTH (CONTROLs joining, POST /rebalance) and\n"
          "DISCLUSTER_STATUS_AUTH (read-only: GET /status) from the environment,\n"
          "overridden by the config file's token, auth and status_auth. Without auth\n"
          "MASTER needs --no-auth; a non-loopback listen address needs auth, and TLS or\n"
          "--allow-plaintext.\n"
          "Signals: SIGINT/SIGTERM stop (CONTROLs keep their shards; a second one forces\n"
          "exit), SIGHUP reloads the policy and the TLS certificate and key.\n"
          "Exit status: 0 after a clean stop, 1 on a runtime error, 2 on a bad\n"
          "configuration, 3 after a fatal from a CONTROL, 4 when Discord failed.\n");
}

static int load(dcm__config_t *cfg, dcm__config_t *fl, int argc, char **argv, FILE *out,
                char *err, size_t n) {
  unsigned long long set = 0; /* bit i: keys[i] was given as a flag */
  const char *file = NULL, *env;
  char q[52];
  int rc;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *eq, *val = NULL;
    size_t nl;
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(out);
      return DCM_CONFIG_EXIT;
    }
    if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
      fprintf(out, "discluster-master %s (protocol v%d)\n", DCM_VERSION, DCM_PROTOCOL_VERSION);
      return DCM_CONFIG_EXIT;
    }
    if (strncmp(a, "--", 2) != 0 && strcmp(a, "-c") != 0)
      return fail(err, n, "'%s': unexpected argument (see --help)", quote(a, q, sizeof q));
    eq = strchr(a, '=');
    nl = eq ? (size_t)(eq - a) : strlen(a);
    const ckey_t *k = find_flag(a, nl);
    if (k && k->kind == K_BOOL) {
      if (eq) return fail(err, n, "%s: takes no value", k->flag);
      *int_field(&fl->opts, k) = 1;
      set |= 1ull << (k - keys);
      continue;
    }
    if (eq)
      val = eq + 1;
    else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0)
      val = argv[++i]; /* no value starts with "--": that is the next flag */
    if ((nl == 2 && strncmp(a, "-c", 2) == 0) || (nl == 8 && strncmp(a, "--config", 8) == 0)) {
      if (val == NULL) return fail(err, n, "%.*s: missing value", (int)nl, a);
      if (*val == '\0') return fail(err, n, "%.*s: empty file name", (int)nl, a);
      file = val;
      continue;
    }
    if (k == NULL) {
      char name[64];
      snprintf(name, sizeof name, "%.*s", (int)(nl < 40 ? nl : 40), a);
      if (strcmp(name, "--help") == 0 || strcmp(name, "--version") == 0)
        return fail(err, n, "%s: takes no value", name);
      return fail(err, n, "%s: unknown flag (see --help)", quote(name, q, sizeof q));
    }
    if (val == NULL) return fail(err, n, "%s: missing value", k->flag);
    rc = apply_string(fl, k, k->flag, val, NULL, err, n);
    if (rc) return rc;
    set |= 1ull << (k - keys);
  }

  env = getenv("DISCORD_TOKEN");
  if (env && *env && (rc = apply_string(cfg, find_key("token"), "DISCORD_TOKEN", env, NULL, err, n)))
    return rc;
  env = getenv("DISCLUSTER_AUTH");
  if (env && *env && (rc = apply_string(cfg, find_key("auth"), "DISCLUSTER_AUTH", env, NULL, err, n)))
    return rc;
  env = getenv("DISCLUSTER_STATUS_AUTH");
  if (env && *env &&
      (rc = apply_string(cfg, find_key("status_auth"), "DISCLUSTER_STATUS_AUTH", env, NULL, err, n)))
    return rc;
  if (file && (rc = load_file(cfg, file, err, n))) return rc;
  for (size_t i = 0; i < NKEYS; i++)
    if ((set & (1ull << i)) && (rc = copy_key(cfg, fl, &keys[i]))) return rc;
  /* An empty secret means none: the validator and the server agree on that. */
  if (cfg->opts.token && cfg->opts.token[0] == '\0') cfg->opts.token = NULL;
  if (cfg->opts.auth && cfg->opts.auth[0] == '\0') cfg->opts.auth = NULL;
  if (cfg->opts.status_auth && cfg->opts.status_auth[0] == '\0') cfg->opts.status_auth = NULL;
  return dcm__options_validate(&cfg->opts, err, n);
}

int dcm__config_load(dcm__config_t *cfg, int argc, char **argv, FILE *out, char *err,
                     size_t errlen) {
  dcm__config_t fl;
  int rc;
  memset(cfg, 0, sizeof(*cfg));
  memset(&fl, 0, sizeof(fl));
  dcm_options_init(&cfg->opts);
  dcm_options_init(&fl.opts);
  if (errlen) err[0] = '\0';
  rc = load(cfg, &fl, argc, argv, out, err, errlen);
  if (rc == DCM_ENOMEM) rc = fail(err, errlen, "out of memory while reading the configuration");
  if (rc < 0) {
    scrub(err, getenv("DISCORD_TOKEN"));
    scrub(err, getenv("DISCLUSTER_AUTH"));
    scrub(err, getenv("DISCLUSTER_STATUS_AUTH"));
    scrub(err, cfg->opts.token);
    scrub(err, cfg->opts.auth);
    scrub(err, cfg->opts.status_auth);
    for (char *p = err; *p; p++)
      if ((unsigned char)*p < 0x20) *p = ' ';
  }
  if (rc != DCM_CONFIG_RUN) { /* nothing for the caller to own */
    dcm__config_free(cfg);
    dcm_options_init(&cfg->opts);
  }
  dcm__config_free(&fl);
  return rc;
}

void dcm__config_free(dcm__config_t *cfg) {
  for (int i = 0; i < cfg->nstrings; i++) wipe_free(cfg->strings[i]);
  cfg->nstrings = 0;
}
