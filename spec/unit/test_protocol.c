/* Packet decoding, validation and encoding; handshake keys. */
#include <lauxlib.h>
#include <math.h>

#include "check.h"
#include "json.h"
#include "protocol.h"
#include "wskey.h"

static lua_State *L;

static int decode(const char *s, dcm__packet_t *p, char *err) {
  int r = dcm__packet_decode(L, s, strlen(s), 16, p, err, 192);
  CHECK_EQ(lua_gettop(L), 0); /* the stack is left clean */
  return r;
}

static void expect(const char *s, int code, const char *err_part) {
  dcm__packet_t p;
  char err[192];
  int r = decode(s, &p, err);
  if (r != code || (err_part && strstr(err, err_part) == NULL)) {
    fprintf(stderr, "input %s: got %d '%s', want %d '%s'\n", s, r, err, code,
            err_part ? err_part : "");
    abort();
  }
  dcm__packet_clear(&p);
}

static void info_valid(void) {
  dcm__packet_t p;
  char err[192];
  CHECK_EQ(decode("{\"o\":0,\"d\":{\"id\":\"m-1.a:b_c\",\"cores\":8,\"loadavg\":0.5,"
                  "\"standby\":true,\"shards\":[3,1,2],\"version\":\"1.2\",\"extra\":1},\"x\":2}",
                  &p, err), 0);
  CHECK_EQ(p.op, DCM_OP_INFO);
  CHECK_STR(p.id, "m-1.a:b_c");
  CHECK_EQ(p.cores, 8);
  CHECK(p.loadavg == 0.5);
  CHECK_EQ(p.standby, 1);
  CHECK_EQ(p.has_shards, 1);
  CHECK(p.nshards == 3 && p.shards[0] == 3 && p.shards[2] == 2);
  CHECK_STR(p.version, "1.2");
  dcm__packet_clear(&p);
  CHECK_EQ(decode("{\"o\":0,\"d\":{\"id\":\"a\",\"cores\":1,\"loadavg\":0}}", &p, err), 0);
  CHECK_EQ(p.has_shards, 0);
  CHECK_EQ(p.standby, 0);
  dcm__packet_clear(&p);
  CHECK_EQ(decode("{\"o\":0,\"d\":{\"id\":\"a\",\"cores\":1,\"loadavg\":0,\"shards\":[]}}", &p, err), 0);
  CHECK(p.has_shards == 1 && p.nshards == 0);
  dcm__packet_clear(&p);
}

static void info_invalid(void) {
  char id129[200];
  memset(id129, 'a', 129);
  id129[129] = '\0';
  char buf[400];
  snprintf(buf, sizeof buf, "{\"o\":0,\"d\":{\"id\":\"%s\",\"cores\":1,\"loadavg\":0}}", id129);
  expect(buf, DCM_ERR_MALFORMED, "d.id");
  expect("{\"o\":0,\"d\":{\"id\":\"\",\"cores\":1,\"loadavg\":0}}", DCM_ERR_MALFORMED, "d.id");
  expect("{\"o\":0,\"d\":{\"id\":\"a b\",\"cores\":1,\"loadavg\":0}}", DCM_ERR_MALFORMED, "d.id");
  expect("{\"o\":0,\"d\":{\"id\":\"a/b\",\"cores\":1,\"loadavg\":0}}", DCM_ERR_MALFORMED, "d.id");
  expect("{\"o\":0,\"d\":{\"id\":7,\"cores\":1,\"loadavg\":0}}", DCM_ERR_MALFORMED, "d.id");
  expect("{\"o\":0,\"d\":{\"cores\":1,\"loadavg\":0}}", DCM_ERR_MALFORMED, "d.id");
  expect("{\"o\":0,\"d\":{\"id\":\"a\",\"cores\":0,\"loadavg\":0}}", DCM_ERR_MALFORMED, "cores");
  expect("{\"o\":0,\"d\":{\"id\":\"a\",\"cores\":1.5,\"loadavg\":0}}", DCM_ERR_MALFORMED, "cores");
  expect("{\"o\":0,\"d\":{\"id\":\"a\",\"cores\":\"8\",\"loadavg\":0}}", DCM_ERR_MALFORMED, "cores");
  expect("{\"o\":0,\"d\":{\"id\":\"a\",\"cores\":1,\"loadavg\":-1}}", DCM_ERR_MALFORMED, "loadavg");
  expect("{\"o\":0,\"d\":{\"id\":\"a\",\"cores\":1}}", DCM_ERR_MALFORMED, "loadavg");
  expect("{\"o\":0,\"d\":{\"id\":\"a\",\"cores\":1,\"loadavg\":0,\"standby\":1}}", DCM_ERR_MALFORMED, "standby");
  expect("{\"o\":0,\"d\":{\"id\":\"a\",\"cores\":1,\"loadavg\":0,\"shards\":[1,-2]}}", DCM_ERR_MALFORMED, "shards");
  expect("{\"o\":0,\"d\":{\"id\":\"a\",\"cores\":1,\"loadavg\":0,\"shards\":{\"a\":1}}}", DCM_ERR_MALFORMED, "shards");
  expect("{\"o\":0,\"d\":{\"id\":\"a\",\"cores\":1,\"loadavg\":0,\"shards\":[0.5]}}", DCM_ERR_MALFORMED, "shards");
  /* more entries than there are shards */
  expect("{\"o\":0,\"d\":{\"id\":\"a\",\"cores\":1,\"loadavg\":0,\"shards\":"
         "[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}}", DCM_ERR_MALFORMED, "shards");
}

