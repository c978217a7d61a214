/*
 * httphead.h: reading one HTTP/1.x request head for the agent's loopback
 * servers (identify.c, metrics.c). http-parser collects the request target
 * into the caller's bounded buffer (what does not fit is dropped and
 * flagged) and pauses at the end of the head: a body or a pipelined request
 * is never parsed. At most max bytes of head are read; the caller keeps the
 * deadline (408), answers and closes.
 * Depends on http-parser only.
 */
#ifndef DCM_CTL_HTTPHEAD_H
#define DCM_CTL_HTTPHEAD_H

#include <http_parser.h>
#include <stddef.h>

#define DCM_CTL_HEAD_MORE 0 /* feed more bytes */
#define DCM_CTL_HEAD_DONE 1 /* the head is complete: parser.method, http_major, path */

typedef struct {
  http_parser parser;
  char *path;      /* the caller's buffer of pathmax + 1 bytes, NUL-terminated */
  size_t pathmax;  /* bytes of target kept; more set path_long */
  size_t pathlen;
  int path_long;
  int done;
  size_t bytes, max; /* head bytes parsed so far, and their bound */
} dcm__ctl_head_t;

void dcm__ctl_head_init(dcm__ctl_head_t *h, char *path, size_t pathmax, size_t max);

/* Parses up to the bound from data[0..n). Returns DCM_CTL_HEAD_DONE (with
 * *used, unless NULL, the bytes of data that belonged to the head),
 * DCM_CTL_HEAD_MORE, 400 when the head is malformed (HTTP_PARSER_ERRNO(
 * &h->parser) says why) or 431 when max bytes hold no complete head. Not
 * to be called again after anything but DCM_CTL_HEAD_MORE. */
int dcm__ctl_head_feed(dcm__ctl_head_t *h, const char *data, size_t n, size_t *used);

#endif
