/* plan.c: see plan.h. */
#include "plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int cmp_int(const void *a, const void *b) {
  int p = *(const int *)a, q = *(const int *)b;
  return (p > q) - (p < q);
}

size_t dcm__ctl_sort_unique(int *v, size_t n) {
  if (n == 0) return 0;
  qsort(v, n, sizeof *v, cmp_int);
  size_t k = 1;
  for (size_t i = 1; i < n; i++)
    if (v[i] != v[k - 1]) v[k++] = v[i];
  return k;
}

size_t dcm__ctl_group_size(size_t per, int max_concurrency) {
  size_t k = max_concurrency > 1 ? (size_t)max_concurrency : 1;
  if (per < 1) per = 1;
  return (per + k - 1) / k * k;
}

static int contains(const int *s, size_t n, int x) {
  return bsearch(&x, s, n, sizeof *s, cmp_int) != NULL;
}

int dcm__ctl_subset(const int *g, size_t n, const int *s, size_t ns) {
  for (size_t i = 0; i < n; i++)
    if (!contains(s, ns, g[i])) return 0;
  return 1;
}

int dcm__ctl_overlaps(const int *g, size_t n, const int *s, size_t ns) {
  for (size_t i = 0; i < n && ns; i++)
    if (contains(s, ns, g[i])) return 1;
  return 0;
}

size_t dcm__ctl_rest(const int *want, size_t nwant, const int *const *groups,
                     const size_t *ngroups, size_t nkept, int *rest) {
  /* rest doubles as the marks: a kept shard's slot becomes -1 (ids are >= 0). */
  memcpy(rest, want, nwant * sizeof *rest);
  for (size_t g = 0; g < nkept; g++)
    for (size_t i = 0; i < ngroups[g]; i++) {
      const int *at = bsearch(&groups[g][i], want, nwant, sizeof *want, cmp_int);
      if (at) rest[at - want] = -1;
    }
  size_t k = 0;
  for (size_t i = 0; i < nwant; i++)
    if (rest[i] >= 0) rest[k++] = rest[i];
  return k;
}

uint64_t dcm__ctl_backoff_ms(unsigned attempt, uint64_t cap_ms, double u) {
  uint64_t d = attempt >= 32 ? cap_ms : (uint64_t)DCM_CTL_BACKOFF_FIRST_MS << attempt;
  if (d > cap_ms) d = cap_ms;
  if (u < 0) u = 0;
  if (u > 1) u = 1;
  uint64_t w = d / 2 + (uint64_t)((double)(d - d / 2) * u);
  return w ? w : 1;
}

uint64_t dcm__ctl_election_ms(double u) {
  if (u < 0) u = 0;
  if (u > 1) u = 1;
  return DCM_CTL_ELECTION_MIN_MS +
         (uint64_t)((double)(DCM_CTL_ELECTION_MAX_MS - DCM_CTL_ELECTION_MIN_MS) * u);
}

#define URL_FAIL(...) \
  do { snprintf(err, errlen, __VA_ARGS__); return -1; } while (0)

