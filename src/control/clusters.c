/*
 * clusters.c: the bot's cluster processes. Each runs the user's command
 * through /bin/sh -c in its own session and process group (so a stop
 * reaches every process it started), with SHARD_IDS, SHARD_COUNT,
 * CLUSTER_ID, DISCORD_TOKEN, MAX_CONCURRENCY, DISCORD_GATEWAY_URL,
 * DISCLUSTER_IDENTIFY_URL (a fresh key per run) and, when the agent knows
 * sessions of its shards, SHARD_SESSIONS in its environment, stdin a pipe
 * whose EOF says the agent is gone, stdout and stderr pipes read line by
 * line (bounded): stdout for READY, FATAL and SESSION, and every other line
 * of either logged at info with the cluster id (so --log-format json wraps
 * them too). A run ends when its
 * leader, its group and the processes reaper.c adopted from it are all
 * gone; a stop waits for that up to --stop-timeout, then SIGKILL. Crashes
 * restart with doubling backoff, DCM_CTL_RESTARTS times. Starts go through
 * one idle handle, DCM_CTL_SPAWNS_PER_TURN per loop turn, so a large
 * assignment never holds the loop (heartbeats, signals) for long.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "clock.h"

#define DRAIN_MS 500        /* stdout kept open this long after a run ends */
#define STABLE_MS 60000     /* READY this long: the restart budget is whole again */
#define FATAL_GRACE_MS 1000 /* a non-fatal FATAL: this long to exit by itself */
#define OWN_VARS 7

static const char *const state_names[] = {"waiting", "starting", "ready",
                                          "backoff", "failed",   "stopping"};

const char *dcm__cluster_state_name(dcm__cluster_state s) { return state_names[s]; }

static const char *me(const dcm__cluster_t *cl) { return cl->a->cfg.id; }

static void spawn(dcm__cluster_t *cl);
static void after_exit(dcm__cluster_t *cl);

/* ---- CLUSTER_IDs: the lowest free one, from a bitmap ---------------------- */

static int take_id(dcm__agent_t *a) {
  size_t w = 0;
  while (w < a->nids_words && a->ids[w] == UINT64_MAX) w++;
  if (w == a->nids_words) {
    size_t n = a->nids_words ? 2 * a->nids_words : 4;
    uint64_t *ids = realloc(a->ids, n * sizeof *ids);
    if (ids == NULL) return -1;
    memset(ids + a->nids_words, 0, (n - a->nids_words) * sizeof *ids);
    a->ids = ids;
    a->nids_words = n;
  }
  int bit = __builtin_ctzll(~a->ids[w]);
  a->ids[w] |= (uint64_t)1 << bit;
  return (int)(w * 64 + (size_t)bit);
}

static void give_id(dcm__agent_t *a, int id) {
  if (id >= 0 && (size_t)id / 64 < a->nids_words) a->ids[id / 64] &= ~((uint64_t)1 << (id % 64));
}

/* ---- lifetime ------------------------------------------------------------ */

static void freed(dcm__cluster_t *cl) {
  dcm__agent_t *a = cl->a;
  dcm__ident_cluster_gone(&a->ident, cl); /* none should wait by now */
  dcm__reaper_forget(&a->reaper, cl);
  if (cl->prev) cl->prev->next = cl->next; else a->clusters = cl->next;
  if (cl->next) cl->next->prev = cl->prev; else a->clusters_tail = cl->prev;
  give_id(a, cl->id);
  free(cl->shards);
  free(cl);
  a->nclusters--;
  dcm__agent_cluster_freed(a);
}

static void close_cb(uv_handle_t *h) {
  dcm__cluster_t *cl = h->data;
  if (h != (uv_handle_t *)&cl->timer && --cl->run_handles == 0 && cl->queued)
    dcm__clusters_start_waiting(cl->a); /* the restart waited for these */
  if (--cl->handles == 0) freed(cl);
}

