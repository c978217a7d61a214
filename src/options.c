/* options.c: see options.h. */
#include "options.h"

#include <arpa/inet.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

void dcm_options_init(dcm_options_t *o) {
  memset(o, 0, sizeof(*o));
  o->listen_host = "127.0.0.1";
  o->listen_port = 8642;
  o->api_base = "https://discord.com/api/v10";
  o->policy_timeout = 1;
  o->collect_window = 45;
  o->heartbeat_interval = 30;
  o->heartbeat_grace = 15;
  o->reconnect_grace = 30;
  o->connect_timeout = 600;
  o->handshake_timeout = 10;
  o->identify_interval = 5.5;
  o->identify_reserve = 10;
  o->handoff_timeout = 15;
  o->rebalance_batch = 32;
  o->log_level = DCM_LOG_INFO;
  o->log_format = DCM_LOG_TEXT;
  o->max_message = 1u << 20;
  o->max_outbound = 4u << 20;
  o->max_head = 8192;
  o->max_unauthenticated = 256;
  o->head_timeout = 5;
  o->max_unauthenticated_per_address = 32;
  o->cluster = "discluster";
  o->lease_ttl = 5;
}

const char *dcm_strerror(int err) {
  switch (err) {
    case 0: return "success";
    case DCM_EINVAL: return "invalid argument";
    case DCM_ENOMEM: return "out of memory";
    case DCM_ESTATE: return "not valid in the current state";
    case DCM_EINSECURE: return "insecure configuration refused: no CONTROL secret, or plaintext off loopback";
    case DCM_EPOLICY: return "policy error";
    case DCM_EDISCORD: return "Discord request failed";
    case DCM_EAUTH: return "Discord rejected the bot token";
    case DCM_EFATAL: return "a CONTROL reported a fatal Discord error";
    case DCM_ECANCELED: return "canceled";
    case DCM_ESTEPPED: return "stepped down: leadership lost";
    default: return err < 0 && err > -4096 ? uv_strerror(err) : "unknown error";
  }
}

int dcm__is_loopback(const char *host) {
  unsigned char buf[16];
  if (strcmp(host, "localhost") == 0) return 1;
  if (inet_pton(AF_INET, host, buf) == 1) return buf[0] == 127;
  if (inet_pton(AF_INET6, host, buf) == 1) {
    static const unsigned char lo[16] = {0, 0, 0, 0, 0, 0, 0, 0,
                                         0, 0, 0, 0, 0, 0, 0, 1};
    return memcmp(buf, lo, 16) == 0;
  }
  return 0;
}

int dcm__url_ok(const char *s, int ws) {
  const char *tls = ws ? "wss://" : "https://", *plain = ws ? "ws://" : "http://";
  if (strncmp(s, tls, strlen(tls)) == 0)
    s += strlen(tls);
  else if (strncmp(s, plain, strlen(plain)) == 0)
    s += strlen(plain);
  else
    return 0;
  const char *end = s + strcspn(s, "/?#");
  const char *host_end = end;
  if (*s == '[') { /* [IPv6] */
    const char *close = memchr(s, ']', (size_t)(end - s));
    if (close == NULL || close == s + 1) return 0;
    host_end = close + 1;
    if (host_end != end && *host_end != ':') return 0;
  } else {
    const char *colon = memchr(s, ':', (size_t)(end - s));
    if (colon) host_end = colon;
  }
  if (host_end == s) return 0;
  if (host_end == end) return 1;
  long port = 0; /* after ':': 1-5 digits, 1-65535 */
  const char *p = host_end + 1;
  if (p == end || end - p > 5) return 0;
  for (; p < end; p++) {
    if (*p < '0' || *p > '9') return 0;
    port = port * 10 + (*p - '0');
  }
  return port >= 1 && port <= 65535;
}

static int has_ctl(const char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f) return 1;
  return 0;
}

static int name_ok(const char *s, size_t max) {
  size_t n = strlen(s);
  return n >= 1 && n <= max && strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                         "0123456789._-") == n;
}

