/*
 * fuzz.h: what the fuzz harnesses (spec/fuzz/fuzz_*.c) share. Each defines
 * LLVMFuzzerTestOneInput and is linked either with libFuzzer (scripts/fuzz,
 * DCM_FUZZ=ON) or with replay.c (ctest: fuzz/<name> replays its corpus).
 * Harnesses set themselves up on their first input. A broken invariant
 * aborts through FUZZ_CHECK, which libFuzzer and ctest both report.
 * No dependency beyond libc.
 */
#ifndef DCM_FUZZ_H
#define DCM_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                     \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__,  \
              #cond);                                                        \
      abort();                                                               \
    }                                                                        \
  } while (0)

/* A deterministic generator seeded from the input (FNV-1a, then
   xorshift64*): the same input always splits the same way. */
typedef struct {
  uint64_t s;
} fuzz_rng_t;

static inline fuzz_rng_t fuzz_rng(const uint8_t *data, size_t size) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < size; i++) h = (h ^ data[i]) * 1099511628211ull;
  fuzz_rng_t r = {h ? h : 1};
  return r;
}

static inline uint64_t fuzz_next(fuzz_rng_t *r) {
  r->s ^= r->s >> 12;
  r->s ^= r->s << 25;
  r->s ^= r->s >> 27;
  return r->s * 2685821657736338717ull;
}

/*
 * Cuts size bytes into at most max_cuts + 1 chunks at random points:
 * fills ends[] (ascending, the last is size) and returns the count.
 */
static inline size_t fuzz_cuts(fuzz_rng_t *r, size_t size, size_t *ends, size_t max_cuts) {
  size_t n = 0, at = 0;
  size_t k = size ? (size_t)(fuzz_next(r) % (max_cuts + 1)) : 0;
  for (size_t i = 0; i < k && at < size; i++) {
    size_t left = size - at;
    size_t step = 1 + (size_t)(fuzz_next(r) % (left < 8 || i % 2 ? left : left / 4 + 1));
    if (step >= left) break;
    at += step;
    ends[n++] = at;
  }
  ends[n++] = size;
  return n;
}

#endif
