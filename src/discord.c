/* discord.c: see discord.h. Follows the shape of curl's multi-uv example:
 * curl tells us which sockets to watch and when to wake it; we drive it with
 * curl_multi_socket_action from libuv callbacks and never block. */
#include "discord.h"

#include <curl/curl.h>
#include <lauxlib.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "json.h"

#define PATH "/gateway/bot"
#define USER_AGENT \
  "DiscordBot (https://github.com/discluster, " DCM_VERSION ") discluster-master/" DCM_VERSION
#define MAX_BODY (64 * 1024)    /* a real answer is a few hundred bytes */
#define MAX_API_BASE 1024
#define MAX_TOKEN 512
#define CONNECT_TIMEOUT_MS 10000L
#define TOTAL_TIMEOUT_MS 30000L
#define MAX_RETRY_AFTER 3600.0 /* a longer 429 wait is capped, and said so */
#define MIN_RETRY_AFTER 0.05   /* a 429 saying 0 must not become a hot loop */

/* One per socket curl asks us to watch; freed in its close callback. */
typedef struct sock_s {
  uv_poll_t poll;
  curl_socket_t fd;
  dcm__discord_t *d;
  struct sock_s *prev, *next;
} sock_t;

struct dcm__discord_s {
  uv_loop_t *loop;
  dcm__log_t *log;
  CURLM *multi;
  CURL *easy;                  /* the attempt in flight, or NULL */
  struct curl_slist *headers;  /* holds the token: wiped before free */
  uv_timer_t curl_timer;       /* curl's own timeout */
  uv_timer_t retry_timer;      /* backoff between attempts */
  sock_t *socks;               /* watched sockets */
  int open_handles;            /* uv handles not yet through their close cb */
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
  char *body;                  /* MAX_BODY + 1 bytes */
  size_t body_len;
  int body_overflow;
  double header_retry_after;   /* Retry-After header, seconds; -1 if none */
  char errbuf[CURL_ERROR_SIZE];
};

/* curl_global_init is not thread-safe: this once-flag is the one piece of
 * process-wide state the module keeps. */
static uv_once_t curl_once = UV_ONCE_INIT;
static CURLcode curl_once_rc = CURLE_FAILED_INIT;
static void curl_init_once(void) { curl_once_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

static void start_attempt(dcm__discord_t *d);
static void check_multi_info(dcm__discord_t *d);

/* ---- handle bookkeeping ---------------------------------------------- */

static void free_discord(dcm__discord_t *d) {
  void (*done)(void *) = d->done;
  void *arg = d->done_arg;
  for (struct curl_slist *h = d->headers; h; h = h->next)
    if (h->data) memset(h->data, 0, strlen(h->data));
  curl_slist_free_all(d->headers);
  if (d->json) lua_close(d->json);
  free(d->body);
  free(d->url);
  free(d);
  if (done) done(arg);
}

static void handle_closed(dcm__discord_t *d) {
  if (--d->open_handles == 0 && d->closing) free_discord(d);
}

static void timer_close_cb(uv_handle_t *h) { handle_closed(h->data); }

static void sock_close_cb(uv_handle_t *h) {
  sock_t *s = h->data;
  dcm__discord_t *d = s->d;
  free(s);
  handle_closed(d);
}

static void sock_destroy(sock_t *s) {
  dcm__discord_t *d = s->d;
  if (s->prev) s->prev->next = s->next; else d->socks = s->next;
  if (s->next) s->next->prev = s->prev;
  s->prev = s->next = NULL;
  uv_close((uv_handle_t *)&s->poll, sock_close_cb);
}

/* ---- curl <-> libuv glue --------------------------------------------- */

static void on_poll(uv_poll_t *p, int status, int events) {
  sock_t *s = p->data;
  dcm__discord_t *d = s->d;
  int flags = 0, running;
  if (status < 0) flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  curl_multi_socket_action(d->multi, s->fd, flags, &running);
  check_multi_info(d);
}

static void on_curl_timer(uv_timer_t *t) {
  dcm__discord_t *d = t->data;
  int running;
  curl_multi_socket_action(d->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_multi_info(d);
}

static int socket_fn(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
  dcm__discord_t *d = userp;
  sock_t *s = socketp;
  (void)easy;
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      curl_multi_assign(d->multi, fd, NULL);
      sock_destroy(s);
    }
    return 0;
  }
  if (d->closing) return 0;
  if (s == NULL) {
    s = calloc(1, sizeof(*s));
    if (s == NULL) return -1;
    if (uv_poll_init_socket(d->loop, &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    s->fd = fd;
    s->d = d;
    s->poll.data = s;
    s->next = d->socks;
    if (d->socks) d->socks->prev = s;
    d->socks = s;
    d->open_handles++;
    curl_multi_assign(d->multi, fd, s);
  }
  int events = 0;
  if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) events |= UV_READABLE;
  if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) events |= UV_WRITABLE;
  return uv_poll_start(&s->poll, events, on_poll) == 0 ? 0 : -1;
}

