/* SPDX-License-Identifier: MIT */
/*
 * kvchain-tune - the FTHSS trainer's command line: "train" trains stage
 * prompts, "eval" scores a chain in shared and recompute mode, "pretrain"
 * trains the weights of a tiny base model. The subcommands live in
 * tune/cmd-train.c, tune/cmd-eval.c and tune/pretrain-cmd.c.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "pretrain.h"

static void usage(FILE *out)
{
	fprintf(out,
"usage: kvchain-tune COMMAND [options]\n"
"Trains and evaluates FTHSS stage prompts for kvchain chains.\n"
"\n"
"  train   train stage prompts on a data file, write PEFT adapters\n"
"  eval    score a trained chain in shared and recompute mode\n"
"  pretrain train every weight of a tiny model on plain text\n"
"\n"
"Run 'kvchain-tune COMMAND --help' for the options of a command.\n");
}

int main(int argc, char **argv)
{
	/* metrics lines reach a pipe or log file as they are printed */
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2) {
		usage(stderr);
		return 1;
	}
	if (!strcmp(argv[1], "train"))
		return tune_cmd_train(argc - 1, argv + 1);
	if (!strcmp(argv[1], "eval"))
		return tune_cmd_eval(argc - 1, argv + 1);
	if (!strcmp(argv[1], "pretrain"))
		return tune_cmd_pretrain(argc - 1, argv + 1);
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr,
		"kvchain-tune: unknown command '%s'; expected train, eval or pretrain\n",
		argv[1]);
	return 1;
}
