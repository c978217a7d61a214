/* test_config.c: the CLI's flags, Lua config file, secrets and errors. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "sandbox.h"

static int failures, checks;

#define CHECK(cond, ...)                                              \
  do {                                                                \
    checks++;                                                         \
    if (!(cond)) {                                                    \
      failures++;                                                     \
      fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                   \
      fputc('\n', stderr);                                            \
    }                                                                 \
  } while (0)

static char err[512];
static char tmpdir[64];
static char outbuf[8192];

/* Loads argv (NULL-terminated, without argv[0]) into cfg; output to outbuf.
   Unless strict is set, --no-auth comes first: most tests run without a secret. */
static int strict;
static int loadv(dcm__config_t *cfg, const char *const *args) {
  char *argv[64];
  int argc = 0;
  FILE *out = fmemopen(outbuf, sizeof outbuf, "w");
  argv[argc++] = "discluster-master";
  if (!strict) argv[argc++] = "--no-auth";
  for (; *args; args++) argv[argc++] = (char *)*args;
  argv[argc] = NULL;
  memset(outbuf, 0, sizeof outbuf);
  memset(err, 'X', sizeof err);
  int rc = dcm__config_load(cfg, argc, argv, out, err, sizeof err);
  fclose(out);
  return rc;
}
#define LOAD(cfg, ...) loadv((cfg), (const char *const[]){__VA_ARGS__, NULL})

/* Writes a file under the test's temp dir and returns its path (static). */
static const char *write_file(const char *name, const char *text) {
  static char path[8][256];
  static int next;
  char *p = path[next++ % 8];
  snprintf(p, 256, "%s/%s", tmpdir, name);
  FILE *f = fopen(p, "w");
  if (f == NULL) {
    perror(p);
    exit(1);
  }
  fputs(text, f);
  fclose(f);
  return p;
}

static int one_line(const char *s) {
  return s[0] != '\0' && strchr(s, '\n') == NULL && strlen(s) < sizeof err - 1;
}

/* Expects DCM_EINVAL (or want_rc) and err containing want. */
static void expect_error(int line, int rc, int want_rc, const char *want) {
  checks++;
  if (rc != want_rc || strstr(err, want) == NULL || !one_line(err)) {
    failures++;
    fprintf(stderr, "%s:%d: want rc %d and '%s'; got rc %d and '%s'\n", __FILE__, line,
            want_rc, want, rc, err);
  }
}
#define BAD(want, ...)                                                  \
  do {                                                                  \
    dcm__config_t c_;                                                   \
    int rc_ = LOAD(&c_, __VA_ARGS__);                                   \
    expect_error(__LINE__, rc_, DCM_EINVAL, (want));                    \
    dcm__config_free(&c_);                                              \
  } while (0)
#define BAD_FILE(want, text)                                            \
  do {                                                                  \
    dcm__config_t c_;                                                   \
    const char *p_ = write_file("bad.lua", (text));                     \
    int rc_ = LOAD(&c_, "-c", p_, "--shards", "2");                     \
    char w_[512];                                                       \
    snprintf(w_, sizeof w_, (want), p_);                                \
    expect_error(__LINE__, rc_, DCM_EINVAL, w_);                        \
    dcm__config_free(&c_);                                              \
  } while (0)

static void clear_env(void) {
  unsetenv("DISCORD_TOKEN");
  unsetenv("DISCLUSTER_AUTH");
  unsetenv("DISCLUSTER_STATUS_AUTH");
}

static void test_defaults(void) {
  dcm__config_t c;
  dcm_options_t d;
  dcm_options_init(&d);
  CHECK(LOAD(&c, "--shards", "4") == DCM_CONFIG_RUN, "%s", err);
  CHECK(strcmp(c.opts.listen_host, "127.0.0.1") == 0 && c.opts.listen_port == 8642, "listen");
  CHECK(c.opts.shards == 4 && c.opts.max_concurrency == 0, "shards");
  CHECK(c.opts.collect_window == 45 && c.opts.heartbeat_interval == 30 &&
        c.opts.heartbeat_grace == 15 && c.opts.reconnect_grace == 30 &&
        c.opts.handshake_timeout == 10 && c.opts.connect_timeout == 600, "times");
  CHECK(c.opts.head_timeout == 5 && c.opts.max_unauthenticated_per_address == 32, "hardening");
  CHECK(c.opts.policy_timeout == 1, "policy_timeout %g", c.opts.policy_timeout);
  CHECK(strcmp(c.opts.api_base, d.api_base) == 0 && c.opts.policy == NULL, "strings");
  CHECK(c.opts.token == NULL && c.opts.auth == NULL, "no secrets");
  CHECK(c.opts.log_level == DCM_LOG_INFO && c.opts.log_format == DCM_LOG_TEXT, "log");
  dcm__config_free(&c);
}

