/* SPDX-License-Identifier: MIT */
/*
 * conf.h - kvchaind's settings: defaults, the `key = value` file
 * (kvchain.conf) and the command-line flags that override it.
 * (Named conf, not config, so it never shadows the build's config.h.)
 */
#ifndef KVD_CONF_H
#define KVD_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "kernels.h"
#include "log.h"

#define KVD_DEFAULT_CONFIG "/etc/kvchain/kvchain.conf"
#define KVD_MAX_IDS 64		/* entries of allow_uids or allow_gids */

enum kvd_event_loop {
	KVD_LOOP_AUTO,		/* io_uring, else epoll */
	KVD_LOOP_URING,
	KVD_LOOP_EPOLL,
};

struct kvd_config {
	char *model;			/* GGUF file */
	char *socket;			/* NULL: the per-user default */
	uint32_t arena_mib;		/* KV arena size */
	uint32_t block_tokens;		/* positions per KV block */
	enum kern_type kv_type;		/* F16, F32 or Q8_0 */
	uint32_t threads;		/* forward-pass threads */
	uint32_t max_batch;		/* tokens per forward pass */
	uint32_t n_ctx;			/* positions per segment; 0: model's */
	int numa_node;			/* -1: the node the daemon starts on */
	enum kvd_event_loop event_loop;
	enum kvd_log_level log_level;
	uid_t allow_uids[KVD_MAX_IDS];
	uint32_t n_allow_uids;
	gid_t allow_gids[KVD_MAX_IDS];
	uint32_t n_allow_gids;
	uint32_t segment_ttl_seconds;	/* life of a segment nobody holds */
	uint32_t max_segments_per_uid;
	uint32_t max_tokens_per_uid;	/* KV positions held by one uid */
	uint32_t max_generations_per_uid; /* running at once */
	uint32_t ring_kib;		/* data of each shared ring */
	uint32_t max_message_kib;	/* largest message accepted */
};

/* Fills @cfg with the defaults, sized for a small (2-core) machine. */
void kvd_config_defaults(struct kvd_config *cfg);
void kvd_config_free(struct kvd_config *cfg);

/*
 * Sets @key to @value. Returns 0; -ENOENT for an unknown key; -EINVAL for
 * a bad value, with *expected pointing at a phrase describing the values
 * the key takes.
 */
int kvd_config_set(struct kvd_config *cfg, const char *key,
		   const char *value, const char **expected);

/*
 * Reads the file at @path. Returns 0, or a negative errno with a message
 * "FILE:LINE: key 'k': invalid value 'v' (expected ...)" (or naming the
 * unknown key or malformed line) in @err.
 */
int kvd_config_load(struct kvd_config *cfg, const char *path, char *err,
		    size_t errlen);

/*
 * Checks settings that depend on each other (ring and message sizes).
 * Returns 0 or -EINVAL with a message.
 */
int kvd_config_check(const struct kvd_config *cfg, char *err, size_t errlen);

/* Returns true if a peer with @uid and @gid may connect. */
bool kvd_config_allows(const struct kvd_config *cfg, uid_t self, uid_t uid,
		       gid_t gid);

#endif /* KVD_CONF_H */
