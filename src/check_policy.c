/* check_policy.c: `discluster-master check-policy`; see check_policy.h. */
#include "check_policy.h"

#include <lua.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "policy.h"
#include "policy_internal.h"

#define EXIT_POLICY 1 /* invalid policy or result */
#define EXIT_USAGE 2  /* bad arguments or fleet file */
#define DEFAULT_SHARDS 16
#define MAX_FLEET_FILE (16u << 20)
#define MAX_FLEET 100000
#define MAX_SHARDS 1000000
#define RANGES_WIDTH 120

static const char usage[] =
    "usage: discluster-master check-policy FILE --fleet FLEET.json\n"
    "         [--shards N] [--max-concurrency M] [--dead ID] [--policy-dir DIR]\n"
    "         [--policy-timeout S]\n"
    "Runs the policy FILE in the master's sandbox against FLEET.json (a JSON\n"
    "array of {id, cores, loadavg, standby?, shards?}) and prints the\n"
    "allocation of shards 0..N-1 over the non-standby machines (N defaults\n"
    "to 16, M to 1), or with --dead the failover of that machine's shards to\n"
    "the others, as JSON on stdout and a table on stderr. Exit status: 0;\n"
    "1 for an invalid policy or result; 2 for bad arguments or fleet.\n"
    "--policy-timeout: the master's policy_timeout (1 second by default).\n";

typedef struct {
  dcm__pmachine_t *m;
  size_t n;
  char **ids;
  int **shards;
} fleet_t;

static void fleet_free(fleet_t *f) {
  for (size_t i = 0; i < f->n; i++) {
    free(f->ids[i]);
    free(f->shards[i]);
  }
  free(f->m);
  free(f->ids);
  free(f->shards);
}

/* Log lines without the timestamp: this is a terminal tool. */
static void to_stderr(dcm_log_level level, const char *line, size_t len,
                      void *arg) {
  (void)arg;
  const char *sp = memchr(line, ' ', len);
  if (sp) {
    const char *msg = sp + 1 + 5 + 1; /* level name padded to 5, a space */
    if (msg <= line + len) {
      fprintf(stderr, "%s: %.*s\n", dcm__log_level_name(level),
              (int)(line + len - msg), msg);
      return;
    }
  }
  fprintf(stderr, "%.*s\n", (int)len, line);
}

static int valid_id(const char *s, size_t n) {
  if (n < 1 || n > 128) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '.' || c == '_' || c == ':' || c == '-'))
      return 0;
  }
  return 1;
}

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  char *buf = malloc(MAX_FLEET_FILE + 1);
  size_t n = buf ? fread(buf, 1, MAX_FLEET_FILE + 1, f) : 0;
  int bad = buf == NULL || ferror(f) || n > MAX_FLEET_FILE;
  fclose(f);
  if (bad) {
    free(buf);
    return NULL;
  }
  *len = n;
  return buf;
}

#define FLEET_FAIL(...)                                        \
  do {                                                         \
    fprintf(stderr, "check-policy: %s: ", path);               \
    fprintf(stderr, __VA_ARGS__);                              \
    fputc('\n', stderr);                                       \
    return -1;                                                 \
  } while (0)

