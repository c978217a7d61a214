/*
 * test_heartbeat.c: the canonical heartbeat's fast path against cjson.
 * Every input goes through dcm__packet_decode (fast path first) and
 * dcm__packet_decode_json (cjson only); both must give the same result
 * field for field, or the same error and reason. Inputs: the canonical
 * form with many numbers, every truncation and many one-byte changes of
 * it, reordered, spaced, extra and duplicate fields, failed_clusters in
 * every shape, non-numbers, and a few hundred thousand generated numbers.
 * Also: what dcm__heartbeat_format writes is canonical and reads back as
 * the same double, and the fast path allocates nothing. All of it for both
 * canonical forms (failed_clusters [], and left out).
 */
#include <lauxlib.h>
#include <malloc.h>
#include <math.h>
#include <stdint.h>

#include "check.h"
#include "json.h"
#include "protocol.h"

#define MAX_SHARDS ((size_t)1 << 20) /* session.c's bound */

static lua_State *L;
static size_t fast_hits, compared;
static int form = DCM_HEARTBEAT_EMPTY; /* the canonical form under test */

static void same_bits(double a, double b, const char *in) {
  if (memcmp(&a, &b, sizeof a) != 0) {
    fprintf(stderr, "input %s: loadavg %.17g (fast) != %.17g (cjson)\n", in, a, b);
    abort();
  }
}

static void same_text(const char *a, const char *b) {
  CHECK((a == NULL) == (b == NULL));
  if (a) CHECK_STR(a, b);
}

/* Decodes in both ways and compares everything; returns the result. */
static int same(const char *in, size_t len) {
  dcm__packet_t a, b;
  char ea[192], eb[192];
  double v;
  int fast = dcm__heartbeat_canonical(in, len, &v) != 0;
  int ra = dcm__packet_decode(L, in, len, MAX_SHARDS, &a, ea, sizeof ea);
  CHECK_EQ(lua_gettop(L), 0);
  int rb = dcm__packet_decode_json(L, in, len, MAX_SHARDS, &b, eb, sizeof eb);
  CHECK_EQ(lua_gettop(L), 0);
  if (ra != rb || strcmp(ea, eb) != 0) {
    fprintf(stderr, "input %.*s: fast %d '%s', cjson %d '%s'\n", (int)len, in, ra, ea, rb, eb);
    abort();
  }
  fast_hits += fast;
  compared++;
  if (fast) CHECK_EQ(rb, 0); /* the fast path never takes what cjson refuses */
  if (ra != 0) return ra;
  CHECK_EQ(a.op, b.op);
  CHECK_STR(a.id, b.id);
  CHECK_EQ(a.cores, b.cores);
  same_bits(a.loadavg, b.loadavg, in);
  CHECK_EQ(a.standby, b.standby);
  CHECK_EQ(a.has_shards, b.has_shards);
  CHECK_STR(a.version, b.version);
  CHECK_EQ(a.identify_queue, b.identify_queue);
  CHECK_EQ(a.handoff, b.handoff);
  CHECK_EQ(a.shard_count, b.shard_count);
  CHECK_EQ(a.nshards, b.nshards);
  CHECK(a.nshards == 0 || memcmp(a.shards, b.shards, a.nshards * sizeof(int)) == 0);
  CHECK_EQ(a.code, b.code);
  CHECK_STR(a.message, b.message);
  CHECK_EQ(a.shard, b.shard);
  CHECK_EQ(a.ack_op, b.ack_op);
  CHECK_EQ(a.has_loadavg, b.has_loadavg);
  CHECK_EQ(a.has_failed, b.has_failed);
  same_text(a.failed_json, b.failed_json);
  CHECK_EQ(a.nsessions, b.nsessions);
  CHECK_EQ(a.nbad, b.nbad);
  if (fast) same_bits(v, b.loadavg, in);
  dcm__packet_clear(&a);
  dcm__packet_clear(&b);
  return 0;
}

