/*
 * reaper.c: what the clusters start outside their process group. The
 * agent is a child subreaper, so a process a cluster double-forked or
 * moved to a new session with setsid() becomes the agent's child when its
 * parent dies. Sweeps of /proc reap such children and adopt the living
 * ones into their cluster's run (by process group, else by the run key in
 * DISCLUSTER_IDENTIFY_URL in their environment), so that a run is over
 * only when nothing it started is left and a stop reaches them too. See
 * agent.h for the bounds. Linux only (prctl, /proc).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "clock.h"

#define POLL_FAST_MS 100  /* a run being stopped lingers, or a process awaits SIGKILL */
#define POLL_SLOW_MS 1000 /* a run lingers while it works (its leader exited) */

static const char *me(const dcm__reaper_t *r) { return r->a->cfg.id; }

/* ---- the table of adopted processes, sorted by pid ------------------------ */

static int cmp_pid(const void *x, const void *y) {
  pid_t p = *(const pid_t *)x, q = *(const pid_t *)y;
  return (p > q) - (p < q);
}

static dcm__orphan_t *find(dcm__reaper_t *r, pid_t pid) {
  size_t lo = 0, hi = r->norphans;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (r->orphans[mid].pid == pid) return &r->orphans[mid];
    if (r->orphans[mid].pid < pid) lo = mid + 1; else hi = mid;
  }
  return NULL;
}

static dcm__orphan_t *insert(dcm__reaper_t *r, pid_t pid) {
  if (r->norphans == r->cap) {
    size_t n = r->cap ? 2 * r->cap : 16;
    if (n > DCM_CTL_ORPHANS_MAX) n = DCM_CTL_ORPHANS_MAX;
    dcm__orphan_t *o = realloc(r->orphans, n * sizeof *o);
    if (o == NULL) return NULL;
    r->orphans = o;
    r->cap = n;
  }
  size_t i = r->norphans;
  while (i > 0 && r->orphans[i - 1].pid > pid) i--;
  memmove(&r->orphans[i + 1], &r->orphans[i], (r->norphans - i) * sizeof *r->orphans);
  r->norphans++;
  memset(&r->orphans[i], 0, sizeof r->orphans[i]);
  r->orphans[i].pid = pid;
  return &r->orphans[i];
}

static void drop(dcm__reaper_t *r, dcm__orphan_t *o) {
  if (o->cl) o->cl->norphans--;
  size_t i = (size_t)(o - r->orphans);
  memmove(o, o + 1, (r->norphans - i - 1) * sizeof *o);
  r->norphans--;
}

static void signal_orphan(dcm__orphan_t *o, int level) {
  if (level <= o->sent) return;
  kill(o->pid, level == 2 ? SIGKILL : SIGTERM);
  o->sent = level;
}

/* ---- /proc ----------------------------------------------------------------- */

static int stat_of(pid_t pid, char *state, long *ppid, long *pgid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf);
  close(fd);
  return n > 0 && dcm__ctl_parse_stat(buf, (size_t)n, state, ppid, pgid);
}