/* One element of the fleet array, on the top of L's stack. */
static int read_machine(lua_State *L, const char *path, size_t i, int shards,
                        fleet_t *f, int *taken) {
  long long v;
  size_t len, k;
  if (!lua_istable(L, -1) || !dcm__json_isobject(L, -1))
    FLEET_FAIL("machine %zu is not an object", i + 1);
  if (dcm__json_field(L, -1, "id") != LUA_TSTRING)
    FLEET_FAIL("machine %zu: id must be a string", i + 1);
  const char *id = lua_tolstring(L, -1, &len);
  if (!valid_id(id, len))
    FLEET_FAIL("machine %zu: id must be 1-128 characters of [A-Za-z0-9._:-]", i + 1);
  for (size_t j = 0; j < i; j++)
    if (strcmp(f->ids[j], id) == 0) FLEET_FAIL("machine id '%s' appears twice", id);
  f->ids[i] = malloc(len + 1);
  if (f->ids[i] == NULL) FLEET_FAIL("out of memory");
  memcpy(f->ids[i], id, len + 1);
  lua_pop(L, 1);
  dcm__pmachine_t *m = &f->m[i];
  m->id = f->ids[i];
  dcm__json_field(L, -1, "cores");
  if (!dcm__json_tointeger(L, -1, &v) || v < 1 || v > 1000000)
    FLEET_FAIL("machine '%s': cores must be an integer from 1", id);
  m->cores = (int)v;
  lua_pop(L, 1);
  if (dcm__json_field(L, -1, "loadavg") != LUA_TNUMBER || !(lua_tonumber(L, -1) >= 0) ||
      !isfinite(lua_tonumber(L, -1)))
    FLEET_FAIL("machine '%s': loadavg must be a number >= 0", id);
  m->loadavg = lua_tonumber(L, -1);
  lua_pop(L, 1);
  int t = dcm__json_field(L, -1, "standby");
  if (t != LUA_TNIL && t != LUA_TBOOLEAN)
    FLEET_FAIL("machine '%s': standby must be true or false", id);
  m->standby = lua_toboolean(L, -1);
  lua_pop(L, 1);
  t = dcm__json_field(L, -1, "shards");
  if (t != LUA_TNIL) {
    if (!dcm__json_isarray(L, -1, &len))
      FLEET_FAIL("machine '%s': shards must be an array of integers", id);
    if (len > 0 && lua_istable(L, -1)) {
      f->shards[i] = malloc(sizeof(int) * len);
      if (f->shards[i] == NULL) FLEET_FAIL("out of memory");
      for (k = 0; k < len; k++) {
        lua_rawgeti(L, -1, (lua_Integer)k + 1);
        if (!dcm__json_tointeger(L, -1, &v))
          FLEET_FAIL("machine '%s': shards must be an array of integers", id);
        if (v < 0 || v >= shards)
          FLEET_FAIL("machine '%s': shard %lld is outside 0-%d (see --shards)", id,
                     v, shards - 1);
        if (taken[v] >= 0)
          FLEET_FAIL("shard %lld is listed by both '%s' and '%s'", v,
                     f->ids[taken[v]], id);
        taken[v] = (int)i;
        f->shards[i][k] = (int)v;
        lua_pop(L, 1);
      }
      m->shards = f->shards[i];
      m->nshards = len;
    }
  }
  lua_pop(L, 2); /* shards, the machine */
  return 0;
}

static int read_fleet(const char *path, int shards, fleet_t *f) {
  size_t len;
  char *text = slurp(path, &len);
  if (text == NULL) {
    fprintf(stderr, "check-policy: cannot read %s (missing, unreadable or over %u bytes)\n",
            path, MAX_FLEET_FILE);
    return -1;
  }
  lua_State *L = dcm__json_new();
  int *taken = malloc(sizeof(int) * (size_t)shards);
  int rc = -1;
  if (L == NULL || taken == NULL) {
    fprintf(stderr, "check-policy: out of memory\n");
    goto out;
  }
  for (int s = 0; s < shards; s++) taken[s] = -1;
  size_t n;
  if (dcm__json_decode(L, text, len) != 0) {
    fprintf(stderr, "check-policy: %s: not valid JSON\n", path);
    goto out;
  }
  if (!dcm__json_isarray(L, -1, &n) || n < 1 || n > MAX_FLEET) {
    fprintf(stderr, "check-policy: %s: expected a JSON array of 1-%d machines\n",
            path, MAX_FLEET);
    goto out;
  }
  f->m = calloc(n, sizeof *f->m);
  f->ids = calloc(n, sizeof *f->ids);
  f->shards = calloc(n, sizeof *f->shards);
  if (f->m == NULL || f->ids == NULL || f->shards == NULL) {
    fprintf(stderr, "check-policy: out of memory\n");
    goto out;
  }
  f->n = n;
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, -1, (lua_Integer)i + 1);
    if (read_machine(L, path, i, shards, f, taken) != 0) goto out;
  }
  rc = 0;
out:
  if (L) lua_close(L);
  free(taken);
  free(text);
  return rc;
}

/* "0-6,9,12-15", cut at RANGES_WIDTH; v sorted. */
static void ranges(const int *v, size_t n, char *out, size_t cap) {
  size_t k = 0;
  out[0] = '\0';
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j + 1 < n && v[j + 1] == v[j] + 1) j++;
    char part[32];
    if (j > i) snprintf(part, sizeof part, "%s%d-%d", i ? "," : "", v[i], v[j]);
    else snprintf(part, sizeof part, "%s%d", i ? "," : "", v[i]);
    if (k + strlen(part) + 5 > cap) {
      snprintf(out + k, cap - k, ",...");
      return;
    }
    k += (size_t)snprintf(out + k, cap - k, "%s", part);
    i = j + 1;
  }
}