static int timer_fn(CURLM *multi, long timeout_ms, void *userp) {
  dcm__discord_t *d = userp;
  (void)multi;
  if (d->closing) return 0;
  if (timeout_ms < 0) {
    uv_timer_stop(&d->curl_timer);
    return 0;
  }
  /* A zero timeout still goes through the loop: curl must not be
   * re-entered from inside its own callback. */
  return uv_timer_start(&d->curl_timer, on_curl_timer, (uint64_t)timeout_ms, 0) == 0 ? 0 : -1;
}

static size_t write_fn(char *ptr, size_t size, size_t n, void *userp) {
  dcm__discord_t *d = userp;
  size_t len = size * n;
  if (len > MAX_BODY - d->body_len) {
    d->body_overflow = 1;
    return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
  }
  memcpy(d->body + d->body_len, ptr, len);
  d->body_len += len;
  return len;
}

static size_t header_fn(char *buf, size_t size, size_t n, void *userp) {
  dcm__discord_t *d = userp;
  size_t len = size * n;
  static const char name[] = "retry-after:";
  if (len >= 5 && memcmp(buf, "HTTP/", 5) == 0) d->header_retry_after = -1; /* new response */
  if (len > sizeof(name) - 1 && len < 64 && strncasecmp(buf, name, sizeof(name) - 1) == 0) {
    char v[64];
    memcpy(v, buf + sizeof(name) - 1, len - (sizeof(name) - 1));
    v[len - (sizeof(name) - 1)] = '\0';
    char *end;
    double secs = strtod(v, &end);
    while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n') end++;
    /* An HTTP-date form is ignored: backoff applies instead. */
    if (end != v && *end == '\0' && isfinite(secs) && secs >= 0) d->header_retry_after = secs;
  }
  return len;
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
static double body_retry_after(dcm__discord_t *d) {
  lua_State *L = d->json;
  double v = -1;
  lua_settop(L, 0);
  if (d->body_len > 0 && dcm__json_decode(L, d->body, d->body_len) == 0 &&
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

static void start_attempt(dcm__discord_t *d) {
  CURL *e = curl_easy_init();
  d->attempt++;
  d->body_len = 0;
  d->body_overflow = 0;
  d->header_retry_after = -1;
  d->errbuf[0] = '\0';
  if (e == NULL) goto fail;
  const char *protos = d->plain_http ? "http,https" : "https";
  int bad = 0;
  bad |= curl_easy_setopt(e, CURLOPT_URL, d->url) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, protos) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "https") != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_HTTPHEADER, d->headers) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_USERAGENT, USER_AGENT) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_TIMEOUT_MS) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, TOTAL_TIMEOUT_MS) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)MAX_BODY) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
  /* One request now and then: a fresh connection each time keeps socket
   * bookkeeping simple and nothing lingers in curl's cache. */
  bad |= curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L) != CURLE_OK;
  /* Closing must not wait for a slow DNS resolver thread. */
  bad |= curl_easy_setopt(e, CURLOPT_QUICK_EXIT, 1L) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_fn) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_WRITEDATA, d) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_fn) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_HEADERDATA, d) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, d->errbuf) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_PRIVATE, d) != CURLE_OK;
  if (bad || curl_multi_add_handle(d->multi, e) != CURLM_OK) goto fail;
  d->easy = e;
  dcm__log(d->log, d->attempt == 1 ? DCM_LOG_INFO : DCM_LOG_DEBUG, NULL,
           "discord: GET %s (attempt %d)", d->url, d->attempt);
  return;
fail:
  if (e) curl_easy_cleanup(e);
  fail_retry(d, "could not set up the request (out of memory?)");
}

