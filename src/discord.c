/* discord.c: see discord.h. The request itself goes through http.c (libcurl
 * on the loop); this file owns the retry policy and the parsing. */
#include "discord.h"

#include <lauxlib.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "json.h"

#define PATH "/gateway/bot"
#define USER_AGENT \
  "DiscordBot (https://github.com/discluster, " DCM_VERSION ") discluster-master/" DCM_VERSION
#define MAX_BODY (64 * 1024)    /* a real answer is a few hundred bytes */
#define MAX_API_BASE 1024
#define MAX_TOKEN 512
#define CONNECT_TIMEOUT_MS 10000
#define TOTAL_TIMEOUT_MS 30000
#define MAX_RETRY_AFTER 3600.0 /* a longer 429 wait is capped, and said so */
#define MIN_RETRY_AFTER 0.05   /* a 429 saying 0 must not become a hot loop */

struct dcm__discord_s {
  uv_loop_t *loop;
  dcm__log_t *log;
  dcm__http_t *http;
  dcm__http_req_t *req;        /* the attempt in flight, or NULL */
  char *auth;                  /* the Authorization header: wiped before free */
  uv_timer_t retry_timer;      /* backoff between attempts */
  int open_handles;            /* the timer and http, until their close cbs */
  char *url;
  int plain_http;
  double backoff_first, backoff_cap;
  int fetching, closing;
  int attempt;                 /* attempts in this fetch, 1-based */
  int failures;                /* consecutive non-429 failures, for backoff */
  dcm__discord_cb cb;
  void *cb_arg;
  void (*done)(void *arg);
  void *done_arg;
  lua_State *json;
};

static void start_attempt(dcm__discord_t *d);

/* ---- handle bookkeeping ---------------------------------------------- */

static void free_discord(dcm__discord_t *d) {
  void (*done)(void *) = d->done;
  void *arg = d->done_arg;
  if (d->auth) {
    memset(d->auth, 0, strlen(d->auth));
    free(d->auth);
  }
  if (d->json) lua_close(d->json);
  free(d->url);
  free(d);
  if (done) done(arg);
}

static void handle_closed(dcm__discord_t *d) {
  if (--d->open_handles == 0 && d->closing) free_discord(d);
}

static void timer_close_cb(uv_handle_t *h) { handle_closed(h->data); }

static void http_closed(void *arg) { handle_closed(arg); }

/* Retry-After header, seconds; -1 if none. An HTTP-date form is ignored:
 * backoff applies instead. */
static double header_retry_after(const dcm__http_resp_t *r) {
  size_t len;
  const char *v = dcm__http_header(r, "retry-after", &len);
  char buf[64];
  if (v == NULL || len == 0 || len >= sizeof buf) return -1;
  memcpy(buf, v, len);
  buf[len] = '\0';
  char *end;
  double secs = strtod(buf, &end);
  if (end == buf || *end != '\0' || !isfinite(secs) || secs < 0) return -1;
  return secs;
}

/* ---- parsing ----------------------------------------------------------- */

static int int_field(lua_State *L, int idx, const char *key, long long min, long long max,
                     int *out, const char *prefix, char *why, size_t n) {
  long long v;
  int t = dcm__json_field(L, idx, key);
  int ok = t == LUA_TNUMBER && dcm__json_tointeger(L, -1, &v) && v >= min && v <= max;
  lua_pop(L, 1);
  if (!ok) {
    snprintf(why, n, "%s%s is missing, not an integer or out of range %lld-%lld", prefix, key,
             min, max);
    return -1;
  }
  *out = (int)v;
  return 0;
}

/* Fills gw from the body on the JSON state's stack top; why says what is
 * wrong otherwise. */
