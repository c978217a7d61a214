/* http.c: see http.h. curl tells us which sockets to watch and when to wake
 * it; we drive it with curl_multi_socket_action from libuv callbacks and
 * never block. Finished transfers are taken off curl first and their
 * callbacks run afterwards, so a callback may start, cancel or close
 * anything. */
#include "http.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "discluster/master.h"

#define DEFAULT_TIMEOUT_MS 30000
#define DEFAULT_CONNECT_TIMEOUT_MS 10000

/* One per socket curl asks us to watch; freed in its close callback. */
typedef struct sock_s {
  uv_poll_t poll;
  curl_socket_t fd;
  dcm__http_t *h;
  struct sock_s *prev, *next;
} sock_t;

struct dcm__http_req_s {
  dcm__http_t *h;
  CURL *easy;                 /* NULL once finished */
  struct curl_slist *headers; /* wiped before free */
  dcm__http_cb cb;
  void *arg;
  char *body;                 /* grows up to max + 1 */
  size_t len, cap, max;
  int overflow;
  char *hdrs;                 /* the last response's header lines */
  size_t hdrs_len;
  /* filled when the transfer ends */
  CURLcode rc;
  long status;
  char *location;
  char errbuf[CURL_ERROR_SIZE];
  struct dcm__http_req_s *prev, *next; /* h->active, then h->finished */
  int finished;
  int delivering;             /* its cb is running: cancel is a no-op */
};

struct dcm__http_s {
  uv_loop_t *loop;
  CURLM *multi;
  uv_timer_t timer; /* curl's own timeout */
  sock_t *socks;
  dcm__http_req_t *active, *finished, *finished_tail;
  size_t nreq;
  int open_handles; /* uv handles not yet through their close cb */
  int closing, delivering;
  void (*done)(void *arg);
  void *done_arg;
};

/* curl_global_init is not thread-safe: this once-flag is the one piece of
 * process-wide state the module keeps. */
static uv_once_t curl_once = UV_ONCE_INIT;
static CURLcode curl_once_rc = CURLE_FAILED_INIT;
static void curl_init_once(void) { curl_once_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

static void check_multi_info(dcm__http_t *h);

/* ---- bookkeeping --------------------------------------------------------- */

static void list_unlink(dcm__http_req_t **head, dcm__http_req_t *r) {
  if (r->prev) r->prev->next = r->next; else *head = r->next;
  if (r->next) r->next->prev = r->prev;
  r->prev = r->next = NULL;
}

static void req_free(dcm__http_req_t *r) {
  if (r->easy) {
    curl_multi_remove_handle(r->h->multi, r->easy);
    curl_easy_cleanup(r->easy);
  }
  for (struct curl_slist *s = r->headers; s; s = s->next)
    if (s->data) memset(s->data, 0, strlen(s->data));
  curl_slist_free_all(r->headers);
  r->h->nreq--;
  free(r->body);
  free(r->hdrs);
  free(r->location);
  free(r);
}

/* Takes r off whichever list holds it. */
static void req_unlink(dcm__http_req_t *r) {
  dcm__http_t *h = r->h;
  if (!r->finished) {
    list_unlink(&h->active, r);
    return;
  }
  if (h->finished_tail == r) h->finished_tail = r->prev;
  list_unlink(&h->finished, r);
}

static void http_free(dcm__http_t *h) {
  void (*done)(void *) = h->done;
  void *arg = h->done_arg;
  free(h);
  if (done) done(arg);
}

static void handle_closed(dcm__http_t *h) {
  if (--h->open_handles == 0 && h->closing) http_free(h);
}

static void timer_close_cb(uv_handle_t *t) { handle_closed(t->data); }

static void sock_close_cb(uv_handle_t *p) {
  sock_t *s = p->data;
  dcm__http_t *h = s->h;
  free(s);
  handle_closed(h);
}

static void sock_destroy(sock_t *s) {
  dcm__http_t *h = s->h;
  if (s->prev) s->prev->next = s->next; else h->socks = s->next;
  if (s->next) s->next->prev = s->prev;
  s->prev = s->next = NULL;
  uv_close((uv_handle_t *)&s->poll, sock_close_cb);
}

/* ---- curl <-> libuv -------------------------------------------------------- */

static void on_poll(uv_poll_t *p, int status, int events) {
  sock_t *s = p->data;
  dcm__http_t *h = s->h;
  int flags = 0, running;
  if (status < 0) flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  curl_multi_socket_action(h->multi, s->fd, flags, &running);
  check_multi_info(h);
}

static void on_timer(uv_timer_t *t) {
  dcm__http_t *h = t->data;
  int running;
  curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_multi_info(h);
}

static int socket_fn(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
  dcm__http_t *h = userp;
  sock_t *s = socketp;
  (void)easy;
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      if (!h->closing) curl_multi_assign(h->multi, fd, NULL);
      sock_destroy(s);
    }
    return 0;
  }
  if (h->closing) return 0;
  if (s == NULL) {
    s = calloc(1, sizeof(*s));
    if (s == NULL) return -1;
    if (uv_poll_init_socket(h->loop, &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    s->fd = fd;
    s->h = h;
    s->poll.data = s;
    s->next = h->socks;
    if (h->socks) h->socks->prev = s;
    h->socks = s;
    h->open_handles++;
    curl_multi_assign(h->multi, fd, s);
  }
  int events = 0;
  if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) events |= UV_READABLE;
  if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) events |= UV_WRITABLE;
  return uv_poll_start(&s->poll, events, on_poll) == 0 ? 0 : -1;
}