/* Classifies a finished attempt: success, permanent error, or a retry. */
static void attempt_done(dcm__discord_t *d, CURLcode rc) {
  long status = 0;
  char why[512];
  curl_easy_getinfo(d->easy, CURLINFO_RESPONSE_CODE, &status);
  char *location = NULL;
  curl_easy_getinfo(d->easy, CURLINFO_REDIRECT_URL, &location);
  char loc[256];
  snprintf(loc, sizeof loc, "%s", location ? location : "(none)");
  curl_multi_remove_handle(d->multi, d->easy);
  curl_easy_cleanup(d->easy);
  d->easy = NULL;

  if (rc != CURLE_OK) {
    if (d->body_overflow || rc == CURLE_FILESIZE_EXCEEDED) {
      snprintf(why, sizeof why, "malformed answer: body larger than %d bytes", MAX_BODY);
    } else if (rc == CURLE_UNSUPPORTED_PROTOCOL || rc == CURLE_URL_MALFORMAT) {
      dcm__error(d->log, NULL, "discord: GET %s failed: %s (%s); check api_base, not retrying",
                 d->url, curl_easy_strerror(rc), d->errbuf);
      finish(d, DCM_EDISCORD, NULL);
      return;
    } else {
      snprintf(why, sizeof why, "%s (%s)", curl_easy_strerror(rc),
               d->errbuf[0] ? d->errbuf : "no detail");
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
    double body = body_retry_after(d), wait = body;
    const char *from = "retry_after in the body";
    if (wait < 0) {
      wait = d->header_retry_after;
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
  int bad = dcm__json_decode(L, d->body, d->body_len) != 0;
  if (bad) snprintf(detail, sizeof detail, "not JSON");
  else bad = parse_gateway(L, &gw, detail, sizeof detail) != 0;
  lua_settop(L, 0);
  if (bad) snprintf(why, sizeof why, "malformed answer: %s", detail);
  if (bad) {
    fail_retry(d, why);
    return;
  }
  dcm__info(d->log, NULL, "discord: gateway %s, %d shards, session start limit %d of %d left "
            "(resets in %.1f s), max concurrency %d", gw.url, gw.shards, gw.remaining, gw.total,
            gw.reset_after, gw.max_concurrency);
  finish(d, 0, &gw);
}

static void check_multi_info(dcm__discord_t *d) {
  CURLMsg *m;
  int left;
  /* d->multi goes NULL if a callback closed d. */
  while (d->multi && (m = curl_multi_info_read(d->multi, &left)) != NULL) {
    if (m->msg == CURLMSG_DONE && m->easy_handle == d->easy) attempt_done(d, m->data.result);
  }
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

  uv_once(&curl_once, curl_init_once);
  if (curl_once_rc != CURLE_OK) return DCM_ENOMEM;

  dcm__discord_t *d = calloc(1, sizeof(*d));
  if (d == NULL) return DCM_ENOMEM;
  d->loop = loop;
  d->log = log;
  d->plain_http = plain;
  d->backoff_first = 1;
  d->backoff_cap = 60;
  d->url = malloc(blen + sizeof(PATH));
  d->body = malloc(MAX_BODY + 1);
  d->json = dcm__json_new();
  char *auth = malloc(tlen + 32);
  if (d->url == NULL || d->body == NULL || d->json == NULL || auth == NULL) goto oom;
  memcpy(d->url, api_base, blen);
  memcpy(d->url + blen, PATH, sizeof(PATH));
  snprintf(auth, tlen + 32, "Authorization: Bot %s", token);
  struct curl_slist *h = curl_slist_append(NULL, auth);
  memset(auth, 0, tlen + 32);
  free(auth);
  auth = NULL;
  if (h == NULL) goto oom;
  d->headers = h;
  h = curl_slist_append(d->headers, "Accept: application/json");
  if (h == NULL) goto oom;
  d->multi = curl_multi_init();
  if (d->multi == NULL) goto oom;
  curl_multi_setopt(d->multi, CURLMOPT_SOCKETFUNCTION, socket_fn);
  curl_multi_setopt(d->multi, CURLMOPT_SOCKETDATA, d);
  curl_multi_setopt(d->multi, CURLMOPT_TIMERFUNCTION, timer_fn);
  curl_multi_setopt(d->multi, CURLMOPT_TIMERDATA, d);
  uv_timer_init(loop, &d->curl_timer);
  uv_timer_init(loop, &d->retry_timer);
  d->curl_timer.data = d;
  d->retry_timer.data = d;
  d->open_handles = 2;
  if (plain)
    dcm__warn(log, NULL, "discord: %s is plain http://: the bot token travels unencrypted "
              "(meant for tests only)", d->url);
  *out = d;
  return 0;
oom:
  free(auth);
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
  if (d->easy) {
    curl_multi_remove_handle(d->multi, d->easy);
    curl_easy_cleanup(d->easy);
    d->easy = NULL;
  }
  curl_multi_cleanup(d->multi);
  d->multi = NULL;
  while (d->socks) sock_destroy(d->socks); /* any curl did not hand back */
  uv_close((uv_handle_t *)&d->curl_timer, timer_close_cb);
  uv_close((uv_handle_t *)&d->retry_timer, timer_close_cb);
}