static int parse_gateway(lua_State *L, dcm__gateway_t *gw, char *why, size_t n) {
  int top = lua_gettop(L);
  if (!dcm__json_isobject(L, top)) {
    snprintf(why, n, "the body is not a JSON object");
    return -1;
  }
  size_t len;
  if (dcm__json_field(L, top, "url") != LUA_TSTRING) {
    snprintf(why, n, "url is missing or not a string");
    return -1;
  }
  const char *url = lua_tolstring(L, -1, &len);
  if (len == 0 || len >= sizeof(gw->url) || strlen(url) != len) {
    snprintf(why, n, "url is empty or longer than %zu bytes", sizeof(gw->url) - 1);
    return -1;
  }
  memcpy(gw->url, url, len + 1);
  lua_pop(L, 1);
  if (int_field(L, top, "shards", 1, 1000000, &gw->shards, "", why, n) != 0) return -1;
  if (dcm__json_field(L, top, "session_start_limit") != LUA_TTABLE ||
      !dcm__json_isobject(L, -1)) {
    snprintf(why, n, "session_start_limit is missing or not an object");
    return -1;
  }
  int lim = lua_gettop(L);
  const char *p = "session_start_limit.";
  if (int_field(L, lim, "total", 0, INT32_MAX, &gw->total, p, why, n) != 0 ||
      int_field(L, lim, "remaining", 0, INT32_MAX, &gw->remaining, p, why, n) != 0 ||
      int_field(L, lim, "max_concurrency", 1, 1024, &gw->max_concurrency, p, why, n) != 0)
    return -1;
  int t = dcm__json_field(L, lim, "reset_after");
  double ms = t == LUA_TNUMBER ? lua_tonumber(L, -1) : -1;
  if (!isfinite(ms) || ms < 0 || ms > 1e10) {
    snprintf(why, n, "session_start_limit.reset_after is missing or not a time >= 0 ms");
    return -1;
  }
  gw->reset_after = ms / 1000.0; /* Discord sends milliseconds */
  return 0;
}

/* retry_after from a 429 body, seconds; -1 when absent or not JSON. */
static double body_retry_after(dcm__discord_t *d, const dcm__http_resp_t *r) {
  lua_State *L = d->json;
  double v = -1;
  lua_settop(L, 0);
  if (r->len > 0 && dcm__json_decode(L, r->body, r->len) == 0 &&
      dcm__json_field(L, 1, "retry_after") == LUA_TNUMBER) {
    double s = lua_tonumber(L, -1);
    if (isfinite(s) && s >= 0) v = s;
  }
  lua_settop(L, 0);
  return v;
}

/* ---- attempts -------------------------------------------------------- */

static void on_retry_timer(uv_timer_t *t) { start_attempt(t->data); }

static void retry_in(dcm__discord_t *d, double secs) {
  uint64_t ms = (uint64_t)ceil(secs * 1000.0);
  uv_timer_start(&d->retry_timer, on_retry_timer, ms, 0);
}

/* Retryable failure other than 429: log it and back off. */
static void fail_retry(dcm__discord_t *d, const char *reason) {
  double delay = d->backoff_first;
  d->failures++;
  for (int i = 1; i < d->failures && delay < d->backoff_cap; i++) delay *= 2;
  if (delay > d->backoff_cap) delay = d->backoff_cap;
  dcm__warn(d->log, NULL, "discord: GET %s attempt %d failed: %s; retrying in %.2f s", d->url,
            d->attempt, reason, delay);
  retry_in(d, delay);
}

static void finish(dcm__discord_t *d, int status, const dcm__gateway_t *gw) {
  dcm__discord_cb cb = d->cb;
  void *arg = d->cb_arg;
  d->fetching = 0;
  d->cb = NULL;
  d->cb_arg = NULL;
  cb(d, status, gw, arg);
}

static void attempt_done(void *arg, const dcm__http_resp_t *r);

