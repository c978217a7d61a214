/*
 * masters.c: the walk over the agent's MASTERs. After an attempt, the
 * leader a follower named (if listed) or the next MASTER, at once, as long
 * as it was not tried in this pass; once all were, the pass is over:
 * 200-500 ms when a follower answered (an election is under way), else the
 * backoff. A lost session starts a new pass: the next MASTER after 0.1 s
 * (at once to a named leader), at most once per --retry, else after the
 * wait. A packet whose epoch is below one already seen (a deposed leader)
 * is refused.
 */
#include <stdio.h>
#include <string.h>

#include "masters.h"

#define FAST_RETRY_MS 100 /* first attempt after losing an established session */

void dcm__ctl_masters_init(dcm__ctl_masters_t *m, const dcm__ctl_url_t *urls, size_t n,
                           uint64_t retry_ms, uint64_t now, dcm__log_t *log, const char *id) {
  memset(m, 0, sizeof *m);
  m->urls = urls;
  m->n = n;
  m->retry_ms = retry_ms;
  m->log = log;
  m->id = id;
  m->session_master = -1;
  m->last_fast_retry = now - retry_ms - 1; /* the first lost session retries fast */
}

const dcm__ctl_url_t *dcm__ctl_masters_current(const dcm__ctl_masters_t *m) {
  return &m->urls[m->cur];
}

/* About 1 s doubling up to --retry, jittered. */
uint64_t dcm__ctl_masters_backoff(dcm__ctl_masters_t *m, double u) {
  uint64_t wait = dcm__ctl_backoff_ms(m->retry_attempt, m->retry_ms, u);
  if (m->retry_attempt < 64) m->retry_attempt++;
  return wait;
}

void dcm__ctl_masters_session(dcm__ctl_masters_t *m) {
  m->retry_attempt = 0;
  if (m->session_master >= 0 && (size_t)m->session_master != m->cur) {
    m->switches++;
    dcm__info(m->log, m->id, "MASTER changed: now %s (was %s); clusters keep running",
              m->urls[m->cur].hostport, m->urls[m->session_master].hostport);
  }
  m->session_master = (long)m->cur;
  m->pass_tried = 0; /* the next attempt starts a new pass */
  m->pass_follower = 0;
}

int dcm__ctl_masters_stale(dcm__ctl_masters_t *m, const dcm__ctl_packet_t *p) {
  uint64_t e = (uint64_t)p->epoch;
  if (!p->has_epoch) return 0; /* a MASTER without etcd */
  if (p->epoch_source[0] && m->epoch_source[0] && strcmp(p->epoch_source, m->epoch_source) != 0) {
    /* Another etcd cluster (restored into an empty data dir): its revisions
       start again, so epochs compare only within one cluster. */
    dcm__warn(m->log, m->id, "MASTER at %s counts epochs in another etcd cluster (%s, was %s): "
              "epochs start again from %llu", m->urls[m->cur].hostport, p->epoch_source,
              m->epoch_source, (unsigned long long)e);
    memcpy(m->epoch_source, p->epoch_source, sizeof m->epoch_source);
    m->epoch = e;
    return 0;
  }
  if (p->epoch_source[0] && !m->epoch_source[0])
    memcpy(m->epoch_source, p->epoch_source, sizeof m->epoch_source);
  if (e >= m->epoch) {
    if (e > m->epoch)
      dcm__debug(m->log, m->id, "epoch %llu from MASTER at %s", (unsigned long long)e,
                 m->urls[m->cur].hostport);
    m->epoch = e;
    return 0;
  }
  dcm__warn(m->log, m->id, "%s from MASTER at %s carries epoch %llu, below epoch %llu seen "
            "before (a deposed leader): ignored; closing with 4021", dcm__op_name(p->op),
            m->urls[m->cur].hostport, (unsigned long long)e, (unsigned long long)m->epoch);
  m->stale = 1;
  return 1;
}

/* The index of the leader a follower named, or -1: none, or not one of
 * the agent's MASTERs (never followed; logged once per name). */
