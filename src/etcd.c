/* etcd.c: see etcd.h. One operation is one JSON request, sent to the
 * current endpoint and, after a transport failure, to the next ones in
 * turn. int64 fields travel as JSON strings both ways (the gateway's
 * encoding), so lease ids keep all 64 bits. */
#include "etcd.h"

#include <errno.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "json.h"
#include "wskey.h"

#define DEFAULT_TIMEOUT_MS 2000
#define MIN_TIMEOUT_MS 50
#define MAX_PATH_ARG 4096   /* bytes of a TLS file path */
#define MAX_DETAIL 200      /* bytes of etcd's message kept for a log line */

typedef enum { OP_GRANT, OP_KEEPALIVE, OP_REVOKE, OP_GET, OP_PUT, OP_CREATE, OP_FENCED } kind_t;

static const char *const op_path[] = {
    "/v3/lease/grant", "/v3/lease/keepalive", "/v3/lease/revoke", "/v3/kv/range",
    "/v3/kv/put",      "/v3/kv/txn",          "/v3/kv/txn"};

struct dcm__etcd_op_s {
  dcm__etcd_t *e;
  kind_t kind;
  char *body;               /* the JSON request */
  size_t len;
  dcm__http_req_t *req;     /* the attempt in flight */
  size_t ep;                /* its endpoint */
  size_t tries;             /* endpoints tried so far */
  dcm__etcd_cb cb;
  void *arg;
  struct dcm__etcd_op_s *prev, *next;
};

struct dcm__etcd_s {
  uv_loop_t *loop;
  dcm__log_t *log;
  dcm__http_t *http;
  char *endpoints[DCM_ETCD_MAX_ENDPOINTS];
  size_t n, cur;
  long last_ok;             /* the endpoint that last answered; -1: none yet */
  char *cacert, *cert, *key;
  uint64_t timeout_ms;
  lua_State *json;
  dcm__etcd_op_t *ops;
  size_t nops;
  int closing;
  void (*done)(void *arg);
  void *done_arg;
};

/* What a request is built from. */
typedef struct {
  kind_t kind;
  int64_t num;              /* grant: ttl; keepalive, revoke: id */
  const char *key;
  const char *value;
  size_t value_len;
  int64_t lease;
  const char *fence;
  int64_t fence_rev;
} spec_t;

static int send_attempt(dcm__etcd_op_t *op);
static void op_unlink(dcm__etcd_op_t *op);
static void op_free(dcm__etcd_op_t *op);

/* ---- requests -------------------------------------------------------------- */

static void push_b64(lua_State *L, const char *s, size_t n) {
  char *buf = lua_newuserdatauv(L, 4 * ((n + 2) / 3) + 1, 0);
  size_t len = dcm__base64((const uint8_t *)s, n, buf);
  lua_pushlstring(L, buf, len);
  lua_remove(L, -2);
}

static void set_i64(lua_State *L, const char *field, int64_t v) {
  lua_pushfstring(L, "%I", (lua_Integer)v);
  lua_setfield(L, -2, field);
}

static void set_b64(lua_State *L, const char *field, const char *s, size_t n) {
  push_b64(L, s, n);
  lua_setfield(L, -2, field);
}

/* Pushes {key, value, lease?} for a put. */
static void push_put(lua_State *L, const spec_t *s) {
  lua_createtable(L, 0, 3);
  set_b64(L, "key", s->key, strlen(s->key));
  set_b64(L, "value", s->value, s->value_len);
  if (s->lease) set_i64(L, "lease", s->lease);
}

/* Pushes [{key: k, target: CREATE, result: EQUAL, create_revision: rev}]. */
static void push_compare(lua_State *L, const char *key, int64_t rev) {
  lua_createtable(L, 1, 0);
  lua_createtable(L, 0, 4);
  set_b64(L, "key", key, strlen(key));
  lua_pushliteral(L, "CREATE");
  lua_setfield(L, -2, "target");
  lua_pushliteral(L, "EQUAL");
  lua_setfield(L, -2, "result");
  set_i64(L, "create_revision", rev);
  lua_rawseti(L, -2, 1);
}

