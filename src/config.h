/*
 * config.h: the CLI's configuration. A Lua config file (-c FILE, run in a
 * small sandbox that may call os.getenv) and command-line flags, merged in
 * that order over dcm_options_init() defaults and the DISCORD_TOKEN and
 * DISCLUSTER_AUTH environment variables, then validated. Depends on Lua.
 */
#ifndef DCM_CONFIG_H
#define DCM_CONFIG_H

#include <stddef.h>
#include <stdio.h>
#include "discluster/master.h"

typedef struct dcm__config_s {
  dcm_options_t opts; /* its strings point into `strings` */
  char *strings[16];  /* owned copies */
  int nstrings;
} dcm__config_t;

enum { DCM_CONFIG_RUN = 0, DCM_CONFIG_EXIT = 1 };

/*
 * Returns DCM_CONFIG_RUN, DCM_CONFIG_EXIT after printing --help or
 * --version to out, or DCM_EINVAL / DCM_EINSECURE with one line in err that
 * names the flag, key or file:line (the CLI exits 2). Never puts a secret in
 * err.
 */
int dcm__config_load(dcm__config_t *cfg, int argc, char **argv, FILE *out,
                     char *err, size_t errlen);
void dcm__config_free(dcm__config_t *cfg);

#endif