static void close_run_handle(dcm__cluster_t *cl, uv_handle_t *h) {
  if (!uv_is_closing(h)) uv_close(h, close_cb);
}

/* Closes the timer; the struct goes once every handle has closed. */
static void destroy(dcm__cluster_t *cl) {
  cl->destroying = 1;
  cl->queued = 0;
  cl->state = DCM_CLUSTER_STOPPING;
  uv_timer_stop(&cl->timer);
  if (!uv_is_closing((uv_handle_t *)&cl->timer)) uv_close((uv_handle_t *)&cl->timer, close_cb);
}

int dcm__cluster_create(dcm__agent_t *a, const int *shards, size_t n) {
  dcm__cluster_t *cl = calloc(1, sizeof *cl);
  if (cl == NULL) return DCM_ENOMEM;
  cl->shards = malloc((n ? n : 1) * sizeof *cl->shards);
  cl->id = take_id(a);
  if (cl->shards == NULL || cl->id < 0) {
    give_id(a, cl->id);
    free(cl->shards);
    free(cl);
    return DCM_ENOMEM;
  }
  memcpy(cl->shards, shards, n * sizeof *shards);
  cl->nshards = n;
  cl->a = a;
  cl->epoch = a->epoch;
  uv_timer_init(a->loop, &cl->timer);
  cl->timer.data = cl;
  cl->handles = 1;
  cl->prev = a->clusters_tail;
  if (a->clusters_tail) a->clusters_tail->next = cl; else a->clusters = cl;
  a->clusters_tail = cl;
  a->nclusters++;
  cl->state = DCM_CLUSTER_WAITING;
  cl->queued = 1;
  dcm__clusters_start_waiting(a);
  return 0;
}

/* ---- the starter ----------------------------------------------------------- */

/* Spawns queued clusters, at most DCM_CTL_SPAWNS_PER_TURN per loop turn; one
 * that shares a shard with a cluster being stopped waits for it to be freed. */
static void starter_cb(uv_idle_t *h) {
  dcm__agent_t *a = h->data;
  size_t total = 0, nbusy = 0, spawned = 0;
  int more = 0;
  for (dcm__cluster_t *cl = a->clusters; cl; cl = cl->next)
    if (cl->destroying) total += cl->nshards;
  int *busy = total ? malloc(total * sizeof *busy) : NULL;
  if (total && busy == NULL) return; /* out of memory: try again next turn */
  for (dcm__cluster_t *cl = a->clusters; cl; cl = cl->next)
    if (cl->destroying) {
      memcpy(busy + nbusy, cl->shards, cl->nshards * sizeof *busy);
      nbusy += cl->nshards;
    }
  nbusy = dcm__ctl_sort_unique(busy, nbusy);
  for (dcm__cluster_t *cl = a->clusters, *next; cl; cl = next) {
    next = cl->next; /* a failed spawn may end in destroy(), never in free() */
    if (!cl->queued || cl->destroying || cl->run_handles > 0) continue;
    if (dcm__ctl_overlaps(cl->shards, cl->nshards, busy, nbusy)) continue;
    if (spawned == DCM_CTL_SPAWNS_PER_TURN) {
      more = 1;
      break;
    }
    cl->queued = 0;
    spawn(cl);
    spawned++;
  }
  free(busy);
  if (!more) uv_idle_stop(h);
}

void dcm__clusters_start_waiting(dcm__agent_t *a) {
  if (a->starter_open && !uv_is_active((uv_handle_t *)&a->starter))
    uv_idle_start(&a->starter, starter_cb);
}

void dcm__clusters_init(dcm__agent_t *a) {
  uv_idle_init(a->loop, &a->starter);
  a->starter.data = a;
  a->starter_open = 1;
}

void dcm__clusters_close(dcm__agent_t *a) {
  if (!a->starter_open) return;
  a->starter_open = 0;
  uv_close((uv_handle_t *)&a->starter, NULL);
}

/* ---- stdout and stderr ----------------------------------------------------- */