/* Pushes [{field: value at top}], popping the value. */
static void wrap_list(lua_State *L, const char *field) {
  lua_createtable(L, 1, 0);
  lua_createtable(L, 0, 1);
  lua_rotate(L, -3, -1); /* list, entry, value */
  lua_setfield(L, -2, field);
  lua_rawseti(L, -2, 1);
}

/* Protected: (spec) -> the request's JSON text. */
static int build(lua_State *L) {
  const spec_t *s = lua_touserdata(L, 1);
  lua_settop(L, 0);
  lua_createtable(L, 0, 3);
  switch (s->kind) {
    case OP_GRANT:
      set_i64(L, "TTL", s->num);
      break;
    case OP_KEEPALIVE:
    case OP_REVOKE:
      set_i64(L, "ID", s->num);
      break;
    case OP_GET:
      set_b64(L, "key", s->key, strlen(s->key));
      break;
    case OP_PUT:
      lua_pop(L, 1);
      push_put(L, s);
      break;
    case OP_CREATE:
      push_compare(L, s->key, 0);
      lua_setfield(L, -2, "compare");
      push_put(L, s);
      wrap_list(L, "request_put");
      lua_setfield(L, -2, "success");
      lua_createtable(L, 0, 1);
      set_b64(L, "key", s->key, strlen(s->key));
      wrap_list(L, "request_range");
      lua_setfield(L, -2, "failure");
      break;
    case OP_FENCED:
      push_compare(L, s->fence, s->fence_rev);
      lua_setfield(L, -2, "compare");
      push_put(L, s);
      wrap_list(L, "request_put");
      lua_setfield(L, -2, "success");
      break;
  }
  size_t len;
  if (dcm__json_encode(L, 1, &len) == NULL) return luaL_error(L, "encode");
  return 1;
}

static int key_ok(const char *key) {
  if (key == NULL) return 0;
  size_t n = strlen(key);
  return n > 0 && n <= DCM_ETCD_MAX_KEY;
}

static int start_op(dcm__etcd_t *e, const spec_t *s, dcm__etcd_cb cb, void *arg,
                    dcm__etcd_op_t **out) {
  if (e == NULL || cb == NULL) return DCM_EINVAL;
  if (e->closing || e->nops >= DCM_ETCD_MAX_OPS) return DCM_ESTATE;
  lua_State *L = e->json;
  lua_settop(L, 0);
  lua_pushcfunction(L, build);
  lua_pushlightuserdata(L, (void *)s);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_settop(L, 0);
    return DCM_ENOMEM;
  }
  size_t len;
  const char *text = lua_tolstring(L, -1, &len);
  dcm__etcd_op_t *op = calloc(1, sizeof(*op));
  char *body = malloc(len + 1);
  if (op == NULL || body == NULL) {
    free(op);
    free(body);
    lua_settop(L, 0);
    return DCM_ENOMEM;
  }
  memcpy(body, text, len + 1);
  lua_settop(L, 0);
  op->e = e;
  op->kind = s->kind;
  op->body = body;
  op->len = len;
  op->cb = cb;
  op->arg = arg;
  op->ep = e->cur;
  op->next = e->ops;
  if (e->ops) e->ops->prev = op;
  e->ops = op;
  e->nops++;
  int rc = send_attempt(op);
  if (rc != 0) {
    op_unlink(op);
    op_free(op);
    return rc;
  }
  if (out) *out = op;
  return 0;
}

/* ---- answers --------------------------------------------------------------- */

/* An int64 field (a JSON string of digits, or a number); absent is 0, as
 * proto3 omits zeros. 0 when the field is there but not an integer. */
