/*
 * fuzz_config.c: the CLI's Lua config loader (config.c) on a config file's
 * text: the input is written to a private temporary file and loaded with
 * `-c FILE`, as `discluster-master -c FILE` does. The file runs in the
 * loader's sandbox (instruction budget, memory cap). Checks: a success
 * passes the options validator; an error is one line that names its cause
 * and never shows the secrets the environment holds (DISCORD_TOKEN and
 * DISCLUSTER_AUTH are set to known values for that).
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "fuzz.h"
#include "options.h"

#define TOKEN "Tfuzz.token.0123456789abcdef"
#define AUTH "Afuzz-auth-0123456789abcdef"

static char dir[64], path[96];
static FILE *devnull;

static void cleanup(void) {
  if (path[0]) unlink(path);
  if (dir[0]) rmdir(dir);
}

static void setup(void) {
  const char *tmp = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/dcm-fuzz-config-XXXXXX",
           tmp && *tmp && strlen(tmp) < 32 ? tmp : "/tmp");
  if (mkdtemp(dir) == NULL) abort();
  snprintf(path, sizeof path, "%s/discluster.lua", dir);
  atexit(cleanup);
  devnull = fopen("/dev/null", "w");
  if (devnull == NULL) abort();
  setenv("DISCORD_TOKEN", TOKEN, 1);
  setenv("DISCLUSTER_AUTH", AUTH, 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (devnull == NULL) setup();
  FILE *f = fopen(path, "wb");
  FUZZ_CHECK(f != NULL);
  FUZZ_CHECK(fwrite(data, 1, size, f) == size);
  FUZZ_CHECK(fclose(f) == 0);

  char *argv[] = {"discluster-master", "-c", path, NULL};
  char err[256];
  dcm__config_t cfg;
  int rc = dcm__config_load(&cfg, 3, argv, devnull, err, sizeof err);
  if (rc == DCM_CONFIG_RUN) {
    char verr[256];
    FUZZ_CHECK(dcm__options_validate(&cfg.opts, verr, sizeof verr) == 0);
    dcm__config_free(&cfg);
    return 0;
  }
  FUZZ_CHECK(rc == DCM_EINVAL || rc == DCM_EINSECURE);
  FUZZ_CHECK(memchr(err, '\0', sizeof err) != NULL && err[0] != '\0');
  for (const char *p = err; *p; p++) FUZZ_CHECK((unsigned char)*p >= 0x20);
  FUZZ_CHECK(strstr(err, "Tfuzz.to") == NULL && strstr(err, "Afuzz-au") == NULL);
  return 0;
}