static void on_line(void *arg, const char *line, size_t len, int cut) {
  dcm__cluster_t *cl = arg;
  dcm__ctl_fatal_t f;
  dcm__session_t sess;
  switch (dcm__ctl_parse_line(line, len, &f)) {
    case DCM_CTL_LINE_SESSION:
      /* Never copied to the log: a session id is logged at debug only. */
      if (!cut && dcm__ctl_parse_session(line, len, &sess))
        dcm__agent_cluster_session(cl->a, cl, &sess);
      else
        dcm__warn(&cl->a->log, me(cl), "cluster %d printed a malformed SESSION line; ignored "
                  "(SESSION <shard> <session_id> <seq> <resume_url>)", cl->id);
      break;
    case DCM_CTL_LINE_READY:
      if (cl->state == DCM_CLUSTER_STARTING) {
        cl->state = DCM_CLUSTER_READY;
        cl->ready_at = uv_now(cl->a->loop);
        dcm__info(&cl->a->log, me(cl), "cluster %d ready (%zu shards)", cl->id, cl->nshards);
        dcm__agent_cluster_changed(cl->a, cl);
      }
      break;
    case DCM_CTL_LINE_FATAL:
      dcm__agent_cluster_fatal(cl->a, cl, f.code, f.message, f.message_len, f.shard);
      break;
    default:
      dcm__log_cluster(&cl->a->log, DCM_LOG_INFO, me(cl), cl->id, "stdout", "%.*s%s", (int)len,
                       line, cut ? " [line cut]" : "");
  }
}

static void on_err_line(void *arg, const char *line, size_t len, int cut) {
  dcm__cluster_t *cl = arg;
  dcm__log_cluster(&cl->a->log, DCM_LOG_INFO, me(cl), cl->id, "stderr", "%.*s%s", (int)len, line,
                   cut ? " [line cut]" : "");
}

/* One buffer for both pipes: each read is consumed in its callback. */
static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  dcm__cluster_t *cl = h->data;
  (void)suggested;
  *buf = uv_buf_init(cl->rbuf, sizeof cl->rbuf);
}

static void close_stdout(dcm__cluster_t *cl) {
  if (cl->out_closed) return;
  cl->out_closed = 1;
  dcm__ctl_lines_flush(&cl->lines, on_line, cl);
  close_run_handle(cl, (uv_handle_t *)&cl->out);
}

static void close_stderr(dcm__cluster_t *cl) {
  if (cl->err_closed) return;
  cl->err_closed = 1;
  dcm__ctl_lines_flush(&cl->err_lines, on_err_line, cl);
  close_run_handle(cl, (uv_handle_t *)&cl->err);
}

/* Both pipes are read to the end (or cut off by the drain timer). */
static void output_check(dcm__cluster_t *cl) {
  if (cl->out_eof || !cl->out_closed || !cl->err_closed) return;
  cl->out_eof = 1;
  if (cl->exited && !cl->live) {
    uv_timer_stop(&cl->timer);
    after_exit(cl);
  }
}

static void stdout_done(dcm__cluster_t *cl) {
  close_stdout(cl);
  output_check(cl);
}

static void stderr_done(dcm__cluster_t *cl) {
  close_stderr(cl);
  output_check(cl);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  dcm__cluster_t *cl = s->data;
  if (nread > 0) {
    dcm__ctl_lines_feed(&cl->lines, buf->base, (size_t)nread, on_line, cl);
  } else if (nread < 0) {
    stdout_done(cl);
  }
}

static void err_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  dcm__cluster_t *cl = s->data;
  if (nread > 0) {
    dcm__ctl_lines_feed(&cl->err_lines, buf->base, (size_t)nread, on_err_line, cl);
  } else if (nread < 0) {
    stderr_done(cl);
  }
}

/* ---- signals to a run ------------------------------------------------------ */

/* 1 while the leader's process group has a member (a zombie counts). */
static int group_exists(pid_t pgid) {
  return pgid > 0 && (kill(-pgid, 0) == 0 || errno == EPERM);
}

