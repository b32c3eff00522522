/* SPDX-License-Identifier: MIT */
/*
 * conf.c - kvchaind's settings: the defaults, the parser of kvchain.conf
 * (`key = value` lines, `#` comments, blank lines) and the peer allow
 * lists. Flags on the command line go through the same kvd_config_set.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "conf.h"

void kvd_config_defaults(struct kvd_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->arena_mib = 256;
	cfg->block_tokens = 16;
	cfg->kv_type = KERN_TYPE_F16;
	cfg->threads = 2;
	cfg->max_batch = 64;
	cfg->n_ctx = 0;
	cfg->numa_node = -1;
	cfg->event_loop = KVD_LOOP_AUTO;
	cfg->log_level = KVD_LOG_INFO;
	cfg->segment_ttl_seconds = 300;
	cfg->max_segments_per_uid = 64;
	cfg->max_tokens_per_uid = 65536;
	cfg->max_generations_per_uid = 4;
	cfg->ring_kib = 4096;
	cfg->max_message_kib = 1024;
}

void kvd_config_free(struct kvd_config *cfg)
{
	free(cfg->model);
	free(cfg->socket);
	cfg->model = NULL;
	cfg->socket = NULL;
}

static int parse_u32(const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
	unsigned long long v;
	char *end;

	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

static int parse_string(const char *s, char **out)
{
	char *copy;

	if (!*s)
		return -EINVAL;
	copy = strdup(s);
	if (!copy)
		return -ENOMEM;
	free(*out);
	*out = copy;
	return 0;
}

/* Parses a comma-separated list of numeric ids; an empty list is valid. */
static int parse_ids(const char *s, uint32_t *ids, uint32_t *n)
{
	uint32_t count = 0;
	char buf[32];

	while (*s) {
		const char *comma = strchr(s, ',');
		size_t len = comma ? (size_t)(comma - s) : strlen(s);
		char *p = buf, *q;

		if (len >= sizeof(buf) || count == KVD_MAX_IDS)
			return -EINVAL;
		memcpy(buf, s, len);
		buf[len] = '\0';
		while (isspace((unsigned char)*p))
			p++;
		q = p + strlen(p);
		while (q > p && isspace((unsigned char)q[-1]))
			*--q = '\0';
		if (parse_u32(p, 0, UINT32_MAX - 1, &ids[count]))
			return -EINVAL;
		count++;
		s += len;
		if (*s == ',') {
			s++;
			if (!*s)
				return -EINVAL;
		}
	}
	*n = count;
	return 0;
}

static int parse_kv_type(const char *s, enum kern_type *out)
{
	if (!strcasecmp(s, "f16"))
		*out = KERN_TYPE_F16;
	else if (!strcasecmp(s, "f32"))
		*out = KERN_TYPE_F32;
	else if (!strcasecmp(s, "q8_0"))
		*out = KERN_TYPE_Q8_0;
	else
		return -EINVAL;
	return 0;
}

static int parse_event_loop(const char *s, enum kvd_event_loop *out)
{
	if (!strcmp(s, "auto"))
		*out = KVD_LOOP_AUTO;
	else if (!strcmp(s, "io_uring"))
		*out = KVD_LOOP_URING;
	else if (!strcmp(s, "epoll"))
		*out = KVD_LOOP_EPOLL;
	else
		return -EINVAL;
	return 0;
}

static int parse_numa_node(const char *s, int *out)
{
	uint32_t v;

	if (!strcmp(s, "-1")) {
		*out = -1;
		return 0;
	}
	if (parse_u32(s, 0, 1023, &v))
		return -EINVAL;
	*out = (int)v;
	return 0;
}