static int cmp_int(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  return (x > y) - (x < y);
}

/* got[i] lists (sorted) the shards machine i receives. */
static void print_result(const dcm__pmachine_t *m, size_t n, int **got,
                         const size_t *count, int failover) {
  printf("{");
  for (size_t i = 0; i < n; i++) {
    printf("%s\n  \"%s\": [", i ? "," : "", m[i].id);
    for (size_t k = 0; k < count[i]; k++) printf("%s%d", k ? ", " : "", got[i][k]);
    printf("]");
  }
  printf(n ? "\n}\n" : "}\n");
  char r[RANGES_WIDTH + 8];
  fprintf(stderr, "%-24s %6s %8s %8s %7s  %s\n", "machine", "cores", "loadavg",
          "standby", failover ? "added" : "shards", "ranges");
  for (size_t i = 0; i < n; i++) {
    ranges(got[i], count[i], r, sizeof r);
    fprintf(stderr, "%-24s %6d %8.2f %8s %7zu  %s\n", m[i].id, m[i].cores,
            m[i].loadavg, m[i].standby ? "yes" : "no", count[i], r);
  }
}

/* Groups an owner table into per-machine sorted shard lists and prints. */
static int report(const dcm__pmachine_t *m, size_t n, const int *owner,
                  const int *shard_of, size_t nowner, int failover) {
  int **got = calloc(n ? n : 1, sizeof *got);
  size_t *count = calloc(n ? n : 1, sizeof *count);
  int *all = malloc(sizeof(int) * (nowner ? nowner : 1));
  if (got == NULL || count == NULL || all == NULL) {
    free(got);
    free(count);
    free(all);
    fprintf(stderr, "check-policy: out of memory\n");
    return EXIT_POLICY;
  }
  for (size_t s = 0; s < nowner; s++)
    if (owner[s] >= 0) count[owner[s]]++;
  size_t off = 0;
  for (size_t i = 0; i < n; i++) {
    got[i] = all + off;
    off += count[i];
    count[i] = 0;
  }
  for (size_t s = 0; s < nowner; s++)
    if (owner[s] >= 0) got[owner[s]][count[owner[s]]++] = shard_of ? shard_of[s] : (int)s;
  for (size_t i = 0; i < n; i++) qsort(got[i], count[i], sizeof(int), cmp_int);
  print_result(m, n, got, count, failover);
  free(got);
  free(count);
  free(all);
  return 0;
}

static int parse_int(const char *flag, const char *s, int lo, int hi, int *out) {
  char *end;
  long v = s ? strtol(s, &end, 10) : 0;
  if (s == NULL || *s == '\0' || *end != '\0' || v < lo || v > hi) {
    fprintf(stderr, "check-policy: %s needs an integer from %d to %d\n", flag, lo, hi);
    return -1;
  }
  *out = (int)v;
  return 0;
}

typedef struct {
  const char *file, *fleet, *dead, *dir;
  int shards, mc;
  double timeout; /* seconds; 0: the master's default */
} args_t;

static int parse_args(int argc, char **argv, args_t *a) {
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i], *val = NULL;
    if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
      fputs(usage, stdout);
      return 1;
    }
    if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
      if (a->file) {
        fprintf(stderr, "check-policy: one policy FILE only ('%s')\n%s", arg, usage);
        return -1;
      }
      a->file = arg;
      continue;
    }
    char name[32];
    const char *eq = strchr(arg, '=');
    size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
    snprintf(name, sizeof name, "%.*s", (int)len, arg);
    val = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
    if (val == NULL) {
      fprintf(stderr, "check-policy: %s needs a value\n", name);
      return -1;
    }
    if (strcmp(name, "--fleet") == 0) a->fleet = val;
    else if (strcmp(name, "--dead") == 0) a->dead = val;
    else if (strcmp(name, "--policy-dir") == 0) a->dir = val;
    else if (strcmp(name, "--shards") == 0) {
      if (parse_int(name, val, 1, MAX_SHARDS, &a->shards) != 0) return -1;
    } else if (strcmp(name, "--max-concurrency") == 0) {
      if (parse_int(name, val, 1, 1024, &a->mc) != 0) return -1;
    } else if (strcmp(name, "--policy-timeout") == 0) {
      char *end;
      a->timeout = strtod(val, &end);
      if (*val == '\0' || *end != '\0' || !(a->timeout >= 0.01 && a->timeout <= 3600)) {
        fprintf(stderr, "check-policy: --policy-timeout needs seconds from 0.01 to 3600\n");
        return -1;
      }
    } else {
      fprintf(stderr, "check-policy: unknown option %s\n%s", name, usage);
      return -1;
    }
  }
  if (a->file == NULL || a->fleet == NULL) {
    fprintf(stderr, "check-policy: FILE and --fleet are required\n%s", usage);
    return -1;
  }
  return 0;
}

