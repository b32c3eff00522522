/* SPDX-License-Identifier: MIT */
/*
 * log.c - kvchaind's logging: one line per call on stderr, prefixed with
 * its level, written with a single write(2) so lines from the loop and the
 * scheduler threads never interleave.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

static _Atomic int log_threshold = KVD_LOG_INFO;

static const char *const level_names[] = {
	[KVD_LOG_ERROR] = "error",
	[KVD_LOG_WARN] = "warn",
	[KVD_LOG_INFO] = "info",
	[KVD_LOG_DEBUG] = "debug",
};

void kvd_log_set_level(enum kvd_log_level level)
{
	atomic_store(&log_threshold, (int)level);
}

int kvd_log_parse_level(const char *name, enum kvd_log_level *level)
{
	size_t i;

	for (i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
		if (!strcmp(name, level_names[i])) {
			*level = (enum kvd_log_level)i;
			return 0;
		}
	}
	return -EINVAL;
}

void kvd_log(enum kvd_log_level level, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n, m;

	if ((int)level > atomic_load(&log_threshold))
		return;
	n = snprintf(line, sizeof(line), "kvchaind: %s: ", level_names[level]);
	va_start(ap, fmt);
	m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	/* a line longer than the buffer is cut, never split */
	if (m < 0)
		m = 0;
	n += m;
	if ((size_t)n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	if (write(STDERR_FILENO, line, (size_t)n) < 0)
		return;	/* nowhere left to report it */
}

void kvd_handle_prefix(const uint8_t handle[16], char out[9])
{
	static const char hex[] = "0123456789abcdef";
	int i;

	for (i = 0; i < 4; i++) {
		out[2 * i] = hex[handle[i] >> 4];
		out[2 * i + 1] = hex[handle[i] & 15];
	}
	out[8] = '\0';
}
