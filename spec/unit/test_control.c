/*
 * test_control.c: the agent's pure parts: shard grouping, the cluster
 * stdout line contract (READY, FATAL, SESSION, bounded lines), the identify
 * endpoint's request target and keys, the reconnect backoff, the /proc
 * readers, the CONTROL-side packet codec with the bounded failed_clusters,
 * sessions, stopped and connect.sessions, the session store, and the
 * walk over several MASTERs (masters.c). The
 * agent is its own executable, not part of the library, so its pure
 * sources are compiled in here.
 */
#include "check.h"
#include "json.h"

#include "control/masters.c"
#include "control/packets.c"
#include "control/plan.c"
#include "control/sessions.c"

static void test_groups(void) {
  int v[] = {5, 3, 3, 9, 1, 5};
  CHECK_EQ(dcm__ctl_sort_unique(v, 6), 4u);
  CHECK(v[0] == 1 && v[1] == 3 && v[2] == 5 && v[3] == 9);
  CHECK_EQ(dcm__ctl_sort_unique(v, 0), 0u);
  CHECK_EQ(dcm__ctl_group_size(10, 1), 10u);
  CHECK_EQ(dcm__ctl_group_size(10, 0), 10u);
  CHECK_EQ(dcm__ctl_group_size(10, 4), 12u);
  CHECK_EQ(dcm__ctl_group_size(10, 16), 16u);
  CHECK_EQ(dcm__ctl_group_size(5, 5), 5u);
  CHECK_EQ(dcm__ctl_group_size(0, 1), 1u);

  int want[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  int g1[] = {0, 1, 2}, g2[] = {7, 8};
  CHECK(dcm__ctl_subset(g1, 3, want, 10));
  CHECK(dcm__ctl_subset(g1, 0, want, 0));
  int g3[] = {9, 10};
  CHECK(!dcm__ctl_subset(g3, 2, want, 10));
  CHECK(dcm__ctl_overlaps(g3, 2, want, 10));
  int g4[] = {10, 11};
  CHECK(!dcm__ctl_overlaps(g4, 2, want, 10));
  CHECK(!dcm__ctl_overlaps(g1, 3, want, 0));
  CHECK(!dcm__ctl_overlaps(g1, 0, want, 10));
  const int *groups[] = {g1, g2};
  size_t sizes[] = {3, 2};
  int rest[10];
  size_t n = dcm__ctl_rest(want, 10, groups, sizes, 2, rest);
  CHECK_EQ(n, 5u);
  CHECK(rest[0] == 3 && rest[1] == 4 && rest[2] == 5 && rest[3] == 6 && rest[4] == 9);

  char out[16];
  CHECK_EQ(dcm__ctl_join(rest, 5, out, sizeof out), 9u);
  CHECK_STR(out, "3,4,5,6,9");
  CHECK_EQ(dcm__ctl_rest(want, 10, groups, sizes, 0, rest), 10u);
  CHECK_EQ(dcm__ctl_join(want, 10, out, 8), 0u); /* does not fit: empty */
  CHECK_STR(out, "");
  CHECK_EQ(dcm__ctl_join(want, 0, out, sizeof out), 0u);
  CHECK_STR(out, "");
}

static void test_line_kinds(void) {
  dcm__ctl_fatal_t f;
  CHECK_EQ(dcm__ctl_parse_line("READY", 5, NULL), DCM_CTL_LINE_READY);
  CHECK_EQ(dcm__ctl_parse_line("READY\r", 6, NULL), DCM_CTL_LINE_READY);
  CHECK_EQ(dcm__ctl_parse_line("READY  ", 7, NULL), DCM_CTL_LINE_READY);
  CHECK_EQ(dcm__ctl_parse_line("READY!", 6, NULL), DCM_CTL_LINE_OTHER);
  CHECK_EQ(dcm__ctl_parse_line(" READY", 6, NULL), DCM_CTL_LINE_OTHER);
  CHECK_EQ(dcm__ctl_parse_line("ready", 5, NULL), DCM_CTL_LINE_OTHER);
  CHECK_EQ(dcm__ctl_parse_line("", 0, NULL), DCM_CTL_LINE_OTHER);

  const char *l = "FATAL 4004 Authentication failed";
  CHECK_EQ(dcm__ctl_parse_line(l, strlen(l), &f), DCM_CTL_LINE_FATAL);
  CHECK_EQ(f.code, 4004);
  CHECK_EQ(f.shard, -1);
  CHECK(f.message_len == 21 && memcmp(f.message, "Authentication failed", 21) == 0);
  l = "FATAL 4014 shard=7 Disallowed intents\r";
  CHECK_EQ(dcm__ctl_parse_line(l, strlen(l), &f), DCM_CTL_LINE_FATAL);
  CHECK(f.code == 4014 && f.shard == 7);
  CHECK(f.message_len == 18 && memcmp(f.message, "Disallowed intents", 18) == 0);
  l = "FATAL 4013";
  CHECK_EQ(dcm__ctl_parse_line(l, strlen(l), &f), DCM_CTL_LINE_FATAL);
  CHECK(f.code == 4013 && f.message_len == 0);
  l = "FATAL -1 shard=x odd";
  CHECK_EQ(dcm__ctl_parse_line(l, strlen(l), &f), DCM_CTL_LINE_FATAL);
  CHECK(f.code == -1 && f.shard == -1 && f.message_len == 11);
  l = "FATAL nope";
  CHECK_EQ(dcm__ctl_parse_line(l, strlen(l), &f), DCM_CTL_LINE_OTHER);
  l = "FATAL 12x oops";
  CHECK_EQ(dcm__ctl_parse_line(l, strlen(l), &f), DCM_CTL_LINE_OTHER);
  l = "FATAL 99999999999 big";
  CHECK_EQ(dcm__ctl_parse_line(l, strlen(l), &f), DCM_CTL_LINE_OTHER);
}

static int session_line(const char *l, dcm__session_t *s) {
  return dcm__ctl_parse_session(l, strlen(l), s);
}

static void test_session_lines(void) {
  dcm__session_t s;
  const char *l = "SESSION 7 abc_DEF-123 42 wss://gateway-us-east1-b.discord.gg";
  CHECK_EQ(dcm__ctl_parse_line(l, strlen(l), NULL), DCM_CTL_LINE_SESSION);
  CHECK(session_line(l, &s));
  CHECK(s.shard == 7 && s.seq == 42);
  CHECK_STR(s.session_id, "abc_DEF-123");
  CHECK_STR(s.resume_url, "wss://gateway-us-east1-b.discord.gg");
  /* blanks between fields, a trailing \r; seq 0 and 2^53; shard 2^31-1 */
  CHECK(session_line("SESSION  0\tx  0 ws://127.0.0.1:5/resume \r", &s));
  CHECK(s.shard == 0 && s.seq == 0 && strcmp(s.session_id, "x") == 0 &&
        strcmp(s.resume_url, "ws://127.0.0.1:5/resume") == 0);
  CHECK(session_line("SESSION 2147483647 a 9007199254740992 ws://h", &s));
  CHECK(s.shard == 2147483647 && s.seq == 9007199254740992LL);
  /* a 128-character id and a 512-byte url are the longest */
  char id[200], url[600], line[1000];
  memset(id, 'a', 128);
  id[128] = '\0';
  memcpy(url, "wss://", 6);
  memset(url + 6, 'u', 506);
  url[512] = '\0';
  snprintf(line, sizeof line, "SESSION 1 %s 5 %s", id, url);
  CHECK(session_line(line, &s));
  CHECK(strlen(s.session_id) == 128 && strlen(s.resume_url) == 512);
  snprintf(line, sizeof line, "SESSION 1 %sa 5 %s", id, url);
  CHECK(!session_line(line, &s));
  snprintf(line, sizeof line, "SESSION 1 %s 5 %su", id, url);
  CHECK(!session_line(line, &s));
  /* what is not one */
  static const char *const bad[] = {
      "SESSION", "SESSION ", "SESSION 1", "SESSION 1 a", "SESSION 1 a 2",
      "SESSION 1 a 2 ws://h extra", "SESSION -1 a 2 ws://h", "SESSION +1 a 2 ws://h",
      "SESSION 01 a 2 ws://h", "SESSION 2147483648 a 2 ws://h", "SESSION x a 2 ws://h",
      "SESSION 1 a -2 ws://h", "SESSION 1 a 9007199254740993 ws://h",
      "SESSION 1 a 99999999999999999999 ws://h", "SESSION 1 a 2.5 ws://h",
      "SESSION 1 a 02 ws://h", "SESSION 1 a.b 2 ws://h", "SESSION 1 a/b 2 ws://h",
      "SESSION 1 a 2 http://h", "SESSION 1 a 2 ws:/h", "SESSION 1 a 2 ws://h\"x",
      "SESSION 1 a 2 ws://h\\x", "SESSION 1 a 2 ws://h\x01"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    memset(&s, 0, sizeof s);
    CHECK(!session_line(bad[i], &s));
  }
  /* the kind: anything starting with the word SESSION, nothing else */
  CHECK_EQ(dcm__ctl_parse_line("SESSION", 7, NULL), DCM_CTL_LINE_SESSION);
  CHECK_EQ(dcm__ctl_parse_line("SESSION x", 9, NULL), DCM_CTL_LINE_SESSION);
  CHECK_EQ(dcm__ctl_parse_line("SESSIONS 1", 10, NULL), DCM_CTL_LINE_OTHER);
  CHECK_EQ(dcm__ctl_parse_line(" SESSION 1", 10, NULL), DCM_CTL_LINE_OTHER);
  CHECK_EQ(dcm__ctl_parse_line("session 1 a 2 ws://h", 20, NULL), DCM_CTL_LINE_OTHER);
  CHECK(!session_line("READY", &s));
}

typedef struct {
  char got[8][DCM_CTL_LINE_MAX + 1];
  size_t len[8];
  int cut[8];
  int n;
} lines_seen_t;

static void collect(void *arg, const char *line, size_t len, int cut) {
  lines_seen_t *s = arg;
  CHECK(s->n < 8);
  memcpy(s->got[s->n], line, len);
  s->got[s->n][len] = '\0';
  s->len[s->n] = len;
  s->cut[s->n++] = cut;
}

static void test_line_splitter(void) {
  static dcm__ctl_lines_t ls;
  static lines_seen_t s;
  static char big[3 * DCM_CTL_LINE_MAX];
  memset(&ls, 0, sizeof ls);
  memset(&s, 0, sizeof s);
  dcm__ctl_lines_feed(&ls, "RE", 2, collect, &s);
  CHECK_EQ(s.n, 0);
  dcm__ctl_lines_feed(&ls, "ADY\nhello\n\npart", 16, collect, &s);
  CHECK_EQ(s.n, 3);
  CHECK_STR(s.got[0], "READY");
  CHECK_STR(s.got[1], "hello");
  CHECK_STR(s.got[2], "");
  /* An overlong line arrives cut once; the rest of it is dropped. */
  memset(big, 'x', sizeof big);
  dcm__ctl_lines_feed(&ls, big, sizeof big, collect, &s);
  CHECK_EQ(s.n, 4);
  CHECK(s.cut[3] && s.len[3] == DCM_CTL_LINE_MAX && memcmp(s.got[3], "part", 4) == 0);
  dcm__ctl_lines_feed(&ls, "tail\nREADY\n", 11, collect, &s);
  CHECK_EQ(s.n, 5);
  CHECK_STR(s.got[4], "READY");
  CHECK(!s.cut[4]);
  dcm__ctl_lines_feed(&ls, "last", 4, collect, &s);
  dcm__ctl_lines_flush(&ls, collect, &s);
  CHECK_EQ(s.n, 6);
  CHECK_STR(s.got[5], "last");
  dcm__ctl_lines_flush(&ls, collect, &s);
  CHECK_EQ(s.n, 6);
}

/* Found by fuzz_ctl_plan: a line of exactly the bound whose newline comes
   in a later read was reported cut; in one read it was whole. */
static void test_line_at_bound_split(void) {
  static dcm__ctl_lines_t ls;
  static lines_seen_t s;
  static char line[DCM_CTL_LINE_MAX];
  memset(&ls, 0, sizeof ls);
  memset(&s, 0, sizeof s);
  memset(line, 'y', sizeof line);
  dcm__ctl_lines_feed(&ls, line, sizeof line, collect, &s);
  CHECK_EQ(s.n, 0);
  dcm__ctl_lines_feed(&ls, "\nREADY\n", 7, collect, &s);
  CHECK_EQ(s.n, 2);
  CHECK(!s.cut[0] && s.len[0] == DCM_CTL_LINE_MAX && s.got[0][DCM_CTL_LINE_MAX - 1] == 'y');
  CHECK_STR(s.got[1], "READY");
  /* one byte more is over the bound, split or not */
  dcm__ctl_lines_feed(&ls, line, sizeof line, collect, &s);
  dcm__ctl_lines_feed(&ls, "z\nok\n", 5, collect, &s);
  CHECK_EQ(s.n, 4);
  CHECK(s.cut[2] && s.len[2] == DCM_CTL_LINE_MAX);
  CHECK_STR(s.got[3], "ok");
  /* and a last line of exactly the bound, unterminated, is whole at EOF */
  dcm__ctl_lines_feed(&ls, line, sizeof line, collect, &s);
  dcm__ctl_lines_flush(&ls, collect, &s);
  CHECK_EQ(s.n, 5);
  CHECK(!s.cut[4] && s.len[4] == DCM_CTL_LINE_MAX);
}

static int decode(lua_State *L, const char *text, dcm__ctl_packet_t *p) {
  char err[160];
  return dcm__ctl_decode(L, text, strlen(text), 16, p, err, sizeof err);
}

static void test_decode(void) {
  lua_State *L = dcm__json_new();
  dcm__ctl_packet_t p;
  CHECK(L != NULL);
  CHECK_EQ(decode(L, "{\"o\":5,\"d\":{\"protocol\":1,\"token\":\"T\",\"heartbeat_interval\":1500,"
                     "\"shard_count\":16,\"max_concurrency\":4}}", &p), 0);
  CHECK(p.op == 5 && p.protocol == 1 && p.heartbeat_ms == 1500 && p.shard_count == 16 &&
        p.max_concurrency == 4);
  CHECK_STR(p.token, "T");
  dcm__ctl_packet_clear(&p);
  CHECK(p.token == NULL);
  CHECK_EQ(decode(L, "{\"o\":5,\"d\":{\"protocol\":1,\"heartbeat_interval\":0,\"shard_count\":1}}",
                  &p), DCM_ERR_MALFORMED);
  CHECK_EQ(decode(L, "{\"o\":5,\"d\":{\"protocol\":1,\"heartbeat_interval\":10,\"shard_count\":0}}",
                  &p), DCM_ERR_MALFORMED);
  CHECK_EQ(decode(L, "{\"o\":6,\"d\":{\"shards\":[3,1,2],\"redundant\":false}}", &p), 0);
  CHECK(p.op == 6 && p.nshards == 3 && p.shards[0] == 3 && !p.redundant);
  dcm__ctl_packet_clear(&p);
  CHECK_EQ(decode(L, "{\"o\":6,\"d\":{\"shards\":[],\"redundant\":true}}", &p), 0);
  CHECK(p.nshards == 0 && p.redundant);
  dcm__ctl_packet_clear(&p);
  CHECK_EQ(decode(L, "{\"o\":6,\"d\":{\"shards\":[-1]}}", &p), DCM_ERR_MALFORMED);
  CHECK_EQ(decode(L, "{\"o\":6,\"d\":{\"shards\":[1.5]}}", &p), DCM_ERR_MALFORMED);
  CHECK_EQ(decode(L, "{\"o\":6,\"d\":{\"shards\":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}}",
                  &p), DCM_ERR_MALFORMED); /* more than max_shards */
  CHECK_EQ(decode(L, "{\"o\":6,\"d\":{}}", &p), DCM_ERR_MALFORMED);
  CHECK_EQ(decode(L, "{\"o\":4,\"d\":{\"code\":3,\"reason\":\"fatal\"}}", &p), 0);
  CHECK(p.op == 4 && p.code == 3);
  CHECK_STR(p.message, "fatal");
  CHECK_EQ(decode(L, "{\"o\":4,\"d\":{}}", &p), 0); /* a shutdown is never lost */
  CHECK_EQ(decode(L, "{\"o\":7,\"d\":{\"code\":4006,\"message\":\"no\"}}", &p), 0);
  CHECK(p.code == 4006 && strcmp(p.message, "no") == 0);
  CHECK_EQ(decode(L, "{\"o\":8,\"d\":{\"o\":9}}", &p), 0);
  CHECK_EQ(p.ack_op, 9);
  CHECK_EQ(decode(L, "{\"o\":0,\"d\":{}}", &p), 0);
  CHECK_EQ(p.op, 0);
  CHECK_EQ(decode(L, "{\"o\":16,\"d\":{}}", &p), DCM_ERR_UNKNOWN_OP);
  CHECK_EQ(decode(L, "{\"o\":0}", &p), DCM_ERR_MALFORMED);
  CHECK_EQ(decode(L, "[1]", &p), DCM_ERR_MALFORMED);
  CHECK_EQ(decode(L, "nope", &p), DCM_ERR_MALFORMED);
  CHECK_EQ(lua_gettop(L), 0);
  lua_close(L);
}

static void test_decode_extensions(void) {
  lua_State *L = dcm__json_new();
  dcm__ctl_packet_t p;
  static char text[2048], url[600];
  const char *init = "{\"o\":5,\"d\":{\"protocol\":1,\"token\":\"T\",\"heartbeat_interval\":1500,"
                     "\"shard_count\":16%s}}";
  /* gateway_url: absent or "" is the default; kept when usable. */
  snprintf(text, sizeof text, init, "");
  CHECK_EQ(decode(L, text, &p), 0);
  CHECK_STR(p.gateway_url, "wss://gateway.discord.gg");
  dcm__ctl_packet_clear(&p);
  snprintf(text, sizeof text, init, ",\"gateway_url\":\"\"");
  CHECK_EQ(decode(L, text, &p), 0);
  CHECK_STR(p.gateway_url, "wss://gateway.discord.gg");
  dcm__ctl_packet_clear(&p);
  snprintf(text, sizeof text, init, ",\"gateway_url\":\"wss://gw.example/x?v=10\"");
  CHECK_EQ(decode(L, text, &p), 0);
  CHECK_STR(p.gateway_url, "wss://gw.example/x?v=10");
  dcm__ctl_packet_clear(&p);
  snprintf(text, sizeof text, init, ",\"gateway_url\":\"wss://a\\nb\"");
  CHECK_EQ(decode(L, text, &p), DCM_ERR_MALFORMED);
  snprintf(text, sizeof text, init, ",\"gateway_url\":\"wss://a\\u007fb\"");
  CHECK_EQ(decode(L, text, &p), DCM_ERR_MALFORMED);
  snprintf(text, sizeof text, init, ",\"gateway_url\":12");
  CHECK_EQ(decode(L, text, &p), DCM_ERR_MALFORMED);
  memset(url, 'a', 512);
  url[512] = '\0';
  char field[640];
  snprintf(field, sizeof field, ",\"gateway_url\":\"%s\"", url); /* 512 bytes: fine */
  snprintf(text, sizeof text, init, field);
  CHECK_EQ(decode(L, text, &p), 0);
  CHECK_EQ(strlen(p.gateway_url), 512u);
  dcm__ctl_packet_clear(&p);
  url[512] = 'a';
  url[513] = '\0';
  snprintf(field, sizeof field, ",\"gateway_url\":\"%s\"", url); /* 513: refused */
  snprintf(text, sizeof text, init, field);
  CHECK_EQ(decode(L, text, &p), DCM_ERR_MALFORMED);
  CHECK(dcm__ctl_gateway_url_ok("wss://gw.example", 16));
  CHECK(!dcm__ctl_gateway_url_ok("a\tb", 3));
  CHECK(!dcm__ctl_gateway_url_ok("a\0b", 3));

  /* grant needs a shard id */
  CHECK_EQ(decode(L, "{\"o\":12,\"d\":{\"shard\":7}}", &p), 0);
  CHECK(p.op == DCM_OP_GRANT && p.shard == 7);
  CHECK_EQ(decode(L, "{\"o\":12,\"d\":{}}", &p), DCM_ERR_MALFORMED);
  CHECK_EQ(decode(L, "{\"o\":12,\"d\":{\"shard\":-1}}", &p), DCM_ERR_MALFORMED);
  CHECK_EQ(decode(L, "{\"o\":12,\"d\":{\"shard\":1.5}}", &p), DCM_ERR_MALFORMED);
  CHECK_EQ(decode(L, "{\"o\":12,\"d\":{\"shard\":\"1\"}}", &p), DCM_ERR_MALFORMED);
  /* error's shard is optional, and a bad one is only dropped */
  CHECK_EQ(decode(L, "{\"o\":7,\"d\":{\"code\":4007,\"message\":\"no\",\"shard\":3}}", &p), 0);
  CHECK(p.code == DCM_ERR_NOT_YOURS && p.shard == 3);
  CHECK_EQ(decode(L, "{\"o\":7,\"d\":{\"code\":4007,\"message\":\"no\"}}", &p), 0);
  CHECK(p.code == 4007 && p.shard == -1);
  CHECK_EQ(decode(L, "{\"o\":7,\"d\":{\"code\":4007,\"shard\":\"x\"}}", &p), 0);
  CHECK(p.code == 4007 && p.shard == -1);
  CHECK_EQ(lua_gettop(L), 0);
  lua_close(L);
}

static void test_identify_target(void) {
  char key[DCM_CTL_KEY_HEX + 1];
  int shard = -1;
  const char *k = "0123456789abcdef0123456789abcdef";
  char url[128];
#define TARGET(s) dcm__ctl_identify_target((s), strlen(s), key, &shard)
  snprintf(url, sizeof url, "/%s?shard=12", k);
  CHECK_EQ(TARGET(url), DCM_CTL_TARGET_OK);
  CHECK_STR(key, k);
  CHECK_EQ(shard, 12);
  snprintf(url, sizeof url, "/%s?x=1&shard=0&y", k);
  CHECK_EQ(TARGET(url), DCM_CTL_TARGET_OK);
  CHECK_EQ(shard, 0);
  snprintf(url, sizeof url, "/%s?shard=2147483647", k);
  CHECK_EQ(TARGET(url), DCM_CTL_TARGET_OK);
  CHECK_EQ(shard, 2147483647);
  /* bad shard parameters */
  static const char *const bad[] = {"", "?", "?shard", "?shard=", "?shard=x", "?shard=-1",
                                    "?shard=-0", "?shard=+1", "?shard=1x", "?shard=1.0",
                                    "?shard=2147483648", "?shard=99999999999999999999",
                                    "?shard=1&shard=2", "?shards=1", "?shard=%31", "?shard= 1"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    snprintf(url, sizeof url, "/%s%s", k, bad[i]);
    CHECK_EQ(TARGET(url), DCM_CTL_TARGET_BAD_SHARD);
  }
  /* bad paths, whatever the query */
  static const char *const paths[] = {
      "/?shard=1", "/0123456789abcdef0123456789abcde?shard=1",
      "/0123456789abcdef0123456789abcdef0?shard=1", "/0123456789ABCDEF0123456789abcdef?shard=1",
      "/0123456789abcdef0123456789abcdeg?shard=1", "/0123456789abcdef0123456789abcdef/?shard=1",
      "0123456789abcdef0123456789abcdef?shard=1", "//123456789abcdef0123456789abcdef?shard=x",
      "http://127.0.0.1/0123456789abcdef0123456789abcdef?shard=1", ""};
  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
    CHECK_EQ(TARGET(paths[i]), DCM_CTL_TARGET_NO_PATH);
#undef TARGET

  unsigned char raw[DCM_CTL_KEY_BYTES] = {0x00, 0x01, 0x7f, 0x80, 0xab, 0xff};
  char hex[DCM_CTL_KEY_HEX + 1];
  dcm__ctl_hex(raw, sizeof raw, hex);
  CHECK_STR(hex, "00017f80abff00000000000000000000");
  CHECK(dcm__ctl_key_equal(hex, "00017f80abff00000000000000000000"));
  CHECK(!dcm__ctl_key_equal(hex, "00017f80abff00000000000000000001"));
  CHECK(!dcm__ctl_key_equal(hex, "10017f80abff00000000000000000000"));
}

static void test_encode(void) {
  lua_State *L = dcm__json_new();
  size_t len;
  int shards[] = {1, 2};
  /* cjson's key order follows Lua's hash order: look for pieces. */
  const char *s = dcm__ctl_enc_ready(L, NULL, 0, &len);
  CHECK(strstr(s, "\"o\":10") && strstr(s, "\"d\":{\"shards\":[]}"));
  lua_settop(L, 0);
  s = dcm__enc_ack(L, 6, &len);
  CHECK(strstr(s, "\"o\":8") && strstr(s, "\"d\":{\"o\":6}"));
  lua_settop(L, 0);
  s = dcm__ctl_enc_offload(L, &len);
  CHECK(strstr(s, "\"o\":3") && strstr(s, "\"d\":{}"));
  lua_settop(L, 0);
  /* nothing failed: the canonical heartbeat, byte for byte (MASTER's fast path) */
  s = dcm__ctl_enc_heartbeat(L, 0.5, NULL, 0, 0, 0, &len);
  CHECK_STR(s, "{\"o\":9,\"d\":{\"loadavg\":0.5,\"failed_clusters\":[],\"failed_clusters_more\":0}}");
  CHECK_EQ(len, strlen(s));
  double v;
  CHECK(dcm__heartbeat_canonical(s, len, &v) == DCM_HEARTBEAT_EMPTY && v == 0.5);
  lua_settop(L, 0);
  s = dcm__ctl_enc_heartbeat(L, 12.37, NULL, 0, 0, 0, &len);
  CHECK(dcm__heartbeat_canonical(s, len, &v) == DCM_HEARTBEAT_EMPTY && v == 12.37);
  lua_settop(L, 0);
  /* after an empty list on this connection: failed_clusters left out */
  s = dcm__ctl_enc_heartbeat(L, 0.5, NULL, 0, 0, 1, &len);
  CHECK_STR(s, "{\"o\":9,\"d\":{\"loadavg\":0.5}}");
  CHECK(dcm__heartbeat_canonical(s, len, &v) == DCM_HEARTBEAT_SAME && v == 0.5);
  lua_settop(L, 0);
  s = dcm__ctl_enc_heartbeat(L, 0.5, NULL, 0, 2, 0, &len); /* entries left out: not canonical */
  CHECK(strstr(s, "\"failed_clusters_more\":2") && !dcm__heartbeat_canonical(s, len, &v));
  lua_settop(L, 0);
  dcm__ctl_failed_t f = {2, shards, 2, 7, 0, 0, 0};
  s = dcm__ctl_enc_heartbeat(L, 0, &f, 1, 3, 0, &len);
  CHECK(strstr(s, "\"cluster\":2") && strstr(s, "\"shards\":[1,2]") && strstr(s, "\"exit\":7") &&
        strstr(s, "\"signal\":0") && strstr(s, "\"failed_clusters_more\":3") &&
        !strstr(s, "over_cap") && !strstr(s, "shards_more"));
  lua_settop(L, 0);
  dcm__ctl_failed_t o = {-1, shards, 2, 0, 0, 1, 5};
  s = dcm__ctl_enc_heartbeat(L, 0, &o, 1, 0, 0, &len);
  CHECK(strstr(s, "\"cluster\":-1") && strstr(s, "\"over_cap\":true") &&
        strstr(s, "\"shards_more\":5"));
  lua_settop(L, 0);
  s = dcm__ctl_enc_fatal(L, 4004, "auth", -1, &len);
  CHECK(strstr(s, "\"code\":4004") && strstr(s, "\"message\":\"auth\"") && !strstr(s, "shard"));
  lua_settop(L, 0);
  s = dcm__ctl_enc_fatal(L, 4014, "intents", 3, &len);
  CHECK(strstr(s, "\"shard\":3"));
  lua_settop(L, 0);
  s = dcm__ctl_enc_info(L, "m-1", 4, 0.25, 1, NULL, 0, 0, "0.1.0", &len);
  CHECK(strstr(s, "\"id\":\"m-1\"") && strstr(s, "\"cores\":4") && strstr(s, "\"standby\":true") &&
        strstr(s, "\"shards\":[]") && strstr(s, "\"version\":\"0.1.0\"") &&
        strstr(s, "\"identify_queue\":true") && strstr(s, "\"handoff\":true") &&
        !strstr(s, "shard_count"));
  lua_settop(L, 0);
  int run[] = {2, 3};
  s = dcm__ctl_enc_info(L, "m-1", 4, 0.25, 0, run, 2, 16, NULL, &len);
  CHECK(strstr(s, "\"shard_count\":16") && strstr(s, "\"shards\":[2,3]"));
  lua_settop(L, 0);
  s = dcm__enc_shard_op(L, DCM_OP_IDENTIFY, 5, &len);
  CHECK(strstr(s, "\"o\":11") && strstr(s, "\"d\":{\"shard\":5}"));
  lua_settop(L, 0);
  s = dcm__enc_shard_op(L, DCM_OP_RELEASE, 0, &len);
  CHECK(strstr(s, "\"o\":13") && strstr(s, "\"d\":{\"shard\":0}"));
  lua_settop(L, 0);
  lua_close(L);
}

static void test_failed_fit(void) {
  lua_State *L = dcm__json_new();
  static int big[20000];
  int small[] = {1000000, 1000001};
  dcm__ctl_failed_t f[80];
  size_t len;
  for (int i = 0; i < 20000; i++) big[i] = 1000000 + i;
  /* Many small entries: at most DCM_CTL_FAILED_LIST_MAX. */
  for (int i = 0; i < 80; i++) {
    dcm__ctl_failed_t x = {i, small, 2, 7, 0, 0, 0};
    f[i] = x;
  }
  CHECK_EQ(dcm__ctl_failed_fit(f, 80), (size_t)DCM_CTL_FAILED_LIST_MAX);
  CHECK_EQ(dcm__ctl_failed_fit(f, 3), 3u);
  CHECK_EQ(dcm__ctl_failed_fit(f, 0), 0u);
  /* A first entry too big for the bytes is cut, the next one left out. */
  dcm__ctl_failed_t g[2] = {{-1, big, 20000, 0, 0, 1, 0}, {3, big, 20000, 7, 0, 0, 0}};
  CHECK_EQ(dcm__ctl_failed_fit(g, 2), 1u);
  CHECK(g[0].nshards > 1000 && g[0].nshards < 20000);
  CHECK_EQ(g[0].shards_more, 20000 - g[0].nshards);
  const char *s = dcm__ctl_enc_heartbeat(L, 0.25, g, 1, 1, 0, &len);
  const char *list = strstr(s, "\"failed_clusters\":[");
  CHECK(list != NULL);
  /* The list is all of the packet but the short fields around it. */
  CHECK(len < DCM_CTL_FAILED_JSON_MAX + 100 && len > DCM_CTL_FAILED_JSON_MAX - 500);
  lua_settop(L, 0);
  /* Entries that fill the bytes before the count. */
  dcm__ctl_failed_t h[10];
  for (int i = 0; i < 10; i++) {
    dcm__ctl_failed_t x = {i, big + i * 1000, 1000, 1, 0, 0, 0};
    h[i] = x;
  }
  size_t k = dcm__ctl_failed_fit(h, 10);
  CHECK(k >= 1 && k < 10);
  s = dcm__ctl_enc_heartbeat(L, 0, h, k, 10 - k, 0, &len);
  CHECK(len < DCM_CTL_FAILED_JSON_MAX + 100);
  for (size_t i = 0; i < k; i++) CHECK(h[i].nshards == 1000 && h[i].shards_more == 0);
  lua_settop(L, 0);
  lua_close(L);
}

static void test_backoff(void) {
  /* Doubling from about 1 s, jittered into [d/2, d], capped. */
  CHECK_EQ(dcm__ctl_backoff_ms(0, 30000, 0), 500u);
  CHECK_EQ(dcm__ctl_backoff_ms(0, 30000, 1), 1000u);
  CHECK_EQ(dcm__ctl_backoff_ms(1, 30000, 0), 1000u);
  CHECK_EQ(dcm__ctl_backoff_ms(3, 30000, 1), 8000u);
  uint64_t w = dcm__ctl_backoff_ms(3, 30000, 0.5);
  CHECK(w >= 4000 && w <= 8000);
  CHECK_EQ(dcm__ctl_backoff_ms(5, 30000, 1), 30000u);
  CHECK_EQ(dcm__ctl_backoff_ms(5, 30000, 0), 15000u);
  CHECK_EQ(dcm__ctl_backoff_ms(63, 30000, 1), 30000u);
  CHECK_EQ(dcm__ctl_backoff_ms(1000, 30000, 0), 15000u);
  CHECK_EQ(dcm__ctl_backoff_ms(0, 200, 1), 200u);
  CHECK_EQ(dcm__ctl_backoff_ms(0, 200, 0), 100u);
  CHECK_EQ(dcm__ctl_backoff_ms(0, 1, 0), 1u);
  CHECK_EQ(dcm__ctl_backoff_ms(0, 0, 0), 1u);
}

/* d.epoch (high availability): optional in initialise, connect and grant;
 * an integer 0 to 2^53, anything else makes the packet malformed. */
static void test_decode_epoch(void) {
  lua_State *L = dcm__json_new();
  dcm__ctl_packet_t p;
  CHECK_EQ(decode(L, "{\"o\":5,\"d\":{\"protocol\":1,\"heartbeat_interval\":10,"
                     "\"shard_count\":1,\"epoch\":7}}", &p), 0);
  CHECK(p.has_epoch && p.epoch == 7);
  dcm__ctl_packet_clear(&p);
  CHECK_EQ(decode(L, "{\"o\":5,\"d\":{\"protocol\":1,\"heartbeat_interval\":10,"
                     "\"shard_count\":1}}", &p), 0);
  CHECK(!p.has_epoch && p.epoch == 0);
  dcm__ctl_packet_clear(&p);
  CHECK_EQ(decode(L, "{\"o\":6,\"d\":{\"shards\":[1],\"epoch\":9007199254740992}}", &p), 0);
  CHECK(p.has_epoch && p.epoch == 9007199254740992LL && p.nshards == 1);
  dcm__ctl_packet_clear(&p);
  CHECK_EQ(decode(L, "{\"o\":6,\"d\":{\"shards\":[1],\"epoch\":0}}", &p), 0);
  CHECK(p.has_epoch && p.epoch == 0);
  dcm__ctl_packet_clear(&p);
  CHECK_EQ(decode(L, "{\"o\":12,\"d\":{\"shard\":3,\"epoch\":12}}", &p), 0);
  CHECK(p.has_epoch && p.epoch == 12 && p.shard == 3);
  const char *bad[] = {
      "{\"o\":6,\"d\":{\"shards\":[1],\"epoch\":\"7\"}}",
      "{\"o\":6,\"d\":{\"shards\":[1],\"epoch\":-1}}",
      "{\"o\":6,\"d\":{\"shards\":[1],\"epoch\":1.5}}",
      "{\"o\":6,\"d\":{\"shards\":[1],\"epoch\":18014398509481984}}",
      "{\"o\":12,\"d\":{\"shard\":3,\"epoch\":null}}",
      "{\"o\":5,\"d\":{\"protocol\":1,\"heartbeat_interval\":10,\"shard_count\":1,"
      "\"epoch\":true}}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    /* null decodes to nothing in cjson's eyes here: absent, accepted */
    int r = decode(L, bad[i], &p);
    if (strstr(bad[i], "null")) {
      CHECK(r == 0 && !p.has_epoch);
      dcm__ctl_packet_clear(&p);
    } else {
      CHECK_EQ(r, DCM_ERR_MALFORMED);
    }
  }
  /* other packets ignore it */
  CHECK_EQ(decode(L, "{\"o\":8,\"d\":{\"o\":9,\"epoch\":\"x\"}}", &p), 0);
  CHECK(!p.has_epoch);
  CHECK_EQ(lua_gettop(L), 0);
  lua_close(L);
}

static void test_master_urls(void) {
  dcm__ctl_url_t u, v;
  char err[96], text[DCM_CTL_URL_MAX + 16];
#define URL(s) dcm__ctl_parse_url(s, strlen(s), &u, err, sizeof err)
  CHECK_EQ(URL("ws://127.0.0.1"), 0);
  CHECK(!u.tls && u.port == 8642 && strcmp(u.host, "127.0.0.1") == 0);
  CHECK_STR(u.path, "/");
  CHECK_STR(u.hostport, "127.0.0.1:8642");
  dcm__ctl_url_format(&u, text, sizeof text);
  CHECK_STR(text, "ws://127.0.0.1:8642/");
  CHECK_EQ(URL("WSS://[::1]:9/a/b?c"), 0);
  CHECK(u.tls && u.port == 9 && strcmp(u.host, "::1") == 0);
  CHECK_STR(u.path, "/a/b?c");
  CHECK_STR(u.hostport, "[::1]:9");
  /* a header value is not NUL-terminated: only n bytes count */
  CHECK_EQ(dcm__ctl_parse_url("ws://h:1/xyz", 8, &u, err, sizeof err), 0);
  CHECK(u.port == 1 && strcmp(u.path, "/") == 0);
  const char *bad[][2] = {
      {"http://h", "must start with wss:// or ws://"},
      {"ws://", "bad host"},
      {"ws://:80", "bad host"},
      {"ws://h:0", "bad port"},
      {"ws://h:65536", "bad port"},
      {"ws://h:99999999999999999999", "bad port"},
      {"ws://h:", "bad port"},
      {"ws://h:80x", "bad port"},
      {"ws://[::1", "unclosed [ in the host"},
      {"ws://[::1]x", "bad host"},
      {"ws://a,b", "bad host"},
      {"ws://u@h", "bad host"},
      {"ws://h/a b", "holds a blank, control or non-ASCII character"},
      {"ws://h\x01", "holds a blank, control or non-ASCII character"},
      {"ws://h\xc3\xa9", "holds a blank, control or non-ASCII character"},
      {"", "must start with wss:// or ws://"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    CHECK_EQ(URL(bad[i][0]), -1);
    CHECK_STR(err, bad[i][1]);
  }
  static char longest[DCM_CTL_URL_MAX + 2];
  memset(longest, 'a', sizeof longest - 1);
  memcpy(longest, "ws://h/", 7);
  CHECK_EQ(URL(longest), -1);
  CHECK_STR(err, "longer than 600 bytes");
  longest[7 + 255] = '\0'; /* a path of 256 bytes */
  CHECK_EQ(URL(longest), -1);
  CHECK_STR(err, "bad path");
  longest[7 + 254] = '\0';
  CHECK_EQ(URL(longest), 0);
  /* the same MASTER: default port and path, host case */
  CHECK_EQ(URL("ws://Master.example"), 0);
  CHECK_EQ(dcm__ctl_parse_url("ws://master.EXAMPLE:8642/", 25, &v, err, sizeof err), 0);
  CHECK(dcm__ctl_url_same(&u, &v));
  CHECK_EQ(dcm__ctl_parse_url("wss://master.example:8642/", 26, &v, err, sizeof err), 0);
  CHECK(!dcm__ctl_url_same(&u, &v));
  CHECK_EQ(dcm__ctl_parse_url("ws://master.example:8643/", 25, &v, err, sizeof err), 0);
  CHECK(!dcm__ctl_url_same(&u, &v));
  CHECK_EQ(dcm__ctl_parse_url("ws://master.example/x", 21, &v, err, sizeof err), 0);
  CHECK(!dcm__ctl_url_same(&u, &v));
#undef URL
  /* the election wait between passes */
  CHECK_EQ(dcm__ctl_election_ms(0), 200u);
  CHECK_EQ(dcm__ctl_election_ms(1), 500u);
  CHECK_EQ(dcm__ctl_election_ms(-3), 200u);
  CHECK_EQ(dcm__ctl_election_ms(7), 500u);
  CHECK_EQ(dcm__ctl_election_ms(0.5), 350u);
}

static void test_proc_readers(void) {
  char key[DCM_CTL_KEY_HEX + 1];
  const char *e = "DISCLUSTER_IDENTIFY_URL=http://127.0.0.1:4567/0123456789abcdef0123456789abcdef";
  CHECK(dcm__ctl_environ_key(e, strlen(e), key));
  CHECK_STR(key, "0123456789abcdef0123456789abcdef");
  const char *bad[] = {
      "DISCLUSTER_IDENTIFY_URL=http://127.0.0.1:4567/0123456789ABCDEF0123456789abcdef",
      "DISCLUSTER_IDENTIFY_URL=http://127.0.0.1:45670123456789abcdef0123456789abcdef",
      "DISCLUSTER_IDENTIFY_URX=http://127.0.0.1:4567/0123456789abcdef0123456789abcdef",
      "DISCLUSTER_IDENTIFY_URL=/0123456789abcdef0123456789abcde",
      "DISCLUSTER_IDENTIFY_URL=", "", "PATH=/usr/bin"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    CHECK(!dcm__ctl_environ_key(bad[i], strlen(bad[i]), key));

  char state;
  long ppid, pgid;
  const char *st = "4242 (odd) name) (x) S 17 4000 4000 0 -1 4194560 97 0 0 0";
  CHECK(dcm__ctl_parse_stat(st, strlen(st), &state, &ppid, &pgid));
  CHECK(state == 'S' && ppid == 17 && pgid == 4000);
  st = "99 (zombie) Z 1 99 99";
  CHECK(dcm__ctl_parse_stat(st, strlen(st), &state, &ppid, &pgid));
  CHECK(state == 'Z' && ppid == 1 && pgid == 99);
  const char *no[] = {"", "12 (x", "12 (x) S", "12 (x) S 1", "12 (x) S a 2", "12 (x)S 1 2"};
  for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
    CHECK(!dcm__ctl_parse_stat(no[i], strlen(no[i]), &state, &ppid, &pgid));
}

static void test_rest_is_linear(void) {
  /* 200,000 shards against 20,000 kept groups: a quadratic rest would take
   * minutes; this one is one pass and a binary search per kept shard. */
  enum { N = 200000, G = 20000, K = 5 };
  int *want = malloc(N * sizeof *want), *rest = malloc(N * sizeof *rest);
  int *kept = malloc(G * K * sizeof *kept);
  const int **groups = malloc(G * sizeof *groups);
  size_t *sizes = malloc(G * sizeof *sizes);
  CHECK(want && rest && kept && groups && sizes);
  for (int i = 0; i < N; i++) want[i] = 2 * i;
  for (int g = 0; g < G; g++) {
    for (int j = 0; j < K; j++) kept[g * K + j] = 2 * (g * 10 + j); /* half of each ten */
    groups[g] = kept + g * K;
    sizes[g] = K;
  }
  size_t n = dcm__ctl_rest(want, N, groups, sizes, G, rest);
  CHECK_EQ(n, (size_t)(N - G * K));
  CHECK(rest[0] == 10 && rest[4] == 18 && rest[5] == 30);
  free(want);
  free(rest);
  free(kept);
  free(groups);
  free(sizes);
}

static dcm__session_t mk(int shard, const char *id, long long seq, const char *url) {
  dcm__session_t s;
  memset(&s, 0, sizeof s);
  s.shard = shard;
  s.seq = seq;
  snprintf(s.session_id, sizeof s.session_id, "%s", id);
  snprintf(s.resume_url, sizeof s.resume_url, "%s", url);
  return s;
}

static void test_sessions_codec(void) {
  lua_State *L = dcm__json_new();
  size_t len;
  dcm__session_t a = mk(3, "abc", 17, "wss://r.example/x"), b = mk(0, "d-e_f", 0, "ws://h:1");
  const dcm__session_t *v[2] = {&a, &b};
  const char *s = dcm__ctl_enc_sessions(L, v, 2, &len);
  CHECK(strstr(s, "\"o\":14") && strstr(s, "\"sessions\":[{"));
  /* what MASTER's decoder makes of it */
  dcm__packet_t p;
  char err[160];
  CHECK_EQ(dcm__packet_decode(L, s, len, 16, &p, err, sizeof err), 0);
  CHECK(p.op == DCM_OP_SESSIONS && p.nsessions == 2 && p.nbad == 0);
  CHECK(p.sessions[0].shard == 3 && p.sessions[0].seq == 17);
  CHECK_STR(p.sessions[0].session_id, "abc");
  CHECK_STR(p.sessions[0].resume_url, "wss://r.example/x");
  CHECK(p.sessions[1].shard == 0 && p.sessions[1].seq == 0);
  dcm__packet_clear(&p);
  lua_settop(L, 0);
  s = dcm__ctl_enc_sessions(L, NULL, 0, &len);
  CHECK(strstr(s, "\"sessions\":[]"));
  lua_settop(L, 0);

  /* SHARD_SESSIONS: an object keyed by shard id, no shard field inside */
  s = dcm__ctl_enc_shard_sessions(L, v, 2, &len);
  CHECK(s[0] == '{' && strstr(s, "\"3\":{") && strstr(s, "\"0\":{") && !strstr(s, "shard") &&
        strstr(s, "\"session_id\":\"abc\"") && strstr(s, "\"seq\":17") &&
        strstr(s, "\"resume_url\":\"wss:\\/\\/r.example\\/x\""));
  CHECK_EQ(lua_gettop(L), 1);
  lua_settop(L, 0);
  s = dcm__ctl_enc_shard_sessions(L, NULL, 0, &len);
  CHECK_STR(s, "{}");
  lua_settop(L, 0);

  /* stopped */
  int shards[] = {4, 9};
  s = dcm__ctl_enc_stopped(L, shards, 2, &len);
  CHECK(strstr(s, "\"o\":15") && strstr(s, "\"d\":{\"shards\":[4,9]}"));
  lua_settop(L, 0);

  /* Bounds: 1000 entries a packet; widest entries stop at the bytes. */
  enum { N = 2500 };
  dcm__session_t *many = malloc(N * sizeof *many);
  const dcm__session_t **pv = malloc(N * sizeof *pv);
  CHECK(many && pv);
  for (int i = 0; i < N; i++) {
    many[i] = mk(i, "0123456789abcdef0123456789abcdef", 1000000 + i,
                 "wss://gateway-us-east1-b.discord.gg");
    pv[i] = &many[i];
  }
  CHECK_EQ(dcm__ctl_sessions_fit(pv, N, DCM_SESSIONS_MAX, DCM_CTL_SESSIONS_JSON_MAX),
           (size_t)DCM_SESSIONS_MAX);
  CHECK_EQ(dcm__ctl_sessions_fit(pv, 10, DCM_SESSIONS_MAX, DCM_CTL_SESSIONS_JSON_MAX), 10u);
  CHECK_EQ(dcm__ctl_sessions_fit(pv, 0, DCM_SESSIONS_MAX, DCM_CTL_SESSIONS_JSON_MAX), 0u);
  s = dcm__ctl_enc_sessions(L, pv, DCM_SESSIONS_MAX, &len);
  CHECK_EQ(dcm__packet_decode(L, s, len, N, &p, err, sizeof err), 0);
  CHECK(p.nsessions == DCM_SESSIONS_MAX && p.nbad == 0);
  dcm__packet_clear(&p);
  lua_settop(L, 0);
  /* the widest entries: 128-character ids, 512-byte urls of slashes */
  char id[129], url[513];
  memset(id, 'i', 128);
  id[128] = '\0';
  memcpy(url, "wss://", 6);
  memset(url + 6, '/', 506);
  url[512] = '\0';
  for (int i = 0; i < N; i++) many[i] = mk(i, id, 1LL << 53, url);
  size_t k = dcm__ctl_sessions_fit(pv, N, DCM_SESSIONS_MAX, DCM_CTL_SESSIONS_JSON_MAX);
  CHECK(k > 100 && k < DCM_SESSIONS_MAX);
  s = dcm__ctl_enc_sessions(L, pv, k, &len);
  CHECK(len <= DCM_CTL_SESSIONS_JSON_MAX && len < (1u << 20));
  CHECK(len > DCM_CTL_SESSIONS_JSON_MAX / 100 * 95); /* the estimate is close */
  lua_settop(L, 0);
  k = dcm__ctl_sessions_fit(pv, N, N, DCM_CTL_SHARD_SESSIONS_MAX);
  CHECK(k > 10);
  s = dcm__ctl_enc_shard_sessions(L, pv, k, &len);
  CHECK(len + sizeof "SHARD_SESSIONS=" <= DCM_CTL_SHARD_SESSIONS_MAX && len < 128 * 1024);
  lua_settop(L, 0);
  free(many);
  free(pv);
  lua_close(L);
}

static void test_connect_sessions(void) {
  lua_State *L = dcm__json_new();
  dcm__ctl_packet_t p;
  /* valid entries for shards of the list; the rest is counted, the connect stands */
  const char *text =
      "{\"o\":6,\"d\":{\"shards\":[5,1,3],\"redundant\":false,\"sessions\":{"
      "\"1\":{\"session_id\":\"s1\",\"seq\":10,\"resume_url\":\"wss://r\\/1\"},"
      "\"3\":{\"session_id\":\"s3\",\"seq\":0,\"resume_url\":\"ws://r:9\"},"
      "\"4\":{\"session_id\":\"s4\",\"seq\":1,\"resume_url\":\"ws://r\"},"
      "\"05\":{\"session_id\":\"s5\",\"seq\":1,\"resume_url\":\"ws://r\"},"
      "\"x\":{\"session_id\":\"s5\",\"seq\":1,\"resume_url\":\"ws://r\"},"
      "\"5\":{\"session_id\":\"bad id\",\"seq\":1,\"resume_url\":\"ws://r\"}}}}";
  CHECK_EQ(decode(L, text, &p), 0);
  CHECK(p.nshards == 3 && p.nsessions == 2 && p.nbad == 4);
  int seen = 0;
  for (size_t i = 0; i < p.nsessions; i++) {
    const dcm__session_t *s = &p.sessions[i];
    if (s->shard == 1) {
      CHECK(s->seq == 10 && strcmp(s->session_id, "s1") == 0 &&
            strcmp(s->resume_url, "wss://r/1") == 0);
      seen |= 1;
    } else {
      CHECK(s->shard == 3 && s->seq == 0 && strcmp(s->resume_url, "ws://r:9") == 0);
      seen |= 2;
    }
  }
  CHECK_EQ(seen, 3);
  dcm__ctl_packet_clear(&p);
  CHECK(p.sessions == NULL && p.nsessions == 0);
  /* every kind of bad entry */
  static const char *const bad[] = {
      "\"1\":1", "\"1\":[]", "\"1\":{}", "\"1\":null",
      "\"1\":{\"session_id\":\"a\",\"seq\":-1,\"resume_url\":\"ws://r\"}",
      "\"1\":{\"session_id\":\"a\",\"seq\":1.5,\"resume_url\":\"ws://r\"}",
      "\"1\":{\"session_id\":\"a\",\"seq\":\"1\",\"resume_url\":\"ws://r\"}",
      /* 2^53 + 2: JSON numbers are doubles, 2^53 + 1 would read as 2^53 */
      "\"1\":{\"session_id\":\"a\",\"seq\":9007199254740994,\"resume_url\":\"ws://r\"}",
      "\"1\":{\"session_id\":\"\",\"seq\":1,\"resume_url\":\"ws://r\"}",
      "\"1\":{\"session_id\":7,\"seq\":1,\"resume_url\":\"ws://r\"}",
      "\"1\":{\"session_id\":\"a\",\"seq\":1,\"resume_url\":\"https://r\"}",
      "\"1\":{\"session_id\":\"a\",\"seq\":1,\"resume_url\":\"ws://r x\"}",
      "\"1\":{\"session_id\":\"a\",\"seq\":1}", "\"-1\":{}", "\"\":{}",
      "\"99999999999\":{\"session_id\":\"a\",\"seq\":1,\"resume_url\":\"ws://r\"}"};
  char buf[512];
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    snprintf(buf, sizeof buf, "{\"o\":6,\"d\":{\"shards\":[1],\"sessions\":{%s}}}", bad[i]);
    CHECK_EQ(decode(L, buf, &p), 0);
    CHECK(p.nshards == 1 && p.nsessions == 0 && p.nbad == 1);
    dcm__ctl_packet_clear(&p);
  }
  /* sessions that is not an object: ignored as a whole; absent or {}: nothing */
  static const char *const whole[] = {"[1]", "3", "\"x\"", "true"};
  for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++) {
    snprintf(buf, sizeof buf, "{\"o\":6,\"d\":{\"shards\":[1],\"sessions\":%s}}", whole[i]);
    CHECK_EQ(decode(L, buf, &p), 0);
    CHECK(p.nshards == 1 && p.nsessions == 0 && p.nbad == 1);
    dcm__ctl_packet_clear(&p);
  }
  CHECK_EQ(decode(L, "{\"o\":6,\"d\":{\"shards\":[1],\"sessions\":{}}}", &p), 0);
  CHECK(p.nsessions == 0 && p.nbad == 0);
  dcm__ctl_packet_clear(&p);
  CHECK_EQ(decode(L, "{\"o\":6,\"d\":{\"shards\":[],\"sessions\":null}}", &p), 0);
  CHECK(p.nsessions == 0 && p.nbad == 0);
  dcm__ctl_packet_clear(&p);
  /* an empty list takes no session */
  CHECK_EQ(decode(L, "{\"o\":6,\"d\":{\"shards\":[],\"sessions\":{\"1\":{\"session_id\":"
                     "\"a\",\"seq\":1,\"resume_url\":\"ws://r\"}}}}", &p), 0);
  CHECK(p.nsessions == 0 && p.nbad == 1);
  dcm__ctl_packet_clear(&p);
  /* what MASTER's encoder sends, read back */
  int shards[] = {2, 6};
  dcm__session_t x = mk(6, "zz", 99, "wss://resume.example");
  const dcm__session_t *sess[] = {NULL, &x};
  size_t len;
  const char *s = dcm__enc_connect(L, shards, 2, 0, sess, NULL, &len);
  char copy[512];
  snprintf(copy, sizeof copy, "%s", s);
  lua_settop(L, 0);
  CHECK_EQ(decode(L, copy, &p), 0);
  CHECK(p.nsessions == 1 && p.nbad == 0 && p.sessions[0].shard == 6 &&
        p.sessions[0].seq == 99 && strcmp(p.sessions[0].resume_url, "wss://resume.example") == 0);
  dcm__ctl_packet_clear(&p);
  lua_close(L);
}

static void test_session_store(void) {
  dcm__ctl_sessions_t st;
  const dcm__session_t *v[8];
  memset(&st, 0, sizeof st);
  dcm__ctl_sessions_reset(&st, 4);
  dcm__session_t a = mk(2, "a", 1, "ws://h"), b = mk(0, "b", 5, "ws://h");
  CHECK(dcm__ctl_sessions_get(&st, 2) == NULL);
  CHECK_EQ(dcm__ctl_sessions_put(&st, &a, 1), 1);
  CHECK_EQ(dcm__ctl_sessions_put(&st, &a, 1), 0); /* the same: nothing changes */
  CHECK_EQ(dcm__ctl_sessions_put(&st, &b, 0), 1); /* kept, not queued */
  CHECK(st.count == 2 && st.nqueued == 1);
  CHECK_EQ(dcm__ctl_sessions_get(&st, 0)->seq, 5);
  dcm__session_t bad = mk(4, "c", 1, "ws://h");
  CHECK_EQ(dcm__ctl_sessions_put(&st, &bad, 1), -1); /* beyond the slots */
  bad.shard = -1;
  CHECK_EQ(dcm__ctl_sessions_put(&st, &bad, 1), -1);
  CHECK(dcm__ctl_sessions_get(&st, 4) == NULL && dcm__ctl_sessions_get(&st, -1) == NULL);
  /* a newer seq replaces the entry; queued once */
  a.seq = 9;
  CHECK_EQ(dcm__ctl_sessions_put(&st, &a, 1), 1);
  CHECK_EQ(dcm__ctl_sessions_peek(&st, v, 8), 1u);
  CHECK(v[0]->shard == 2 && v[0]->seq == 9);
  CHECK_EQ(dcm__ctl_sessions_drop(&st, 2), 0); /* queued: kept */
  dcm__ctl_sessions_pop(&st, 1);
  CHECK(st.nqueued == 0 && st.head == NULL && st.tail == NULL);
  CHECK_EQ(dcm__ctl_sessions_peek(&st, v, 8), 0u);
  /* a full report queues every entry once, in shard order after the queued */
  dcm__session_t c = mk(3, "c", 2, "ws://h");
  CHECK_EQ(dcm__ctl_sessions_put(&st, &c, 1), 1);
  dcm__ctl_sessions_queue_all(&st);
  CHECK_EQ(dcm__ctl_sessions_peek(&st, v, 8), 3u);
  CHECK(v[0]->shard == 3 && v[1]->shard == 0 && v[2]->shard == 2);
  CHECK_EQ(dcm__ctl_sessions_peek(&st, v, 2), 2u);
  dcm__ctl_sessions_pop(&st, 2);
  CHECK_EQ(dcm__ctl_sessions_peek(&st, v, 8), 1u);
  CHECK(v[0]->shard == 2);
  dcm__ctl_sessions_pop(&st, 5);
  CHECK(st.nqueued == 0);
  CHECK_EQ(dcm__ctl_sessions_drop(&st, 2), 1);
  CHECK_EQ(dcm__ctl_sessions_drop(&st, 2), 0);
  CHECK(st.count == 2 && dcm__ctl_sessions_get(&st, 2) == NULL);
  /* a reset forgets everything */
  dcm__ctl_sessions_reset(&st, 8);
  CHECK(st.count == 0 && st.nslots == 8 && dcm__ctl_sessions_get(&st, 0) == NULL);
  dcm__ctl_sessions_free(&st);
}

static int unlisted_logs;

static void count_unlisted(dcm_log_level level, const char *line, size_t len, void *arg) {
  (void)level, (void)len, (void)arg;
  if (strstr(line, "not one of this agent's MASTERs")) unlisted_logs++;
}

/* The walk over three MASTERs (docs/protocol.md, High availability):
 * u = 0 makes each wait the lowest of its range. */
static void test_masters_walk(void) {
  dcm__ctl_url_t urls[3];
  char err[96];
  const char *text[] = {"ws://a", "ws://b", "ws://c"};
  for (int i = 0; i < 3; i++)
    CHECK_EQ(dcm__ctl_parse_url(text[i], strlen(text[i]), &urls[i], err, sizeof err), 0);
  dcm__log_t lg;
  CHECK_EQ(dcm__log_init(&lg, DCM_LOG_DEBUG, DCM_LOG_TEXT, count_unlisted, NULL), 0);
  dcm__ctl_masters_t m;
  dcm__ctl_ending_t failed = {0}, refused = {0}, named = {0}, stranger = {0};
  uint64_t now = 1000000;
  refused.follower = 1;
  named.follower = named.has_leader = 1;
  named.leader = urls[2];
  snprintf(named.leader_text, sizeof named.leader_text, "ws://c");
  stranger = named;
  CHECK_EQ(dcm__ctl_parse_url("ws://d", 6, &stranger.leader, err, sizeof err), 0);
  snprintf(stranger.leader_text, sizeof stranger.leader_text, "ws://d");
  dcm__ctl_masters_init(&m, urls, 3, 30000, now, &lg, "t");
  CHECK(dcm__ctl_masters_current(&m) == &urls[0] && m.session_master == -1);
  /* failed attempts: the next MASTER at once, then the backoff after a pass */
  CHECK_EQ(dcm__ctl_masters_next(&m, &failed, 0, "", "", now, 0), 0u);
  CHECK_EQ(m.cur, 1u);
  CHECK_EQ(dcm__ctl_masters_next(&m, &failed, 0, "", "", now, 0), 0u);
  CHECK_EQ(m.cur, 2u);
  CHECK_EQ(dcm__ctl_masters_next(&m, &failed, 0, "", "", now, 0), 500u);
  CHECK_EQ(m.cur, 0u);
  CHECK(m.pass_tried == 0 && m.retry_attempt == 1);
  /* a follower names a listed leader: there at once; a pass in which a
   * follower answered ends in the election wait, not the backoff */
  CHECK_EQ(dcm__ctl_masters_next(&m, &named, 0, "", "", now, 0), 0u);
  CHECK_EQ(m.cur, 2u);
  CHECK_EQ(dcm__ctl_masters_next(&m, &failed, 0, "", "", now, 0), 0u);
  CHECK_EQ(m.cur, 1u);
  CHECK_EQ(dcm__ctl_masters_next(&m, &refused, 0, "", "", now, 0), DCM_CTL_ELECTION_MIN_MS);
  CHECK(m.cur == 2 && m.pass_tried == 0 && m.retry_attempt == 1);
  /* a leader tried in this pass is not tried again in it */
  CHECK_EQ(dcm__ctl_masters_next(&m, &named, 0, "", "", now, 0), 0u);
  CHECK_EQ(m.cur, 0u);
  /* an unlisted leader is never followed, and logged once per name */
  CHECK_EQ(dcm__ctl_masters_next(&m, &stranger, 0, "", "", now, 0), 0u);
  CHECK(m.cur == 1 && unlisted_logs == 1);
  CHECK_EQ(dcm__ctl_masters_next(&m, &stranger, 0, "", "", now, 0), DCM_CTL_ELECTION_MIN_MS);
  CHECK(m.cur == 2 && unlisted_logs == 1);
  /* a session resets the backoff and the pass; a lost session retries the
   * next MASTER after 0.1 s, at most once per --retry */
  dcm__ctl_masters_session(&m);
  CHECK(m.session_master == 2 && m.switches == 0 && m.retry_attempt == 0);
  CHECK_EQ(dcm__ctl_masters_next(&m, &failed, 1, "", "kept", now, 0), 100u);
  CHECK_EQ(m.cur, 0u);
  dcm__ctl_masters_session(&m);
  CHECK(m.session_master == 0 && m.switches == 1);
  CHECK_EQ(dcm__ctl_masters_next(&m, &failed, 1, "", "kept", now + 1000, 0), 500u);
  CHECK_EQ(m.cur, 1u);
  dcm__ctl_masters_session(&m);
  CHECK_EQ(dcm__ctl_masters_next(&m, &refused, 1, "", "kept", now + 2000, 0),
           DCM_CTL_ELECTION_MIN_MS);
  CHECK_EQ(m.cur, 2u);
  /* after --retry: a 4020 naming a listed leader goes there at once */
  dcm__ctl_masters_session(&m);
  named.leader = urls[0];
  snprintf(named.leader_text, sizeof named.leader_text, "ws://a");
  CHECK_EQ(dcm__ctl_masters_next(&m, &named, 1, "", "kept", now + 31000, 0), 0u);
  CHECK_EQ(m.cur, 0u);
  /* epochs: the highest is kept; a lower one is stale, and that
   * connection's end counts as a failed attempt, not a lost session */
  dcm__ctl_packet_t p;
  memset(&p, 0, sizeof p);
  p.op = DCM_OP_CONNECT;
  CHECK_EQ(dcm__ctl_masters_stale(&m, &p), 0);
  p.has_epoch = 1;
  p.epoch = 8;
  CHECK(dcm__ctl_masters_stale(&m, &p) == 0 && m.epoch == 8);
  CHECK_EQ(dcm__ctl_masters_stale(&m, &p), 0);
  p.epoch = 5;
  CHECK(dcm__ctl_masters_stale(&m, &p) == 1 && m.epoch == 8);
  /* epochs count within one etcd cluster: the first source seen is kept, a
   * lower epoch of the same cluster is stale, one of another cluster (etcd
   * restored into an empty data dir) starts the count again */
  strcpy(p.epoch_source, "111");
  p.epoch = 9;
  CHECK(dcm__ctl_masters_stale(&m, &p) == 0 && m.epoch == 9 && strcmp(m.epoch_source, "111") == 0);
  p.epoch = 6;
  CHECK(dcm__ctl_masters_stale(&m, &p) == 1 && m.epoch == 9);
  strcpy(p.epoch_source, "222");
  p.epoch = 2;
  CHECK(dcm__ctl_masters_stale(&m, &p) == 0 && m.epoch == 2 && strcmp(m.epoch_source, "222") == 0);
  p.epoch = 1;
  CHECK_EQ(dcm__ctl_masters_stale(&m, &p), 1);
  dcm__ctl_masters_session(&m);
  CHECK_EQ(dcm__ctl_masters_next(&m, &failed, 1, "", "kept", now + 62000, 0), 0u);
  CHECK(m.cur == 1 && m.stale == 0);
  /* one MASTER: every failure ends a pass */
  dcm__ctl_masters_init(&m, urls, 1, 30000, now, &lg, "t");
  CHECK_EQ(dcm__ctl_masters_next(&m, &failed, 0, "", "", now, 0), 500u);
  CHECK_EQ(dcm__ctl_masters_next(&m, &failed, 0, "", "", now, 1), 2000u);
  CHECK_EQ(m.cur, 0u);
  dcm__log_close(&lg);
}

int main(void) {
  RUN(test_groups);
  RUN(test_line_kinds);
  RUN(test_session_lines);
  RUN(test_line_splitter);
  RUN(test_line_at_bound_split);
  RUN(test_decode);
  RUN(test_decode_extensions);
  RUN(test_identify_target);
  RUN(test_encode);
  RUN(test_failed_fit);
  RUN(test_sessions_codec);
  RUN(test_connect_sessions);
  RUN(test_session_store);
  RUN(test_backoff);
  RUN(test_decode_epoch);
  RUN(test_master_urls);
  RUN(test_masters_walk);
  RUN(test_proc_readers);
  RUN(test_rest_is_linear);
  return 0;
}