static void envelope(void) {
  expect("not json", DCM_ERR_MALFORMED, "JSON");
  expect("", DCM_ERR_MALFORMED, "JSON");
  expect("[1,2]", DCM_ERR_MALFORMED, "object");
  expect("42", DCM_ERR_MALFORMED, "object");
  expect("\"s\"", DCM_ERR_MALFORMED, "object");
  expect("null", DCM_ERR_MALFORMED, "object");
  expect("{\"d\":{}}", DCM_ERR_MALFORMED, "\"o\"");
  expect("{\"o\":\"9\",\"d\":{}}", DCM_ERR_MALFORMED, "\"o\"");
  expect("{\"o\":9.5,\"d\":{}}", DCM_ERR_MALFORMED, "\"o\"");
  expect("{\"o\":9}", DCM_ERR_MALFORMED, "\"d\"");
  expect("{\"o\":9,\"d\":[1]}", DCM_ERR_MALFORMED, "\"d\"");
  expect("{\"o\":9,\"d\":5}", DCM_ERR_MALFORMED, "\"d\"");
  expect("{\"o\":16,\"d\":{}}", DCM_ERR_UNKNOWN_OP, "unknown opcode 16");
  expect("{\"o\":14,\"d\":{}}", DCM_ERR_MALFORMED, "sessions: d.sessions must be an array");
  expect("{\"o\":15,\"d\":{}}", DCM_ERR_MALFORMED, "stopped: d.shards");
  expect("{\"o\":11,\"d\":{}}", DCM_ERR_MALFORMED, "identify: d.shard must be a shard id");
  expect("{\"o\":13,\"d\":{\"shard\":-1}}", DCM_ERR_MALFORMED, "release: d.shard");
  expect("{\"o\":-1,\"d\":{}}", DCM_ERR_UNKNOWN_OP, NULL);
  expect("{\"o\":99999999999,\"d\":{}}", DCM_ERR_UNKNOWN_OP, NULL);
  /* nesting is bounded */
  char deep[200];
  memset(deep, '[', 100);
  deep[100] = '\0';
  expect(deep, DCM_ERR_MALFORMED, "JSON");
}

