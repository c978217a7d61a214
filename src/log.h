/*
 * log.h: leveled log lines, as text or JSON lines; the only place that
 * formats them. JSON escaping goes through lua-cjson (the project's one
 * JSON codec). Callers must never pass the bot token or shared secret.
 */
#ifndef DCM_LOG_H
#define DCM_LOG_H

#include <stdarg.h>
#include "discluster/master.h"

typedef struct lua_State lua_State;

typedef struct dcm__log_s {
  dcm_log_level level;
  dcm_log_format format;
  dcm_log_cb cb;
  void *arg;
  lua_State *json; /* cjson state, only for DCM_LOG_JSON */
} dcm__log_t;

int dcm__log_init(dcm__log_t *lg, dcm_log_level level, dcm_log_format format,
                  dcm_log_cb cb, void *arg);
void dcm__log_close(dcm__log_t *lg);

/* machine may be NULL. */
void dcm__log(dcm__log_t *lg, dcm_log_level level, const char *machine,
              const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void dcm__vlog(dcm__log_t *lg, dcm_log_level level, const char *machine,
               const char *fmt, va_list ap);

/* A line about one cluster process (the CONTROL agent): JSON lines carry
   "cluster" and, when stream is not NULL, "stream" as fields; text lines
   read "cluster N stream: msg". */
void dcm__log_cluster(dcm__log_t *lg, dcm_log_level level, const char *machine, int cluster,
                      const char *stream, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

#define dcm__debug(lg, mach, ...) dcm__log((lg), DCM_LOG_DEBUG, (mach), __VA_ARGS__)
#define dcm__info(lg, mach, ...) dcm__log((lg), DCM_LOG_INFO, (mach), __VA_ARGS__)
#define dcm__warn(lg, mach, ...) dcm__log((lg), DCM_LOG_WARN, (mach), __VA_ARGS__)
#define dcm__error(lg, mach, ...) dcm__log((lg), DCM_LOG_ERROR, (mach), __VA_ARGS__)

const char *dcm__log_level_name(dcm_log_level level);

#endif
