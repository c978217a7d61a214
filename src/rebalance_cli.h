/*
 * rebalance_cli.h: the `discluster-master rebalance` subcommand (CLI only,
 * not part of the library). Depends on libcurl.
 */
#ifndef DCM_REBALANCE_CLI_H
#define DCM_REBALANCE_CLI_H

/* argv[0] is "rebalance". Returns the exit status. */
int dcm__rebalance_main(int argc, char **argv);

#endif
