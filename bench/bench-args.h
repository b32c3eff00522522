/* SPDX-License-Identifier: MIT */
/*
 * bench-args.h - range-checked parsing of the benchmarks' numeric flags.
 */
#ifndef KVCHAIN_BENCH_ARGS_H
#define KVCHAIN_BENCH_ARGS_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

/*
 * Parses @s as an integer from @min to @max into *out. On failure prints
 * one line naming @prog, @flag and the accepted range, and returns -1.
 */
static inline int bench_parse_uint(const char *prog, const char *flag,
				   const char *s, unsigned long min,
				   unsigned long max, unsigned long *out)
{
	char *end;

	errno = 0;
	*out = strtoul(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || *out < min ||
	    *out > max) {
		fprintf(stderr,
			"%s: invalid value '%s' for %s: expected an integer from %lu to %lu\n",
			prog, s, flag, min, max);
		return -1;
	}
	return 0;
}

#endif /* KVCHAIN_BENCH_ARGS_H */
