/*
 * fuzz_policy.c: the C validation of what a Lua policy returns (policy.c's
 * check_result, through dcm__policy_allocate and dcm__policy_failover).
 * The policy is spec/fuzz/fuzz_policy.lua, which builds its result from a
 * program the harness passes as the first machine's shards: the input.
 *   byte 0  bit 0: failover (else allocate); bits 1-2: 1-4 live machines;
 *           bit 3: strict (as check-policy: no fallback to the default)
 *   byte 1  shard_count 1-16
 *   byte 2, 3  failover: which shards the dead machine ran (bit mask)
 *   rest    the program (one entry per byte)
 * A result the validator accepts must place every shard exactly once on a
 * live machine; a rejected one falls back to the default policy, whose
 * answer must be valid too.
 */
#include <string.h>

#include "fuzz.h"
#include "log.h"
#include "policy.h"
#include "policy_internal.h"

static dcm__log_t lg;
static dcm__policy_t *policy;

/* DCM_FUZZ_LOG=1 shows the policy's log (why a result was rejected). */
static void quiet(dcm_log_level level, const char *line, size_t len, void *arg) {
  (void)level, (void)arg;
  if (getenv("DCM_FUZZ_LOG")) fprintf(stderr, "%.*s\n", (int)len, line);
}

static void setup(void) {
  if (dcm__log_init(&lg, DCM_LOG_DEBUG, DCM_LOG_TEXT, quiet, NULL) != 0) abort();
  if (dcm__policy_new(DCM_FUZZ_DIR "/fuzz_policy.lua", NULL, 0, &lg, &policy) != 0) {
    fprintf(stderr, "fuzz_policy: cannot load " DCM_FUZZ_DIR "/fuzz_policy.lua\n");
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const ids[4] = {"m1", "m2", "m3", "m4"};
  if (policy == NULL) setup();
  if (size < 4) return 0;
  int failover = data[0] & 1, strict = data[0] >> 3 & 1;
  size_t n = 1 + (data[0] >> 1 & 3);
  int count = 1 + data[1] % 16;
  unsigned mask = (unsigned)data[2] | (unsigned)data[3] << 8;
  int *prog = malloc((size - 4 + 1) * sizeof *prog);
  FUZZ_CHECK(prog != NULL);
  for (size_t i = 4; i < size; i++) prog[i - 4] = data[i];

  dcm__pmachine_t live[4];
  for (size_t i = 0; i < n; i++)
    live[i] = (dcm__pmachine_t){ids[i], (int)(i + 1), 0.5 * (double)i, 0, NULL, 0};
  live[0].shards = prog;
  live[0].nshards = size - 4;
  dcm__pctx_t ctx = {count, 1 + (int)(data[1] >> 4)};
  int owner[16], dead_shards[16];
  size_t ndead = 0;
  for (int s = 0; s < count; s++)
    if (mask >> s & 1) dead_shards[ndead++] = s;
  dcm__pmachine_t dead = {"dead", 2, 1.0, 0, dead_shards, ndead};

  dcm__policy_set_strict(policy, strict);
  int rc = failover ? dcm__policy_failover(policy, &dead, live, n, &ctx, owner)
                    : dcm__policy_allocate(policy, live, n, &ctx, owner);
  if (rc == 0) {
    size_t want = failover ? ndead : (size_t)count;
    for (size_t i = 0; i < want; i++) FUZZ_CHECK(owner[i] >= 0 && (size_t)owner[i] < n);
  } else {
    FUZZ_CHECK(strict && rc == DCM_EPOLICY);
  }
  free(prog);
  return 0;
}