int dcm__ctl_parse_url(const char *url, size_t n, dcm__ctl_url_t *u, char *err, size_t errlen) {
  const char *p = url, *end = url + n, *host, *hend, *rest;
  memset(u, 0, sizeof *u);
  if (n > DCM_CTL_URL_MAX) URL_FAIL("longer than %d bytes", DCM_CTL_URL_MAX);
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)url[i] <= 0x20 || (unsigned char)url[i] >= 0x7f)
      URL_FAIL("holds a blank, control or non-ASCII character");
  if (n >= 6 && strncasecmp(p, "wss://", 6) == 0) {
    u->tls = 1;
    p += 6;
  } else if (n >= 5 && strncasecmp(p, "ws://", 5) == 0) {
    p += 5;
  } else {
    URL_FAIL("must start with wss:// or ws://");
  }
  int bracket = p < end && *p == '[';
  if (bracket) {
    host = p + 1;
    hend = memchr(host, ']', (size_t)(end - host));
    if (hend == NULL) URL_FAIL("unclosed [ in the host");
    rest = hend + 1;
  } else {
    host = p;
    hend = p;
    while (hend < end && *hend != ':' && *hend != '/') hend++;
    rest = hend;
  }
  size_t hl = (size_t)(hend - host);
  if (hl == 0 || hl >= sizeof u->host || memchr(host, ',', hl) || memchr(host, '@', hl))
    URL_FAIL("bad host");
  memcpy(u->host, host, hl);
  u->port = DCM_CTL_DEFAULT_PORT;
  if (rest < end && *rest == ':') {
    long port = 0;
    const char *d = rest + 1;
    while (d < end && *d >= '0' && *d <= '9' && port <= 65535) port = port * 10 + (*d++ - '0');
    if (d == rest + 1 || port < 1 || port > 65535 || (d < end && *d != '/'))
      URL_FAIL("bad port");
    u->port = (int)port;
    rest = d;
  } else if (rest < end && *rest != '/') {
    URL_FAIL("bad host");
  }
  size_t pl = (size_t)(end - rest);
  if (pl >= sizeof u->path) URL_FAIL("bad path");
  if (pl == 0) {
    u->path[0] = '/';
  } else {
    memcpy(u->path, rest, pl);
  }
  snprintf(u->hostport, sizeof u->hostport, "%s%s%s:%d", bracket ? "[" : "", u->host,
           bracket ? "]" : "", u->port);
  return 0;
}

int dcm__ctl_url_same(const dcm__ctl_url_t *a, const dcm__ctl_url_t *b) {
  return a->tls == b->tls && a->port == b->port && strcasecmp(a->host, b->host) == 0 &&
         strcmp(a->path, b->path) == 0;
}

void dcm__ctl_url_format(const dcm__ctl_url_t *u, char *out, size_t len) {
  snprintf(out, len, "%s://%s%s", u->tls ? "wss" : "ws", u->hostport, u->path);
}

size_t dcm__ctl_join(const int *v, size_t n, char *out, size_t len) {
  size_t o = 0;
  if (len == 0) return 0;
  out[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    int w = snprintf(out + o, len - o, "%s%d", i ? "," : "", v[i]);
    if (w < 0 || (size_t)w >= len - o) {
      out[0] = '\0';
      return 0;
    }
    o += (size_t)w;
  }
  return o;
}

/* Parses a decimal int at *p (optional '-'); advances *p. */
static int parse_int(const char **p, const char *end, long long lo, long long hi, int *out) {
  const char *s = *p;
  int neg = 0;
  long long v = 0;
  if (s < end && *s == '-') {
    neg = 1;
    s++;
  }
  const char *digits = s;
  while (s < end && *s >= '0' && *s <= '9') {
    v = v * 10 + (*s - '0');
    if (v > 0x7fffffffLL + 1) return 0;
    s++;
  }
  if (s == digits) return 0;
  if (neg) v = -v;
  if (v < lo || v > hi) return 0;
  *out = (int)v;
  *p = s;
  return 1;
}

static int blank(char c) { return c == ' ' || c == '\t'; }

static size_t trim_end(const char *line, size_t len) {
  while (len > 0 && (line[len - 1] == '\r' || blank(line[len - 1]))) len--;
  return len;
}

