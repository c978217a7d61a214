/*
 * fuzz_ctl_plan.c: the agent's parsers of what local processes write
 * (src/control/plan.c). The input is a cluster's stdout: split into lines
 * by dcm__ctl_lines_feed (as one chunk and again at random points: the
 * lines must come out the same), each line classified by
 * dcm__ctl_parse_line. The same bytes are also an identify request target
 * (dcm__ctl_identify_target, at most the endpoint's 512 bytes), a
 * /proc/PID/environ entry, a /proc/PID/stat line and a MASTER URL
 * (dcm__ctl_parse_url: a follower's Discluster-Leader header).
 */
#include <string.h>

#include "agent.h"
#include "fuzz.h"
#include "plan.h"

typedef struct {
  uint8_t *p;
  size_t len, cap;
} lines_t;

static void keep_line(void *arg, const char *line, size_t len, int cut) {
  lines_t *l = arg;
  FUZZ_CHECK(len <= DCM_CTL_LINE_MAX);
  FUZZ_CHECK(memchr(line, '\n', len) == NULL);
  FUZZ_CHECK(!cut || len == DCM_CTL_LINE_MAX);
  size_t need = l->len + len + 5;
  if (need > l->cap) {
    size_t cap = l->cap ? l->cap : 4096;
    while (cap < need) cap *= 2;
    uint8_t *p = realloc(l->p, cap);
    FUZZ_CHECK(p != NULL);
    l->p = p;
    l->cap = cap;
  }
  uint32_t n = (uint32_t)len;
  memcpy(l->p + l->len, &n, 4);
  l->p[l->len + 4] = (uint8_t)cut;
  memcpy(l->p + l->len + 5, line, len);
  l->len += len + 5;

  dcm__ctl_fatal_t f;
  dcm__ctl_line_kind k = dcm__ctl_parse_line(line, len, &f);
  if (k == DCM_CTL_LINE_FATAL) {
    FUZZ_CHECK(f.shard >= -1);
    FUZZ_CHECK(f.message >= line && f.message + f.message_len <= line + len);
  } else {
    FUZZ_CHECK(k == DCM_CTL_LINE_READY || k == DCM_CTL_LINE_OTHER);
  }
}

static void split(const uint8_t *data, const size_t *ends, size_t n, lines_t *out) {
  dcm__ctl_lines_t *ls = calloc(1, sizeof *ls);
  FUZZ_CHECK(ls != NULL);
  size_t at = 0;
  for (size_t i = 0; i < n; i++) {
    dcm__ctl_lines_feed(ls, (const char *)data + at, ends[i] - at, keep_line, out);
    at = ends[i];
  }
  dcm__ctl_lines_flush(ls, keep_line, out);
  free(ls);
}

static int lower_hex(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_rng_t rng = fuzz_rng(data, size);
  size_t whole[1] = {size}, ends[33];
  size_t nends = fuzz_cuts(&rng, size, ends, 32);
  lines_t a = {0}, b = {0};
  split(data, whole, 1, &a);
  split(data, ends, nends, &b);
  FUZZ_CHECK(a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0));
  free(a.p);
  free(b.p);
  dcm__ctl_fatal_t f;
  dcm__ctl_parse_line((const char *)data, size, &f);

  /* identify.c keeps at most DCM_CTL_IDENT_URL_MAX bytes of the target */
  char key[DCM_CTL_KEY_HEX + 1];
  int shard = -1;
  size_t ul = size < DCM_CTL_IDENT_URL_MAX ? size : DCM_CTL_IDENT_URL_MAX;
  dcm__ctl_target_kind t = dcm__ctl_identify_target((const char *)data, ul, key, &shard);
  if (t == DCM_CTL_TARGET_OK) {
    FUZZ_CHECK(strlen(key) == DCM_CTL_KEY_HEX && lower_hex(key, DCM_CTL_KEY_HEX));
    FUZZ_CHECK(shard >= 0);
  } else {
    FUZZ_CHECK(t == DCM_CTL_TARGET_NO_PATH || t == DCM_CTL_TARGET_BAD_SHARD);
  }

  if (dcm__ctl_environ_key((const char *)data, size, key))
    FUZZ_CHECK(strlen(key) == DCM_CTL_KEY_HEX && lower_hex(key, DCM_CTL_KEY_HEX));
  char state;
  long ppid, pgid;
  dcm__ctl_parse_stat((const char *)data, size, &state, &ppid, &pgid);

  /* A follower's Discluster-Leader header or 4020 reason (not NUL-terminated). */
  dcm__ctl_url_t u, v;
  char err[96], text[DCM_CTL_URL_MAX + 16];
  if (dcm__ctl_parse_url((const char *)data, size, &u, err, sizeof err) == 0) {
    FUZZ_CHECK(size <= DCM_CTL_URL_MAX && u.host[0] && u.path[0] == '/');
    FUZZ_CHECK(u.port >= 1 && u.port <= 65535);
    /* what the agent logs parses back to the same MASTER */
    dcm__ctl_url_format(&u, text, sizeof text);
    FUZZ_CHECK(dcm__ctl_parse_url(text, strlen(text), &v, err, sizeof err) == 0);
    FUZZ_CHECK(dcm__ctl_url_same(&u, &v));
  } else {
    FUZZ_CHECK(err[0] != '\0');
  }
  return 0;
}
