/*
 * check_policy.h: `discluster-master check-policy FILE --fleet FLEET.json
 * [--shards N] [--max-concurrency M] [--dead ID]`: runs a policy in the
 * master's sandbox against a fleet file and prints the result as JSON on
 * stdout and a table on stderr. Depends on policy.h and json.h.
 */
#ifndef DCM_CHECK_POLICY_H
#define DCM_CHECK_POLICY_H

/* argv[0] is "check-policy". Returns the process exit status. */
int dcm__check_policy_main(int argc, char **argv);

#endif