static int timer_fn(CURLM *multi, long timeout_ms, void *userp) {
  dcm__http_t *h = userp;
  (void)multi;
  if (h->closing) return 0;
  if (timeout_ms < 0) {
    uv_timer_stop(&h->timer);
    return 0;
  }
  /* A zero timeout still goes through the loop: curl must not be
   * re-entered from inside its own callback. */
  return uv_timer_start(&h->timer, on_timer, (uint64_t)timeout_ms, 0) == 0 ? 0 : -1;
}

static size_t write_fn(char *ptr, size_t size, size_t n, void *userp) {
  dcm__http_req_t *r = userp;
  size_t len = size * n;
  if (len > r->max - r->len) {
    r->overflow = 1;
    return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
  }
  if (r->len + len + 1 > r->cap) {
    size_t cap = r->cap ? r->cap : 1024;
    while (cap < r->len + len + 1) cap *= 2;
    if (cap > r->max + 1) cap = r->max + 1;
    char *nb = realloc(r->body, cap);
    if (nb == NULL) return 0;
    r->body = nb;
    r->cap = cap;
  }
  memcpy(r->body + r->len, ptr, len);
  r->len += len;
  return len;
}

static size_t header_fn(char *buf, size_t size, size_t n, void *userp) {
  dcm__http_req_t *r = userp;
  size_t len = size * n;
  if (len >= 5 && memcmp(buf, "HTTP/", 5) == 0) r->hdrs_len = 0; /* a new response */
  if (len > DCM_HTTP_MAX_HEADERS - r->hdrs_len) return len;      /* past the bound: dropped */
  if (r->hdrs == NULL) {
    r->hdrs = malloc(DCM_HTTP_MAX_HEADERS + 1);
    if (r->hdrs == NULL) return len;
  }
  memcpy(r->hdrs + r->hdrs_len, buf, len);
  r->hdrs_len += len;
  r->hdrs[r->hdrs_len] = '\0';
  return len;
}

/* ---- finishing ------------------------------------------------------------- */

/* Moves a transfer curl has finished to h->finished, off curl. */
static void req_finished(dcm__http_req_t *r, CURLcode rc) {
  dcm__http_t *h = r->h;
  char *loc = NULL;
  r->rc = rc;
  curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
  curl_easy_getinfo(r->easy, CURLINFO_REDIRECT_URL, &loc);
  if (loc) r->location = strdup(loc);
  curl_multi_remove_handle(h->multi, r->easy);
  curl_easy_cleanup(r->easy);
  r->easy = NULL;
  list_unlink(&h->active, r);
  r->finished = 1;
  r->prev = h->finished_tail;
  if (h->finished_tail) h->finished_tail->next = r; else h->finished = r;
  h->finished_tail = r;
}