dcm__ctl_line_kind dcm__ctl_parse_line(const char *line, size_t len,
                                       dcm__ctl_fatal_t *fatal) {
  len = trim_end(line, len);
  if (len == 5 && memcmp(line, "READY", 5) == 0) return DCM_CTL_LINE_READY;
  if (len >= 7 && memcmp(line, "SESSION", 7) == 0 && (len == 7 || blank(line[7])))
    return DCM_CTL_LINE_SESSION;
  if (len < 7 || memcmp(line, "FATAL ", 6) != 0) return DCM_CTL_LINE_OTHER;
  const char *p = line + 6, *end = line + len;
  dcm__ctl_fatal_t f = {0, -1, "", 0};
  if (!parse_int(&p, end, -0x80000000LL, 0x7fffffffLL, &f.code)) return DCM_CTL_LINE_OTHER;
  if (p < end && *p != ' ') return DCM_CTL_LINE_OTHER;
  while (p < end && *p == ' ') p++;
  if (end - p > 6 && memcmp(p, "shard=", 6) == 0) {
    const char *q = p + 6;
    int shard;
    if (parse_int(&q, end, 0, 0x7fffffffLL, &shard) && (q == end || *q == ' ')) {
      f.shard = shard;
      p = q;
      while (p < end && *p == ' ') p++;
    }
  }
  f.message = p;
  f.message_len = (size_t)(end - p);
  if (fatal) *fatal = f;
  return DCM_CTL_LINE_FATAL;
}

/* The next blank-separated field of [*p, end): its start and length. */
static size_t next_field(const char **p, const char *end, const char **field) {
  const char *s = *p;
  while (s < end && blank(*s)) s++;
  *field = s;
  while (s < end && !blank(*s)) s++;
  *p = s;
  return (size_t)(s - *field);
}

/* A decimal without sign or leading zeros (0 itself is fine), 0..max. */
static int parse_decimal(const char *s, size_t n, long long max, long long *out) {
  long long v = 0;
  if (n == 0 || n > 19 || (n > 1 && s[0] == '0')) return 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return 0;
    v = v * 10 + (s[i] - '0');
    if (v > max) return 0;
  }
  *out = v;
  return 1;
}

int dcm__ctl_parse_session(const char *line, size_t len, dcm__session_t *out) {
  const char *p, *end, *f[4];
  size_t n[4];
  long long shard, seq;
  len = trim_end(line, len);
  if (dcm__ctl_parse_line(line, len, NULL) != DCM_CTL_LINE_SESSION) return 0;
  p = line + 7;
  end = line + len;
  for (int i = 0; i < 4; i++)
    if ((n[i] = next_field(&p, end, &f[i])) == 0) return 0;
  if (p != end) return 0; /* a fifth field */
  if (!parse_decimal(f[0], n[0], 0x7fffffffLL, &shard) ||
      !parse_decimal(f[2], n[2], 1LL << 53, &seq) ||
      n[1] > DCM_SESSION_ID_MAX || n[3] > DCM_RESUME_URL_MAX)
    return 0;
  /* dcm__session_valid reads the url as a string: copy it first. */
  memcpy(out->resume_url, f[3], n[3]);
  out->resume_url[n[3]] = '\0';
  if (!dcm__session_valid(f[1], n[1], seq, out->resume_url, n[3])) return 0;
  memcpy(out->session_id, f[1], n[1]);
  out->session_id[n[1]] = '\0';
  out->shard = (int)shard;
  out->seq = seq;
  return 1;
}

void dcm__ctl_lines_feed(dcm__ctl_lines_t *ls, const char *data, size_t n,
                         dcm__ctl_line_cb cb, void *arg) {
  while (n > 0) {
    const char *nl = memchr(data, '\n', n);
    size_t take = nl ? (size_t)(nl - data) : n;
    if (!ls->discarding) {
      size_t room = sizeof ls->buf - ls->len;
      size_t k = take < room ? take : room;
      memcpy(ls->buf + ls->len, data, k);
      ls->len += k;
      /* A full buffer waits for the next byte: a newline there makes it a
         whole line of exactly the bound, however the reads split it. */
      if (take > k) {
        /* Over the bound: hand over what fits, drop the rest of the line. */
        cb(arg, ls->buf, ls->len, 1);
        ls->len = 0;
        ls->discarding = 1;
      }
    }
    if (nl == NULL) return;
    if (ls->discarding) {
      ls->discarding = 0;
    } else {
      cb(arg, ls->buf, ls->len, 0);
      ls->len = 0;
    }
    data += take + 1;
    n -= take + 1;
  }
}

