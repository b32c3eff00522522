/* SPDX-License-Identifier: MIT */
/*
 * mkmodel.c - the command-line front end of testmodel.c: writes a GGUF model
 * with seeded random weights, for tests, fuzz corpora and benchmarks.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "testmodel.h"

static void usage(FILE *fp)
{
	fprintf(fp,
		"Usage: mkmodel -o FILE [options]\n"
		"Writes a GGUF model with seeded random weights.\n"
		"\n"
		"  -o, --output FILE     file to write (required)\n"
		"  --arch NAME           llama or qwen2 (default llama)\n"
		"  --type TYPE           type of the 2-D weights: F32, F16, BF16, Q8_0,\n"
		"                        Q4_0, Q4_K or Q6_K (default F32)\n"
		"  --tok KIND            tokenizer: spm or bpe (default spm)\n"
		"  --pre NAME            BPE pre-tokenizer: gpt2, llama3 or qwen2\n"
		"                        (default gpt2)\n"
		"  --dim N               embedding length d_model (default 64)\n"
		"  --layers N            number of blocks (default 2)\n"
		"  --heads N             attention heads (default 4)\n"
		"  --kv-heads N          key/value heads (default 2)\n"
		"  --ff N                feed-forward length (default 128)\n"
		"  --ctx N               context_length key in tokens (default 256)\n"
		"  --tied                no output.weight: the output reuses token_embd\n"
		"  --llama3-rope         write rope_freqs.weight with Llama 3.1 factors\n"
		"  --theta F             RoPE frequency base (default 10000)\n"
		"  --gguf-version N      2 or 3 (default 3)\n"
		"  --seed N              seed of the random weights (default 1)\n"
		"  -h, --help            show this help\n");
}

static const struct {
	const char *name;
	enum kern_type type;
} type_names[] = {
	{ "F32", KERN_TYPE_F32 }, { "F16", KERN_TYPE_F16 },
	{ "BF16", KERN_TYPE_BF16 }, { "Q8_0", KERN_TYPE_Q8_0 },
	{ "Q4_0", KERN_TYPE_Q4_0 }, { "Q4_K", KERN_TYPE_Q4_K },
	{ "Q6_K", KERN_TYPE_Q6_K },
};

static int parse_type(const char *s, enum kern_type *out)
{
	size_t i;

	for (i = 0; i < sizeof(type_names) / sizeof(type_names[0]); i++) {
		if (!strcasecmp(s, type_names[i].name)) {
			*out = type_names[i].type;
			return 0;
		}
	}
	return -EINVAL;
}

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!*s || *s == '-')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || *end || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_u32(const char *s, uint32_t *out)
{
	uint64_t v;
	int ret = parse_u64(s, UINT32_MAX, &v);

	if (!ret)
		*out = (uint32_t)v;
	return ret;
}

static int parse_float(const char *s, float *out)
{
	char *end;

	errno = 0;
	*out = strtof(s, &end);
	if (errno || !*s || *end || !(*out > 0.0f))
		return -EINVAL;
	return 0;
}

enum {
	OPT_ARCH = 256, OPT_TYPE, OPT_TOK, OPT_PRE, OPT_DIM, OPT_LAYERS,
	OPT_HEADS, OPT_KV_HEADS, OPT_FF, OPT_CTX, OPT_TIED, OPT_LLAMA3_ROPE,
	OPT_THETA, OPT_GGUF_VERSION, OPT_SEED,
};

static const struct option long_opts[] = {
	{ "output", required_argument, NULL, 'o' },
	{ "help", no_argument, NULL, 'h' },
	{ "arch", required_argument, NULL, OPT_ARCH },
	{ "type", required_argument, NULL, OPT_TYPE },
	{ "tok", required_argument, NULL, OPT_TOK },
	{ "pre", required_argument, NULL, OPT_PRE },
	{ "dim", required_argument, NULL, OPT_DIM },
	{ "layers", required_argument, NULL, OPT_LAYERS },
	{ "heads", required_argument, NULL, OPT_HEADS },
	{ "kv-heads", required_argument, NULL, OPT_KV_HEADS },
	{ "ff", required_argument, NULL, OPT_FF },
	{ "ctx", required_argument, NULL, OPT_CTX },
	{ "tied", no_argument, NULL, OPT_TIED },
	{ "llama3-rope", no_argument, NULL, OPT_LLAMA3_ROPE },
	{ "theta", required_argument, NULL, OPT_THETA },
	{ "gguf-version", required_argument, NULL, OPT_GGUF_VERSION },
	{ "seed", required_argument, NULL, OPT_SEED },
	{ NULL, 0, NULL, 0 },
};

/* Applies option @c with argument @arg; returns 0 or -EINVAL. */
static int apply_opt(int c, const char *arg, struct testmodel_opts *o)
{
	switch (c) {
	case OPT_ARCH:
		if (strcmp(arg, "llama") && strcmp(arg, "qwen2"))
			return -EINVAL;
		o->arch = arg;
		return 0;
	case OPT_TYPE:
		return parse_type(arg, &o->wtype);
	case OPT_TOK:
		if (!strcmp(arg, "spm"))
			o->tok_kind = TOK_KIND_SPM;
		else if (!strcmp(arg, "bpe"))
			o->tok_kind = TOK_KIND_BPE;
		else
			return -EINVAL;
		return 0;
	case OPT_PRE:
		if (!strcmp(arg, "gpt2"))
			o->tok_pre = TOK_PRE_GPT2;
		else if (!strcmp(arg, "llama3"))
			o->tok_pre = TOK_PRE_LLAMA3;
		else if (!strcmp(arg, "qwen2"))
			o->tok_pre = TOK_PRE_QWEN2;
		else
			return -EINVAL;
		return 0;
	case OPT_DIM:
		return parse_u32(arg, &o->d_model);
	case OPT_LAYERS:
		return parse_u32(arg, &o->n_layers);
	case OPT_HEADS:
		return parse_u32(arg, &o->n_heads);
	case OPT_KV_HEADS:
		return parse_u32(arg, &o->n_kv_heads);
	case OPT_FF:
		return parse_u32(arg, &o->d_ff);
	case OPT_CTX:
		return parse_u32(arg, &o->n_ctx);
	case OPT_TIED:
		o->tied_output = true;
		return 0;
	case OPT_LLAMA3_ROPE:
		o->llama3_rope = true;
		return 0;
	case OPT_THETA:
		return parse_float(arg, &o->rope_theta);
	case OPT_GGUF_VERSION:
		if (parse_u32(arg, &o->gguf_version) ||
		    (o->gguf_version != 2 && o->gguf_version != 3))
			return -EINVAL;
		return 0;
	case OPT_SEED:
		return parse_u64(arg, UINT64_MAX, &o->seed);
	default:
		return -EINVAL;
	}
}

