/* SPDX-License-Identifier: MIT */
/*
 * commands.c - helpers the kvchain-tune subcommands share: option parsing,
 * prompt loading and the clock.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "commands.h"

int tune_push_arg(const char *flag, const char *value, const char **list,
		  uint32_t *n, uint32_t max)
{
	if (*n == max) {
		fprintf(stderr,
			"kvchain-tune: too many %s options: at most %u\n",
			flag, max);
		return -1;
	}
	list[(*n)++] = value;
	return 0;
}

int tune_parse_uint(const char *flag, const char *s, unsigned long min,
		    unsigned long max, unsigned long *out)
{
	char *end;

	errno = 0;
	*out = strtoul(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || *out < min ||
	    *out > max) {
		fprintf(stderr,
			"kvchain-tune: invalid value '%s' for %s: expected an integer from %lu to %lu\n",
			s, flag, min, max);
		return -1;
	}
	return 0;
}

int tune_parse_double(const char *flag, const char *s, double min,
		      double max, double *out)
{
	char *end;

	errno = 0;
	*out = strtod(s, &end);
	if (errno || end == s || *end || !(*out >= min && *out <= max)) {
		fprintf(stderr,
			"kvchain-tune: invalid value '%s' for %s: expected a number from %g to %g\n",
			s, flag, min, max);
		return -1;
	}
	return 0;
}

double tune_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int tune_load_prompts(const struct model *model, const char *const *dirs,
		      uint32_t n_dirs, struct stage_prompt **out, uint32_t cap,
		      uint32_t *n_out, char *err, size_t errlen)
{
	struct stage_prompt *got[PROMPT_MAX_STAGES];
	uint32_t i, j, n_got, n = 0;
	int rc;

	for (i = 0; i < n_dirs; i++) {
		rc = stage_prompt_load_peft(model, dirs[i], got, &n_got, err,
					    errlen);
		if (rc < 0)
			goto out_free;
		for (j = 0; j < n_got; j++) {
			if (n == cap) {
				for (; j < n_got; j++)
					stage_prompt_free(got[j]);
				snprintf(err, errlen,
					 "%s: more than %u stage prompts in all",
					 dirs[i], cap);
				rc = -E2BIG;
				goto out_free;
			}
			out[n++] = got[j];
		}
	}
	*n_out = n;
	return 0;
out_free:
	while (n > 0)
		stage_prompt_free(out[--n]);
	*n_out = 0;
	return rc;
}