void dcm__ctl_lines_flush(dcm__ctl_lines_t *ls, dcm__ctl_line_cb cb, void *arg) {
  if (ls->len > 0 && !ls->discarding) cb(arg, ls->buf, ls->len, 0);
  ls->len = 0;
  ls->discarding = 0;
}

void dcm__ctl_hex(const unsigned char *in, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
  out[2 * n] = '\0';
}

int dcm__ctl_key_equal(const char *a, const char *b) {
  unsigned char diff = 0;
  for (size_t i = 0; i < DCM_CTL_KEY_HEX; i++) diff |= (unsigned char)(a[i] ^ b[i]);
  return diff == 0;
}

static int is_lower_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

dcm__ctl_target_kind dcm__ctl_identify_target(const char *url, size_t len,
                                              char key[DCM_CTL_KEY_HEX + 1], int *shard) {
  const char *end = url + len, *q = memchr(url, '?', len);
  size_t plen = q ? (size_t)(q - url) : len;
  if (plen != 1 + DCM_CTL_KEY_HEX || url[0] != '/') return DCM_CTL_TARGET_NO_PATH;
  for (size_t i = 1; i < plen; i++)
    if (!is_lower_hex(url[i])) return DCM_CTL_TARGET_NO_PATH;
  memcpy(key, url + 1, DCM_CTL_KEY_HEX);
  key[DCM_CTL_KEY_HEX] = '\0';
  int found = 0;
  for (const char *p = q ? q + 1 : end; p < end;) {
    const char *amp = memchr(p, '&', (size_t)(end - p));
    const char *pend = amp ? amp : end;
    if (pend - p >= 6 && memcmp(p, "shard=", 6) == 0) {
      const char *v = p + 6;
      if (found || v == pend || *v < '0' || *v > '9' ||
          !parse_int(&v, pend, 0, 0x7fffffffLL, shard) || v != pend)
        return DCM_CTL_TARGET_BAD_SHARD;
      found = 1;
    } else if (pend - p == 5 && memcmp(p, "shard", 5) == 0) {
      return DCM_CTL_TARGET_BAD_SHARD; /* a shard without a value */
    }
    p = amp ? amp + 1 : end;
  }
  return found ? DCM_CTL_TARGET_OK : DCM_CTL_TARGET_BAD_SHARD;
}

int dcm__ctl_environ_key(const char *entry, size_t n, char key[DCM_CTL_KEY_HEX + 1]) {
  static const char var[] = "DISCLUSTER_IDENTIFY_URL=";
  size_t vl = sizeof var - 1;
  if (n < vl + 1 + DCM_CTL_KEY_HEX || memcmp(entry, var, vl) != 0) return 0;
  const char *k = entry + n - DCM_CTL_KEY_HEX;
  if (k[-1] != '/') return 0;
  for (size_t i = 0; i < DCM_CTL_KEY_HEX; i++)
    if (!is_lower_hex(k[i])) return 0;
  memcpy(key, k, DCM_CTL_KEY_HEX);
  key[DCM_CTL_KEY_HEX] = '\0';
  return 1;
}

int dcm__ctl_parse_stat(const char *s, size_t n, char *state, long *ppid, long *pgid) {
  /* "pid (comm) state ppid pgrp ...": comm may hold anything, ')' included. */
  const char *end = s + n, *p = NULL;
  for (const char *q = s; q < end; q++)
    if (*q == ')') p = q;
  if (p == NULL || end - p < 4 || p[1] != ' ') return 0;
  p += 2;
  *state = *p++;
  long v[2];
  for (int i = 0; i < 2; i++) {
    if (p >= end || *p != ' ') return 0;
    p++;
    int neg = p < end && *p == '-';
    if (neg) p++;
    if (p >= end || *p < '0' || *p > '9') return 0;
    long x = 0;
    while (p < end && *p >= '0' && *p <= '9' && x < 0x7fffffffL) x = x * 10 + (*p++ - '0');
    v[i] = neg ? -x : x;
  }
  *ppid = v[0];
  *pgid = v[1];
  return 1;
}