static void test_every_flag(void) {
  dcm__config_t c;
  const char *policy = write_file("p.lua", "return {}\n");
  int rc = LOAD(&c, "--listen", "[::1]:0", "--shards", "16", "--max-concurrency=4",
                "--api-base", "http://127.0.0.1:9/api", "--policy", policy,
                "--collect-window", "0.25", "--expected-machines=3",
                "--heartbeat-interval", "1.5", "--heartbeat-grace=0", "--reconnect-grace", "2",
                "--connect-timeout", "60", "--handshake-timeout=0.5", "--log-format", "json",
                "--log-level=debug", "--head-timeout", "0.25",
                "--max-unauthenticated-per-address=4", "--policy-timeout", "2.5");
  CHECK(rc == DCM_CONFIG_RUN, "%s", err);
  CHECK(strcmp(c.opts.listen_host, "::1") == 0 && c.opts.listen_port == 0, "listen %s:%d",
        c.opts.listen_host, c.opts.listen_port);
  CHECK(c.opts.shards == 16 && c.opts.max_concurrency == 4 && c.opts.expected_machines == 3, "ints");
  CHECK(strcmp(c.opts.api_base, "http://127.0.0.1:9/api") == 0, "api");
  CHECK(strcmp(c.opts.policy, policy) == 0, "policy %s", c.opts.policy);
  CHECK(c.opts.collect_window == 0.25 && c.opts.heartbeat_interval == 1.5 &&
        c.opts.heartbeat_grace == 0 && c.opts.reconnect_grace == 2 &&
        c.opts.connect_timeout == 60 && c.opts.handshake_timeout == 0.5, "times");
  CHECK(c.opts.log_format == DCM_LOG_JSON && c.opts.log_level == DCM_LOG_DEBUG, "log");
  CHECK(c.opts.head_timeout == 0.25 && c.opts.max_unauthenticated_per_address == 4, "hardening");
  CHECK(c.opts.policy_timeout == 2.5, "policy_timeout %g", c.opts.policy_timeout);
  dcm__config_free(&c);

  CHECK(LOAD(&c, "--listen=localhost:1", "--shards=auto", "--log-level", "error") == DCM_CONFIG_RUN ||
        strstr(err, "token:") != NULL, "%s", err);
  dcm__config_free(&c);
  CHECK(LOAD(&c, "--listen=localhost:1", "--shards=1", "--log-level", "warn",
             "--listen", "127.0.0.2:65535") == DCM_CONFIG_RUN, "%s", err);
  CHECK(strcmp(c.opts.listen_host, "127.0.0.2") == 0 && c.opts.listen_port == 65535 &&
        c.opts.log_level == DCM_LOG_WARN, "last flag wins");
  dcm__config_free(&c);
}