static int run(dcm__policy_t *p, const args_t *a, fleet_t *f) {
  dcm__pctx_t ctx = {a->shards, a->mc};
  dcm__pmachine_t *list = malloc(sizeof *list * f->n);
  if (list == NULL) return EXIT_POLICY;
  size_t n = 0, dead = f->n;
  for (size_t i = 0; i < f->n; i++) {
    if (a->dead && strcmp(f->m[i].id, a->dead) == 0) dead = i;
    else if (a->dead || !f->m[i].standby) list[n++] = f->m[i];
  }
  int rc = EXIT_POLICY;
  if (a->dead == NULL) {
    int *owner = n ? malloc(sizeof(int) * (size_t)a->shards) : NULL;
    if (n == 0) {
      fprintf(stderr, "check-policy: %s: no active (non-standby) machine to allocate to\n",
              a->fleet);
      rc = EXIT_USAGE;
    } else if (owner) {
      fprintf(stderr, "allocate %d shards over %zu active machines (max_concurrency %d) "
              "with %s\n", a->shards, n, a->mc, dcm__policy_path(p));
      int err = dcm__policy_allocate(p, list, n, &ctx, owner);
      if (err == 0) rc = report(list, n, owner, NULL, (size_t)a->shards, 0);
      else if (err != DCM_EPOLICY)
        fprintf(stderr, "check-policy: allocate: %s\n", dcm_strerror(err));
    }
    free(owner);
  } else if (dead == f->n) {
    fprintf(stderr, "check-policy: --dead %s: no such machine in %s\n", a->dead, a->fleet);
    rc = EXIT_USAGE;
  } else {
    const dcm__pmachine_t *d = &f->m[dead];
    int *owner = malloc(sizeof(int) * (d->nshards ? d->nshards : 1));
    if (owner) {
      fprintf(stderr, "failover of '%s' (%zu shards) to %zu live machines with %s\n",
              d->id, d->nshards, n, dcm__policy_path(p));
      int err = dcm__policy_failover(p, d, list, n, &ctx, owner);
      if (err == 0) {
        if (n == 0 && d->nshards)
          fprintf(stderr, "no live machine: the shards stay unassigned\n");
        rc = report(list, n, owner, d->shards, d->nshards, 1);
      } else if (err != DCM_EPOLICY) {
        fprintf(stderr, "check-policy: failover: %s\n", dcm_strerror(err));
      }
    }
    free(owner);
  }
  free(list);
  return rc;
}

int dcm__check_policy_main(int argc, char **argv) {
  args_t a = {NULL, NULL, NULL, NULL, DEFAULT_SHARDS, 1, 0};
  int st = parse_args(argc, argv, &a);
  if (st != 0) return st > 0 ? 0 : EXIT_USAGE;
  fleet_t f = {0};
  if (read_fleet(a.fleet, a.shards, &f) != 0) {
    fleet_free(&f);
    return EXIT_USAGE;
  }
  dcm__log_t lg;
  if (dcm__log_init(&lg, DCM_LOG_INFO, DCM_LOG_TEXT, to_stderr, NULL) != 0) {
    fleet_free(&f);
    return EXIT_POLICY;
  }
  dcm__policy_t *p = NULL;
  int rc = dcm__policy_new(a.file, a.dir, a.timeout, &lg, &p);
  if (rc != 0) {
    if (rc != DCM_EPOLICY) fprintf(stderr, "check-policy: %s\n", dcm_strerror(rc));
    st = EXIT_POLICY;
  } else {
    dcm__policy_set_strict(p, 1);
    fflush(stdout);
    st = run(p, &a, &f);
    dcm__policy_free(p);
  }
  fflush(stdout);
  dcm__log_close(&lg);
  fleet_free(&f);
  return st;
}
