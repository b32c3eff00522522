/* SPDX-License-Identifier: MIT */
/*
 * log.h - kvchaind's one logging call: a line on stderr with a level
 * prefix, below a threshold set at start. systemd's journal adds the time.
 */
#ifndef KVD_LOG_H
#define KVD_LOG_H

#include <stdint.h>

enum kvd_log_level {
	KVD_LOG_ERROR,
	KVD_LOG_WARN,
	KVD_LOG_INFO,
	KVD_LOG_DEBUG,
};

/* Lines above @level are dropped. */
void kvd_log_set_level(enum kvd_log_level level);

/* Parses "error", "warn", "info" or "debug". Returns 0 or -EINVAL. */
int kvd_log_parse_level(const char *name, enum kvd_log_level *level);

/* Writes one line (a trailing newline is added); safe from any thread. */
void kvd_log(enum kvd_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/*
 * Writes the first 8 hex digits of a 16-byte handle and a NUL into @out,
 * so logs can tell handles apart without holding the capability itself.
 */
void kvd_handle_prefix(const uint8_t handle[16], char out[9]);

#endif /* KVD_LOG_H */
