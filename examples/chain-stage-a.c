/* SPDX-License-Identifier: MIT */
/*
 * chain-stage-a - stage A of a two-stage chain, as its own process:
 * registers the two stage prompts (the PEFT adapters named on the command
 * line, hard prompts given as text, or seeded random soft prompts), creates the chain and a segment,
 * appends the question I_ALL as shared input and the passages I_A as
 * stage 0's input, generates O_A as stage 0, drops I_A (stage B never
 * reads it), prints the segment's handle on stdout and exits. Stage B
 * (chain-stage-b) attaches by that handle within the daemon's TTL.
 */
#include "config.h"

#include <getopt.h>
#include <inttypes.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvchain.h"
#include "random-prompt.h"

struct options {
	const char *socket;
	const char *i_all;
	const char *i_a;
	uint32_t prompt_tokens;	/* virtual tokens of each random prompt */
	uint32_t max_tokens;
	int ignore_eos;
	int timings;
	const char *peft[2];	/* adapter folders of stages A and B */
	const char *hard[2];	/* hard prompts of stages A and B */
};

static void usage(FILE *out)
{
	fprintf(out,
"usage: chain-stage-a [options] [PEFT_DIR_A PEFT_DIR_B]\n"
"Runs stage A of a two-stage chain and prints the segment's handle.\n"
"Without adapter folders the stage prompts are the texts of --hard-a\n"
"and --hard-b, or else seeded random soft prompts (seeds 1 and 2).\n"
"  --socket PATH        kvchaind's socket (default: as libkvchain chooses)\n"
"  --i-all TEXT         shared input, read by both stages\n"
"  --i-a TEXT           stage A's own input\n"
"  --hard-a TEXT        stage A's prompt as text (without adapters)\n"
"  --hard-b TEXT        stage B's prompt as text (without adapters)\n"
"  --prompt-tokens N    virtual tokens of each random prompt (default 8)\n"
"  --max-tokens N       tokens of O_A at most (default 32)\n"
"  --ignore-eos         generate past the end-of-sequence token\n"
"  --timings            print stage A's time on stderr\n"
"O_A goes to stderr, the handle to stdout.\n");
}

/* Prints the failure on stderr and returns 1 for main. */
static int report(kvc_conn *conn, int rc, const char *what)
{
	fprintf(stderr, "chain-stage-a: %s: %s: %s\n", what, kvc_strerror(rc),
		conn ? kvc_last_error(conn) : "");
	return 1;
}

static int parse_args(int argc, char **argv, struct options *o)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "i-all", required_argument, NULL, 'A' },
		{ "i-a", required_argument, NULL, 'a' },
		{ "prompt-tokens", required_argument, NULL, 'p' },
		{ "max-tokens", required_argument, NULL, 'n' },
		{ "ignore-eos", no_argument, NULL, 'e' },
		{ "hard-a", required_argument, NULL, 'x' },
		{ "hard-b", required_argument, NULL, 'y' },
		{ "timings", no_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 's': o->socket = optarg; break;
		case 'A': o->i_all = optarg; break;
		case 'a': o->i_a = optarg; break;
		case 'p': o->prompt_tokens = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'n': o->max_tokens = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'e': o->ignore_eos = 1; break;
		case 'x': o->hard[0] = optarg; break;
		case 'y': o->hard[1] = optarg; break;
		case 't': o->timings = 1; break;
		case 'h': usage(stdout); exit(0);
		default: return -1;
		}
	}
	if (argc - optind == 2) {
		o->peft[0] = argv[optind];
		o->peft[1] = argv[optind + 1];
	} else if (argc != optind) {
		return -1;
	}
	if (o->prompt_tokens == 0 || o->max_tokens == 0)
		return -1;
	return 0;
}

/* Registers stage @stage's prompt: its adapter, its text, or a random one. */
static int register_prompt(kvc_conn *conn, const struct options *o,
			   uint32_t stage, uint64_t *id)
{
	struct kvc_server_info info = { .struct_size = sizeof(info) };
	uint32_t n;
	float *embd;
	int rc;

	if (o->peft[stage])
		return kvc_prompt_peft(conn, o->peft[stage], id, 1, &n);
	if (o->hard[stage])
		return kvc_prompt_text(conn, o->hard[stage], id);
	kvc_server_info(conn, &info);
	embd = malloc((size_t)o->prompt_tokens * info.d_model * sizeof(float));
	if (!embd)
		return KVC_ENOMEM;
	random_prompt_fill(embd, (size_t)o->prompt_tokens * info.d_model,
			   stage + 1);
	rc = kvc_prompt_soft(conn, embd, o->prompt_tokens, info.d_model, id);
	free(embd);
	return rc;
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
	struct options o = {
		.i_all = "What colour is the sky on a clear day?",
		.i_a = "Passage: on a clear day the sky looks blue because air "
		       "scatters short wavelengths of sunlight the most.",
		.prompt_tokens = 8,
		.max_tokens = 32,
	};
	char handle_text[KVC_HANDLE_STRLEN + 1];
	struct kvc_gen_params params;
	uint64_t prompts[2], chain;
	uint32_t i_a_span;
	kvc_conn *conn;
	kvc_handle h;
	double start;
	char *o_a;
	int rc;

	if (parse_args(argc, argv, &o) < 0) {
		usage(stderr);
		return 2;
	}
	rc = kvc_connect(o.socket, "chain-stage-a", &conn);
	if (rc < 0)
		return report(NULL, rc, "connect");
	if ((rc = register_prompt(conn, &o, 0, &prompts[0])) < 0 ||
	    (rc = register_prompt(conn, &o, 1, &prompts[1])) < 0) {
		report(conn, rc, "register the stage prompts");
		goto out_disconnect;
	}
	rc = kvc_chain_create(conn, prompts, 2, &chain);
	if (rc < 0) {
		report(conn, rc, "create the chain");
		goto out_disconnect;
	}
	rc = kvc_segment_create(conn, chain, &h);
	if (rc < 0) {
		report(conn, rc, "create the segment");
		goto out_disconnect;
	}

	/* I_ALL is read by every stage; I_A only by stage A */
	start = now_ms();
	rc = kvc_append_text(conn, &h, KVC_SHARED_INPUT, 0, o.i_all,
			     strlen(o.i_all), NULL, 0, NULL);
	if (rc == 0)
		rc = kvc_append_text(conn, &h, KVC_STAGE_INPUT, 0, o.i_a,
				     strlen(o.i_a), NULL, 0, &i_a_span);
	if (rc < 0) {
		report(conn, rc, "append the inputs");
		goto out_disconnect;
	}

	kvc_gen_params_init(&params);
	params.max_tokens = o.max_tokens;
	params.ignore_eos = o.ignore_eos;
	rc = kvc_generate_text(conn, &h, 0, &params, &o_a, NULL, NULL);
	if (rc < 0) {
		report(conn, rc, "generate O_A");
		goto out_disconnect;
	}
	if (o.timings)
		fprintf(stderr, "stage A: %.1f ms to read the inputs and write O_A\n",
			now_ms() - start);
	fprintf(stderr, "O_A: %s\n", o_a);
	kvc_free(o_a);

	/* stage B reads I_ALL and O_A only, so I_A's KV can go now */
	rc = kvc_drop_span(conn, &h, i_a_span);
	if (rc < 0) {
		report(conn, rc, "drop I_A");
		goto out_disconnect;
	}
	kvc_handle_format(&h, handle_text);
	printf("%s\n", handle_text);

out_disconnect:
	/* the segment outlives this connection for the daemon's TTL */
	kvc_disconnect(conn);
	return rc < 0 ? 1 : 0;
}