static void start_attempt(dcm__discord_t *d) {
  const char *headers[] = {d->auth, "Accept: application/json"};
  dcm__http_opts_t o;
  memset(&o, 0, sizeof o);
  o.url = d->url;
  o.protocols = d->plain_http ? "http,https" : "https";
  o.headers = headers;
  o.nheaders = 2;
  o.user_agent = USER_AGENT;
  o.timeout_ms = TOTAL_TIMEOUT_MS;
  o.connect_timeout_ms = CONNECT_TIMEOUT_MS;
  o.max_body = MAX_BODY;
  /* One request now and then: a fresh connection each time, nothing
   * lingers in curl's cache. */
  o.reuse = 0;
  d->attempt++;
  if (dcm__http_request(d->http, &o, attempt_done, d, &d->req) != 0) {
    d->req = NULL;
    fail_retry(d, "could not set up the request (out of memory?)");
    return;
  }
  dcm__log(d->log, d->attempt == 1 ? DCM_LOG_INFO : DCM_LOG_DEBUG, NULL,
           "discord: GET %s (attempt %d)", d->url, d->attempt);
}

/* Classifies a finished attempt: success, permanent error, or a retry. */
static void attempt_done(void *arg, const dcm__http_resp_t *r) {
  dcm__discord_t *d = arg;
  long status = r->status;
  char why[512];
  d->req = NULL;

  if (r->status < 0) {
    if (r->status == DCM_HTTP_ETOOBIG) {
      snprintf(why, sizeof why, "malformed answer: body larger than %d bytes", MAX_BODY);
    } else if (r->status == DCM_HTTP_EURL) {
      dcm__error(d->log, NULL, "discord: GET %s failed: %s; check api_base, not retrying",
                 d->url, r->error);
      finish(d, DCM_EDISCORD, NULL);
      return;
    } else {
      snprintf(why, sizeof why, "%s", r->error);
    }
    fail_retry(d, why);
    return;
  }
  if (status == 401 || status == 403) {
    dcm__error(d->log, NULL, "discord: Discord rejected the bot token (HTTP %ld); "
               "check the token, not retrying", status);
    finish(d, DCM_EAUTH, NULL);
    return;
  }
  if (status == 429) {
    double wait = body_retry_after(d, r);
    const char *from = "retry_after in the body";
    if (wait < 0) {
      wait = header_retry_after(r);
      from = "Retry-After header";
    }
    if (wait < 0) {
      fail_retry(d, "HTTP 429 without retry_after or Retry-After");
      return;
    }
    if (wait > MAX_RETRY_AFTER) {
      dcm__warn(d->log, NULL, "discord: 429 asks for %.0f s; capping the wait at %.0f s", wait,
                MAX_RETRY_AFTER);
      wait = MAX_RETRY_AFTER;
    }
    if (wait < MIN_RETRY_AFTER) wait = MIN_RETRY_AFTER;
    dcm__warn(d->log, NULL, "discord: GET %s attempt %d rate limited (HTTP 429); "
              "retrying in %.2f s (%s)", d->url, d->attempt, wait, from);
    retry_in(d, wait);
    return;
  }
  if (status >= 500 && status <= 599) {
    snprintf(why, sizeof why, "HTTP %ld", status);
    fail_retry(d, why);
    return;
  }
  if (status >= 300 && status <= 399) {
    char loc[256];
    snprintf(loc, sizeof loc, "%s", r->location ? r->location : "(none)");
    dcm__error(d->log, NULL, "discord: GET %s answered HTTP %ld redirecting to %s; redirects "
               "are not followed (check api_base), not retrying", d->url, status, loc);
    finish(d, DCM_EDISCORD, NULL);
    return;
  }
  if (status < 200 || status > 299) {
    dcm__error(d->log, NULL, "discord: GET %s failed: HTTP %ld (wrong api_base?), not retrying",
               d->url, status);
    finish(d, DCM_EDISCORD, NULL);
    return;
  }
  dcm__gateway_t gw;
  memset(&gw, 0, sizeof gw);
  lua_State *L = d->json;
  lua_settop(L, 0);
  char detail[160];
  int bad = dcm__json_decode(L, r->body, r->len) != 0;
  if (bad) snprintf(detail, sizeof detail, "not JSON");
  else bad = parse_gateway(L, &gw, detail, sizeof detail) != 0;
  lua_settop(L, 0);
  if (bad) {
    snprintf(why, sizeof why, "malformed answer: %s", detail);
    fail_retry(d, why);
    return;
  }
  dcm__info(d->log, NULL, "discord: gateway %s, %d shards, session start limit %d of %d left "
            "(resets in %.1f s), max concurrency %d", gw.url, gw.shards, gw.remaining, gw.total,
            gw.reset_after, gw.max_concurrency);
  finish(d, 0, &gw);
}