/* SIGTERM (level 1) or SIGKILL (level 2) to the whole run: its group, and
 * through reaper.c what escaped the group. */
static void signal_run(dcm__cluster_t *cl, int level) {
  if (!cl->live || level <= cl->stop_level) return;
  cl->stop_level = level;
  if (cl->group_left) kill(-cl->pid, level == 2 ? SIGKILL : SIGTERM);
  dcm__reaper_signal(&cl->a->reaper, cl);
  dcm__reaper_kick(&cl->a->reaper); /* and whatever escaped it unseen so far */
}

/* ---- exits and restarts -------------------------------------------------- */

static void drain_cb(uv_timer_t *t) {
  dcm__cluster_t *cl = t->data;
  close_stdout(cl);
  close_stderr(cl);
  output_check(cl);
}

/* Nothing of the run is left. */
static void run_over(dcm__cluster_t *cl) {
  cl->live = 0;
  /* This run's identify URL dies with it; a restart gets a new one. */
  dcm__ident_cluster_gone(&cl->a->ident, cl);
  memset(cl->key, 0, sizeof cl->key);
  close_run_handle(cl, (uv_handle_t *)&cl->in);
  uv_timer_stop(&cl->timer);
  if (cl->out_eof) {
    after_exit(cl);
  } else {
    /* A FATAL line printed just before the exit may still be in a pipe. */
    uv_timer_start(&cl->timer, drain_cb, DRAIN_MS, 0);
  }
}

static void exit_cb(uv_process_t *p, int64_t status, int sig) {
  dcm__cluster_t *cl = p->data;
  cl->running = 0;
  cl->exited = 1;
  cl->exit_status = (int)status;
  cl->term_signal = sig;
  close_run_handle(cl, (uv_handle_t *)&cl->proc);
  /* Whether the run is over is decided after a sweep has adopted what the
   * leader left behind (dcm__clusters_check_runs). */
  dcm__reaper_kick(&cl->a->reaper);
}

static void describe_exit(const dcm__cluster_t *cl, char *out, size_t n) {
  if (cl->term_signal)
    snprintf(out, n, "killed by signal %d", cl->term_signal);
  else
    snprintf(out, n, "exit status %d", cl->exit_status);
}

int dcm__clusters_check_runs(dcm__agent_t *a, int *urgent) {
  int lingering = 0;
  *urgent = 0;
  for (dcm__cluster_t *cl = a->clusters, *next; cl; cl = next) {
    next = cl->next; /* run_over never frees synchronously */
    if (!cl->live || !cl->exited) continue;
    if (cl->group_left && !group_exists(cl->pid)) cl->group_left = 0;
    if (!cl->group_left && cl->norphans == 0) {
      run_over(cl);
      continue;
    }
    lingering = 1;
    if (cl->stop_level > 0) *urgent = 1;
    if (!cl->lingering_logged && cl->stop_level == 0) {
      char how[48];
      cl->lingering_logged = 1;
      describe_exit(cl, how, sizeof how);
      dcm__info(&a->log, me(cl), "cluster %d: its command exited (%s) but processes it started "
                "still run (%s%zu adopted); the cluster lives until they are gone", cl->id, how,
                cl->group_left ? "its process group, " : "", cl->norphans);
    }
  }
  return lingering;
}

static void backoff_cb(uv_timer_t *t) {
  dcm__cluster_t *cl = t->data;
  cl->queued = 1;
  dcm__clusters_start_waiting(cl->a);
}

