/* SPDX-License-Identifier: MIT */
/*
 * service.h - what service.c (objects and requests) and tasks.c (engine
 * jobs of appends and generations) share. Scheduler thread only.
 */
#ifndef KVD_SERVICE_H
#define KVD_SERVICE_H

#include "daemon.h"

/* Maps a negative errno from the engine to a KVC_E* code. */
int kvd_engine_code(int rc);

struct kvd_usage *kvd_usage_of(struct kvd_daemon *d, uid_t uid);
void kvd_charge_tokens(struct kvd_daemon *d, struct kvd_segment *s,
		       int64_t n);
bool kvd_tokens_allowed(struct kvd_daemon *d, struct kvd_conn *c,
			enum kvd_path path, uint64_t id,
			struct kvd_segment *s, uint64_t n);

/* Looks a handle up, or replies with why it is not there and returns NULL. */
struct kvd_segment *kvd_find_segment(struct kvd_daemon *d,
				     struct kvd_conn *c, enum kvd_path path,
				     uint64_t id, const ProtobufCBinaryData *h);

/* Evicts the least recently used unheld segment; false if there is none. */
bool kvd_evict_one(struct kvd_daemon *d);

/* Runs requests that waited on @s while it has no open job. */
void kvd_run_pending(struct kvd_daemon *d, struct kvd_segment *s);

/*
 * Opens the job of an Append or Generate on @s. Returns true if a task now
 * runs and owns @req; false after an error reply (the caller frees @req).
 */
bool kvd_task_append(struct kvd_daemon *d, struct kvd_conn *c,
		     enum kvd_path path, Kvchain__Request *req,
		     struct kvd_segment *s);
bool kvd_task_generate(struct kvd_daemon *d, struct kvd_conn *c,
		       enum kvd_path path, Kvchain__Request *req,
		       struct kvd_segment *s);

/* Discards the jobs @c started (every job when @c is NULL). */
void kvd_cancel_tasks(struct kvd_daemon *d, struct kvd_conn *c);

/* Advances every open job by one engine step; returns true if any ran. */
bool kvd_step_tasks(struct kvd_daemon *d);

#endif /* KVD_SERVICE_H */
