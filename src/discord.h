/*
 * discord.h: GET {api_base}/gateway/bot on the caller's libuv loop through
 * http.c (libcurl's multi-socket API); a 64 KiB bound on the answer.
 * Retries 429 (after retry_after), 5xx, network errors and malformed bodies
 * with capped exponential backoff; a 401/403 ends the fetch with DCM_EAUTH.
 * The token is sent only in the Authorization header and is never logged.
 */
#ifndef DCM_DISCORD_H
#define DCM_DISCORD_H

#include <uv.h>
#include "log.h"

typedef struct {
  char url[256];
  int shards;
  int total;           /* session_start_limit.total */
  int remaining;       /* session_start_limit.remaining */
  double reset_after;  /* seconds until the identify budget resets */
  int max_concurrency; /* session_start_limit.max_concurrency */
} dcm__gateway_t;

typedef struct dcm__discord_s dcm__discord_t;

/* status: 0 with gw set, DCM_EAUTH, or DCM_EDISCORD for a permanent error. */
typedef void (*dcm__discord_cb)(dcm__discord_t *d, int status,
                                const dcm__gateway_t *gw, void *arg);

int dcm__discord_new(uv_loop_t *loop, const char *api_base, const char *token,
                     dcm__log_t *log, dcm__discord_t **out);

/* Backoff for retries: first delay and cap, seconds (defaults 1 and 60). */
void dcm__discord_set_backoff(dcm__discord_t *d, double first, double cap);

/* One fetch at a time (DCM_ESTATE otherwise). cb runs once, never inline. */
int dcm__discord_fetch(dcm__discord_t *d, dcm__discord_cb cb, void *arg);

/* Cancels any fetch (its cb is not called), closes every handle, frees d,
 * then calls done(arg) from a close callback. */
void dcm__discord_close(dcm__discord_t *d, void (*done)(void *arg), void *arg);

#endif