static void other_ops(void) {
  dcm__packet_t p;
  char err[192];
  CHECK_EQ(decode("{\"o\":9,\"d\":{}}", &p, err), 0);
  CHECK(p.op == DCM_OP_HEARTBEAT && !p.has_loadavg);
  CHECK_EQ(decode("{\"o\":9,\"d\":{\"loadavg\":1.25}}", &p, err), 0);
  CHECK(p.has_loadavg && p.loadavg == 1.25);
  expect("{\"o\":9,\"d\":{\"loadavg\":\"x\"}}", DCM_ERR_MALFORMED, "loadavg");
  CHECK_EQ(decode("{\"o\":9,\"d\":{\"failed_clusters\":[]}}", &p, err), 0);
  CHECK(p.has_failed && p.failed_json == NULL);
  dcm__packet_clear(&p);
  CHECK_EQ(decode("{\"o\":9,\"d\":{\"failed_clusters\":[{\"cluster\":2,\"shards\":[4,5],"
                  "\"exit\":1}]}}", &p, err), 0);
  CHECK(p.has_failed && p.failed_json && strstr(p.failed_json, "\"cluster\":2"));
  CHECK(p.nshards == 2 && p.shards[0] == 4 && p.shards[1] == 5);
  dcm__packet_clear(&p);
  /* an extension never invalidates the heartbeat: ignored, reason kept */
  static const char *const bad[][2] = {
      {"{\"o\":9,\"d\":{\"failed_clusters\":3}}", "must be an array"},
      {"{\"o\":9,\"d\":{\"failed_clusters\":[1]}}", "failed_clusters[0]"},
      {"{\"o\":9,\"d\":{\"failed_clusters\":[{\"shards\":[]}]}}", "cluster"},
      {"{\"o\":9,\"d\":{\"failed_clusters\":[{\"cluster\":1,\"shards\":"
       "[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}]}}", "more than 16"}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    CHECK_EQ(decode(bad[i][0], &p, err), 0);
    CHECK(!p.has_failed && strstr(p.message, bad[i][1]));
    dcm__packet_clear(&p);
  }
  /* sorted, unique over every cluster; a long list keeps its shards */
  CHECK_EQ(decode("{\"o\":9,\"d\":{\"failed_clusters\":[{\"cluster\":1,\"shards\":[9,3]},"
                  "{\"cluster\":2,\"shards\":[3,1]}]}}", &p, err), 0);
  CHECK(p.nshards == 3 && p.shards[0] == 1 && p.shards[1] == 3 && p.shards[2] == 9);
  dcm__packet_clear(&p);
  CHECK_EQ(decode("{\"o\":8,\"d\":{\"o\":6}}", &p, err), 0);
  CHECK_EQ(p.ack_op, 6);
  expect("{\"o\":8,\"d\":{}}", DCM_ERR_MALFORMED, "ack");
  CHECK_EQ(decode("{\"o\":10,\"d\":{\"shards\":[0,1]}}", &p, err), 0);
  CHECK(p.nshards == 2 && p.shards[1] == 1);
  dcm__packet_clear(&p);
  expect("{\"o\":10,\"d\":{}}", DCM_ERR_MALFORMED, "ready");
  CHECK_EQ(decode("{\"o\":1,\"d\":{\"code\":4004,\"message\":\"Authentication failed\",\"shard\":3}}", &p, err), 0);
  CHECK(p.code == 4004 && p.shard == 3);
  CHECK_STR(p.message, "Authentication failed");
  CHECK_EQ(decode("{\"o\":1,\"d\":{\"code\":4014,\"message\":\"x\"}}", &p, err), 0);
  CHECK_EQ(p.shard, -1);
  expect("{\"o\":1,\"d\":{\"message\":\"x\"}}", DCM_ERR_MALFORMED, "code");
  expect("{\"o\":1,\"d\":{\"code\":1}}", DCM_ERR_MALFORMED, "message");
  CHECK_EQ(decode("{\"o\":3,\"d\":{}}", &p, err), 0);
  CHECK_EQ(p.op, DCM_OP_OFFLOAD);
}