static int i64_field(lua_State *L, int idx, const char *key, int64_t *out) {
  int t = dcm__json_field(L, idx, key);
  int ok = 1;
  *out = 0;
  if (t == LUA_TSTRING) {
    const char *s = lua_tostring(L, -1);
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    ok = *s != '\0' && *end == '\0' && errno == 0;
    if (ok) *out = v;
  } else if (t == LUA_TNUMBER) {
    long long v;
    ok = dcm__json_tointeger(L, -1, &v);
    if (ok) *out = v;
  } else if (t != LUA_TNIL) {
    ok = 0;
  }
  lua_pop(L, 1);
  return ok;
}

/* Copies etcd's message at the top of the stack into detail, if printable. */
static void copy_message(lua_State *L, char *detail, size_t n) {
  size_t len;
  const char *m = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
  if (m && len > 0 && len <= MAX_DETAIL && dcm__json_plain_text(m, len))
    snprintf(detail, n, "%.*s", (int)len, m);
  else
    snprintf(detail, n, "(no readable message)");
}

/* An error answer: {"error": "...", "message": "...", "code": N}, or the
 * streaming form {"error": {"grpc_code": N, "message": "..."}}. */
static int error_answer(lua_State *L, int top, int status, char *detail, size_t n) {
  int64_t code = 0;
  char msg[MAX_DETAIL + 32];
  msg[0] = '\0';
  if (dcm__json_isobject(L, top)) {
    if (dcm__json_field(L, top, "error") == LUA_TTABLE) {
      int inner = lua_gettop(L);
      i64_field(L, inner, "grpc_code", &code);
      dcm__json_field(L, inner, "message");
      copy_message(L, msg, sizeof msg);
      lua_pop(L, 2);
    } else {
      lua_pop(L, 1);
      i64_field(L, top, "code", &code);
      dcm__json_field(L, top, "message");
      copy_message(L, msg, sizeof msg);
      lua_pop(L, 1);
    }
  } else {
    snprintf(msg, sizeof msg, "(not JSON)");
  }
  snprintf(detail, n, "HTTP %d: %s", status, msg);
  if (strstr(msg, "lease not found")) return DCM_ETCD_ENOLEASE;
  /* gRPC Unavailable and DeadlineExceeded: no leader, timed out, stopping */
  if (code == 14 || code == 4 || status >= 500) return DCM_ETCD_EUNAVAILABLE;
  return DCM_ETCD_ESERVER;
}

/* Reads the key-value at idx into r; value_buf gets the decoded value. */
static int read_kv(lua_State *L, int idx, dcm__etcd_result_t *r, char **value_buf) {
  if (!dcm__json_isobject(L, idx)) return -1;
  if (!i64_field(L, idx, "create_revision", &r->create_revision) ||
      !i64_field(L, idx, "mod_revision", &r->mod_revision) ||
      !i64_field(L, idx, "lease", &r->lease))
    return -1;
  size_t n = 0;
  const char *v = "";
  int t = dcm__json_field(L, idx, "value");
  if (t == LUA_TSTRING) {
    v = lua_tolstring(L, -1, &n);
  } else if (t != LUA_TNIL) {
    lua_pop(L, 1);
    return -1;
  }
  char *buf = malloc(n / 4 * 3 + 1);
  long len = buf ? dcm__base64_decode(v, n, (uint8_t *)buf) : -1;
  lua_pop(L, 1);
  if (len < 0) {
    free(buf);
    return -1;
  }
  buf[len] = '\0';
  *value_buf = buf;
  r->found = 1;
  r->value = buf;
  r->value_len = (size_t)len;
  return 0;
}

/* The first key-value of the array field "kvs" of the object at idx. */
static int read_kvs(lua_State *L, int idx, dcm__etcd_result_t *r, char **value_buf) {
  size_t n;
  int t = dcm__json_field(L, idx, "kvs");
  int rc = 0;
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    return 0; /* absent: no such key */
  }
  if (!dcm__json_isarray(L, -1, &n)) rc = -1;
  else if (n > 0) {
    lua_rawgeti(L, -1, 1);
    rc = read_kv(L, lua_gettop(L), r, value_buf);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return rc;
}