/* The run key in pid's environment, read entry by entry (any size). */
static int environ_key(pid_t pid, char key[DCM_CTL_KEY_HEX + 1]) {
  char path[64], buf[4096], entry[128];
  size_t elen = 0;
  int skip = 0, found = 0;
  ssize_t n;
  snprintf(path, sizeof path, "/proc/%d/environ", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  while (!found && (n = read(fd, buf, sizeof buf)) > 0) {
    for (ssize_t i = 0; i < n && !found; i++) {
      if (buf[i] == '\0') {
        if (!skip) found = dcm__ctl_environ_key(entry, elen, key);
        elen = 0;
        skip = 0;
      } else if (!skip) {
        if (elen < sizeof entry) entry[elen++] = buf[i]; else skip = 1;
      }
    }
  }
  if (!found && !skip && elen) found = dcm__ctl_environ_key(entry, elen, key);
  close(fd);
  memset(entry, 0, sizeof entry); /* run keys are secrets */
  memset(buf, 0, sizeof buf);
  return found;
}

static dcm__cluster_t *attribute(dcm__reaper_t *r, pid_t pid, long pgid, int *in_group) {
  char key[DCM_CTL_KEY_HEX + 1];
  dcm__cluster_t *cl;
  *in_group = 0;
  for (cl = r->a->clusters; cl; cl = cl->next)
    if (cl->live && cl->group_left && cl->pid == pgid) {
      *in_group = 1;
      return cl;
    }
  if (!environ_key(pid, key)) return NULL;
  for (cl = r->a->clusters; cl; cl = cl->next)
    if (cl->live && cl->key[0] && dcm__ctl_key_equal(cl->key, key)) break;
  memset(key, 0, sizeof key);
  return cl;
}

static void adopt(dcm__reaper_t *r, pid_t pid, long pgid) {
  dcm__agent_t *a = r->a;
  int in_group;
  int full = r->norphans >= DCM_CTL_ORPHANS_MAX;
  dcm__orphan_t *o = full ? NULL : insert(r, pid);
  if (o == NULL) {
    kill(pid, SIGKILL); /* untracked: reaped by a later sweep */
    if (r->over_limit++ == 0)
      dcm__error(&a->log, me(r), "cannot track pid %d, left behind by a cluster (%s): it and "
                 "any further untracked ones get SIGKILL", (int)pid,
                 full ? "more than " DCM_CTL_STR(DCM_CTL_ORPHANS_MAX) " tracked" : "out of memory");
    return;
  }
  o->seen = r->generation;
  o->cl = attribute(r, pid, pgid, &in_group);
  o->in_group = in_group;
  if (o->cl) {
    o->cl->norphans++;
    dcm__debug(&a->log, me(r), "adopted pid %d of cluster %d%s", (int)pid, o->cl->id,
               in_group ? " (in its process group)" : " (outside its process group)");
    if (in_group) o->sent = o->cl->stop_level; /* the group's signals reach it */
    else signal_orphan(o, o->cl->stop_level);
  } else {
    dcm__warn(&a->log, me(r), "pid %d was started by a cluster but belongs to no running "
              "cluster; stopping it (SIGTERM, SIGKILL in %.3gs)", (int)pid, a->cfg.stop_timeout);
    o->kill_at = uv_now(a->loop) + dcm__ms(a->cfg.stop_timeout);
    signal_orphan(o, 1);
  }
}

/* Calls fn for every child of the agent that /proc shows; 0 or -1. */
static int each_child(dcm__reaper_t *r, void (*fn)(dcm__reaper_t *, pid_t, char, long, void *),
                      void *arg) {
  pid_t self = getpid();
  DIR *d = opendir("/proc");
  struct dirent *e;
  if (d == NULL) return -1;
  while ((e = readdir(d)) != NULL) {
    char *end, state;
    long ppid, pgid, v = strtol(e->d_name, &end, 10);
    if (*end || end == e->d_name || v <= 0 || v > 0x7fffffffL) continue;
    pid_t pid = (pid_t)v;
    if (pid != self && stat_of(pid, &state, &ppid, &pgid) && ppid == self)
      fn(r, pid, state, pgid, arg);
  }
  closedir(d);
  return 0;
}

static void note_before(dcm__reaper_t *r, pid_t pid, char state, long pgid, void *arg) {
  (void)state, (void)pgid, (void)arg;
  if (r->nbefore < DCM_CTL_ORPHANS_MAX) r->before[r->nbefore++] = pid;
}

typedef struct {
  const pid_t *leaders;
  size_t nleaders;
  int reaped;
} sweep_t;

static void visit(dcm__reaper_t *r, pid_t pid, char state, long pgid, void *arg) {
  sweep_t *w = arg;
  int status;
  if (bsearch(&pid, w->leaders, w->nleaders, sizeof *w->leaders, cmp_pid)) return; /* libuv's */
  pid_t *old = r->nbefore ? bsearch(&pid, r->before, r->nbefore, sizeof *r->before, cmp_pid)
                          : NULL;
  dcm__orphan_t *o = old ? NULL : find(r, pid);
  if (o) o->seen = r->generation;
  if (state == 'Z' || state == 'X') {
    if (waitpid(pid, &status, WNOHANG) != pid) return;
    w->reaped = 1;
    if (o) drop(r, o);
    if (old) { /* its pid may come back as one of ours */
      memmove(old, old + 1, (size_t)(r->before + r->nbefore - old - 1) * sizeof *old);
      r->nbefore--;
    }
  } else if (o && o->cl) {
    if (o->in_group && pgid != o->cl->pid) o->in_group = 0; /* it left: setsid() */
    if (!o->in_group) signal_orphan(o, o->cl->stop_level);
  } else if (o == NULL && old == NULL) {
    adopt(r, pid, pgid);
  }
}

/* Returns 1 if it reaped something (which may have left new orphans). */
static int sweep(dcm__reaper_t *r) {
  dcm__agent_t *a = r->a;
  size_t nleaders = 0;
  sweep_t w = {NULL, 0, 0};
  r->last_sweep = uv_now(a->loop);
  r->generation++;
  for (dcm__cluster_t *cl = a->clusters; cl; cl = cl->next) nleaders += cl->running;
  pid_t *leaders = malloc((nleaders ? nleaders : 1) * sizeof *leaders);
  if (leaders == NULL) return 0; /* no sweep without the list: libuv's children are not ours */
  for (dcm__cluster_t *cl = a->clusters; cl; cl = cl->next)
    if (cl->running) leaders[w.nleaders++] = cl->pid;
  qsort(leaders, w.nleaders, sizeof *leaders, cmp_pid);
  w.leaders = leaders;
  int listed = each_child(r, visit, &w);
  free(leaders);
  if (listed != 0) return 0;
  for (size_t i = r->norphans; i-- > 0;) /* gone without a zombie we saw: reaped already */
    if (r->orphans[i].seen != r->generation) drop(r, &r->orphans[i]);
  return w.reaped;
}

/* ---- timers ---------------------------------------------------------------- */

static void poll_cb(uv_timer_t *t);

/* SIGKILL deadlines, then lingering runs; arms the poll timer. */
static void arm(dcm__reaper_t *r) {
  uint64_t now = uv_now(r->a->loop);
  int deadline = 0, urgent, lingering;
  for (size_t i = 0; i < r->norphans; i++) {
    dcm__orphan_t *o = &r->orphans[i];
    if (o->cl || o->sent == 2) continue;
    if (now >= o->kill_at) {
      dcm__warn(&r->a->log, me(r), "pid %d did not stop within %.3gs; SIGKILL", (int)o->pid,
                r->a->cfg.stop_timeout);
      signal_orphan(o, 2);
    } else {
      deadline = 1;
    }
  }
  lingering = dcm__clusters_check_runs(r->a, &urgent) || deadline;
  urgent |= deadline;
  if (!r->open) return;
  if (lingering)
    uv_timer_start(&r->poll_timer, poll_cb, urgent ? POLL_FAST_MS : POLL_SLOW_MS, 0);
  else
    uv_timer_stop(&r->poll_timer);
}

static void poll_cb(uv_timer_t *t) {
  dcm__reaper_t *r = t->data;
  arm(r);
  dcm__agent_reaper_changed(r->a);
}

static void sweep_cb(uv_timer_t *t) {
  dcm__reaper_t *r = t->data;
  if (sweep(r)) dcm__reaper_kick(r);
  arm(r);
  dcm__agent_reaper_changed(r->a);
}

void dcm__reaper_kick(dcm__reaper_t *r) {
  if (!r->open || uv_is_active((uv_handle_t *)&r->sweep_timer)) return;
  uint64_t now = uv_now(r->a->loop), due = r->last_sweep + DCM_CTL_SWEEP_MIN_MS;
  uv_timer_start(&r->sweep_timer, sweep_cb, due > now ? due - now : 0, 0);
}

static void sigchld_cb(uv_signal_t *h, int signum) {
  (void)signum;
  dcm__reaper_kick(h->data);
}

/* ---- the agent's calls ------------------------------------------------------ */

void dcm__reaper_init(dcm__reaper_t *r, dcm__agent_t *a) {
  memset(r, 0, sizeof *r);
  r->a = a;
  uv_signal_init(a->loop, &r->sigchld);
  uv_timer_init(a->loop, &r->sweep_timer);
  uv_timer_init(a->loop, &r->poll_timer);
  r->sigchld.data = r->sweep_timer.data = r->poll_timer.data = r;
  r->open = 1;
}

int dcm__reaper_start(dcm__reaper_t *r) {
  /* Children from before (a shell's background job, then exec of the agent)
   * are not the clusters': never signalled, only reaped. */
  r->before = malloc(DCM_CTL_ORPHANS_MAX * sizeof *r->before);
  if (r->before == NULL) return UV_ENOMEM;
  each_child(r, note_before, NULL);
  qsort(r->before, r->nbefore, sizeof *r->before, cmp_pid);
  if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0) {
    r->subreaper = 1;
  } else {
    dcm__warn(&r->a->log, me(r), "cannot become a child subreaper (%s): processes that leave "
              "a cluster's process group are not tracked", strerror(errno));
  }
  return uv_signal_start(&r->sigchld, sigchld_cb, SIGCHLD);
}

