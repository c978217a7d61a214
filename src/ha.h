/*
 * ha.h: one master of a highly available group (etcd leases, election.c).
 *
 * Without the etcd option the master runs alone ("standalone") and every
 * call here is a no-op that says "leading". With it the master starts as a
 * follower: its server answers /healthz and /status and refuses CONTROL
 * upgrades naming the leader. Once elected it reads what the previous leader
 * left in etcd (the identify budget, its machines) and starts the coordinator,
 * which adopts the running fleet from the CONTROLs' reports. Once it cannot
 * prove its lease any more it steps down: the whole master stops (close code
 * 4020 to every CONTROL, every timer closed) and the embedder starts a fresh
 * one, which campaigns again. Decisions start only where dcm__ha_leading()
 * was asked: CONTROL packets, connection deadlines, the coordinator's timers
 * and Discord's answers. Depends on election.c, coordinator.c and master.c.
 */
#ifndef DCM_HA_H
#define DCM_HA_H

#include <stddef.h>
#include <stdint.h>

#include "discluster/master.h"
#include "protocol.h"

int dcm__ha_start(dcm_master_t *m);  /* standalone: starts the coordinator */
/* 1: this master may decide now. 0: not the leader; when it was, the step
   down has begun and the caller returns without acting. */
int dcm__ha_leading(dcm_master_t *m);
int dcm__ha_follower(const dcm_master_t *m); /* with etcd and not leading */
uint64_t dcm__ha_epoch(const dcm_master_t *m); /* 0: standalone */
/* The term packets carry (epoch and etcd's cluster id); NULL unless leading. */
const dcm__epoch_t *dcm__ha_term(const dcm_master_t *m);
const char *dcm__ha_role(const dcm_master_t *m); /* "standalone", "leader", "follower" */
const char *dcm__ha_leader(const dcm_master_t *m); /* leader URL known, or NULL */
/* JSON object body for /healthz, /status on a follower and the refusal. */
size_t dcm__ha_describe(const dcm_master_t *m, char *buf, size_t n);

/* The identify queue exists (grants.c): apply what the last leader left. */
void dcm__ha_identify_start(dcm_master_t *m);
void dcm__ha_granted(dcm_master_t *m, int bucket); /* after each grant */
void dcm__ha_persist(dcm_master_t *m); /* writes what changed since the last call */

/* Records the machines that run shards when that set changed (after a
   decision: dcm__coord_pump), so the next leader knows whom to wait for. */
void dcm__ha_fleet_persist(dcm_master_t *m);
/* 1 when every machine of the last leader's fleet is connected again. */
int dcm__ha_fleet_back(dcm_master_t *m);

/* From dcm_master_stop: revokes the lease when leading. 1: a close is under
   way and dcm__master_release follows; 0: nothing to close. */
int dcm__ha_close(dcm_master_t *m);
void dcm__ha_free(dcm_master_t *m);

#endif
