/*
 * clock.h: seconds as options and flags give them, to the milliseconds of
 * the loop's monotonic clock (uv_now) that every deadline uses. Wall-clock
 * time only as the format two machines exchange a moment in (the identify
 * record in etcd), never for a deadline. Depends on nothing.
 */
#ifndef DCM_CLOCK_H
#define DCM_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t dcm__ms(double seconds) { return (uint64_t)(seconds * 1000.0 + 0.5); }

/* Milliseconds since the Unix epoch, for records another machine reads. */
static inline long long dcm__wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif
