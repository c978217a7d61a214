/*
 * httphead.c: one bounded HTTP/1.x request head through http-parser (see
 * httphead.h).
 */
#include "httphead.h"

#include <string.h>

static int on_url(http_parser *p, const char *at, size_t n) {
  dcm__ctl_head_t *h = p->data;
  size_t room = h->pathmax - h->pathlen;
  if (n > room) {
    h->path_long = 1;
    n = room;
  }
  memcpy(h->path + h->pathlen, at, n);
  h->pathlen += n;
  h->path[h->pathlen] = '\0';
  return 0;
}

static int on_headers_complete(http_parser *p) {
  dcm__ctl_head_t *h = p->data;
  h->done = 1;
  http_parser_pause(p, 1); /* the head is all we read; the rest is ignored */
  return 0;
}

static const http_parser_settings settings = {
    .on_url = on_url,
    .on_headers_complete = on_headers_complete,
};

void dcm__ctl_head_init(dcm__ctl_head_t *h, char *path, size_t pathmax, size_t max) {
  memset(h, 0, sizeof *h);
  http_parser_init(&h->parser, HTTP_REQUEST);
  h->parser.data = h;
  h->path = path;
  h->pathmax = pathmax;
  h->path[0] = '\0';
  h->max = max;
}

int dcm__ctl_head_feed(dcm__ctl_head_t *h, const char *data, size_t n, size_t *used) {
  size_t room = h->max - h->bytes;
  size_t take = n < room ? n : room;
  size_t u = http_parser_execute(&h->parser, &settings, data, take);
  h->bytes += u;
  if (used) *used = u;
  if (h->done) return DCM_CTL_HEAD_DONE;
  if (HTTP_PARSER_ERRNO(&h->parser) != HPE_OK) return 400;
  if (h->bytes >= h->max) return 431;
  return DCM_CTL_HEAD_MORE;
}