void dcm__reaper_signal(dcm__reaper_t *r, dcm__cluster_t *cl) {
  for (size_t i = 0; i < r->norphans; i++) {
    dcm__orphan_t *o = &r->orphans[i];
    char state;
    long ppid, pgid;
    if (o->cl != cl) continue;
    /* Still in the group the caller just signalled? It may have left since
     * it was adopted (adopted between fork and setsid). */
    if (o->in_group && stat_of(o->pid, &state, &ppid, &pgid) && pgid != cl->pid) o->in_group = 0;
    if (o->in_group) {
      if (o->sent < cl->stop_level) o->sent = cl->stop_level;
    } else {
      signal_orphan(o, cl->stop_level);
    }
  }
}

void dcm__reaper_forget(dcm__reaper_t *r, dcm__cluster_t *cl) {
  for (size_t i = 0; i < r->norphans; i++) {
    dcm__orphan_t *o = &r->orphans[i];
    if (o->cl != cl) continue;
    o->cl = NULL; /* cannot happen while its run lives; be safe anyway */
    cl->norphans--;
    signal_orphan(o, 2);
  }
}

int dcm__reaper_idle(dcm__reaper_t *r) {
  if (!r->open) return 1;
  int reaped = sweep(r);
  if (reaped) dcm__reaper_kick(r);
  arm(r);
  return !reaped && r->norphans == 0;
}

void dcm__reaper_close(dcm__reaper_t *r) {
  if (!r->open) return;
  r->open = 0;
  uv_close((uv_handle_t *)&r->sigchld, NULL);
  uv_close((uv_handle_t *)&r->sweep_timer, NULL);
  uv_close((uv_handle_t *)&r->poll_timer, NULL);
  free(r->orphans);
  free(r->before);
  r->orphans = NULL;
  r->before = NULL;
  r->norphans = r->cap = r->nbefore = 0;
}