/* The run is over and its stdout read: stop, restart or give up. */
static void after_exit(dcm__cluster_t *cl) {
  dcm__agent_t *a = cl->a;
  char how[48];
  describe_exit(cl, how, sizeof how);
  dcm__agent_cluster_ended(a, cl);
  if (cl->destroying || cl->state == DCM_CLUSTER_STOPPING) {
    dcm__info(&a->log, me(cl), "cluster %d stopped (%s)", cl->id, how);
    destroy(cl);
    return;
  }
  if (cl->state == DCM_CLUSTER_READY && uv_now(a->loop) - cl->ready_at >= STABLE_MS)
    cl->restarts = 0;
  if (cl->restarts < DCM_CTL_RESTARTS) {
    uint64_t wait = dcm__ms(a->cfg.restart_backoff) << cl->restarts;
    cl->restarts++;
    a->restarts_total++;
    cl->state = DCM_CLUSTER_BACKOFF;
    dcm__warn(&a->log, me(cl), "cluster %d crashed (%s); restart %d of %d in %.3gs", cl->id,
              how, cl->restarts, DCM_CTL_RESTARTS, (double)wait / 1000.0);
    uv_timer_start(&cl->timer, backoff_cb, wait, 0);
    dcm__agent_cluster_changed(a, cl);
  } else {
    char list[256];
    dcm__ctl_join(cl->shards, cl->nshards, list, sizeof list);
    cl->state = DCM_CLUSTER_FAILED;
    dcm__error(&a->log, me(cl), "cluster %d (shards %s) crashed (%s) after %d restarts; "
               "giving up on it", cl->id, list[0] ? list : "...", how, DCM_CTL_RESTARTS);
    dcm__agent_cluster_failed(a, cl);
  }
}

/* ---- spawning ------------------------------------------------------------ */

static char *env_entry(const char *key, const char *value) {
  size_t n = strlen(key) + strlen(value) + 2;
  char *s = malloc(n);
  if (s) snprintf(s, n, "%s=%s", key, value);
  return s;
}

static void wipe_free(char *s) {
  if (s == NULL) return;
  memset(s, 0, strlen(s));
  free(s);
}

/*
 * "SHARD_SESSIONS=<json>" with the agent's latest session of each of cl's
 * shards that has one, as many as fit DCM_CTL_SHARD_SESSIONS_MAX bytes;
 * NULL with *nresume 0 when there is none, NULL with *r set on
 * exhaustion.
 */
static char *shard_sessions(dcm__cluster_t *cl, size_t *nresume, int *r) {
  dcm__agent_t *a = cl->a;
  size_t n = 0, len;
  char *entry = NULL;
  *nresume = 0;
  const dcm__session_t **v = malloc((cl->nshards ? cl->nshards : 1) * sizeof *v);
  if (v == NULL) {
    *r = UV_ENOMEM;
    return NULL;
  }
  for (size_t i = 0; i < cl->nshards; i++) {
    const dcm__session_t *s = dcm__ctl_sessions_get(&a->sessions, cl->shards[i]);
    if (s) v[n++] = s;
  }
  size_t k = dcm__ctl_sessions_fit(v, n, n, DCM_CTL_SHARD_SESSIONS_MAX);
  if (k < n)
    dcm__warn(&a->log, me(cl), "cluster %d: %zu of its %zu sessions do not fit in "
              "SHARD_SESSIONS (%d bytes); those shards identify again", cl->id, n - k, n,
              DCM_CTL_SHARD_SESSIONS_MAX);
  if (k > 0) {
    int top = lua_gettop(a->json);
    const char *text = dcm__ctl_enc_shard_sessions(a->json, v, k, &len);
    entry = text ? env_entry("SHARD_SESSIONS", text) : NULL;
    lua_settop(a->json, top);
    if (entry == NULL) *r = UV_ENOMEM;
    else *nresume = k;
  }
  free(v);
  return entry;
}