/* ---- public ------------------------------------------------------------ */

int dcm__discord_new(uv_loop_t *loop, const char *api_base, const char *token,
                     dcm__log_t *log, dcm__discord_t **out) {
  if (loop == NULL || api_base == NULL || token == NULL || out == NULL) return DCM_EINVAL;
  int plain = strncmp(api_base, "http://", 7) == 0;
  if (!plain && strncmp(api_base, "https://", 8) != 0) return DCM_EINVAL;
  size_t blen = strlen(api_base), tlen = strlen(token);
  if (blen > MAX_API_BASE || tlen == 0 || tlen > MAX_TOKEN) return DCM_EINVAL;
  for (size_t i = 0; i < blen; i++)
    if ((unsigned char)api_base[i] <= 0x20 || api_base[i] == 0x7f) return DCM_EINVAL;
  for (size_t i = 0; i < tlen; i++) /* a CR/LF would inject headers */
    if ((unsigned char)token[i] < 0x20 || token[i] == 0x7f) return DCM_EINVAL;
  while (blen > 0 && api_base[blen - 1] == '/') blen--;

  dcm__discord_t *d = calloc(1, sizeof(*d));
  if (d == NULL) return DCM_ENOMEM;
  d->loop = loop;
  d->log = log;
  d->plain_http = plain;
  d->backoff_first = 1;
  d->backoff_cap = 60;
  d->url = malloc(blen + sizeof(PATH));
  d->json = dcm__json_new();
  d->auth = malloc(tlen + 32);
  if (d->url == NULL || d->json == NULL || d->auth == NULL) goto oom;
  memcpy(d->url, api_base, blen);
  memcpy(d->url + blen, PATH, sizeof(PATH));
  snprintf(d->auth, tlen + 32, "Authorization: Bot %s", token);
  if (dcm__http_new(loop, &d->http) != 0) goto oom;
  uv_timer_init(loop, &d->retry_timer);
  d->retry_timer.data = d;
  d->open_handles = 2;
  if (plain)
    dcm__warn(log, NULL, "discord: %s is plain http://: the bot token travels unencrypted "
              "(meant for tests only)", d->url);
  *out = d;
  return 0;
oom:
  d->done = NULL;
  free_discord(d);
  return DCM_ENOMEM;
}

void dcm__discord_set_backoff(dcm__discord_t *d, double first, double cap) {
  if (!isfinite(first) || !isfinite(cap) || first <= 0 || cap < first || cap > 86400) return;
  d->backoff_first = first;
  d->backoff_cap = cap;
}

int dcm__discord_fetch(dcm__discord_t *d, dcm__discord_cb cb, void *arg) {
  if (d == NULL || cb == NULL) return DCM_EINVAL;
  if (d->fetching || d->closing) return DCM_ESTATE;
  d->fetching = 1;
  d->cb = cb;
  d->cb_arg = arg;
  d->attempt = 0;
  d->failures = 0;
  /* Through the retry timer so cb can never run inside this call. */
  uv_timer_start(&d->retry_timer, on_retry_timer, 0, 0);
  return 0;
}

void dcm__discord_close(dcm__discord_t *d, void (*done)(void *arg), void *arg) {
  if (d == NULL || d->closing) return;
  if (d->fetching) dcm__debug(d->log, NULL, "discord: fetch canceled by close");
  d->closing = 1;
  d->fetching = 0;
  d->cb = NULL;
  d->done = done;
  d->done_arg = arg;
  dcm__http_cancel(d->req);
  d->req = NULL;
  dcm__http_close(d->http, http_closed, d);
  uv_close((uv_handle_t *)&d->retry_timer, timer_close_cb);
}