/* Fills r from a 200 answer on the stack top; an error code otherwise. */
static int parse_ok(lua_State *L, const dcm__etcd_op_t *op, dcm__etcd_result_t *r,
                    char **value_buf, char *detail, size_t n) {
  int top = lua_gettop(L);
  if (!dcm__json_isobject(L, top)) goto proto;
  if (dcm__json_field(L, top, "error") != LUA_TNIL) {
    lua_pop(L, 1);
    return error_answer(L, top, 200, detail, n);
  }
  lua_pop(L, 1);
  int obj = top;
  if (op->kind == OP_KEEPALIVE) { /* the gateway's stream wrapper */
    if (dcm__json_field(L, top, "result") != LUA_TTABLE) goto proto;
    obj = lua_gettop(L);
  }
  if (dcm__json_field(L, obj, "header") == LUA_TTABLE) {
    int h = lua_gettop(L);
    if (!i64_field(L, h, "revision", &r->revision)) goto proto;
    if (dcm__json_field(L, h, "cluster_id") == LUA_TSTRING) { /* a uint64: kept as text */
      size_t idlen;
      const char *id = lua_tolstring(L, -1, &idlen);
      if (idlen < sizeof r->cluster_id && strspn(id, "0123456789") == idlen)
        memcpy(r->cluster_id, id, idlen + 1);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  switch (op->kind) {
    case OP_GRANT:
    case OP_KEEPALIVE:
      if (!i64_field(L, obj, "ID", &r->id) || !i64_field(L, obj, "TTL", &r->ttl)) goto proto;
      if (op->kind == OP_GRANT && (r->id == 0 || r->ttl <= 0)) goto proto;
      if (op->kind == OP_KEEPALIVE && r->ttl <= 0) {
        snprintf(detail, n, "lease %lld has expired", (long long)r->id);
        return DCM_ETCD_ENOLEASE;
      }
      return 0;
    case OP_REVOKE:
    case OP_PUT:
      return 0;
    case OP_GET:
      if (read_kvs(L, obj, r, value_buf) != 0) goto proto;
      return 0;
    case OP_CREATE:
    case OP_FENCED: {
      int t = dcm__json_field(L, obj, "succeeded");
      r->succeeded = t == LUA_TBOOLEAN && lua_toboolean(L, -1);
      lua_pop(L, 1);
      if (t != LUA_TBOOLEAN && t != LUA_TNIL) goto proto;
      if (op->kind == OP_FENCED) {
        if (r->succeeded) return 0;
        snprintf(detail, n, "the fence's create_revision is not the expected one");
        return DCM_ETCD_EFENCED;
      }
      if (r->succeeded) {
        r->create_revision = r->mod_revision = r->revision;
        return 0;
      }
      /* responses[1].response_range */
      size_t nr;
      int rc = -1;
      if (dcm__json_field(L, obj, "responses") == LUA_TTABLE && dcm__json_isarray(L, -1, &nr) &&
          nr == 1) {
        lua_rawgeti(L, -1, 1);
        if (dcm__json_field(L, -1, "response_range") == LUA_TTABLE)
          rc = read_kvs(L, lua_gettop(L), r, value_buf);
        lua_pop(L, 2);
      }
      lua_pop(L, 1);
      if (rc != 0) goto proto;
      return 0;
    }
  }
proto:
  snprintf(detail, n, "the answer is not what etcd sends");
  return DCM_ETCD_EPROTO;
}

/* ---- attempts -------------------------------------------------------------- */

static void op_unlink(dcm__etcd_op_t *op) {
  dcm__etcd_t *e = op->e;
  if (op->prev) op->prev->next = op->next; else e->ops = op->next;
  if (op->next) op->next->prev = op->prev;
  e->nops--;
}

static void op_free(dcm__etcd_op_t *op) {
  free(op->body);
  free(op);
}

static void finish(dcm__etcd_op_t *op, dcm__etcd_result_t *r) {
  op_unlink(op);
  r->endpoint = op->e->endpoints[op->ep];
  op->cb(op->arg, r);
  op_free(op);
}

static void on_answer(void *arg, const dcm__http_resp_t *resp) {
  dcm__etcd_op_t *op = arg;
  dcm__etcd_t *e = op->e;
  dcm__etcd_result_t r;
  char detail[512];
  char *value_buf = NULL;
  memset(&r, 0, sizeof r);
  detail[0] = '\0';
  op->req = NULL;
  if (resp->status < 0) {
    r.err = resp->status;
    snprintf(detail, sizeof detail, "%s", resp->error ? resp->error : "");
  } else {
    lua_State *L = e->json;
    lua_settop(L, 0);
    if (dcm__json_decode(L, resp->body, resp->len) != 0) {
      lua_pushnil(L); /* error_answer says "(not JSON)" */
      r.err = resp->status == 200 ? DCM_ETCD_EPROTO
                                  : error_answer(L, 1, resp->status, detail, sizeof detail);
      if (resp->status == 200) snprintf(detail, sizeof detail, "the answer is not JSON");
    } else if (resp->status == 200) {
      r.err = parse_ok(L, op, &r, &value_buf, detail, sizeof detail);
    } else {
      r.err = error_answer(L, 1, resp->status, detail, sizeof detail);
    }
    lua_settop(L, 0);
  }
  r.detail = detail;
  if (dcm__etcd_transient(r.err) && ++op->tries < e->n) {
    size_t next = (op->ep + 1) % e->n;
    dcm__debug(e->log, NULL, "etcd: %s %s failed: %s; trying %s", e->endpoints[op->ep],
               op_path[op->kind], detail, e->endpoints[next]);
    if (e->cur == op->ep) e->cur = next;
    op->ep = next;
    free(value_buf);
    int rc = send_attempt(op);
    if (rc == 0) return;
    r.err = rc;
    snprintf(detail, sizeof detail, "could not send the request: %s", dcm__etcd_strerror(rc));
    value_buf = NULL;
  }
  if (dcm__etcd_transient(r.err)) {
    dcm__debug(e->log, NULL, "etcd: %s %s failed: %s", e->endpoints[op->ep], op_path[op->kind],
               detail);
  } else if ((long)op->ep != e->last_ok) {
    if (e->last_ok >= 0)
      dcm__info(e->log, NULL, "etcd: now using %s", e->endpoints[op->ep]);
    e->last_ok = (long)op->ep;
  }
  finish(op, &r);
  free(value_buf);
}

static int send_attempt(dcm__etcd_op_t *op) {
  dcm__etcd_t *e = op->e;
  char url[DCM_ETCD_MAX_ENDPOINT + 32];
  const char *headers[] = {"Content-Type: application/json"};
  dcm__http_opts_t o;
  memset(&o, 0, sizeof o);
  snprintf(url, sizeof url, "%s%s", e->endpoints[op->ep], op_path[op->kind]);
  o.method = "POST";
  o.url = url;
  o.body = op->body;
  o.body_len = op->len;
  o.headers = headers;
  o.nheaders = 1;
  o.protocols = "http,https";
  o.timeout_ms = e->timeout_ms;
  o.connect_timeout_ms = e->timeout_ms;
  o.cacert = e->cacert;
  o.cert = e->cert;
  o.key = e->key;
  o.reuse = 1; /* requests every fraction of a second: keep the connection */
  int rc = dcm__http_request(e->http, &o, on_answer, op, &op->req);
  if (rc != 0) op->req = NULL;
  return rc;
}

/* ---- public ---------------------------------------------------------------- */

static int endpoint_ok(const char *s, size_t n) {
  size_t scheme = n >= 7 && strncmp(s, "http://", 7) == 0    ? 7
                  : n >= 8 && strncmp(s, "https://", 8) == 0 ? 8
                                                             : 0;
  if (scheme == 0 || n == scheme || n > DCM_ETCD_MAX_ENDPOINT) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    /* user info would put a credential in log lines; a path, query or
     * fragment has no place before /v3/ */
    if (c <= 0x20 || c >= 0x7f || c == '@' || c == '?' || c == '#') return 0;
    if (i >= scheme && c == '/') return 0;
  }
  return 1;
}

static int copy_path(const char *in, char **out) {
  if (in == NULL) return 0;
  size_t n = strlen(in);
  if (n == 0 || n > MAX_PATH_ARG) return DCM_EINVAL;
  *out = strdup(in);
  return *out ? 0 : DCM_ENOMEM;
}

static void etcd_free(dcm__etcd_t *e) {
  for (size_t i = 0; i < e->n; i++) free(e->endpoints[i]);
  free(e->cacert);
  free(e->cert);
  free(e->key);
  if (e->json) lua_close(e->json);
  free(e);
}

int dcm__etcd_new(uv_loop_t *loop, dcm__log_t *log, const dcm__etcd_opts_t *o,
                  dcm__etcd_t **out) {
  if (loop == NULL || o == NULL || o->endpoints == NULL || out == NULL) return DCM_EINVAL;
  if (!(o->timeout >= 0 && o->timeout <= 3600)) return DCM_EINVAL;
  dcm__etcd_t *e = calloc(1, sizeof(*e));
  if (e == NULL) return DCM_ENOMEM;
  e->loop = loop;
  e->log = log;
  e->last_ok = -1;
  e->timeout_ms = o->timeout > 0 ? (uint64_t)(o->timeout * 1000.0) : DEFAULT_TIMEOUT_MS;
  if (e->timeout_ms < MIN_TIMEOUT_MS) e->timeout_ms = MIN_TIMEOUT_MS;
  int rc = DCM_EINVAL;
  const char *p = o->endpoints;
  for (;;) {
    const char *comma = strchr(p, ',');
    size_t n = comma ? (size_t)(comma - p) : strlen(p);
    while (n > 0 && *p == ' ') p++, n--;
    while (n > 0 && p[n - 1] == ' ') n--;
    while (n > 0 && p[n - 1] == '/') n--;
    if (!endpoint_ok(p, n) || e->n == DCM_ETCD_MAX_ENDPOINTS) goto fail;
    e->endpoints[e->n] = strndup(p, n);
    if (e->endpoints[e->n] == NULL) goto oom;
    e->n++;
    if (comma == NULL) break;
    p = comma + 1;
  }
  if ((rc = copy_path(o->cacert, &e->cacert)) != 0 || (rc = copy_path(o->cert, &e->cert)) != 0 ||
      (rc = copy_path(o->key, &e->key)) != 0)
    goto fail;
  e->json = dcm__json_new();
  if (e->json == NULL || dcm__http_new(loop, &e->http) != 0) goto oom;
  *out = e;
  return 0;
oom:
  rc = DCM_ENOMEM;
fail:
  etcd_free(e);
  return rc;
}

void dcm__etcd_set_timeout(dcm__etcd_t *e, uint64_t ms) {
  e->timeout_ms = ms < MIN_TIMEOUT_MS ? MIN_TIMEOUT_MS : ms;
}

int dcm__etcd_grant(dcm__etcd_t *e, int64_t ttl, dcm__etcd_cb cb, void *arg,
                    dcm__etcd_op_t **op) {
  if (ttl <= 0) return DCM_EINVAL;
  spec_t s = {.kind = OP_GRANT, .num = ttl};
  return start_op(e, &s, cb, arg, op);
}

int dcm__etcd_keepalive(dcm__etcd_t *e, int64_t id, dcm__etcd_cb cb, void *arg,
                        dcm__etcd_op_t **op) {
  if (id == 0) return DCM_EINVAL;
  spec_t s = {.kind = OP_KEEPALIVE, .num = id};
  return start_op(e, &s, cb, arg, op);
}

int dcm__etcd_revoke(dcm__etcd_t *e, int64_t id, dcm__etcd_cb cb, void *arg,
                     dcm__etcd_op_t **op) {
  if (id == 0) return DCM_EINVAL;
  spec_t s = {.kind = OP_REVOKE, .num = id};
  return start_op(e, &s, cb, arg, op);
}

int dcm__etcd_get(dcm__etcd_t *e, const char *key, dcm__etcd_cb cb, void *arg,
                  dcm__etcd_op_t **op) {
  if (!key_ok(key)) return DCM_EINVAL;
  spec_t s = {.kind = OP_GET, .key = key};
  return start_op(e, &s, cb, arg, op);
}

int dcm__etcd_put(dcm__etcd_t *e, const char *key, const char *value, size_t len,
                  int64_t lease, dcm__etcd_cb cb, void *arg, dcm__etcd_op_t **op) {
  if (!key_ok(key) || (value == NULL && len) || len > DCM_ETCD_MAX_VALUE) return DCM_EINVAL;
  spec_t s = {.kind = OP_PUT, .key = key, .value = value ? value : "", .value_len = len,
              .lease = lease};
  return start_op(e, &s, cb, arg, op);
}

int dcm__etcd_create(dcm__etcd_t *e, const char *key, const char *value, size_t len,
                     int64_t lease, dcm__etcd_cb cb, void *arg, dcm__etcd_op_t **op) {
  if (!key_ok(key) || (value == NULL && len) || len > DCM_ETCD_MAX_VALUE) return DCM_EINVAL;
  spec_t s = {.kind = OP_CREATE, .key = key, .value = value ? value : "", .value_len = len,
              .lease = lease};
  return start_op(e, &s, cb, arg, op);
}

int dcm__etcd_put_fenced(dcm__etcd_t *e, const char *fence, int64_t fence_rev,
                         const char *key, const char *value, size_t len, dcm__etcd_cb cb,
                         void *arg, dcm__etcd_op_t **op) {
  if (!key_ok(fence) || fence_rev <= 0 || !key_ok(key) || (value == NULL && len) ||
      len > DCM_ETCD_MAX_VALUE)
    return DCM_EINVAL;
  spec_t s = {.kind = OP_FENCED, .key = key, .value = value ? value : "", .value_len = len,
              .fence = fence, .fence_rev = fence_rev};
  return start_op(e, &s, cb, arg, op);
}

void dcm__etcd_cancel(dcm__etcd_op_t *op) {
  if (op == NULL) return;
  dcm__http_cancel(op->req);
  op_unlink(op);
  op_free(op);
}

int dcm__etcd_transient(int err) {
  return err == DCM_HTTP_ETRANSPORT || err == DCM_HTTP_ETIMEDOUT || err == DCM_ETCD_EUNAVAILABLE;
}

const char *dcm__etcd_strerror(int err) {
  switch (err) {
    case DCM_ETCD_ENOLEASE: return "the lease has expired";
    case DCM_ETCD_EFENCED: return "fenced: not the holder of that revision";
    case DCM_ETCD_EUNAVAILABLE: return "etcd is unavailable";
    case DCM_ETCD_ESERVER: return "etcd refused the request";
    case DCM_ETCD_EPROTO: return "etcd's answer was not understood";
    default: return dcm__http_strerror(err);
  }
}

static void http_closed(void *arg) {
  dcm__etcd_t *e = arg;
  void (*done)(void *) = e->done;
  void *done_arg = e->done_arg;
  etcd_free(e);
  if (done) done(done_arg);
}

void dcm__etcd_close(dcm__etcd_t *e, void (*done)(void *arg), void *arg) {
  if (e == NULL || e->closing) return;
  e->closing = 1;
  e->done = done;
  e->done_arg = arg;
  while (e->ops) dcm__etcd_cancel(e->ops);
  dcm__http_close(e->http, http_closed, e);
}