static void encoders(void) {
  size_t n;
  const char *s = dcm__enc_connect(L, NULL, 0, 1, NULL, NULL, &n);
  CHECK(s != NULL);
  CHECK(strstr(s, "\"shards\":[]") != NULL);
  CHECK(strstr(s, "\"redundant\":true") != NULL);
  CHECK(strstr(s, "\"o\":6") != NULL);
  lua_settop(L, 0);
  int sh[] = {4, 5, 6};
  s = dcm__enc_connect(L, sh, 3, 0, NULL, &(dcm__epoch_t){7, ""}, &n);
  CHECK(strstr(s, "\"shards\":[4,5,6]") != NULL);
  CHECK(strstr(s, "\"epoch\":7") != NULL); /* a leader's term (HA) */
  lua_settop(L, 0);
  s = dcm__enc_initialise(L, "tok", 30000, 16, 2, "wss://gw.example", NULL, &n);
  CHECK(strstr(s, "\"heartbeat_interval\":30000") && strstr(s, "\"protocol\":1") &&
        strstr(s, "\"shard_count\":16") && strstr(s, "\"max_concurrency\":2") &&
        strstr(s, "\"gateway_url\":\"wss:\\/\\/gw.example\"") && strstr(s, "\"o\":5"));
  lua_settop(L, 0);
  s = dcm__enc_error(L, 4005, "unknown opcode 99", -1, &n);
  CHECK(strstr(s, "\"code\":4005") && strstr(s, "\"o\":7") && !strstr(s, "shard"));
  lua_settop(L, 0);
  s = dcm__enc_error(L, 4007, "not yours", 12, &n);
  CHECK(strstr(s, "\"code\":4007") && strstr(s, "\"shard\":12"));
  lua_settop(L, 0);
  s = dcm__enc_grant(L, 3, NULL, &n);
  CHECK(strstr(s, "\"o\":12") && strstr(s, "\"d\":{\"shard\":3}")); /* alone: no epoch */
  lua_settop(L, 0);
  s = dcm__enc_grant(L, 3, &(dcm__epoch_t){9007199254740993ULL, "14841639068965178418"}, &n);
  CHECK(strstr(s, "\"epoch\":9007199254740993") && strstr(s, "\"shard\":3") &&
        strstr(s, "\"epoch_source\":\"14841639068965178418\""));
  lua_settop(L, 0);
  s = dcm__enc_ack(L, 9, &n);
  CHECK(strstr(s, "\"o\":8") && strstr(s, "\"d\":{\"o\":9}"));
  lua_settop(L, 0);
  s = dcm__enc_info_request(L, &n);
  CHECK(strstr(s, "\"o\":0") && strstr(s, "\"d\":{}"));
  lua_settop(L, 0);
}

static void sessions(void) {
  dcm__packet_t p;
  char err[192];
  CHECK_EQ(decode("{\"o\":14,\"d\":{\"sessions\":[{\"shard\":3,\"session_id\":\"ab_C-9\","
                  "\"seq\":42,\"resume_url\":\"wss://gw.example/x\"},"
                  "{\"shard\":4,\"session_id\":\"bad id\",\"seq\":1,\"resume_url\":\"wss://g\"},"
                  "{\"shard\":5,\"session_id\":\"a\",\"seq\":-1,\"resume_url\":\"wss://g\"},"
                  "{\"shard\":6,\"session_id\":\"a\",\"seq\":1,\"resume_url\":\"https://g\"},"
                  "{\"shard\":7,\"session_id\":\"a\",\"seq\":1,\"resume_url\":\"wss://g\\\"x\"},"
                  "{\"shard\":-1,\"session_id\":\"a\",\"seq\":1,\"resume_url\":\"wss://g\"},7]}}",
                  &p, err), 0);
  CHECK(p.nsessions == 1 && p.nbad == 6);
  CHECK(p.sessions[0].shard == 3 && p.sessions[0].seq == 42);
  CHECK_STR(p.sessions[0].session_id, "ab_C-9");
  CHECK_STR(p.sessions[0].resume_url, "wss://gw.example/x");
  dcm__packet_clear(&p);
  CHECK_EQ(decode("{\"o\":15,\"d\":{\"shards\":[1,2]}}", &p, err), 0);
  CHECK(p.op == DCM_OP_STOPPED && p.nshards == 2);
  dcm__packet_clear(&p);
  /* connect hands sessions over, keyed by shard */
  dcm__session_t s1 = {5, 17, "sid", "wss://r.example"};
  const dcm__session_t *sess[] = {NULL, &s1};
  int sh[] = {4, 5};
  size_t n;
  const char *s = dcm__enc_connect(L, sh, 2, 0, sess, NULL, &n);
  CHECK(strstr(s, "\"sessions\":{\"5\":{") && strstr(s, "\"seq\":17") &&
        strstr(s, "\"session_id\":\"sid\"") && !strstr(s, "\"4\":"));
  lua_settop(L, 0);
}

