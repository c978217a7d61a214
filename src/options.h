/*
 * options.h: defaults and validation of dcm_options_t, shared by the
 * library (dcm_master_new) and the CLI's config loader so both reject the
 * same values with the same words.
 */
#ifndef DCM_OPTIONS_H
#define DCM_OPTIONS_H

#include <stddef.h>
#include "discluster/master.h"

/* 0, or DCM_EINVAL / DCM_EINSECURE with one line in err naming the key. */
int dcm__options_validate(const dcm_options_t *o, char *err, size_t errlen);

/* 1 when s is scheme://host[:port][/...] with a non-empty host and, if a
   ':' follows the host, a port of 1-65535. ws: wss/ws, else https/http. */
int dcm__url_ok(const char *s, int ws);

/* 1 for 127.0.0.0/8, ::1 and "localhost". */
int dcm__is_loopback(const char *host);

#endif