static void test_bad_flags(void) {
  BAD("--collect-window: 'abc' is not a number of seconds", "--shards", "1", "--collect-window", "abc");
  BAD("--collect-window: must not be negative", "--shards", "1", "--collect-window", "-1");
  BAD("--collect-window: '1s' is not", "--shards", "1", "--collect-window", "1s");
  BAD("--collect-window: ' 1' is not", "--shards", "1", "--collect-window", " 1");
  BAD("--collect-window: '' is not", "--shards", "1", "--collect-window=");
  BAD("--heartbeat-grace: 'nan' is not", "--shards", "1", "--heartbeat-grace", "nan");
  BAD("--reconnect-grace: 'inf' is not", "--shards", "1", "--reconnect-grace", "inf");
  BAD("--connect-timeout: '1e999' is not", "--shards", "1", "--connect-timeout", "1e999");
  BAD("--connect-timeout: '0x10' is not", "--shards", "1", "--connect-timeout", "0x10");
  BAD("--handshake-timeout: must be more than 0", "--shards", "1", "--handshake-timeout", "0");
  BAD("--head-timeout: must be more than 0", "--shards", "1", "--head-timeout", "0");
  BAD("--head-timeout: 'x' is not a number", "--shards", "1", "--head-timeout", "x");
  BAD("--policy-timeout: must be more than 0", "--shards", "1", "--policy-timeout", "0");
  BAD("policy_timeout: must be a time from 0.01 to 3600", "--shards", "1",
      "--policy-timeout", "0.001");
  BAD("policy_timeout: must be a time from 0.01 to 3600", "--shards", "1",
      "--policy-timeout", "3601");
  BAD("max_unauthenticated_per_address: 0 is out of range 1-1000000", "--shards", "1",
      "--max-unauthenticated-per-address", "0");
  BAD("--max-unauthenticated-per-address: '2000000' is not an integer 0-1000000", "--shards", "1",
      "--max-unauthenticated-per-address", "2000000");
  BAD("--heartbeat-interval: must be more than 0", "--shards", "1", "--heartbeat-interval", "0.0");
  BAD("--heartbeat-interval: must be at most", "--shards", "1", "--heartbeat-interval", "1e9");
  BAD("--listen: '127.0.0.1' is not HOST:PORT", "--shards", "1", "--listen", "127.0.0.1");
  BAD("--listen: '::1:80' is not HOST:PORT", "--shards", "1", "--listen", "::1:80");
  BAD("--listen: 'example.com:80' is not", "--shards", "1", "--listen", "example.com:80");
  BAD("--listen: '[::1]80' is not", "--shards", "1", "--listen", "[::1]80");
  BAD("--listen: '[1.2.3.4]:80' is not", "--shards", "1", "--listen", "[1.2.3.4]:80");
  BAD("--listen: ':80' is not", "--shards", "1", "--listen", ":80");
  BAD("--listen: '127.0.0.1:65536' has no valid port", "--shards", "1", "--listen", "127.0.0.1:65536");
  BAD("--listen: '127.0.0.1:-1' has no valid port", "--shards", "1", "--listen", "127.0.0.1:-1");
  BAD("--listen: '127.0.0.1:' has no valid port", "--shards", "1", "--listen", "127.0.0.1:");
  BAD("--listen: '[::1]:http' has no valid port", "--shards", "1", "--listen", "[::1]:http");
  BAD("--shards: '0' is not auto or an integer", "--shards", "0");
  BAD("--shards: 'many' is not auto", "--shards", "many");
  BAD("--shards: '-3' is not auto", "--shards", "-3");
  BAD("--shards: '4.5' is not auto", "--shards", "4.5");
  BAD("--shards: '99999999999999999999' is not", "--shards", "99999999999999999999");
  BAD("--max-concurrency: '2000' is not an integer 0-1024", "--shards", "1", "--max-concurrency", "2000");
  BAD("--expected-machines: '-1' is not", "--shards", "1", "--expected-machines", "-1");
  BAD("--log-format: 'xml' is not text or json", "--shards", "1", "--log-format", "xml");
  BAD("--log-level: 'verbose' is not debug, info", "--shards", "1", "--log-level", "verbose");
  BAD("--api-base: 'ftp://x' is not", "--shards", "1", "--api-base", "ftp://x");
  BAD("--api-base: 'http://127.0.0.1:/api' is not", "--shards", "1", "--api-base",
      "http://127.0.0.1:/api");
  BAD("--api-base: 'http://:80/api' is not", "--shards", "1", "--api-base", "http://:80/api");
  BAD("--api-base: 'https://h:65536' is not", "--shards", "1", "--api-base", "https://h:65536");
  BAD("--api-base: 'https://h:8x/' is not", "--shards", "1", "--api-base", "https://h:8x/");
  BAD("--gateway-url: 'https://gw' is not a wss://", "--shards", "1", "--gateway-url", "https://gw");
  BAD("--gateway-url: 'wss://[::1' is not", "--shards", "1", "--gateway-url", "wss://[::1");
  BAD("--identify-interval: ", "--shards", "1", "--identify-interval", "0");
  BAD("--identify-reserve: '-1' is not", "--shards", "1", "--identify-reserve", "-1");
  BAD("--policy: cannot read '/nonexistent/p.lua'", "--shards", "1", "--policy", "/nonexistent/p.lua");
  BAD("--bogus: unknown flag", "--shards", "1", "--bogus", "1");
  BAD("--token: unknown flag", "--token=abc", "--shards", "1");
  BAD("--shards: missing value", "--shards");
  BAD("--listen: missing value", "--listen", "--shards", "1");
  BAD("-c: missing value", "--shards", "1", "-c");
  BAD("'foo': unexpected argument", "--shards", "1", "foo");
  BAD("--help: takes no value", "--help=1");
  /* one line even when the value has a newline; long values are cut */
  BAD("--listen: 'a?b' is not", "--shards", "1", "--listen", "a\nb");
  BAD("...' is not", "--shards", "1", "--listen",
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
}

static void test_file(void) {
  dcm__config_t c;
  setenv("DCM_TEST_PORT", "9001", 1);
  write_file("pol.lua", "return {}\n");
  const char *path = write_file("good.lua",
      "-- every key\n"
      "local port = os.getenv('DCM_TEST_PORT')\n"
      "listen = '127.0.0.1:' .. port\n"
      "shards = 2 * 4\n"
      "max_concurrency = 2\n"
      "api_base = 'http://127.0.0.1:1/api/v10'\n"
      "policy = 'pol.lua'\n"
      "collect_window = 45 / 2\n"
      "expected_machines = 3\n"
      "heartbeat_interval = 0.25\n"
      "heartbeat_grace = heartbeat_interval * 4\n"
      "reconnect_grace = math.max(1, 2)\n"
      "connect_timeout = 600\n"
      "handshake_timeout = 5\n"
      "head_timeout = 2.5\n"
      "policy_timeout = 0.5\n"
      "max_unauthenticated_per_address = 8\n"
      "log_format = string.lower('JSON')\n"
      "log_level = table.concat({'de', 'bug'})\n"
      "token = 'file-token'\n"
      "auth = 'file-auth'\n");
  int rc = LOAD(&c, "-c", path);
  CHECK(rc == DCM_CONFIG_RUN, "%s", err);
  CHECK(strcmp(c.opts.listen_host, "127.0.0.1") == 0 && c.opts.listen_port == 9001, "listen");
  CHECK(c.opts.shards == 8 && c.opts.max_concurrency == 2 && c.opts.expected_machines == 3, "ints");
  CHECK(strcmp(c.opts.api_base, "http://127.0.0.1:1/api/v10") == 0, "api");
  char want[300];
  snprintf(want, sizeof want, "%s/pol.lua", tmpdir);
  CHECK(c.opts.policy && strcmp(c.opts.policy, want) == 0, "relative policy: %s", c.opts.policy);
  CHECK(c.opts.collect_window == 22.5 && c.opts.heartbeat_interval == 0.25 &&
        c.opts.heartbeat_grace == 1 && c.opts.reconnect_grace == 2 &&
        c.opts.connect_timeout == 600 && c.opts.handshake_timeout == 5, "times");
  CHECK(c.opts.head_timeout == 2.5 && c.opts.max_unauthenticated_per_address == 8, "hardening");
  CHECK(c.opts.policy_timeout == 0.5, "policy_timeout %g", c.opts.policy_timeout);
  CHECK(c.opts.log_format == DCM_LOG_JSON && c.opts.log_level == DCM_LOG_DEBUG, "log");
  CHECK(strcmp(c.opts.token, "file-token") == 0 && strcmp(c.opts.auth, "file-auth") == 0, "secrets");
  dcm__config_free(&c);

  /* flags override the file, in either order on the command line */
  rc = LOAD(&c, "--shards", "3", "-c", path, "--listen=[::1]:7", "--log-format", "text",
            "--collect-window", "1");
  CHECK(rc == DCM_CONFIG_RUN, "%s", err);
  CHECK(c.opts.shards == 3 && c.opts.listen_port == 7 && strcmp(c.opts.listen_host, "::1") == 0 &&
        c.opts.log_format == DCM_LOG_TEXT && c.opts.collect_window == 1 &&
        c.opts.max_concurrency == 2, "overrides");
  dcm__config_free(&c);

  /* --config=FILE; "auto" as a string; nil unsets; a key read back */
  path = write_file("auto.lua", "shards = 'auto'\ntoken = 'x'\ncollect_window = 5\n"
                                "collect_window = nil\nheartbeat_grace = 3\n"
                                "reconnect_grace = heartbeat_grace + 1\n");
  CHECK(LOAD(&c, "--config=" , path) != DCM_CONFIG_RUN, "empty --config= is an error");
  dcm__config_free(&c);
  char arg[300];
  snprintf(arg, sizeof arg, "--config=%s", path);
  rc = LOAD(&c, arg);
  CHECK(rc == DCM_CONFIG_RUN, "%s", err);
  CHECK(c.opts.shards == 0 && c.opts.collect_window == 45 && c.opts.reconnect_grace == 4, "auto/nil");
  dcm__config_free(&c);

  /* an absolute policy path stays as it is */
  snprintf(want, sizeof want, "policy = '%s/pol.lua'\nshards = 1\n", tmpdir);
  path = write_file("abs.lua", want);
  CHECK(LOAD(&c, "-c", path) == DCM_CONFIG_RUN, "%s", err);
  snprintf(want, sizeof want, "%s/pol.lua", tmpdir);
  CHECK(c.opts.policy && strcmp(c.opts.policy, want) == 0, "abs policy %s", c.opts.policy);
  dcm__config_free(&c);
  unsetenv("DCM_TEST_PORT");
}

static void test_bad_files(void) {
  BAD_FILE("%s:2: unknown key 'colect_window'", "shards = 1\ncolect_window = 4\n");
  BAD_FILE("%s:1: collect_window: expected a number of seconds, got string", "collect_window = '45'\n");
  BAD_FILE("%s:1: collect_window: must not be negative", "collect_window = -1\n");
  BAD_FILE("%s:1: collect_window: must be a finite", "collect_window = 0/0\n");
  BAD_FILE("%s:1: heartbeat_interval: must be a finite", "heartbeat_interval = math.huge\n");
  BAD_FILE("%s:1: heartbeat_interval: must be at most", "heartbeat_interval = 1e8\n");
  BAD_FILE("%s:1: shards: expected \"auto\" or an integer, got boolean", "shards = true\n");
  BAD_FILE("%s:1: shards: expected \"auto\" or an integer, got string", "shards = 'lots'\n");
  BAD_FILE("%s:1: shards: must be auto or an integer 1-", "shards = 2.5\n");
  BAD_FILE("%s:1: max_concurrency: must be an integer 0-1024", "max_concurrency = -1\n");
  BAD_FILE("%s:1: expected_machines: expected an integer, got table", "expected_machines = {}\n");
  BAD_FILE("%s:1: listen: expected a string, got number", "listen = 8642\n");
  BAD_FILE("%s:1: listen: 'nowhere' is not HOST:PORT", "listen = 'nowhere'\n");
  BAD_FILE("%s:1: log_level: 'loud' is not debug", "log_level = 'loud'\n");
  BAD_FILE("%s:1: log_format: expected a string, got function", "log_format = tostring\n");
  BAD_FILE("%s:1: policy: cannot read", "policy = 'missing.lua'\n");
  BAD_FILE("%s:1: api_base: 'discord.com' is not", "api_base = 'discord.com'\n");
  BAD_FILE("%s:3: unexpected symbol", "shards = 1\n\nlisten = = 2\n");
  BAD_FILE("%s:2: boom", "shards = 1\nerror('boom')\n");
  BAD_FILE("%s: plain", "error('plain', 0)\n");
  BAD_FILE("%s: error object is not a string", "error({})\n");
  BAD_FILE("%s:1: attempt to call a nil value (global 'load')", "load('x = 1')()\n");
  BAD_FILE("%s:1: attempt to call a nil value (global 'dofile')", "dofile('/etc/passwd')\n");
  BAD_FILE("%s:1: attempt to call a nil value (global 'require')", "require('os')\n");
  BAD_FILE("%s:1: attempt to call a nil value (global 'loadfile')", "loadfile('/x')\n");
  BAD_FILE("%s:1: attempt to index a nil value (global 'io')", "io.write('x')\n");
  BAD_FILE("%s:1: attempt to call a nil value (field 'execute')", "os.execute('true')\n");
  BAD_FILE("%s:1: instruction budget exceeded", "while true do end\n");
  BAD_FILE("%s:1: instruction budget exceeded",
           "while true do pcall(function() while true do end end) end\n");
  BAD_FILE("%s: memory limit of 16 MiB exceeded",
           "local t, s = {}, string.rep('x', 4000) for i = 1, 10000 do t[i] = s .. i end\n");
  BAD_FILE("%s:1: cannot change a protected metatable", "setmetatable(_G, nil)\n");
  BAD_FILE("%s: unknown key 'sneaky'", "rawset(_G, 'sneaky', 1)\n");
  BAD_FILE("%s: collect_window: expected a number", "rawset(_G, 'collect_window', 'x')\n");
  BAD_FILE("%s:1: global with a number key", "_G[1] = 2\n");
  BAD_FILE("%s:1: unknown key 'print'", "print = 1\n");

  /* the policies' sandbox: nothing spins inside C or with hooks off past the budget */
  BAD_FILE("%s:1: attempt to call a nil value (global 'xpcall')",
           "xpcall(function() while true do end end, function() while true do end end)\n");
  BAD_FILE("%s:1: attempt to call a nil value (global 'collectgarbage')",
           "while true do collectgarbage() end\n");
  BAD_FILE("%s:1: string.rep: result longer than", "local s = string.rep('', math.maxinteger)\n");
  BAD_FILE("%s: a string longer than 4096 bytes", "local s = string.rep('x', 4096) .. 'y'\n");
  BAD_FILE("%s:1: attempt to call a nil value (method 'match')",
           "local s = ('a'):rep(3000):match('.-.-.-b')\n");
  BAD_FILE("%s:1: instruction budget exceeded", "table.move({}, 1, math.maxinteger, 1)\n");
  BAD_FILE("%s:3: instruction budget exceeded",
           "local h = string.rep('a', 4096)\nlocal n = string.rep('a', 2047) .. 'b'\n"
           "while true do string.find(h, n, 1, true) end\n");
  BAD_FILE("%s:3: instruction budget exceeded",
           "local t = {}\nfor i = 1, 1 << 19 do t[i] = true end for i = 1, 1 << 19 do t[i] = nil end\n"
           "while true do next(t) end\n");
  /* work no count sees, stopped by the time budget (1 s): comparisons of
   * NUL-laden strings, numeric strings converted by a for loop, lookups
   * along one chain of colliding integer keys */
  BAD_FILE("%s:2: time budget exceeded",
           "local z = string.rep('\\0', 4095) local a, b = z .. 'a', z .. 'b'\n"
           "while true do if a < b then end end\n");
  BAD_FILE("%s:3: time budget exceeded",
           "local d = '1' .. string.rep('0', 300) .. '.' .. string.rep('0', 3700) .. '1'\n"
           "local a, b = '-' .. d, d\nwhile true do for _ = a, b, a do end end\n");
  BAD_FILE("%s:3: time budget exceeded",
           "local m, t = (1 << 13) - 1, {}\nfor i = 1, (1 << 12) + 1 do t[i * m] = true end\n"
           "while true do local _ = t[3 * m] end\n");
  /* one VM step no hook interrupts (a rehash over 65,536 colliding keys,
   * seconds): refused at the time budget plus the grace; its thread frees
   * the sandbox, wiped, when the step ends (at most a minute here) */
  BAD_FILE("%s: still running 250 ms past its time budget of 1000 ms; abandoned",
           "local m, t = (1 << 17) - 1, {}\nfor i = 1, 1 << 16 do t[i * m] = true end\n"
           "t[((1 << 16) + 1) * m] = true\n");
  for (int i = 0; i < 6000 && dcm__sandbox_abandoned() > 0; i++) usleep(10000);
  CHECK(dcm__sandbox_abandoned() == 0, "the abandoned config run has not ended");
  BAD_FILE("%s:1: more than 64 extra arguments",
           "local t = {} for i = 1, 100 do t[i] = i end (function(...) end)(table.unpack(t))\n");
  /* no finalizers: Lua runs them with hooks off, beyond the instruction limit */
  BAD_FILE("%s:1: __gc metamethods are not allowed in the sandbox",
           "setmetatable({}, {__gc = function() while true do end end})\n");
  /* Lua shortens long chunk names; errors still carry the whole path */
  {
    dcm__config_t c;
    char name[200], want[300];
    snprintf(name, sizeof name, "%s/a-long-directory-name-for-this-test", tmpdir);
    mkdir(name, 0700);
    const char *p = write_file("a-long-directory-name-for-this-test/and-a-long-file-name.lua",
                               "shards = 1\nerror('deep')\n");
    snprintf(want, sizeof want, "%s:2: deep", p);
    expect_error(__LINE__, LOAD(&c, "-c", p), DCM_EINVAL, want);
    CHECK(strncmp(err, p, strlen(p)) == 0, "%s", err);
    dcm__config_free(&c);
  }

  /* unreadable: missing, a directory, unreadable mode (unless root) */
  BAD("/nonexistent/dcm.lua: cannot open: No such file or directory", "-c", "/nonexistent/dcm.lua");
  BAD(": cannot read: Is a directory", "-c", tmpdir, "--shards", "1");
  const char *locked = write_file("locked.lua", "shards = 1\n");
  chmod(locked, 0);
  if (geteuid() != 0) BAD(": cannot open: Permission denied", "-c", locked);
  /* a binary chunk is refused */
  BAD_FILE("%s", "\x1bLua");
}

static void test_secrets(void) {
  dcm__config_t c;
  /* environment */
  setenv("DISCORD_TOKEN", "env-token-0123", 1);
  setenv("DISCLUSTER_AUTH", "env-auth-4567", 1);
  setenv("DISCLUSTER_STATUS_AUTH", "env-status-1357", 1);
  CHECK(LOAD(&c, "--listen", "0.0.0.0:0", "--allow-plaintext") == DCM_CONFIG_RUN, "%s", err);
  CHECK(c.opts.shards == 0 && strcmp(c.opts.token, "env-token-0123") == 0 &&
        strcmp(c.opts.auth, "env-auth-4567") == 0 &&
        strcmp(c.opts.status_auth, "env-status-1357") == 0, "env secrets");
  dcm__config_free(&c);
  /* the read-only secret must differ from the CONTROL one */
  setenv("DISCLUSTER_STATUS_AUTH", "env-auth-4567", 1);
  BAD("status_auth: must differ from auth", "--shards", "1");
  CHECK(strstr(err, "env-auth-4567") == NULL, "%s", err);
  BAD_FILE("%s:1: status_auth: must not contain control characters", "status_auth = 'a\\tb'\n");
  unsetenv("DISCLUSTER_STATUS_AUTH");

  /* the file overrides the environment, and may read it */
  setenv("MY_AUTH", "from-getenv", 1);
  const char *path = write_file("sec.lua", "token = 'file-token-89'\nauth = os.getenv('MY_AUTH')\n");
  CHECK(LOAD(&c, "-c", path) == DCM_CONFIG_RUN, "%s", err);
  CHECK(strcmp(c.opts.token, "file-token-89") == 0 && strcmp(c.opts.auth, "from-getenv") == 0,
        "file secrets");
  dcm__config_free(&c);
  unsetenv("MY_AUTH");

  /* os.getenv of an unset variable is nil: the environment's value stays */
  path = write_file("sec2.lua", "auth = os.getenv('DCM_UNSET_VARIABLE')\n");
  CHECK(LOAD(&c, "-c", path) == DCM_CONFIG_RUN && strcmp(c.opts.auth, "env-auth-4567") == 0, "%s", err);
  dcm__config_free(&c);

  /* secrets never appear in errors */
  BAD_FILE("%s:1: auth: expected a string, got number", "auth = 4242\n");
  CHECK(strstr(err, "4242") == NULL, "%s", err);
  BAD_FILE("%s:1: token: must not contain control characters", "token = 'tok\\nen-secret'\n");
  CHECK(strstr(err, "en-secret") == NULL, "%s", err);
  BAD_FILE("%s:1: ***", "error(os.getenv('DISCORD_TOKEN'))\n");
  CHECK(strstr(err, "env-token-0123") == NULL, "%s", err);
  BAD_FILE("%s:2: listen: '***' is not", "auth = 'file-secret-x'\nlisten = auth\n");
  CHECK(strstr(err, "file-secret-x") == NULL, "%s", err);
  BAD("--listen: '***' is not", "--listen", "env-auth-4567");
  CHECK(strstr(err, "env-auth-4567") == NULL, "%s", err);
  setenv("DISCORD_TOKEN", "bad\ttoken", 1);
  BAD("DISCORD_TOKEN: must not contain control characters", "--shards", "1");
  CHECK(strstr(err, "token\n") == NULL && strstr(err, "bad") == NULL, "%s", err);

  /* an empty secret is no secret */
  setenv("DISCORD_TOKEN", "", 1);
  setenv("DISCLUSTER_AUTH", "", 1);
  dcm__config_t c2;
  expect_error(__LINE__, LOAD(&c2, "--listen", "0.0.0.0:0", "--shards", "1"), DCM_EINSECURE, "non-loopback");
  dcm__config_free(&c2);
  clear_env();
}

static void test_validation(void) {
  dcm__config_t c;
  clear_env();
  /* no secret needs --no-auth, said explicitly */
  strict = 1;
  expect_error(__LINE__, LOAD(&c, "--shards", "2"), DCM_EINSECURE,
               "auth: refusing to start without a CONTROL secret");
  dcm__config_free(&c);
  CHECK(LOAD(&c, "--shards", "2", "--no-auth") == DCM_CONFIG_RUN && c.opts.no_auth == 1, "%s", err);
  dcm__config_free(&c);
  const char *path = write_file("noauth.lua", "no_auth = true\nallow_plaintext = false\n");
  CHECK(LOAD(&c, "-c", path, "--shards", "2") == DCM_CONFIG_RUN && c.opts.no_auth == 1 &&
        c.opts.allow_plaintext == 0, "%s", err);
  dcm__config_free(&c);
  strict = 0;
  BAD("--no-auth: takes no value", "--no-auth=1", "--shards", "2");
  BAD_FILE("%s:1: no_auth: expected a boolean, got number", "no_auth = 1\n");
  BAD_FILE("%s:1: allow_plaintext: expected a boolean, got string", "allow_plaintext = 'yes'\n");
  /* TLS: both files or neither; readable */
  const char *cert = write_file("cert.pem", "x"), *key = write_file("key.pem", "x");
  BAD("tls_cert and tls_key: set both", "--shards", "2", "--tls-cert", cert);
  BAD("--tls-key: cannot read '/nonexistent/key.pem'", "--shards", "2", "--tls-key",
      "/nonexistent/key.pem");
  CHECK(LOAD(&c, "--shards", "2", "--tls-cert", cert, "--tls-key", key) == DCM_CONFIG_RUN &&
        strcmp(c.opts.tls_cert, cert) == 0 && strcmp(c.opts.tls_key, key) == 0, "%s", err);
  dcm__config_free(&c);
  /* non-loopback without a secret */
  expect_error(__LINE__, LOAD(&c, "--listen", "0.0.0.0:8642", "--shards", "2"), DCM_EINSECURE,
               "listen: refusing to listen on non-loopback address 0.0.0.0");
  dcm__config_free(&c);
  expect_error(__LINE__, LOAD(&c, "--listen", "[::]:0", "--shards", "2"), DCM_EINSECURE, "non-loopback");
  dcm__config_free(&c);
  CHECK(LOAD(&c, "--listen", "[::1]:0", "--shards", "2") == DCM_CONFIG_RUN, "%s", err);
  dcm__config_free(&c);
  CHECK(LOAD(&c, "--listen", "127.9.9.9:0", "--shards", "2") == DCM_CONFIG_RUN, "%s", err);
  dcm__config_free(&c);
  setenv("DISCLUSTER_AUTH", "s3cr3t-value", 1);
  /* off loopback: TLS, or plaintext said explicitly */
  expect_error(__LINE__, LOAD(&c, "--listen", "0.0.0.0:8642", "--shards", "2"), DCM_EINSECURE,
               "listen: refusing to listen on non-loopback address 0.0.0.0 without TLS");
  dcm__config_free(&c);
  CHECK(LOAD(&c, "--listen", "0.0.0.0:8642", "--shards", "2", "--allow-plaintext") ==
        DCM_CONFIG_RUN && c.opts.allow_plaintext == 1, "%s", err);
  dcm__config_free(&c);
  CHECK(LOAD(&c, "--listen", "0.0.0.0:8642", "--shards", "2", "--tls-cert", cert, "--tls-key",
             key) == DCM_CONFIG_RUN, "%s", err);
  dcm__config_free(&c);
  clear_env();
  /* shards = auto needs a token */
  BAD("token: shards = auto needs a Discord bot token", "--listen", "127.0.0.1:0");
}

static void test_help_version(void) {
  dcm__config_t c;
  const char *flags[] = {"-c, --config", "--listen", "--shards", "--max-concurrency", "--api-base",
                         "--policy", "--collect-window", "--expected-machines",
                         "--heartbeat-interval", "--heartbeat-grace", "--reconnect-grace",
                         "--connect-timeout", "--handshake-timeout", "--log-format",
                         "--log-level", "--head-timeout", "--max-unauthenticated-per-address",
                         "--policy-timeout S",
                         "--tls-cert FILE", "--tls-key FILE", "--no-auth ", "--allow-plaintext ",
                         "--help", "--version", "DISCORD_TOKEN", "DISCLUSTER_STATUS_AUTH",
                         "DISCLUSTER_AUTH", "(127.0.0.1:8642)", "(45)", "(600)", NULL};
  CHECK(LOAD(&c, "--bogus-ignored-after?", "--help") == DCM_EINVAL, "bad flag first wins");
  dcm__config_free(&c);
  CHECK(LOAD(&c, "--shards", "1", "--help", "--bogus") == DCM_CONFIG_EXIT, "%s", err);
  dcm__config_free(&c);
  CHECK(strncmp(outbuf, "Usage: discluster-master", 24) == 0, "%s", outbuf);
  for (int i = 0; flags[i]; i++) CHECK(strstr(outbuf, flags[i]) != NULL, "help lacks %s", flags[i]);
  CHECK(LOAD(&c, "-h") == DCM_CONFIG_EXIT && strstr(outbuf, "Usage:"), "-h");
  dcm__config_free(&c);
  CHECK(LOAD(&c, "--version") == DCM_CONFIG_EXIT, "%s", err);
  CHECK(strstr(outbuf, "discluster-master " DCM_VERSION) == outbuf && strchr(outbuf, '\n'), "%s", outbuf);
  dcm__config_free(&c);
  CHECK(LOAD(&c, "-V") == DCM_CONFIG_EXIT && strstr(outbuf, DCM_VERSION), "-V");
  dcm__config_free(&c);
}

static void cleanup(void) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (tmpdir[0] && system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", tmpdir);
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/dcm-config-XXXXXX");
  if (mkdtemp(tmpdir) == NULL) {
    perror("mkdtemp");
    return 1;
  }
  clear_env();
  test_defaults();
  test_every_flag();
  test_bad_flags();
  test_file();
  test_bad_files();
  test_secrets();
  test_validation();
  test_help_version();
  cleanup();
  printf("%d checks, %d failures\n", checks, failures);
  return failures ? 1 : 0;
}