static void deliver(dcm__http_req_t *r) {
  dcm__http_resp_t resp;
  char error[CURL_ERROR_SIZE + 128];
  memset(&resp, 0, sizeof resp);
  resp.body = r->body ? r->body : "";
  resp.len = r->body ? r->len : 0;
  if (r->body) r->body[r->len] = '\0';
  resp.location = r->location;
  resp.headers = r->hdrs ? r->hdrs : "";
  resp.headers_len = r->hdrs ? r->hdrs_len : 0;
  if (r->rc == CURLE_OK) {
    resp.status = (int)r->status;
  } else {
    if (r->overflow || r->rc == CURLE_FILESIZE_EXCEEDED) {
      resp.status = DCM_HTTP_ETOOBIG;
      snprintf(error, sizeof error, "body larger than %zu bytes", r->max);
    } else {
      if (r->rc == CURLE_UNSUPPORTED_PROTOCOL || r->rc == CURLE_URL_MALFORMAT)
        resp.status = DCM_HTTP_EURL;
      else if (r->rc == CURLE_OPERATION_TIMEDOUT)
        resp.status = DCM_HTTP_ETIMEDOUT;
      else
        resp.status = DCM_HTTP_ETRANSPORT;
      snprintf(error, sizeof error, "%s (%s)", curl_easy_strerror(r->rc),
               r->errbuf[0] ? r->errbuf : "no detail");
    }
    resp.error = error;
    resp.body = "";
    resp.len = 0;
  }
  r->cb(r->arg, &resp);
}

static void check_multi_info(dcm__http_t *h) {
  CURLMsg *m;
  int left;
  if (h->closing) return;
  while ((m = curl_multi_info_read(h->multi, &left)) != NULL) {
    if (m->msg != CURLMSG_DONE) continue;
    dcm__http_req_t *r = NULL;
    CURL *easy = m->easy_handle;
    CURLcode rc = m->data.result;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&r);
    if (r) req_finished(r, rc);
  }
  if (h->delivering) return;
  h->delivering = 1;
  /* A callback may cancel a finished request or close h: both unlink. */
  while (h->finished) {
    dcm__http_req_t *r = h->finished;
    req_unlink(r);
    r->delivering = 1;
    deliver(r);
    req_free(r);
  }
  h->delivering = 0;
}

/* ---- public ---------------------------------------------------------------- */

int dcm__http_new(uv_loop_t *loop, dcm__http_t **out) {
  if (loop == NULL || out == NULL) return DCM_EINVAL;
  uv_once(&curl_once, curl_init_once);
  if (curl_once_rc != CURLE_OK) return DCM_ENOMEM;
  dcm__http_t *h = calloc(1, sizeof(*h));
  if (h == NULL) return DCM_ENOMEM;
  h->loop = loop;
  h->multi = curl_multi_init();
  if (h->multi == NULL) {
    free(h);
    return DCM_ENOMEM;
  }
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_fn);
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_fn);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
  uv_timer_init(loop, &h->timer);
  h->timer.data = h;
  h->open_handles = 1;
  *out = h;
  return 0;
}

