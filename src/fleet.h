/*
 * fleet.h: the machines a master knows (hashed by id) and the shard ->
 * machine table. The invariant lives here: a shard belongs to at most one
 * machine, and a machine's list is exactly the shards the table gives it.
 * Depends on internal.h; no I/O beyond closing a machine's timer.
 */
#ifndef DCM_FLEET_H
#define DCM_FLEET_H

#include "internal.h"

int dcm__fleet_init(dcm_master_t *m);
void dcm__fleet_free(dcm_master_t *m); /* after every machine is gone */

/* Sizes the shard table; every shard starts unassigned. */
int dcm__fleet_set_shards(dcm_master_t *m, int shard_count);

/* The latest Discord session of a shard (m->session[s], NULL if unknown). */
int dcm__fleet_set_session(dcm_master_t *m, const dcm__session_t *s);

dcm__machine_t *dcm__fleet_find(dcm_master_t *m, const char *id);
/* A new LIVE machine with no shards; NULL on OOM. */
dcm__machine_t *dcm__fleet_add(dcm_master_t *m, const char *id);
/* Releases its shards, unhashes it, closes its timer, frees it later. */
void dcm__fleet_remove(dcm_master_t *m, dcm__machine_t *mach);

/* Gives shard s to mach; the shard must be unassigned. */
int dcm__fleet_give(dcm_master_t *m, dcm__machine_t *mach, int s);
/* Takes shard s (one of mach's) back: unassigned. */
int dcm__fleet_take(dcm_master_t *m, dcm__machine_t *mach, int s);
/* Unassigns every shard of mach. */
void dcm__fleet_release(dcm_master_t *m, dcm__machine_t *mach);

/* Copies the unassigned shards into out (shard_count room); returns count. */
size_t dcm__fleet_unassigned(const dcm_master_t *m, int *out);

/* Live machines into out (nmachines room), sorted by id; returns count. */
size_t dcm__fleet_live(dcm_master_t *m, dcm__machine_t **out, int standby_too);

#endif