int kvd_config_set(struct kvd_config *cfg, const char *key,
		   const char *value, const char **expected)
{
	/* Numeric keys: where the value goes and the range it may take. */
	static const struct {
		const char *key;
		size_t offset;
		uint32_t min, max;
		const char *expected;
	} numbers[] = {
#define NUM(k, lo, hi, what) { #k, offsetof(struct kvd_config, k), lo, hi, what }
		NUM(arena_mib, 1, 1u << 20, "MiB from 1 to 1048576"),
		NUM(block_tokens, 1, 4096, "tokens from 1 to 4096"),
		NUM(threads, 1, 1024, "a thread count from 1 to 1024"),
		NUM(max_batch, 1, 65536, "tokens from 1 to 65536"),
		NUM(n_ctx, 0, 1u << 24, "positions, 0 for the model's own"),
		NUM(segment_ttl_seconds, 0, 31u * 86400,
		    "seconds from 0 to 2678400"),
		NUM(max_segments_per_uid, 1, 1u << 20,
		    "a count from 1 to 1048576"),
		NUM(max_tokens_per_uid, 1, UINT32_MAX,
		    "a token count of at least 1"),
		NUM(max_generations_per_uid, 1, 4096,
		    "a count from 1 to 4096"),
		NUM(ring_kib, 8, 1u << 20,
		    "KiB, a power of two from 8 to 1048576"),
		NUM(max_message_kib, 1, 1u << 19,
		    "KiB from 1 to 524288, at most half of ring_kib"),
#undef NUM
	};
	size_t i;
	int rc;

	*expected = "";
	for (i = 0; i < sizeof(numbers) / sizeof(numbers[0]); i++) {
		if (strcmp(key, numbers[i].key))
			continue;
		*expected = numbers[i].expected;
		return parse_u32(value, numbers[i].min, numbers[i].max,
				 (uint32_t *)((char *)cfg + numbers[i].offset));
	}
	if (!strcmp(key, "model")) {
		*expected = "the path of a GGUF file";
		return parse_string(value, &cfg->model);
	}
	if (!strcmp(key, "socket")) {
		*expected = "the path of the control socket";
		return parse_string(value, &cfg->socket);
	}
	if (!strcmp(key, "kv_type")) {
		*expected = "f16, f32 or q8_0";
		return parse_kv_type(value, &cfg->kv_type);
	}
	if (!strcmp(key, "numa_node")) {
		*expected = "a node number, or -1 for the node the daemon starts on";
		return parse_numa_node(value, &cfg->numa_node);
	}
	if (!strcmp(key, "event_loop")) {
		*expected = "auto, io_uring or epoll";
		return parse_event_loop(value, &cfg->event_loop);
	}
	if (!strcmp(key, "log_level")) {
		*expected = "error, warn, info or debug";
		return kvd_log_parse_level(value, &cfg->log_level);
	}
	if (!strcmp(key, "allow_uids") || !strcmp(key, "allow_gids")) {
		bool uids = key[6] == 'u';
		uint32_t ids[KVD_MAX_IDS], n = 0;

		*expected = "a comma-separated list of at most 64 numeric ids";
		rc = parse_ids(value, ids, &n);
		if (rc)
			return rc;
		for (i = 0; i < n; i++) {
			if (uids)
				cfg->allow_uids[i] = ids[i];
			else
				cfg->allow_gids[i] = ids[i];
		}
		if (uids)
			cfg->n_allow_uids = n;
		else
			cfg->n_allow_gids = n;
		return 0;
	}
	return -ENOENT;
}

static char *trim(char *s)
{
	char *end;

	while (isspace((unsigned char)*s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char)end[-1]))
		*--end = '\0';
	return s;
}

int kvd_config_load(struct kvd_config *cfg, const char *path, char *err,
		    size_t errlen)
{
	const char *expected;
	unsigned line_no = 0;
	char line[4096];
	int rc = 0;
	FILE *fp;

	fp = fopen(path, "re");
	if (!fp) {
		rc = -errno;
		snprintf(err, errlen, "%s: cannot open: %s", path, strerror(-rc));
		return rc;
	}
	while (fgets(line, sizeof(line), fp)) {
		char *key, *value, *eq, *hash;

		line_no++;
		if (!strchr(line, '\n') && !feof(fp)) {
			snprintf(err, errlen, "%s:%u: line longer than %zu bytes",
				 path, line_no, sizeof(line) - 2);
			rc = -EINVAL;
			break;
		}
		hash = strchr(line, '#');
		if (hash)
			*hash = '\0';
		key = trim(line);
		if (!*key)
			continue;
		eq = strchr(key, '=');
		if (!eq) {
			snprintf(err, errlen,
				 "%s:%u: malformed line '%.64s' (expected key = value)",
				 path, line_no, key);
			rc = -EINVAL;
			break;
		}
		*eq = '\0';
		value = trim(eq + 1);
		key = trim(key);
		rc = kvd_config_set(cfg, key, value, &expected);
		if (rc == -ENOENT) {
			snprintf(err, errlen, "%s:%u: unknown key '%.64s'", path,
				 line_no, key);
			break;
		}
		if (rc) {
			snprintf(err, errlen,
				 "%s:%u: key '%s': invalid value '%.128s' (expected %s)",
				 path, line_no, key, value, expected);
			break;
		}
	}
	if (!rc && ferror(fp)) {
		rc = -EIO;
		snprintf(err, errlen, "%s: read failed", path);
	}
	fclose(fp);
	return rc;
}

int kvd_config_check(const struct kvd_config *cfg, char *err, size_t errlen)
{
	if (!cfg->model) {
		snprintf(err, errlen,
			 "no model: set model in the configuration file or pass --model");
		return -EINVAL;
	}
	if (cfg->ring_kib & (cfg->ring_kib - 1)) {
		snprintf(err, errlen,
			 "ring_kib is %" PRIu32 " (expected a power of two)",
			 cfg->ring_kib);
		return -EINVAL;
	}
	if (cfg->max_message_kib > cfg->ring_kib / 2) {
		snprintf(err, errlen,
			 "max_message_kib is %" PRIu32 " (expected at most half of ring_kib, %" PRIu32 ")",
			 cfg->max_message_kib, cfg->ring_kib / 2);
		return -EINVAL;
	}
	return 0;
}

/*
 * NOTE: SO_PEERCRED carries the peer's primary gid only, so a user allowed
 * through a supplementary group is not recognised; reading the groups from
 * /proc/PID/status would race with the peer's exit.
 */
bool kvd_config_allows(const struct kvd_config *cfg, uid_t self, uid_t uid,
		       gid_t gid)
{
	uint32_t i;

	if (uid == self)
		return true;
	for (i = 0; i < cfg->n_allow_uids; i++)
		if (cfg->allow_uids[i] == uid)
			return true;
	for (i = 0; i < cfg->n_allow_gids; i++)
		if (cfg->allow_gids[i] == gid)
			return true;
	return false;
}