/* The empty-array marker of old: '"' plus it, inside a peer string. */
#define OLD_MARKER "\x01\x02[]"

/* A table shaped like /status, with peer text where it used to break it. */
static void outbound_text(void) {
  size_t n;
  const char *version = "v\"" OLD_MARKER;
  lua_createtable(L, 0, 3);
  lua_pushliteral(L, "running");
  lua_setfield(L, -2, "state");
  lua_createtable(L, 1, 0);
  lua_createtable(L, 0, 3);
  lua_pushliteral(L, "a");
  lua_setfield(L, -2, "id");
  lua_pushstring(L, version);
  lua_setfield(L, -2, "version");
  dcm__json_push_int_array(L, NULL, 0);
  lua_setfield(L, -2, "shards");
  lua_rawseti(L, -2, 1);
  lua_setfield(L, -2, "machines");
  dcm__json_push_empty_array(L);
  lua_setfield(L, -2, "unassigned");
  const char *s = dcm__json_encode(L, -1, &n);
  CHECK(s != NULL && strlen(s) == n);
  CHECK(strstr(s, "\"shards\":[]") && strstr(s, "\"unassigned\":[]"));
  CHECK(strstr(s, "\"version\":\"v\\\"\\u0001\\u0002[]\""));
  /* cjson reads it back: the string whole, the arrays empty */
  CHECK_EQ(dcm__json_decode(L, s, n), 0);
  lua_getfield(L, -1, "machines");
  lua_rawgeti(L, -1, 1);
  lua_getfield(L, -1, "version");
  CHECK_STR(lua_tostring(L, -1), version);
  lua_settop(L, 0);

  /* the shutdown broadcast carries such a reason intact */
  s = dcm__enc_shutdown(L, 4004, "b: boom\"" OLD_MARKER, &n);
  CHECK(s != NULL);
  CHECK_EQ(dcm__json_decode(L, s, n), 0);
  lua_getfield(L, -1, "d");
  lua_getfield(L, -1, "reason");
  CHECK_STR(lua_tostring(L, -1), "b: boom\"" OLD_MARKER);
  lua_settop(L, 0);

  /* escapes; bytes that are not UTF-8 become U+FFFD; UTF-8 passes */
  lua_pushlstring(L, "\x00\t\x7f/\\\xff\xc3 \xc3\xa9\xed\xa0\x80\xf0\x9f\x98\x80\xe2\x82", 19);
  s = dcm__json_encode(L, -1, &n);
  CHECK_STR(s, "\"\\u0000\\t\\u007f\\/\\\\\\ufffd\\ufffd \xc3\xa9"
               "\\ufffd\\ufffd\\ufffd\xf0\x9f\x98\x80\\ufffd\\ufffd\"");
  lua_settop(L, 0);
  /* numbers: integers exact, floats as cjson wrote them */
  lua_createtable(L, 3, 0);
  lua_pushinteger(L, 9007199254740993LL);
  lua_rawseti(L, -2, 1);
  lua_pushnumber(L, 0.1);
  lua_rawseti(L, -2, 2);
  lua_pushboolean(L, 0);
  lua_rawseti(L, -2, 3);
  CHECK_STR(dcm__json_encode(L, -1, &n), "[9007199254740993,0.1,false]");
  lua_settop(L, 0);
  lua_newtable(L);
  CHECK_STR(dcm__json_encode(L, -1, &n), "{}");
  lua_settop(L, 0);

  /* what has no JSON form fails, leaving the stack as it was */
  lua_pushnumber(L, NAN);
  CHECK(dcm__json_encode(L, -1, &n) == NULL && lua_gettop(L) == 1);
  lua_settop(L, 0);
  lua_newtable(L);
  lua_pushboolean(L, 1);
  lua_pushinteger(L, 1);
  lua_settable(L, -3);
  CHECK(dcm__json_encode(L, -1, &n) == NULL && lua_gettop(L) == 1);
  lua_settop(L, 0);
  lua_newtable(L);
  for (int i = 0; i < 70; i++) { /* deeper than 64 */
    lua_newtable(L);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "x");
    lua_remove(L, -2);
  }
  CHECK(dcm__json_encode(L, -1, &n) == NULL && lua_gettop(L) == 1);
  lua_settop(L, 0);
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_setfield(L, -2, "self"); /* a cycle */
  CHECK(dcm__json_encode(L, -1, &n) == NULL && lua_gettop(L) == 1);
  lua_settop(L, 0);
  lua_pushcfunction(L, lua_gettop);
  CHECK(dcm__json_encode(L, -1, &n) == NULL && lua_gettop(L) == 1);
  lua_settop(L, 0);
}