static long listed_leader(dcm__ctl_masters_t *m, const dcm__ctl_ending_t *end) {
  if (!end->has_leader) return -1;
  for (size_t i = 0; i < m->n; i++)
    if (dcm__ctl_url_same(&m->urls[i], &end->leader)) return (long)i;
  if (strcmp(m->unlisted, end->leader_text) != 0) {
    snprintf(m->unlisted, sizeof m->unlisted, "%s", end->leader_text);
    dcm__warn(m->log, m->id, "a follower names %s as the leader, which is not one of this "
              "agent's MASTERs (--master, DISCLUSTER_MASTER): not following it",
              end->leader_text);
  }
  return -1;
}

/* The first MASTER from i on (circularly) not tried in this pass, or -1. */
static long untried(const dcm__ctl_masters_t *m, size_t i) {
  for (size_t k = 0; k < m->n; k++, i = (i + 1) % m->n)
    if (!(m->pass_tried & (UINT32_C(1) << i))) return (long)i;
  return -1;
}

uint64_t dcm__ctl_masters_next(dcm__ctl_masters_t *m, const dcm__ctl_ending_t *end, int session,
                               const char *why, const char *keep, uint64_t now, double u) {
  int lost = session && !m->stale, several = m->n > 1;
  size_t from = m->cur, n = m->n;
  char url_from[DCM_CTL_URL_MAX + 16], url_next[DCM_CTL_URL_MAX + 16];
  const char *pass_end = "";
  long leader = listed_leader(m, end), next;
  uint64_t wait;
  m->stale = 0;
  if (lost) {
    m->pass_tried = UINT32_C(1) << from;
    m->pass_follower = end->follower;
    next = leader >= 0 ? leader : (long)((from + 1) % n);
    if (now - m->last_fast_retry >= m->retry_ms) {
      wait = leader >= 0 ? 0 : FAST_RETRY_MS; /* MASTER restarting: try at once */
      m->last_fast_retry = now;
      m->retry_attempt = 0;
    } else {
      wait = end->follower ? dcm__ctl_election_ms(u) : dcm__ctl_masters_backoff(m, u);
    }
  } else {
    m->pass_tried |= UINT32_C(1) << from;
    if (end->follower) m->pass_follower = 1;
    next = leader >= 0 && !(m->pass_tried & (UINT32_C(1) << leader)) ? leader
                                                                     : untried(m, (from + 1) % n);
    if (next >= 0) {
      wait = 0;
    } else { /* every MASTER tried: wait before the next pass */
      next = leader >= 0 ? leader : (long)((from + 1) % n);
      if (m->pass_follower) {
        wait = dcm__ctl_election_ms(u);
        pass_end = "an election is under way; ";
      } else {
        wait = dcm__ctl_masters_backoff(m, u);
        pass_end = several ? "every MASTER tried; " : "";
      }
      m->pass_tried = 0;
      m->pass_follower = 0;
    }
  }
  m->cur = (size_t)next;
  if (!why[0]) why = lost ? "connection closed" : end->established ? "closed before initialise"
                                                                   : "connect failed";
  dcm__ctl_url_format(&m->urls[from], url_from, sizeof url_from);
  dcm__ctl_url_format(&m->urls[next], url_next, sizeof url_next);
  if (lost && several)
    dcm__warn(m->log, m->id, "lost MASTER %s (%s); %s; trying %s in %.3gs", url_from, why, keep,
              url_next, (double)wait / 1000.0);
  else if (lost)
    dcm__warn(m->log, m->id, "lost MASTER (%s); %s; reconnecting in %.3gs", why, keep,
              (double)wait / 1000.0);
  else if (several)
    dcm__warn(m->log, m->id, "no session with MASTER %s (%s); %strying %s in %.3gs", url_from,
              why, pass_end, url_next, (double)wait / 1000.0);
  else
    dcm__warn(m->log, m->id, "no session with MASTER (%s); %sretrying in %.3gs", why, pass_end,
              (double)wait / 1000.0);
  return wait;
}