static void spawn(dcm__cluster_t *cl) {
  dcm__agent_t *a = cl->a;
  size_t nbase = 0, listlen = cl->nshards * 12 + 1, nresume = 0;
  /* own[OWN_VARS], SHARD_SESSIONS, is optional: last, NULL when absent */
  char num[32], url[64 + DCM_CTL_KEY_HEX], *ids = malloc(listlen), *own[OWN_VARS + 1] = {NULL};
  while (a->environ_base[nbase]) nbase++;
  char **env = calloc(nbase + OWN_VARS + 2, sizeof *env);
  int r = ids && env ? dcm__ident_new_key(cl->key) : UV_ENOMEM;
  if (r == 0) {
    dcm__ctl_join(cl->shards, cl->nshards, ids, listlen);
    own[0] = env_entry("SHARD_IDS", ids);
    snprintf(num, sizeof num, "%d", a->shard_count);
    own[1] = env_entry("SHARD_COUNT", num);
    snprintf(num, sizeof num, "%d", cl->id);
    own[2] = env_entry("CLUSTER_ID", num);
    own[3] = env_entry("DISCORD_TOKEN", a->token ? a->token : "");
    snprintf(num, sizeof num, "%d", a->max_concurrency);
    own[4] = env_entry("MAX_CONCURRENCY", num);
    own[5] = env_entry("DISCORD_GATEWAY_URL", a->gateway_url);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/%s", a->ident.port, cl->key);
    own[6] = env_entry("DISCLUSTER_IDENTIFY_URL", url);
    memset(url, 0, sizeof url);
    for (int i = 0; i < OWN_VARS; i++)
      if (own[i] == NULL) r = UV_ENOMEM;
    if (r == 0) own[OWN_VARS] = shard_sessions(cl, &nresume, &r);
  }
  cl->fatal_restart = 0;
  cl->exited = cl->out_eof = cl->out_closed = cl->err_closed = 0;
  cl->exit_status = cl->term_signal = 0;
  cl->pid = 0;
  cl->stop_level = 0;
  cl->lingering_logged = 0;
  cl->group_left = 0;
  memset(&cl->lines, 0, sizeof cl->lines);
  memset(&cl->err_lines, 0, sizeof cl->err_lines);
  uv_pipe_init(a->loop, &cl->in, 0);
  uv_pipe_init(a->loop, &cl->out, 0);
  uv_pipe_init(a->loop, &cl->err, 0);
  cl->in.data = cl->out.data = cl->err.data = cl->proc.data = cl;
  cl->run_handles = 3;
  cl->handles += 3;
  if (r == 0) {
    char *args[] = {"/bin/sh", "-c", (char *)a->cfg.cluster_command, NULL};
    uv_stdio_container_t stdio[3];
    uv_process_options_t o;
    memcpy(env, a->environ_base, nbase * sizeof *env);
    memcpy(env + nbase, own, sizeof own);
    stdio[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
    stdio[0].data.stream = (uv_stream_t *)&cl->in;
    stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[1].data.stream = (uv_stream_t *)&cl->out;
    stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[2].data.stream = (uv_stream_t *)&cl->err;
    memset(&o, 0, sizeof o);
    o.exit_cb = exit_cb;
    o.file = "/bin/sh";
    o.args = args;
    o.env = env;
    o.stdio = stdio;
    o.stdio_count = 3;
    o.flags = UV_PROCESS_DETACHED; /* setsid: its own process group */
    r = uv_spawn(a->loop, &cl->proc, &o);
    /* libuv initialises the handle even when the spawn fails. */
    cl->run_handles++;
    cl->handles++;
  }
  for (int i = 0; i <= OWN_VARS; i++) wipe_free(own[i]);
  free(env);
  if (r == 0) {
    cl->pid = cl->proc.pid;
    cl->running = cl->live = cl->group_left = 1;
    cl->state = DCM_CLUSTER_STARTING;
    char resume[48] = "";
    if (nresume) snprintf(resume, sizeof resume, " (%zu to resume)", nresume);
    dcm__info(&a->log, me(cl), "cluster %d started: pid %d, shards %s%s", cl->id, (int)cl->pid,
              ids, resume);
    r = uv_read_start((uv_stream_t *)&cl->out, alloc_cb, read_cb);
    if (r != 0) stdout_done(cl); /* it still runs; its READY cannot be seen */
    if (uv_read_start((uv_stream_t *)&cl->err, alloc_cb, err_read_cb) != 0) stderr_done(cl);
    free(ids);
    dcm__agent_cluster_changed(a, cl);
    return;
  }
  free(ids);
  memset(cl->key, 0, sizeof cl->key);
  dcm__error(&a->log, me(cl), "cluster %d: cannot start: %s", cl->id, uv_strerror(r));
  if (cl->run_handles == 4) close_run_handle(cl, (uv_handle_t *)&cl->proc);
  close_run_handle(cl, (uv_handle_t *)&cl->in);
  close_run_handle(cl, (uv_handle_t *)&cl->out);
  close_run_handle(cl, (uv_handle_t *)&cl->err);
  cl->state = DCM_CLUSTER_STARTING;
  cl->exited = cl->out_eof = cl->out_closed = cl->err_closed = 1;
  cl->exit_status = r;
  after_exit(cl);
}

/* ---- stopping ------------------------------------------------------------ */

static void kill_cb(uv_timer_t *t) {
  dcm__cluster_t *cl = t->data;
  if (!cl->live) return;
  dcm__warn(&cl->a->log, me(cl), "cluster %d did not stop within %.3gs; SIGKILL", cl->id,
            cl->a->cfg.stop_timeout);
  signal_run(cl, 2);
}

void dcm__cluster_stop(dcm__cluster_t *cl) {
  if (cl->destroying) return;
  /* Its requests end now; new ones get 503 until the run is over. */
  dcm__ident_cluster_gone(&cl->a->ident, cl);
  cl->queued = 0;
  if (cl->live) {
    cl->state = DCM_CLUSTER_STOPPING;
    cl->destroying = 1;
    if (cl->running)
      dcm__info(&cl->a->log, me(cl), "stopping cluster %d (pid %d)", cl->id, (int)cl->pid);
    else
      dcm__info(&cl->a->log, me(cl), "stopping cluster %d (its command has exited; stopping "
                "what it left)", cl->id);
    signal_run(cl, 1); /* nothing new if a FATAL restart sent SIGTERM already */
    close_run_handle(cl, (uv_handle_t *)&cl->in);
    uv_timer_start(&cl->timer, kill_cb, dcm__ms(cl->a->cfg.stop_timeout), 0);
  } else if (cl->exited && !cl->out_eof) {
    cl->state = DCM_CLUSTER_STOPPING; /* after_exit finishes it */
    cl->destroying = 1;
  } else {
    destroy(cl);
  }
}

void dcm__clusters_kill_all(dcm__agent_t *a) {
  for (dcm__cluster_t *cl = a->clusters; cl; cl = cl->next)
    if (cl->live && cl->state == DCM_CLUSTER_STOPPING) signal_run(cl, 2);
}

void dcm__cluster_retry(dcm__cluster_t *cl) {
  if (cl->state != DCM_CLUSTER_FAILED) return;
  cl->restarts = 0;
  cl->state = DCM_CLUSTER_WAITING;
  cl->queued = 1;
  dcm__info(&cl->a->log, me(cl), "retrying failed cluster %d on a new connect", cl->id);
  dcm__clusters_start_waiting(cl->a);
}

static void fatal_grace_cb(uv_timer_t *t) {
  dcm__cluster_t *cl = t->data;
  if (!cl->live) return;
  dcm__warn(&cl->a->log, me(cl), "cluster %d still runs %.3gs after its FATAL; SIGTERM so it "
            "restarts", cl->id, FATAL_GRACE_MS / 1000.0);
  signal_run(cl, 1);
  uv_timer_start(&cl->timer, kill_cb, dcm__ms(cl->a->cfg.stop_timeout), 0);
}

void dcm__cluster_restart_soon(dcm__cluster_t *cl) {
  if (!cl->live || cl->destroying || cl->state == DCM_CLUSTER_STOPPING || cl->fatal_restart)
    return;
  cl->fatal_restart = 1;
  uv_timer_start(&cl->timer, fatal_grace_cb, FATAL_GRACE_MS, 0);
}
