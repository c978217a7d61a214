/*
 * plan.h: the agent's pure helpers, kept apart so unit tests can drive them
 * without processes or sockets: turning an assignment into shard groups
 * (one cluster each), the cluster stdout line contract (READY, FATAL,
 * SESSION), the
 * identify endpoint's request target (/<run key>?shard=N), MASTER URLs
 * (parsed and compared: the list of MASTERs and a follower's leader), the
 * reconnect backoff and election wait, and reading /proc entries (stat,
 * environ) of adopted processes.
 * No I/O, no libuv.
 */
#ifndef DCM_CTL_PLAN_H
#define DCM_CTL_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "protocol.h"

/* Longest stdout line kept from a cluster; the rest of a longer line is cut. */
#define DCM_CTL_LINE_MAX 4096

/* Sorts v and drops duplicates; returns the new length. */
size_t dcm__ctl_sort_unique(int *v, size_t n);

/* Group size: per rounded up to a multiple of max_concurrency (>= 1). */
size_t dcm__ctl_group_size(size_t per, int max_concurrency);

/* 1 if every element of sorted group g (n) is in sorted set s (ns). */
int dcm__ctl_subset(const int *g, size_t n, const int *s, size_t ns);

/* 1 if an element of g (n) is in sorted set s (ns). */
int dcm__ctl_overlaps(const int *g, size_t n, const int *s, size_t ns);

/*
 * Writes into rest the elements of sorted want (ids >= 0) that are in none
 * of the kept groups; returns how many. rest has room for nwant. Time
 * O(nwant + kept shards * log nwant), no allocation.
 */
size_t dcm__ctl_rest(const int *want, size_t nwant, const int *const *groups,
                     const size_t *ngroups, size_t nkept, int *rest);

/* Reconnect delays: attempt 0 waits about DCM_CTL_BACKOFF_FIRST_MS, each
 * attempt doubles it, never above cap_ms; the result is in [d/2, d] for
 * that d, placed by u in [0, 1] (jitter, so agents do not all come back
 * at once). At least 1 ms. */
#define DCM_CTL_BACKOFF_FIRST_MS 1000
uint64_t dcm__ctl_backoff_ms(unsigned attempt, uint64_t cap_ms, double u);

/* Waits after a whole pass over the MASTER list in which a follower
 * answered (an election is under way): in [MIN, MAX] ms, placed by u in
 * [0, 1], instead of the exponential backoff. */
#define DCM_CTL_ELECTION_MIN_MS 200
#define DCM_CTL_ELECTION_MAX_MS 500
uint64_t dcm__ctl_election_ms(double u);

/* MASTER URLs: --master may be given DCM_CTL_MASTERS_MAX times; a URL (and
 * a follower's Discluster-Leader header or 4020 close reason) is at most
 * DCM_CTL_URL_MAX bytes. */
#define DCM_CTL_MASTERS_MAX 16
#define DCM_CTL_URL_MAX 600
#define DCM_CTL_DEFAULT_PORT 8642

typedef struct {
  char host[256]; /* without the [] of an IPv6 literal */
  int port;
  char path[256];
  char hostport[300]; /* for the Host header and logs */
  int tls;            /* wss:// */
} dcm__ctl_url_t;

/*
 * wss:// or ws://HOST[:PORT][/PATH] (n bytes, not NUL-terminated), HOST a
 * name or [IPv6]; the port defaults to DCM_CTL_DEFAULT_PORT, the path to
 * "/". Only printable ASCII without blanks is accepted. Returns 0, or -1
 * with a short reason in err ("bad port", ...).
 */
int dcm__ctl_parse_url(const char *url, size_t n, dcm__ctl_url_t *u, char *err, size_t errlen);

/* 1 if a and b name the same MASTER: scheme, host (case-insensitive),
 * port and path equal. */
int dcm__ctl_url_same(const dcm__ctl_url_t *a, const dcm__ctl_url_t *b);

/* "ws[s]://hostport/path" into out (len bytes). */
void dcm__ctl_url_format(const dcm__ctl_url_t *u, char *out, size_t len);

/* "0,1,2" into out (len bytes, NUL-terminated); returns the length, or 0
 * with out = "" when it does not fit. */
