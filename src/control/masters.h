/*
 * masters.h: the CONTROL agent's walk over its MASTER URLs (high
 * availability, docs/protocol.md): which MASTER the next connection
 * attempt goes to and after how long (a listed leader that a follower or a
 * 4020 close names, else the next MASTER; at once within a pass, then
 * 200-500 ms when a follower answered, else the backoff up to --retry),
 * and the highest leader epoch seen, below which a packet comes from a
 * deposed leader. Bookkeeping and its log lines only: the agent (agent.c)
 * owns the connection and the retry timer and asks this unit where to go.
 * Depends on plan.h (URLs, backoff, election wait), packets.h and log.h.
 */
#ifndef DCM_CTL_MASTERS_H
#define DCM_CTL_MASTERS_H

#include <stddef.h>
#include <stdint.h>

#include "log.h"
#include "packets.h"
#include "plan.h"

/* How an attempt ended (client.c fills it), for the choice of the next MASTER. */
typedef struct {
  int established; /* the WebSocket opened */
  int follower;    /* a follower refused it (503 Discluster-Role: follower) or
                      the leader stepped down (close 4020) */
  int has_leader;  /* the refusal or the close named a leader: leader */
  dcm__ctl_url_t leader;
  char leader_text[DCM_CTL_URL_MAX + 1]; /* as named (a valid URL: printable) */
} dcm__ctl_ending_t;

typedef struct {
  const dcm__ctl_url_t *urls; /* the agent's MASTERs (1 to DCM_CTL_MASTERS_MAX), in order */
  size_t n;
  uint64_t retry_ms;       /* --retry: the backoff's cap, and one fast retry per period */
  dcm__log_t *log;
  const char *id;          /* the agent's id, for log lines */
  size_t cur;              /* index of the MASTER of the current (or last) attempt */
  uint32_t pass_tried;     /* bit i: urls[i] tried since the last wait or session */
  int pass_follower;       /* a follower answered in this pass: an election, not an outage */
  int stale;               /* the current connection was closed for a stale epoch (4021) */
  unsigned retry_attempt;  /* failed attempts since the last session: the backoff */
  uint64_t last_fast_retry; /* when a lost session last retried without the backoff */
  uint64_t epoch;          /* the highest `epoch` seen (process lifetime); 0 none */
  char epoch_source[24];   /* the etcd cluster it counts in ("" unknown) */
  long session_master;     /* index of the last session's MASTER, -1 before one */
  uint64_t switches;       /* sessions with another MASTER than the one before */
  char unlisted[DCM_CTL_URL_MAX + 1]; /* the last leader logged as not in the list */
} dcm__ctl_masters_t;

/* urls (n of them) must outlive m; now is the loop's clock (uv_now). */
void dcm__ctl_masters_init(dcm__ctl_masters_t *m, const dcm__ctl_url_t *urls, size_t n,
                           uint64_t retry_ms, uint64_t now, dcm__log_t *log, const char *id);
/* The MASTER to connect to (or of the connection that is up). */
const dcm__ctl_url_t *dcm__ctl_masters_current(const dcm__ctl_masters_t *m);
/* The wait before retrying an attempt that could not start: the backoff,
 * jittered by u in [0, 1]. */
uint64_t dcm__ctl_masters_backoff(dcm__ctl_masters_t *m, double u);
/* `initialise` arrived from the current MASTER: the backoff is reset and
 * the next attempt starts a new pass; logs a change of MASTER. */
void dcm__ctl_masters_session(dcm__ctl_masters_t *m);
/* 1 (logged) if p carries an epoch below the highest seen: a deposed
 * leader's packet, not to be acted on; the caller closes with 4021, and
 * that attempt counts as failed. Else 0, and a higher epoch is kept. */
int dcm__ctl_masters_stale(dcm__ctl_masters_t *m, const dcm__ctl_packet_t *p);
/* The current attempt ended (session: it had got `initialise`; why: the
 * reason for the log, "" for the default; keep: what happens to the
 * clusters, logged when a session was lost). Moves to the next MASTER and
 * returns the milliseconds to wait before connecting to it; u in [0, 1]
 * jitters the wait. */
uint64_t dcm__ctl_masters_next(dcm__ctl_masters_t *m, const dcm__ctl_ending_t *end, int session,
                               const char *why, const char *keep, uint64_t now, double u);

#endif