int dcm__http_request(dcm__http_t *h, const dcm__http_opts_t *o, dcm__http_cb cb, void *arg,
                      dcm__http_req_t **out) {
  if (h == NULL || o == NULL || o->url == NULL || cb == NULL) return DCM_EINVAL;
  if (o->body == NULL && o->body_len != 0) return DCM_EINVAL;
  if (h->closing || h->nreq >= DCM_HTTP_MAX_REQUESTS) return DCM_ESTATE;
  dcm__http_req_t *r = calloc(1, sizeof(*r));
  if (r == NULL) return DCM_ENOMEM;
  r->h = h;
  h->nreq++;
  r->cb = cb;
  r->arg = arg;
  r->max = o->max_body == 0 || o->max_body > DCM_HTTP_MAX_BODY ? DCM_HTTP_MAX_BODY : o->max_body;
  uint64_t timeout = o->timeout_ms ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
  uint64_t connect = o->connect_timeout_ms ? o->connect_timeout_ms
                     : timeout < DEFAULT_CONNECT_TIMEOUT_MS ? timeout
                                                            : DEFAULT_CONNECT_TIMEOUT_MS;
  for (size_t i = 0; i < o->nheaders; i++) {
    struct curl_slist *s = curl_slist_append(r->headers, o->headers[i]);
    if (s == NULL) goto oom;
    r->headers = s;
  }
  if (o->body) { /* curl would otherwise wait for a 100 Continue */
    struct curl_slist *s = curl_slist_append(r->headers, "Expect:");
    if (s == NULL) goto oom;
    r->headers = s;
  }
  CURL *e = r->easy = curl_easy_init();
  if (e == NULL) goto oom;
  int bad = 0;
  bad |= curl_easy_setopt(e, CURLOPT_URL, o->url) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR,
                          o->protocols ? o->protocols : "http,https") != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "https") != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L) != CURLE_OK;
  if (o->cacert) bad |= curl_easy_setopt(e, CURLOPT_CAINFO, o->cacert) != CURLE_OK;
  if (o->cert) bad |= curl_easy_setopt(e, CURLOPT_SSLCERT, o->cert) != CURLE_OK;
  if (o->key) bad |= curl_easy_setopt(e, CURLOPT_SSLKEY, o->key) != CURLE_OK;
  if (r->headers) bad |= curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers) != CURLE_OK;
  if (o->user_agent) bad |= curl_easy_setopt(e, CURLOPT_USERAGENT, o->user_agent) != CURLE_OK;
  if (o->body) {
    bad |= curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len) !=
           CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, o->body) != CURLE_OK;
  }
  if (o->method && strcmp(o->method, o->body ? "POST" : "GET") != 0)
    bad |= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, o->method) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)connect) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->max) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_FORBID_REUSE, o->reuse ? 0L : 1L) != CURLE_OK;
  /* Closing must not wait for a slow DNS resolver thread. */
  bad |= curl_easy_setopt(e, CURLOPT_QUICK_EXIT, 1L) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_fn) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_WRITEDATA, r) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_fn) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_HEADERDATA, r) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_PRIVATE, r) != CURLE_OK;
  if (bad) goto oom;
  /* Linked before curl may touch it: a failed add unlinks below. */
  r->next = h->active;
  if (h->active) h->active->prev = r;
  h->active = r;
  if (curl_multi_add_handle(h->multi, e) != CURLM_OK) {
    list_unlink(&h->active, r);
    curl_easy_cleanup(e);
    r->easy = NULL;
    goto oom;
  }
  if (out) *out = r;
  return 0;
oom:
  if (r->easy) curl_easy_cleanup(r->easy);
  r->easy = NULL;
  req_free(r);
  return DCM_ENOMEM;
}

void dcm__http_cancel(dcm__http_req_t *r) {
  if (r == NULL || r->delivering) return;
  req_unlink(r);
  req_free(r);
}

const char *dcm__http_header(const dcm__http_resp_t *r, const char *name, size_t *len) {
  size_t nlen = strlen(name);
  const char *p = r->headers, *end = r->headers + r->headers_len;
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (eol == NULL) eol = end;
    if ((size_t)(eol - p) > nlen && p[nlen] == ':' && strncasecmp(p, name, nlen) == 0) {
      const char *v = p + nlen + 1, *ve = eol;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t' || ve[-1] == '\r' || ve[-1] == '\n'))
        ve--;
      if (len) *len = (size_t)(ve - v);
      return v;
    }
    p = eol + 1;
  }
  return NULL;
}

const char *dcm__http_strerror(int err) {
  switch (err) {
    case DCM_HTTP_ETRANSPORT: return "transport error";
    case DCM_HTTP_ETIMEDOUT: return "timed out";
    case DCM_HTTP_ETOOBIG: return "response body too large";
    case DCM_HTTP_EURL: return "malformed URL or protocol not allowed";
    default: return dcm_strerror(err);
  }
}

void dcm__http_close(dcm__http_t *h, void (*done)(void *arg), void *arg) {
  if (h == NULL || h->closing) return;
  h->closing = 1;
  h->done = done;
  h->done_arg = arg;
  while (h->active) dcm__http_cancel(h->active);
  while (h->finished) dcm__http_cancel(h->finished);
  h->finished_tail = NULL;
  curl_multi_cleanup(h->multi);
  h->multi = NULL;
  while (h->socks) sock_destroy(h->socks); /* any curl did not hand back */
  uv_close((uv_handle_t *)&h->timer, timer_close_cb);
}