size_t dcm__ctl_join(const int *v, size_t n, char *out, size_t len);

typedef enum {
  DCM_CTL_LINE_OTHER = 0, /* ordinary output */
  DCM_CTL_LINE_READY,     /* "READY" */
  DCM_CTL_LINE_FATAL,     /* "FATAL <code> [shard=<id>] <message>" */
  DCM_CTL_LINE_SESSION    /* "SESSION ...": read it with dcm__ctl_parse_session */
} dcm__ctl_line_kind;

typedef struct {
  int code;
  int shard;          /* -1 when absent */
  const char *message; /* points into the line */
  size_t message_len;
} dcm__ctl_fatal_t;

/* Classifies one line (no newline; a trailing \r and blanks are ignored). */
dcm__ctl_line_kind dcm__ctl_parse_line(const char *line, size_t len,
                                       dcm__ctl_fatal_t *fatal);

/*
 * "SESSION <shard> <session_id> <seq> <resume_url>" (fields separated by
 * blanks; a trailing \r and blanks are ignored): 1 with the fields in *out
 * if the line is one and dcm__session_valid accepts them, else 0.
 */
int dcm__ctl_parse_session(const char *line, size_t len, dcm__session_t *out);

/*
 * A bounded line splitter: feed bytes, get whole lines through cb. A line
 * longer than DCM_CTL_LINE_MAX is delivered cut at that length and the
 * rest of it is dropped.
 */
typedef struct {
  char buf[DCM_CTL_LINE_MAX];
  size_t len;
  int discarding;
} dcm__ctl_lines_t;

typedef void (*dcm__ctl_line_cb)(void *arg, const char *line, size_t len, int cut);

void dcm__ctl_lines_feed(dcm__ctl_lines_t *ls, const char *data, size_t n,
                         dcm__ctl_line_cb cb, void *arg);
/* Delivers a last unterminated line, if any (at EOF). */
void dcm__ctl_lines_flush(dcm__ctl_lines_t *ls, dcm__ctl_line_cb cb, void *arg);

/* A cluster run's identify key: 128 random bits as lowercase hex. */
#define DCM_CTL_KEY_BYTES 16
#define DCM_CTL_KEY_HEX (2 * DCM_CTL_KEY_BYTES)

/* Lowercase hex of n bytes into out (2n + 1 bytes, NUL-terminated). */
void dcm__ctl_hex(const unsigned char *in, size_t n, char *out);

/* 1 if a and b, both DCM_CTL_KEY_HEX characters, are equal; the time taken
 * does not depend on where they differ. */
int dcm__ctl_key_equal(const char *a, const char *b);

typedef enum {
  DCM_CTL_TARGET_OK = 0,
  DCM_CTL_TARGET_NO_PATH,  /* not "/<DCM_CTL_KEY_HEX lowercase hex>": 404 */
  DCM_CTL_TARGET_BAD_SHARD /* no shard parameter, or not one decimal shard id: 400 */
} dcm__ctl_target_kind;

/*
 * Splits an identify request target "/<key>?shard=N[&other=...]". On OK
 * the key is copied into key (NUL-terminated) and the shard id (0 to
 * 2^31-1) into *shard. Other parameters are ignored; a repeated shard is
 * refused. The path is checked first, so a bad path is NO_PATH whatever
 * the query says.
 */
dcm__ctl_target_kind dcm__ctl_identify_target(const char *url, size_t len,
                                              char key[DCM_CTL_KEY_HEX + 1], int *shard);

/*
 * One entry of /proc/PID/environ (n bytes, no NUL): 1 and the run key into
 * key if it is DISCLUSTER_IDENTIFY_URL=...<'/'><DCM_CTL_KEY_HEX lowercase
 * hex>, else 0.
 */
int dcm__ctl_environ_key(const char *entry, size_t n, char key[DCM_CTL_KEY_HEX + 1]);

/* The start of /proc/PID/stat (n bytes): 1 with its state letter, parent
 * pid and process group, 0 if it does not parse. */
int dcm__ctl_parse_stat(const char *s, size_t n, char *state, long *ppid, long *pgid);

#endif
