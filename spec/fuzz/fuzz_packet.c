/*
 * fuzz_packet.c: protocol v1 packets as JSON text. Each input goes through
 * the MASTER's decoder (dcm__packet_decode with the bound session.c uses)
 * and the agent's (dcm__ctl_decode, unbounded before `initialise` and with
 * a small shard_count after it). Checks what the decoders promise: the Lua
 * stack is left as found, a failure says why and keeps nothing, a success
 * holds only bounded, valid fields; and MASTER's decoder (whose canonical
 * heartbeat skips cjson) gives what cjson alone gives, field for field.
 */
#include <lua.h>
#include <math.h>
#include <string.h>

#include "fuzz.h"
#include "json.h"
#include "packets.h"
#include "protocol.h"

#define MASTER_MAX ((size_t)1 << 20) /* session.c: the 1 MiB message cap bounds the rest */
#define AGENT_SMALL 8                /* an agent initialised with 8 shards */

static lua_State *L;

static void check_shards(const int *v, size_t n, size_t max) {
  FUZZ_CHECK(n <= max);
  FUZZ_CHECK(n == 0 || v != NULL);
  for (size_t i = 0; i < n; i++) FUZZ_CHECK(v[i] >= 0);
}

static int same_text(const char *a, const char *b) {
  return a == b || (a && b && strcmp(a, b) == 0);
}

/* dcm__packet_decode against cjson alone: the same result in every field. */
static void same_as_cjson(const uint8_t *data, size_t size, int r, const dcm__packet_t *p,
                          const char *err) {
  dcm__packet_t q;
  char qerr[192];
  int rq = dcm__packet_decode_json(L, (const char *)data, size, MASTER_MAX, &q, qerr, sizeof qerr);
  FUZZ_CHECK(lua_gettop(L) == 0);
  FUZZ_CHECK(r == rq && strcmp(err, qerr) == 0);
  if (r != 0) return;
  FUZZ_CHECK(p->op == q.op && strcmp(p->id, q.id) == 0 && p->cores == q.cores &&
             memcmp(&p->loadavg, &q.loadavg, sizeof q.loadavg) == 0 &&
             p->standby == q.standby && p->has_shards == q.has_shards &&
             strcmp(p->version, q.version) == 0 && p->identify_queue == q.identify_queue &&
             p->handoff == q.handoff && p->shard_count == q.shard_count);
  FUZZ_CHECK(p->nshards == q.nshards &&
             (q.nshards == 0 || memcmp(p->shards, q.shards, q.nshards * sizeof(int)) == 0));
  FUZZ_CHECK(p->code == q.code && strcmp(p->message, q.message) == 0 && p->shard == q.shard &&
             p->ack_op == q.ack_op && p->has_loadavg == q.has_loadavg &&
             p->has_failed == q.has_failed && same_text(p->failed_json, q.failed_json) &&
             p->nsessions == q.nsessions && p->nbad == q.nbad);
  dcm__packet_clear(&q);
}

static void master(const uint8_t *data, size_t size) {
  dcm__packet_t p;
  char err[192];
  int r = dcm__packet_decode(L, (const char *)data, size, MASTER_MAX, &p, err, sizeof err);
  FUZZ_CHECK(lua_gettop(L) == 0);
  same_as_cjson(data, size, r, &p, err);
  if (r != 0) {
    FUZZ_CHECK(r == DCM_ERR_MALFORMED || r == DCM_ERR_UNKNOWN_OP);
    FUZZ_CHECK(err[0] != '\0' && memchr(err, '\0', sizeof err) != NULL);
    FUZZ_CHECK(p.shards == NULL && p.sessions == NULL && p.failed_json == NULL);
    return;
  }
  FUZZ_CHECK(p.op >= 0 && p.op <= DCM_OP_MAX);
  check_shards(p.shards, p.nshards, MASTER_MAX);
  FUZZ_CHECK(strlen(p.message) <= DCM_MESSAGE_MAX);
  switch (p.op) {
    case DCM_OP_INFO:
      FUZZ_CHECK(dcm__valid_id(p.id, strlen(p.id)));
      FUZZ_CHECK(p.cores >= 1 && isfinite(p.loadavg) && p.loadavg >= 0);
      FUZZ_CHECK(p.shard_count >= 0);
      break;
    case DCM_OP_HEARTBEAT:
      FUZZ_CHECK(!p.has_loadavg || (isfinite(p.loadavg) && p.loadavg >= 0));
      for (size_t i = 1; i < p.nshards; i++) FUZZ_CHECK(p.shards[i - 1] < p.shards[i]);
      FUZZ_CHECK(p.failed_json == NULL || strlen(p.failed_json) <= DCM_FAILED_JSON_MAX);
      FUZZ_CHECK(p.failed_json == NULL || p.has_failed);
      break;
    case DCM_OP_SESSIONS:
      FUZZ_CHECK(p.nsessions + p.nbad <= DCM_SESSIONS_MAX);
      for (size_t i = 0; i < p.nsessions; i++) {
        const dcm__session_t *s = &p.sessions[i];
        FUZZ_CHECK(s->shard >= 0);
        FUZZ_CHECK(dcm__session_valid(s->session_id, strlen(s->session_id), s->seq,
                                      s->resume_url, strlen(s->resume_url)));
      }
      break;
    case DCM_OP_IDENTIFY:
    case DCM_OP_RELEASE:
      FUZZ_CHECK(p.shard >= 0);
      break;
    case DCM_OP_FATAL:
      FUZZ_CHECK(p.shard >= -1);
      break;
    case DCM_OP_ACK:
      FUZZ_CHECK(p.ack_op >= 0 && p.ack_op <= 255);
      break;
    default:
      break;
  }
  dcm__packet_clear(&p);
}

static void agent(const uint8_t *data, size_t size, size_t max) {
  dcm__ctl_packet_t p;
  char err[160];
  int r = dcm__ctl_decode(L, (const char *)data, size, max, &p, err, sizeof err);
  FUZZ_CHECK(lua_gettop(L) == 0);
  if (r != 0) {
    FUZZ_CHECK(r == DCM_ERR_MALFORMED || r == DCM_ERR_UNKNOWN_OP);
    FUZZ_CHECK(err[0] != '\0' && memchr(err, '\0', sizeof err) != NULL);
    FUZZ_CHECK(p.shards == NULL && p.token == NULL);
    return;
  }
  FUZZ_CHECK(p.op >= 0 && p.op <= DCM_OP_MAX);
  check_shards(p.shards, p.nshards, max);
  FUZZ_CHECK(strlen(p.message) <= DCM_MESSAGE_MAX);
  if (p.op == DCM_OP_INITIALISE) {
    FUZZ_CHECK(p.token != NULL && strlen(p.token) <= DCM_CTL_TOKEN_MAX);
    FUZZ_CHECK(p.heartbeat_ms >= 1 && p.shard_count >= 1 && p.max_concurrency >= 1);
    FUZZ_CHECK(p.gateway_url[0] != '\0' &&
               dcm__ctl_gateway_url_ok(p.gateway_url, strlen(p.gateway_url)));
  }
  if (p.op == DCM_OP_GRANT) FUZZ_CHECK(p.shard >= 0);
  if (p.op == DCM_OP_ERROR) FUZZ_CHECK(p.shard >= -1);
  dcm__ctl_packet_clear(&p);
  FUZZ_CHECK(p.token == NULL && p.shards == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (L == NULL && (L = dcm__json_new()) == NULL) abort();
  master(data, size);
  agent(data, size, MASTER_MAX);
  agent(data, size, AGENT_SMALL);
  return 0;
}
