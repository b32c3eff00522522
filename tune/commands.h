/* SPDX-License-Identifier: MIT */
/*
 * commands.h - the subcommands of kvchain-tune, callable in-process so
 * tests can run them, and the helpers they share. A command prints its
 * output on stdout and its messages on stderr, and returns the process
 * exit status: 0 on success, 1 on any error.
 */
#ifndef KVCHAIN_TUNE_COMMANDS_H
#define KVCHAIN_TUNE_COMMANDS_H

#include <stddef.h>
#include <stdint.h>

#include "prompt.h"
#include "segment.h"

struct model;

/* kvchain-tune train ...: argv[0] is "train". */
int tune_cmd_train(int argc, char **argv);

/* kvchain-tune eval ...: argv[0] is "eval". */
int tune_cmd_eval(int argc, char **argv);

/*
 * Loads the PEFT adapters in folders @dirs, in order, as consecutive
 * stages: an adapter holding k prompts fills k stages. Stores at most
 * @cap prompts in @out and their count in *n_out. Returns 0 or a negative
 * errno with a message naming the folder.
 */
int tune_load_prompts(const struct model *model, const char *const *dirs,
		      uint32_t n_dirs, struct stage_prompt **out, uint32_t cap,
		      uint32_t *n_out, char *err, size_t errlen);

/*
 * Parses a decimal integer from @s into *out for option @flag, between
 * @min and @max. Returns 0, or -1 after printing a message.
 */
int tune_parse_uint(const char *flag, const char *s, unsigned long min,
		    unsigned long max, unsigned long *out);

/*
 * Appends @value to the list @list (*n entries, room for @max) of the
 * repeatable option @flag. Returns 0, or -1 after printing a message when
 * the list is full.
 */
int tune_push_arg(const char *flag, const char *value, const char **list,
		  uint32_t *n, uint32_t max);

/* As tune_parse_uint, for a finite number. */
int tune_parse_double(const char *flag, const char *s, double min,
		      double max, double *out);

/* Returns seconds of CLOCK_MONOTONIC. */
double tune_now(void);

#endif /* KVCHAIN_TUNE_COMMANDS_H */