/* Control bytes in the peer strings that reach logs and /status. */
static void peer_text(void) {
  expect("{\"o\":0,\"d\":{\"id\":\"a\",\"cores\":1,\"loadavg\":0,\"version\":\"v\\\"\\u0001\\u0002[]\"}}",
         DCM_ERR_MALFORMED, "info: d.version must not contain control characters");
  expect("{\"o\":0,\"d\":{\"id\":\"a\",\"cores\":1,\"loadavg\":0,\"version\":\"1.0\\n\"}}",
         DCM_ERR_MALFORMED, "d.version must not contain control characters");
  expect("{\"o\":0,\"d\":{\"id\":\"a\",\"cores\":1,\"loadavg\":0,\"version\":\"1\\u007f\"}}",
         DCM_ERR_MALFORMED, "d.version must not contain control characters");
  expect("{\"o\":0,\"d\":{\"id\":\"a\",\"cores\":1,\"loadavg\":0,\"version\":\"1\\u0000x\"}}",
         DCM_ERR_MALFORMED, "d.version must not contain control characters");
  expect("{\"o\":1,\"d\":{\"code\":4004,\"message\":\"bad\\u001b[31m\"}}", DCM_ERR_MALFORMED,
         "fatal: d.message must not contain control characters");
  expect("{\"o\":1,\"d\":{\"code\":4004,\"message\":\"line\\r\\nforged\"}}", DCM_ERR_MALFORMED,
         "fatal: d.message must not contain control characters");
  /* printable text, quotes and non-ASCII included, is fine */
  dcm__packet_t p;
  char err[192];
  CHECK_EQ(decode("{\"o\":0,\"d\":{\"id\":\"a\",\"cores\":1,\"loadavg\":0,"
                  "\"version\":\"1.0 \\\"\\u00e9\\\" []\"}}", &p, err), 0);
  CHECK_STR(p.version, "1.0 \"\xc3\xa9\" []");
  dcm__packet_clear(&p);
  CHECK_EQ(decode("{\"o\":1,\"d\":{\"code\":4014,\"message\":\"Disallowed intent(s)\"}}", &p, err), 0);
  CHECK_STR(p.message, "Disallowed intent(s)");
  dcm__packet_clear(&p);
}

static void handshake_keys(void) {
  char accept[DCM_WS_ACCEPT_LEN + 1];
  dcm__ws_accept("dGhlIHNhbXBsZSBub25jZQ==", 24, accept); /* RFC 6455 1.3 */
  CHECK_STR(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  CHECK(dcm__ws_key_valid("dGhlIHNhbXBsZSBub25jZQ==", 24));
  CHECK(!dcm__ws_key_valid("short==", 7));
  CHECK(!dcm__ws_key_valid("dGhlIHNhbXBsZSBub25jZQ!=", 24));
  char b[16];
  dcm__base64((const uint8_t *)"fo", 2, b);
  CHECK_STR(b, "Zm8=");
  dcm__base64((const uint8_t *)"foo", 3, b);
  CHECK_STR(b, "Zm9v");
  dcm__base64((const uint8_t *)"", 0, b);
  CHECK_STR(b, "");
}

static void ids(void) {
  CHECK(dcm__valid_id("host-1.example:8642", 19));
  CHECK(!dcm__valid_id("", 0));
  CHECK(!dcm__valid_id("a\nb", 3));
}

int main(void) {
  L = dcm__json_new();
  CHECK(L != NULL);
  RUN(info_valid);
  RUN(info_invalid);
  RUN(envelope);
  RUN(other_ops);
  RUN(encoders);
  RUN(sessions);
  RUN(outbound_text);
  RUN(peer_text);
  RUN(handshake_keys);
  RUN(ids);
  lua_close(L);
  return 0;
}
