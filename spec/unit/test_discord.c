/* test_discord.c: src/discord.c against spec/fake_discord.py on loopback,
 * on a real libuv loop. Each case runs under a watchdog. */
#include <curl/curl.h>
#include <errno.h>
#include <lua.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "discord.h"
#include "json.h"

#define TOKEN "MTE4.fake-SECRET-token.x9Z"
#define UA "DiscordBot (https://github.com/discluster, " DCM_VERSION ") discluster-master/" DCM_VERSION
#define WATCHDOG_MS 15000

static pid_t g_child = -1; /* killed at exit if a check fails */
static const char *g_case = "";

#define CHECK(c)                                                          \
  do {                                                                    \
    if (!(c)) {                                                           \
      fprintf(stderr, "FAIL %s: %s:%d: %s\n", g_case, __FILE__, __LINE__, #c); \
      exit(1);                                                            \
    }                                                                     \
  } while (0)

static void kill_child(void) {
  if (g_child > 0) {
    kill(g_child, SIGKILL);
    waitpid(g_child, NULL, 0);
    g_child = -1;
  }
}

/* ---- the fake server ---------------------------------------------------- */

typedef struct {
  pid_t pid;
  int port;
} fake_t;

static void fake_start(fake_t *f, const char *script, int port) {
  const char *src = getenv("DCM_SOURCE_DIR");
  char path[1024], portstr[16];
  snprintf(path, sizeof path, "%s/spec/fake_discord.py", src ? src : ".");
  snprintf(portstr, sizeof portstr, "%d", port);
  int fds[2];
  CHECK(pipe(fds) == 0);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    execl("/usr/bin/python3", "python3", path, "--port", portstr, "--script", script,
          (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  g_child = pid;
  f->pid = pid;
  char line[64];
  size_t n = 0;
  while (n < sizeof line - 1) {
    struct pollfd p = {fds[0], POLLIN, 0};
    CHECK(poll(&p, 1, 10000) == 1);
    ssize_t r = read(fds[0], line + n, 1);
    CHECK(r == 1);
    if (line[n] == '\n') break;
    n++;
  }
  line[n] = '\0';
  close(fds[0]);
  CHECK(sscanf(line, "PORT %d", &f->port) == 1 && f->port > 0);
}

static void fake_stop(fake_t *f) {
  if (f->pid > 0) {
    kill(f->pid, SIGTERM);
    waitpid(f->pid, NULL, 0);
    if (g_child == f->pid) g_child = -1;
  }
  f->pid = -1;
}

typedef struct {
  char *p;
  size_t n;
} buf_t;

static size_t buf_write(char *ptr, size_t size, size_t n, void *arg) {
  buf_t *b = arg;
  char *q = realloc(b->p, b->n + size * n + 1);
  if (q == NULL) return 0;
  memcpy(q + b->n, ptr, size * n);
  b->p = q;
  b->n += size * n;
  b->p[b->n] = '\0';
  return size * n;
}

/* Pushes the array of recorded requests onto L (blocking: test code only);
 * returns how many there are. */
static size_t fake_requests(fake_t *f, lua_State *L) {
  char url[64];
  buf_t b = {NULL, 0};
  snprintf(url, sizeof url, "http://127.0.0.1:%d/_requests", f->port);
  CURL *e = curl_easy_init();
  CHECK(e != NULL);
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, buf_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(e, CURLOPT_TIMEOUT, 10L);
  CHECK(curl_easy_perform(e) == CURLE_OK);
  curl_easy_cleanup(e);
  CHECK(dcm__json_decode(L, b.p, b.n) == 0);
  free(b.p);
  size_t n;
  CHECK(dcm__json_isarray(L, -1, &n));
  return n;
}

/* Field of request i (1-based) of the array on top: string or NULL. */
static const char *req_str(lua_State *L, int i, const char *key) {
  lua_rawgeti(L, -1, i);
  dcm__json_field(L, -1, key);
  const char *s = lua_isstring(L, -1) ? lua_tostring(L, -1) : NULL;
  lua_pop(L, 2); /* the string stays alive in the table */
  return s;
}

static double req_time(lua_State *L, int i) {
  lua_rawgeti(L, -1, i);
  dcm__json_field(L, -1, "time");
  double t = lua_tonumber(L, -1);
  lua_pop(L, 2);
  return t;
}

/* A loopback port bound (not listening, so connects are refused) until the
   caller closes *held. */
static int free_port_held(int *held) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(s, (struct sockaddr *)&a, sizeof a) == 0);
  CHECK(getsockname(s, (struct sockaddr *)&a, &len) == 0);
  *held = s;
  return ntohs(a.sin_port);
}

static int g_held = -1; /* the port test_network_error keeps until its fake starts */

/* ---- one test case's world ---------------------------------------------- */

typedef struct {
  uv_loop_t loop;
  uv_timer_t watchdog, aside; /* aside: a per-case action at a set time */
  dcm__log_t log;
  char logs[65536];
  size_t loglen;
  dcm__discord_t *d;
  fake_t fake;
  lua_State *L;
  int calls, status, done_calls, refetch;
  const char *close_on; /* close d once a log line contains this */
  dcm__gateway_t gw;
  uint64_t t_start, t_cb;
} T;

static void close_now(uv_timer_t *timer);

static void log_cb(dcm_log_level level, const char *line, size_t len, void *arg) {
  T *t = arg;
  (void)level;
  /* Not from inside the log call: d is in the middle of its own work. */
  if (t->close_on && strstr(line, t->close_on)) {
    t->close_on = NULL;
    uv_timer_start(&t->aside, close_now, 0, 0);
  }
  if (getenv("DCM_TEST_VERBOSE")) fprintf(stderr, "%.*s\n", (int)len, line);
  if (t->loglen + len + 2 < sizeof t->logs) {
    memcpy(t->logs + t->loglen, line, len);
    t->loglen += len;
    t->logs[t->loglen++] = '\n';
    t->logs[t->loglen] = '\0';
  }
}

static void on_watchdog(uv_timer_t *w) {
  fprintf(stderr, "FAIL %s: watchdog after %d ms\nlogs:\n%s", g_case, WATCHDOG_MS,
          ((T *)w->data)->logs);
  exit(1);
}

static void setup(T *t, const char *name, const char *script) {
  memset(t, 0, sizeof *t);
  g_case = name;
  fprintf(stderr, "-- %s\n", name);
  CHECK(uv_loop_init(&t->loop) == 0);
  CHECK(uv_timer_init(&t->loop, &t->watchdog) == 0);
  CHECK(uv_timer_init(&t->loop, &t->aside) == 0);
  t->watchdog.data = t->aside.data = t;
  uv_timer_start(&t->watchdog, on_watchdog, WATCHDOG_MS, 0);
  uv_unref((uv_handle_t *)&t->watchdog);
  CHECK(dcm__log_init(&t->log, DCM_LOG_DEBUG, DCM_LOG_TEXT, log_cb, t) == 0);
  t->L = dcm__json_new();
  t->fake.pid = -1;
  if (script) fake_start(&t->fake, script, 0);
}

static void new_discord(T *t, const char *base_fmt, int port, double first, double cap) {
  char base[256];
  snprintf(base, sizeof base, base_fmt, port);
  CHECK(dcm__discord_new(&t->loop, base, TOKEN, &t->log, &t->d) == 0);
  dcm__discord_set_backoff(t->d, first, cap);
}

static void on_done(void *arg) { ((T *)arg)->done_calls++; }

static void on_fetch(dcm__discord_t *d, int status, const dcm__gateway_t *gw, void *arg) {
  T *t = arg;
  t->calls++;
  t->status = status;
  t->t_cb = uv_now(&t->loop);
  if (gw) t->gw = *gw;
  CHECK(status != 0 || gw != NULL);
  if (t->refetch > 0) {
    t->refetch--;
    CHECK(dcm__discord_fetch(d, on_fetch, t) == 0); /* again, from inside cb */
    return;
  }
  dcm__discord_close(d, on_done, t); /* closing inside cb must be safe */
}

static void fetch_and_run(T *t) {
  t->t_start = uv_now(&t->loop);
  CHECK(dcm__discord_fetch(t->d, on_fetch, t) == 0);
  CHECK(t->calls == 0); /* never inline */
  CHECK(dcm__discord_fetch(t->d, on_fetch, t) == DCM_ESTATE);
  uv_run(&t->loop, UV_RUN_DEFAULT);
}

static void teardown(T *t) {
  uv_close((uv_handle_t *)&t->watchdog, NULL);
  uv_close((uv_handle_t *)&t->aside, NULL);
  uv_run(&t->loop, UV_RUN_DEFAULT);
  CHECK(t->done_calls == 1);
  CHECK(uv_loop_close(&t->loop) == 0);
  fake_stop(&t->fake);
  /* The token never reaches a log line. */
  CHECK(strstr(t->logs, TOKEN) == NULL);
  CHECK(strstr(t->logs, "SECRET") == NULL);
  lua_close(t->L);
  dcm__log_close(&t->log);
}

static int has_log(T *t, const char *s) { return strstr(t->logs, s) != NULL; }

#define BASE "http://127.0.0.1:%d/api/v10"

static void close_now(uv_timer_t *timer) {
  T *t = timer->data;
  dcm__discord_close(t->d, on_done, t);
}

/* ---- cases -------------------------------------------------------------- */

static void test_success(void) {
  T t;
  setup(&t, "success", "200:shards=4:total=1000:remaining=998:reset_after=1500:max_concurrency=2");
  new_discord(&t, BASE, t.fake.port, 0.05, 1);
  fetch_and_run(&t);
  CHECK(t.calls == 1 && t.status == 0);
  CHECK(strcmp(t.gw.url, "wss://gateway.discord.gg") == 0);
  CHECK(t.gw.shards == 4 && t.gw.total == 1000 && t.gw.remaining == 998);
  CHECK(t.gw.reset_after > 1.4999 && t.gw.reset_after < 1.5001);
  CHECK(t.gw.max_concurrency == 2);
  CHECK(fake_requests(&t.fake, t.L) == 1);
  CHECK(strcmp(req_str(t.L, 1, "method"), "GET") == 0);
  CHECK(strcmp(req_str(t.L, 1, "path"), "/api/v10/gateway/bot") == 0);
  CHECK(strcmp(req_str(t.L, 1, "authorization"), "Bot " TOKEN) == 0);
  CHECK(strcmp(req_str(t.L, 1, "user_agent"), UA) == 0);
  CHECK(strcmp(req_str(t.L, 1, "accept"), "application/json") == 0);
  CHECK(has_log(&t, "is plain http://: the bot token travels unencrypted"));
  CHECK(has_log(&t, "4 shards, session start limit 998 of 1000 left"));
  teardown(&t);
}

static void test_auth(const char *code) {
  T t;
  char name[32], want[64];
  snprintf(name, sizeof name, "auth %s", code);
  setup(&t, name, code);
  new_discord(&t, BASE, t.fake.port, 0.05, 1);
  fetch_and_run(&t);
  CHECK(t.calls == 1 && t.status == DCM_EAUTH);
  CHECK(fake_requests(&t.fake, t.L) == 1); /* no retry */
  snprintf(want, sizeof want, "Discord rejected the bot token (HTTP %s)", code);
  CHECK(has_log(&t, want));
  teardown(&t);
}

static void test_429_body(void) {
  T t;
  setup(&t, "429 retry_after in body", "429:0.3,200:shards=2");
  new_discord(&t, BASE, t.fake.port, 5, 10); /* a backoff wait would show */
  fetch_and_run(&t);
  CHECK(t.calls == 1 && t.status == 0 && t.gw.shards == 2);
  CHECK(t.t_cb - t.t_start >= 300 && t.t_cb - t.t_start < 3000);
  CHECK(fake_requests(&t.fake, t.L) == 2);
  CHECK(req_time(t.L, 2) - req_time(t.L, 1) >= 0.29);
  CHECK(has_log(&t, "attempt 1 rate limited (HTTP 429); retrying in 0.30 s (retry_after in the body)"));
  teardown(&t);
}

static void test_429_header(void) {
  T t;
  setup(&t, "429 Retry-After header", "429h:0.4,200");
  new_discord(&t, BASE, t.fake.port, 5, 10);
  fetch_and_run(&t);
  CHECK(t.calls == 1 && t.status == 0);
  CHECK(t.t_cb - t.t_start >= 400 && t.t_cb - t.t_start < 3000);
  CHECK(fake_requests(&t.fake, t.L) == 2);
  CHECK(req_time(t.L, 2) - req_time(t.L, 1) >= 0.39);
  CHECK(has_log(&t, "retrying in 0.40 s (Retry-After header)"));
  teardown(&t);
}

static void test_429_bounds(void) {
  T t;
  setup(&t, "429 floor", "429:0,200");
  new_discord(&t, BASE, t.fake.port, 5, 10);
  fetch_and_run(&t);
  CHECK(t.calls == 1 && t.status == 0);
  CHECK(fake_requests(&t.fake, t.L) == 2);
  CHECK(req_time(t.L, 2) - req_time(t.L, 1) >= 0.045); /* no hot loop */
  teardown(&t);

  setup(&t, "429 cap", "429:7200");
  new_discord(&t, BASE, t.fake.port, 5, 10);
  CHECK(dcm__discord_fetch(t.d, on_fetch, &t) == 0);
  t.close_on = "retrying in";
  uv_run(&t.loop, UV_RUN_DEFAULT);
  CHECK(t.calls == 0);
  CHECK(has_log(&t, "429 asks for 7200 s; capping the wait at 3600 s"));
  CHECK(has_log(&t, "retrying in 3600.00 s"));
  teardown(&t);
}

static void test_5xx_backoff(void) {
  T t;
  setup(&t, "5xx backoff", "500,503,502,200");
  new_discord(&t, BASE, t.fake.port, 0.05, 0.15);
  fetch_and_run(&t);
  CHECK(t.calls == 1 && t.status == 0);
  CHECK(fake_requests(&t.fake, t.L) == 4);
  CHECK(req_time(t.L, 2) - req_time(t.L, 1) >= 0.045);
  CHECK(req_time(t.L, 3) - req_time(t.L, 2) >= 0.095);
  CHECK(req_time(t.L, 4) - req_time(t.L, 3) >= 0.145);
  CHECK(has_log(&t, "attempt 1 failed: HTTP 500; retrying in 0.05 s"));
  CHECK(has_log(&t, "attempt 2 failed: HTTP 503; retrying in 0.10 s"));
  CHECK(has_log(&t, "attempt 3 failed: HTTP 502; retrying in 0.15 s")); /* capped */
  teardown(&t);
}

static void test_malformed(void) {
  T t;
  setup(&t, "malformed bodies",
        "malformed,200:shards=0,200:max_concurrency=omit,200:remaining=abc,"
        "200:reset_after=null,200:url=omit,200:total=1.5,200:shards=null,200");
  new_discord(&t, BASE, t.fake.port, 0.01, 0.02);
  fetch_and_run(&t);
  CHECK(t.calls == 1 && t.status == 0 && t.gw.shards == 1);
  CHECK(fake_requests(&t.fake, t.L) == 9);
  CHECK(has_log(&t, "attempt 1 failed: malformed answer: not JSON"));
  CHECK(has_log(&t, "attempt 2 failed: malformed answer: shards is missing"));
  CHECK(has_log(&t, "attempt 3 failed: malformed answer: session_start_limit.max_concurrency"));
  CHECK(has_log(&t, "attempt 4 failed: malformed answer: session_start_limit.remaining"));
  CHECK(has_log(&t, "attempt 5 failed: malformed answer: session_start_limit.reset_after"));
  CHECK(has_log(&t, "attempt 6 failed: malformed answer: url is missing"));
  CHECK(has_log(&t, "attempt 7 failed: malformed answer: session_start_limit.total"));
  CHECK(has_log(&t, "attempt 8 failed: malformed answer: shards is missing"));
  teardown(&t);
}

static void test_oversize(void) {
  T t;
  setup(&t, "oversize body", "big:70000,bigcl:70000,big:60000");
  new_discord(&t, BASE, t.fake.port, 0.01, 0.02);
  fetch_and_run(&t);
  CHECK(t.calls == 1 && t.status == 0); /* 60000 bytes is inside the bound */
  CHECK(fake_requests(&t.fake, t.L) == 3);
  CHECK(has_log(&t, "attempt 1 failed: malformed answer: body larger than 65536 bytes"));
  CHECK(has_log(&t, "attempt 2 failed: malformed answer: body larger than 65536 bytes"));
  teardown(&t);
}

static void start_fake_later(uv_timer_t *timer) {
  T *t = timer->data;
  close(g_held); /* held so far: no other test's socket could take the port */
  g_held = -1;
  fake_start(&t->fake, "200:shards=3", t->fake.port);
}

static void test_network_error(void) {
  T t;
  setup(&t, "network error then success", NULL);
  t.fake.port = free_port_held(&g_held); /* bound, not listening: refused */
  new_discord(&t, BASE, t.fake.port, 0.05, 0.1);
  uv_timer_start(&t.aside, start_fake_later, 300, 0);
  fetch_and_run(&t);
  CHECK(t.calls == 1 && t.status == 0 && t.gw.shards == 3);
  CHECK(has_log(&t, "attempt 1 failed: Couldn't connect to server"));
  CHECK(has_log(&t, "attempt 2 failed"));
  CHECK(fake_requests(&t.fake, t.L) == 1);
  teardown(&t);
}

static void test_dropped(void) {
  T t;
  setup(&t, "connection dropped", "close,200");
  new_discord(&t, BASE, t.fake.port, 0.01, 0.02);
  fetch_and_run(&t);
  CHECK(t.calls == 1 && t.status == 0);
  CHECK(fake_requests(&t.fake, t.L) == 2);
  CHECK(has_log(&t, "attempt 1 failed: Server returned nothing"));
  teardown(&t);
}

static void test_404(void) {
  T t;
  setup(&t, "404", "404");
  new_discord(&t, BASE, t.fake.port, 0.01, 0.02);
  fetch_and_run(&t);
  CHECK(t.calls == 1 && t.status == DCM_EDISCORD);
  CHECK(fake_requests(&t.fake, t.L) == 1);
  CHECK(has_log(&t, "failed: HTTP 404 (wrong api_base?), not retrying"));
  teardown(&t);
}

static void test_redirect(const char *script) {
  T t;
  setup(&t, script, script);
  new_discord(&t, BASE, t.fake.port, 0.01, 0.02);
  fetch_and_run(&t);
  CHECK(t.calls == 1 && t.status == DCM_EDISCORD);
  CHECK(fake_requests(&t.fake, t.L) == 1); /* the redirect was not followed */
  CHECK(has_log(&t, "redirects are not followed"));
  teardown(&t);
}

/* https stays https: a TLS handshake against a plain-HTTP server fails
 * and is retried; there is no fallback to http. */
static void test_https_only(void) {
  T t;
  setup(&t, "https only", "200");
  dcm__discord_t *d;
  const char *bad[] = {"ftp://127.0.0.1/api", "file:///etc/passwd", "gopher://x",
                       "", "127.0.0.1:80", "https://exa mple.com", "HTTP://x"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    CHECK(dcm__discord_new(&t.loop, bad[i], TOKEN, &t.log, &d) == DCM_EINVAL);
  CHECK(dcm__discord_new(&t.loop, "https://x", "", &t.log, &d) == DCM_EINVAL);
  CHECK(dcm__discord_new(&t.loop, "https://x", "a\r\nX-Evil: 1", &t.log, &d) == DCM_EINVAL);
  CHECK(dcm__discord_new(NULL, "https://x", TOKEN, &t.log, &d) == DCM_EINVAL);
  new_discord(&t, "https://127.0.0.1:%d/api/v10", t.fake.port, 5, 10);
  CHECK(!has_log(&t, "plain http://"));
  t.t_start = uv_now(&t.loop);
  CHECK(dcm__discord_fetch(t.d, on_fetch, &t) == 0);
  t.close_on = "retrying in";
  uv_run(&t.loop, UV_RUN_DEFAULT);
  CHECK(t.calls == 0);
  CHECK(has_log(&t, "attempt 1 failed: SSL connect error") ||
        has_log(&t, "attempt 1 failed: SSL"));
  CHECK(fake_requests(&t.fake, t.L) == 0); /* nothing reached /gateway/bot */
  teardown(&t);
}

static void test_close_in_flight(void) {
  T t;
  setup(&t, "close during a request", "slow:8");
  new_discord(&t, BASE, t.fake.port, 0.01, 0.02);
  t.t_start = uv_now(&t.loop);
  CHECK(dcm__discord_fetch(t.d, on_fetch, &t) == 0);
  uv_timer_start(&t.aside, close_now, 300, 0);
  uv_run(&t.loop, UV_RUN_DEFAULT);
  CHECK(t.calls == 0 && t.done_calls == 1);
  CHECK(uv_now(&t.loop) - t.t_start < 5000); /* did not wait for the answer */
  CHECK(fake_requests(&t.fake, t.L) <= 1);
  teardown(&t);
}

static void test_close_in_backoff(void) {
  T t;
  setup(&t, "close during backoff", "500");
  new_discord(&t, BASE, t.fake.port, 10, 20);
  t.t_start = uv_now(&t.loop);
  CHECK(dcm__discord_fetch(t.d, on_fetch, &t) == 0);
  t.close_on = "retrying in";
  uv_run(&t.loop, UV_RUN_DEFAULT);
  CHECK(t.calls == 0 && t.done_calls == 1);
  CHECK(uv_now(&t.loop) - t.t_start < 5000); /* did not wait out the 10 s */
  CHECK(has_log(&t, "attempt 1 failed: HTTP 500; retrying in 10.00 s"));
  CHECK(fake_requests(&t.fake, t.L) == 1);
  teardown(&t);
}

static void test_close_before_run(void) {
  T t;
  setup(&t, "close before the loop runs", "200");
  new_discord(&t, BASE, t.fake.port, 0.01, 0.02);
  CHECK(dcm__discord_fetch(t.d, on_fetch, &t) == 0);
  dcm__discord_close(t.d, on_done, &t);
  uv_run(&t.loop, UV_RUN_DEFAULT);
  CHECK(t.calls == 0 && t.done_calls == 1);
  CHECK(fake_requests(&t.fake, t.L) == 0);
  teardown(&t);
}

static void test_refetch(void) {
  T t;
  setup(&t, "fetch again from the callback", "200:remaining=0:reset_after=250,200:remaining=5");
  new_discord(&t, BASE, t.fake.port, 0.01, 0.02);
  t.refetch = 1;
  fetch_and_run(&t);
  CHECK(t.calls == 2 && t.status == 0 && t.gw.remaining == 5);
  CHECK(fake_requests(&t.fake, t.L) == 2);
  CHECK(has_log(&t, "0 of 1000 left (resets in 0.2 s)") ||
        has_log(&t, "0 of 1000 left (resets in 0.3 s)"));
  teardown(&t);
}

static void test_json_log(void) {
  /* JSON log lines go through cjson; the token must stay out there too. */
  T t;
  setup(&t, "json log format", "401");
  dcm__log_close(&t.log);
  CHECK(dcm__log_init(&t.log, DCM_LOG_DEBUG, DCM_LOG_JSON, log_cb, &t) == 0);
  new_discord(&t, BASE, t.fake.port, 0.01, 0.02);
  fetch_and_run(&t);
  CHECK(t.status == DCM_EAUTH);
  CHECK(has_log(&t, "\"level\":\"error\""));
  teardown(&t);
}

int main(void) {
  atexit(kill_child);
  signal(SIGPIPE, SIG_IGN);
  /* A proxy from the environment would break loopback tests. */
  unsetenv("http_proxy");
  unsetenv("HTTP_PROXY");
  unsetenv("https_proxy");
  unsetenv("HTTPS_PROXY");
  unsetenv("ALL_PROXY");
  unsetenv("all_proxy");
  test_success();
  test_auth("401");
  test_auth("403");
  test_429_body();
  test_429_header();
  test_429_bounds();
  test_5xx_backoff();
  test_malformed();
  test_oversize();
  test_network_error();
  test_dropped();
  test_404();
  test_redirect("redirect");
  test_redirect("redirect:ftp://127.0.0.1/gateway/bot");
  test_https_only();
  test_close_in_flight();
  test_close_in_backoff();
  test_close_before_run();
  test_refetch();
  test_json_log();
  fprintf(stderr, "all discord tests passed\n");
  return 0;
}