static int bad_time(double v, int allow_zero) {
  return !isfinite(v) || v < 0 || (!allow_zero && v == 0) || v > 1e7;
}

int dcm__options_validate(const dcm_options_t *o, char *err, size_t n) {
  unsigned char buf[16];
#define FAIL(...) do { snprintf(err, n, __VA_ARGS__); return DCM_EINVAL; } while (0)
  if (o->listen_host == NULL || (strcmp(o->listen_host, "localhost") != 0 &&
      inet_pton(AF_INET, o->listen_host, buf) != 1 &&
      inet_pton(AF_INET6, o->listen_host, buf) != 1))
    FAIL("listen: '%s' is not an IPv4 or IPv6 address", o->listen_host ? o->listen_host : "");
  if (o->listen_port < 0 || o->listen_port > 65535)
    FAIL("listen: port %d is out of range 0-65535", o->listen_port);
  if (o->shards < 0 || o->shards > 1000000)
    FAIL("shards: %d is out of range (auto, or 1-1000000)", o->shards);
  if (o->max_concurrency < 0 || o->max_concurrency > 1024)
    FAIL("max_concurrency: %d is out of range 1-1024", o->max_concurrency);
  if (o->expected_machines < 0)
    FAIL("expected_machines: %d must not be negative", o->expected_machines);
  if (o->api_base == NULL || !dcm__url_ok(o->api_base, 0))
    FAIL("api_base: must be https://HOST[:PORT][/PATH] (or http:// for tests)");
  if (bad_time(o->policy_timeout, 0) || o->policy_timeout < 0.01 || o->policy_timeout > 3600)
    FAIL("policy_timeout: must be a time from 0.01 to 3600 seconds");
  if (bad_time(o->collect_window, 1)) FAIL("collect_window: must be a time >= 0 seconds");
  if (bad_time(o->heartbeat_interval, 0)) FAIL("heartbeat_interval: must be a time > 0 seconds");
  if (bad_time(o->heartbeat_grace, 1)) FAIL("heartbeat_grace: must be a time >= 0 seconds");
  if (bad_time(o->reconnect_grace, 1)) FAIL("reconnect_grace: must be a time >= 0 seconds");
  if (bad_time(o->connect_timeout, 0)) FAIL("connect_timeout: must be a time > 0 seconds");
  if (bad_time(o->handshake_timeout, 0)) FAIL("handshake_timeout: must be a time > 0 seconds");
  if (bad_time(o->identify_interval, 0) || o->identify_interval < 0.001)
    FAIL("identify_interval: must be a time >= 0.001 seconds");
  if (bad_time(o->handoff_timeout, 0)) FAIL("handoff_timeout: must be a time > 0 seconds");
  if (o->rebalance_batch < 1 || o->rebalance_batch > 1000000)
    FAIL("rebalance_batch: %d is out of range 1-1000000", o->rebalance_batch);
  if (o->identify_reserve < 0 || o->identify_reserve > 1000000)
    FAIL("identify_reserve: %d is out of range 0-1000000", o->identify_reserve);
  if (o->gateway_url && (!dcm__url_ok(o->gateway_url, 1) || strlen(o->gateway_url) > 500))
    FAIL("gateway_url: must be wss://HOST[:PORT][/PATH] (or ws://), at most 500 bytes");
  if (o->gateway_url && has_ctl(o->gateway_url))
    FAIL("gateway_url: contains a control character");
  if ((unsigned)o->log_level > DCM_LOG_ERROR) FAIL("log_level: must be debug, info, warn or error");
  if ((unsigned)o->log_format > DCM_LOG_JSON) FAIL("log_format: must be text or json");
  if (o->max_message < 1024 || o->max_outbound < o->max_message || o->max_head < 512 ||
      o->max_unauthenticated < 1)
    FAIL("limits: max_message >= 1024, max_outbound >= max_message, max_head >= 512");
  if (bad_time(o->head_timeout, 0)) FAIL("head_timeout: must be a time > 0 seconds");
  if (o->max_unauthenticated_per_address < 1 || o->max_unauthenticated_per_address > 1000000)
    FAIL("max_unauthenticated_per_address: %d is out of range 1-1000000",
         o->max_unauthenticated_per_address);
  if (o->token && has_ctl(o->token))
    FAIL("token: contains a control character");
  if (o->auth && has_ctl(o->auth))
    FAIL("auth: contains a control character");
  if (o->status_auth && has_ctl(o->status_auth))
    FAIL("status_auth: contains a control character");
  int has_auth = o->auth && o->auth[0], has_status = o->status_auth && o->status_auth[0];
  if (has_auth && has_status && strcmp(o->auth, o->status_auth) == 0)
    FAIL("status_auth: must differ from auth (the read-only secret must not open sessions)");
  if ((o->tls_cert && o->tls_cert[0]) != (o->tls_key && o->tls_key[0]))
    FAIL("tls_cert and tls_key: set both (a certificate and its key) or neither");
  if (o->shards == 0 && (o->token == NULL || o->token[0] == '\0'))
    FAIL("token: shards = auto needs a Discord bot token (DISCORD_TOKEN or the config key token)");
  if (o->etcd) {
    char url[2049];
    const char *p = o->etcd;
    if (strlen(o->etcd) > 4096) FAIL("etcd: at most 4096 bytes of endpoints");
    do { /* a comma-separated list of http:// or https:// endpoints */
      size_t len = strcspn(p, ",");
      if (len == 0 || len >= sizeof url) FAIL("etcd: empty or overlong endpoint in the list");
      memcpy(url, p, len);
      url[len] = '\0';
      if (!dcm__url_ok(url, 0) || strpbrk(url, "?# ") || has_ctl(url))
        FAIL("etcd: endpoint %zu is not http[s]://HOST:PORT", (size_t)(p - o->etcd));
      p += len;
    } while (*p++ == ',');
    if (o->cluster == NULL || !name_ok(o->cluster, 64))
      FAIL("cluster: must be 1-64 characters of A-Z a-z 0-9 . _ -");
    if (!isfinite(o->lease_ttl) || o->lease_ttl < 2 || o->lease_ttl > 60)
      FAIL("lease_ttl: must be 2-60 seconds");
    if (o->advertise_url == NULL && (strcmp(o->listen_host, "0.0.0.0") == 0 ||
                                     strcmp(o->listen_host, "::") == 0))
      FAIL("advertise: listening on a wildcard address: set the URL agents reach this MASTER at");
    if ((o->etcd_cert && o->etcd_cert[0]) != (o->etcd_key && o->etcd_key[0]))
      FAIL("etcd_cert and etcd_key: set both or neither");
  }
  if (o->advertise_url && (!dcm__url_ok(o->advertise_url, 1) || has_ctl(o->advertise_url) ||
                           strlen(o->advertise_url) > 120))
    FAIL("advertise: must be ws[s]://HOST:PORT[/PATH] of at most 120 bytes");
#define REFUSE(...) do { snprintf(err, n, __VA_ARGS__); return DCM_EINSECURE; } while (0)
  int loopback = dcm__is_loopback(o->listen_host);
  if (!has_auth && !loopback)
    REFUSE("listen: refusing to listen on non-loopback address %s without a shared secret "
           "(set DISCLUSTER_AUTH or the config key auth)", o->listen_host);
  if (!(o->tls_cert && o->tls_cert[0]) && !loopback && !o->allow_plaintext)
    REFUSE("listen: refusing to listen on non-loopback address %s without TLS: the bot "
           "token would travel in cleartext (set tls_cert and tls_key, or pass "
           "--allow-plaintext)", o->listen_host);
  if (!has_auth && !o->no_auth)
    REFUSE("auth: refusing to start without a CONTROL secret (set DISCLUSTER_AUTH or the "
           "config key auth, or pass --no-auth to let any local process join)");
#undef REFUSE
#undef FAIL
  return 0;
}