static int same_str(const char *in) { return same(in, strlen(in)); }

/* The canonical bytes around a number text. */
static size_t canonical(char *buf, size_t cap, const char *num) {
  int n = snprintf(buf, cap, DCM_HEARTBEAT_HEAD "%s%s", num,
                   form == DCM_HEARTBEAT_SAME ? DCM_HEARTBEAT_TAIL_SAME : DCM_HEARTBEAT_TAIL);
  CHECK(n > 0 && (size_t)n < cap);
  return (size_t)n;
}

static int fast_number(const char *num) {
  char buf[256];
  double v;
  size_t n = canonical(buf, sizeof buf, num);
  return dcm__heartbeat_canonical(buf, n, &v) == form;
}

static void numbers(void) {
  static const char *const fast[] = {
      "0", "0.5", "0.42", "1", "12.34", "100", "0.00001", "3.14159265358979",
      "9007199254740992", "900719925474099.2", "0.0000000000000000000001", "1.7976931348",
      "0.1", "0.2", "0.3", "2.675", "1.005", "4.35", "0.29"};
  static const char *const slow[] = {
      "1e-05", "1E3", "8.589973e9", "9007199254740993", "18446744073709551616", "123456789012345678901234",
      "0.00000000000000000000001", "0.1234567890123456789012345", "-0.5", "-0", "01", "00",
      "1.", ".5", "+1", "0x10", "1e400", "-1e400", "NaN", "nan", "Infinity", "-Infinity",
      "inf", "\"0.5\"", "null", "true", "false", "[]", "{}", "", " 0.5", "0.5 ", "0 .5",
      "0.5.5", "1-2", "\"\"", "0..5", "1e", "2e+", "\\u0030"};
  char buf[256];
  for (size_t i = 0; i < sizeof fast / sizeof fast[0]; i++) {
    size_t n = canonical(buf, sizeof buf, fast[i]);
    CHECK(fast_number(fast[i]));
    same(buf, n);
  }
  for (size_t i = 0; i < sizeof slow / sizeof slow[0]; i++) {
    size_t n = canonical(buf, sizeof buf, slow[i]);
    CHECK(!fast_number(slow[i]));
    same(buf, n);
  }
  /* the errors come from cjson as they always did */
  CHECK_EQ(same(buf, canonical(buf, sizeof buf, "-0.5")), DCM_ERR_MALFORMED);
  CHECK_EQ(same(buf, canonical(buf, sizeof buf, "NaN")), DCM_ERR_MALFORMED);
  CHECK_EQ(same(buf, canonical(buf, sizeof buf, "1e400")), DCM_ERR_MALFORMED);
  CHECK_EQ(same(buf, canonical(buf, sizeof buf, "01")), DCM_ERR_MALFORMED);
}

/* xorshift: the same numbers every run. */
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static void generated_numbers(void) {
  char num[64], buf[256];
  for (int k = 0; k < 200000; k++) {
    size_t o = 0, digits = 1 + next() % 20, point = next() % (digits + 2);
    int lead_zero = next() % 4 == 0;
    for (size_t i = 0; i < digits; i++) {
      if (i == point && i > 0) num[o++] = '.';
      char d = (char)('0' + next() % 10);
      if (i == 0) d = lead_zero ? '0' : (char)('1' + next() % 9);
      num[o++] = d;
    }
    num[o] = '\0';
    same(buf, canonical(buf, sizeof buf, num));
  }
  /* loadavg as discluster-control writes it, and what MASTER reads back */
  for (int k = 0; k < 100000; k++) {
    double x = k < 50000 ? k / 100.0 : (double)(next() % 1000000007) / (double)(1 + next() % 1000);
    size_t n = dcm__heartbeat_format(buf, sizeof buf, x, form);
    CHECK(n > 0);
    double v;
    if (k < 50000) CHECK(dcm__heartbeat_canonical(buf, n, &v) == form); /* two decimals */
    same(buf, n);
  }
  CHECK_EQ(dcm__heartbeat_format(buf, sizeof buf, NAN, form), 0);
  CHECK_EQ(dcm__heartbeat_format(buf, sizeof buf, INFINITY, form), 0);
  CHECK_EQ(dcm__heartbeat_format(buf, 10, 0.5, form), 0); /* does not fit */
}