int main(int argc, char **argv)
{
	struct testmodel_opts opts;
	const char *path = NULL;
	char err[512];
	int c, idx;

	testmodel_defaults(&opts);
	while ((c = getopt_long(argc, argv, "o:h", long_opts, &idx)) != -1) {
		switch (c) {
		case 'o':
			path = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case '?':
			fprintf(stderr, "mkmodel: try 'mkmodel --help'\n");
			return 1;
		default:
			if (apply_opt(c, optarg, &opts)) {
				fprintf(stderr, "mkmodel: invalid value '%s' for --%s\n",
					optarg, long_opts[idx].name);
				return 1;
			}
		}
	}
	if (optind < argc) {
		fprintf(stderr, "mkmodel: unexpected argument '%s'\n",
			argv[optind]);
		return 1;
	}
	if (!path) {
		fprintf(stderr, "mkmodel: missing -o FILE (try 'mkmodel --help')\n");
		return 1;
	}
	/*
	 * Test models are small; a typo such as --dim 1000000 would write
	 * gigabytes. 4 billion weights is far above any test or benchmark.
	 */
	double weights = (double)opts.n_layers *
			 ((double)opts.d_model * opts.d_model * 4 +
			  3.0 * opts.d_model * opts.d_ff);
	if (weights > 4e9) {
		fprintf(stderr, "mkmodel: --dim %u, --layers %u and --ff %u make %.1f billion weights, above the limit of 4 billion for test models\n",
			opts.d_model, opts.n_layers, opts.d_ff, weights / 1e9);
		return 1;
	}
	if (testmodel_write(path, &opts, err, sizeof(err))) {
		fprintf(stderr, "mkmodel: %s\n", err);
		return 1;
	}
	return 0;
}
