/*
 * clock.h: seconds as options and flags give them, to the milliseconds of
 * the loop's monotonic clock (uv_now) that every deadline uses. No
 * wall-clock time anywhere. Depends on nothing.
 */
#ifndef DCM_CLOCK_H
#define DCM_CLOCK_H

#include <stdint.h>

static inline uint64_t dcm__ms(double seconds) { return (uint64_t)(seconds * 1000.0 + 0.5); }

#endif