static void truncated_and_changed(void) {
  char base[256], buf[256];
  static const char subst[] = " 0189\"{}[],:.-e\\x\t";
  size_t n = canonical(base, sizeof base, "0.42");
  for (size_t cut = 0; cut < n; cut++) CHECK(same(base, cut) != 0);
  for (size_t i = 0; i < n; i++) {
    for (size_t k = 0; k < sizeof subst; k++) { /* the NUL too */
      memcpy(buf, base, n);
      if (buf[i] == subst[k]) continue;
      buf[i] = subst[k];
      same(buf, n);
    }
    memcpy(buf, base, i); /* a byte left out */
    memcpy(buf + i, base + i + 1, n - i - 1);
    same(buf, n - 1);
    memcpy(buf, base, i); /* a space let in */
    buf[i] = ' ';
    memcpy(buf + i + 1, base + i, n - i);
    same(buf, n + 1);
  }
  memcpy(buf, base, n); /* bytes after it */
  memcpy(buf + n, "\0", 1);
  same(buf, n + 1);
  memcpy(buf + n, "}", 1);
  same(buf, n + 1);
}

static void other_forms(void) {
  static const char *const forms[] = {
      /* what older agents and other implementations send */
      "{\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[]}}",
      "{\"d\":{\"loadavg\":0.5,\"failed_clusters\":[],\"failed_clusters_more\":0},\"o\":9}",
      "{\"o\":9,\"d\":{\"failed_clusters_more\":0,\"failed_clusters\":[],\"loadavg\":0.5}}",
      "{\"o\":9,\"d\":{\"failed_clusters\":[],\"loadavg\":0.5,\"failed_clusters_more\":0}}",
      "{\"o\": 9, \"d\": {\"loadavg\": 0.5, \"failed_clusters\": [], \"failed_clusters_more\": 0}}",
      " {\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[],\"failed_clusters_more\":0}}",
      "{\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[],\"failed_clusters_more\":0}}\n",
      "{\"o\":9.0,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[],\"failed_clusters_more\":0}}",
      "{\"o\":9,\"d\":{}}",
      "{\"o\":9,\"d\":{\"loadavg\":null}}",
      /* extra and duplicate fields */
      "{\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[],\"failed_clusters_more\":0,\"x\":1}}",
      "{\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[],\"failed_clusters_more\":0},\"x\":1}",
      "{\"o\":9,\"d\":{\"loadavg\":0.5,\"loadavg\":0.7,\"failed_clusters\":[],"
      "\"failed_clusters_more\":0}}",
      "{\"o\":9,\"o\":8,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[],\"failed_clusters_more\":0}}",
      /* failed_clusters in every shape */
      "{\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[{\"cluster\":0,\"shards\":[3,1,2,1],"
      "\"exit\":7,\"signal\":0}],\"failed_clusters_more\":0}}",
      "{\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[{\"cluster\":-1,\"shards\":[5],"
      "\"exit\":0,\"signal\":0,\"over_cap\":true,\"shards_more\":9}],\"failed_clusters_more\":2}}",
      "{\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":{},\"failed_clusters_more\":0}}",
      "{\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":\"x\",\"failed_clusters_more\":0}}",
      "{\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[1],\"failed_clusters_more\":0}}",
      "{\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[{}],\"failed_clusters_more\":0}}",
      "{\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":null,\"failed_clusters_more\":0}}",
      "{\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[],\"failed_clusters_more\":1}}",
      "{\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[],\"failed_clusters_more\":\"x\"}}",
      "{\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[ ],\"failed_clusters_more\":0}}",
      "{\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[],\"failed_clusters_more\":0.0}}",
      /* not heartbeats, or not packets */
      "{\"o\":8,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[],\"failed_clusters_more\":0}}",
      "{\"o\":99,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[],\"failed_clusters_more\":0}}",
      "{\"o\":9,\"d\":[]}",
      "{\"o\":9}",
      "[9]",
      "",
      "{\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[],\"failed_clusters_more\":0}",
      "{\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[],\"failed_clusters_more\":0}}}",
      "{\"o\":9,\"d\":{\"loadavg\":\"0.5\",\"failed_clusters\":[],\"failed_clusters_more\":0}}",
      "{\"o\":9,\"d\":{\"loadavg\":-1,\"failed_clusters\":[],\"failed_clusters_more\":0}}",
      "{\"o\":9,\"d\":{\"loadavg\":1e999,\"failed_clusters\":[],\"failed_clusters_more\":0}}",
      "{\"o\":9,\"d\":{\"loadavg\":NaN,\"failed_clusters\":[],\"failed_clusters_more\":0}}",
      "{\"\\u006f\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[],\"failed_clusters_more\":0}}"};
  for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
    double v;
    CHECK(!dcm__heartbeat_canonical(forms[i], strlen(forms[i]), &v));
    same_str(forms[i]);
  }
  /* a failed list gets through, sorted and unique, as before */
  dcm__packet_t p;
  char err[192];
  CHECK_EQ(dcm__packet_decode(L, forms[14], strlen(forms[14]), MAX_SHARDS, &p, err, sizeof err),
           0);
  CHECK(p.has_failed && p.nshards == 3 && p.shards[0] == 1 && p.shards[2] == 3);
  dcm__packet_clear(&p);
}

static size_t heap_used(void) {
#ifdef __SANITIZE_ADDRESS__
  return 0; /* ASan's allocator is not glibc's */
#else
  struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
#endif
}

static void fast_path_allocates_nothing(void) {
  char buf[256];
  size_t n = canonical(buf, sizeof buf, "0.42");
  dcm__packet_t p;
  char err[192];
  int lua_kb = lua_gc(L, LUA_GCCOUNT, 0), lua_b = lua_gc(L, LUA_GCCOUNTB, 0);
  size_t before = heap_used();
  for (int i = 0; i < 1000; i++) {
    CHECK_EQ(dcm__packet_decode(L, buf, n, MAX_SHARDS, &p, err, sizeof err), 0);
    CHECK(p.op == DCM_OP_HEARTBEAT && p.has_loadavg && p.loadavg == 0.42);
    CHECK_EQ(p.has_failed, form == DCM_HEARTBEAT_EMPTY);
    CHECK(p.shards == NULL && p.failed_json == NULL && p.sessions == NULL && err[0] == '\0');
    dcm__packet_clear(&p);
  }
  CHECK_EQ(heap_used(), before);
  CHECK(lua_gc(L, LUA_GCCOUNT, 0) == lua_kb && lua_gc(L, LUA_GCCOUNTB, 0) == lua_b);
}

int main(void) {
  L = dcm__json_new();
  CHECK(L != NULL);
  for (form = DCM_HEARTBEAT_EMPTY; form <= DCM_HEARTBEAT_SAME; form++) {
    printf("# the form %s\n", form == DCM_HEARTBEAT_EMPTY ? "with failed_clusters []"
                                                         : "without failed_clusters");
    RUN(numbers);
    RUN(generated_numbers);
    RUN(truncated_and_changed);
    RUN(fast_path_allocates_nothing);
  }
  RUN(other_forms);
  printf("# %zu inputs compared, %zu through the fast path\n", compared, fast_hits);
  CHECK(fast_hits > 100000 && fast_hits < compared);
  lua_close(L);
  return 0;
}
