/* SPDX-License-Identifier: MIT */
/*
 * mkbase.c - writes the demo base model before pretraining: a llama GGUF
 * file with seeded random F32 weights (tests/testmodel.c) and the
 * byte-level BPE vocabulary that models/mkvocab.py trained on the demo
 * corpus. Before writing, it encodes the vocabulary file's check texts
 * with kvchain's tokenizer and stops unless the ids match the ones
 * mkvocab.py computed, so the trainer's and the engine's tokenizations
 * agree.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testmodel.h"
#include "tokenizer.h"

/* The vocabulary file's arrays, in the form struct tok_spec points to. */
struct vocab_file {
	json_t *root;
	struct tok_spec spec;
	const char **tokens;
	uint32_t *token_lens;
	int32_t *types;
	const char **merges;
	uint32_t *merge_lens;
};

static void usage(FILE *out)
{
	fprintf(out,
"usage: mkbase --vocab VOCAB.json -o OUT.gguf [options]\n"
"Writes a llama GGUF model with seeded random F32 weights and the byte-level\n"
"BPE vocabulary of VOCAB.json (written by models/mkvocab.py), after checking\n"
"that kvchain's tokenizer encodes the file's check texts to its ids.\n"
"\n"
"  -v, --vocab FILE      vocabulary JSON file (required)\n"
"  -o, --output FILE     GGUF file to write (required)\n"
"      --dim N           embedding length d_model (default 256)\n"
"      --layers N        number of blocks (default 4)\n"
"      --heads N         attention heads (default 4)\n"
"      --kv-heads N      key/value heads (default 4)\n"
"      --ff N            feed-forward length (default 768)\n"
"      --ctx N           context_length key in tokens (default 1024)\n"
"      --seed N          seed of the random weights (default 1)\n"
"  -h, --help            show this help\n");
}

/* Parses a positive decimal @s for @flag into *out. Returns 0 or -1. */
static int parse_u32(const char *flag, const char *s, uint32_t *out)
{
	unsigned long long v;
	char *end;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *end || !v || v > UINT32_MAX || *s == '-') {
		fprintf(stderr, "mkbase: invalid value '%s' for %s: expected a positive integer\n",
			s, flag);
		return -1;
	}
	*out = (uint32_t)v;
	return 0;
}

/* Reads the strings of array @key of @root into @strs and @lens, each
 * allocated with room for *n entries. Returns 0 or -1 after a message. */
static int read_strings(const char *path, json_t *root, const char *key,
			const char ***strs, uint32_t **lens, uint32_t *n)
{
	json_t *arr = json_object_get(root, key), *v;
	size_t i;

	if (!json_is_array(arr) || json_array_size(arr) > UINT32_MAX) {
		fprintf(stderr, "mkbase: %s: \"%s\" is missing or not an array\n",
			path, key);
		return -1;
	}
	*n = (uint32_t)json_array_size(arr);
	*strs = calloc(*n ? *n : 1, sizeof(**strs));
	*lens = calloc(*n ? *n : 1, sizeof(**lens));
	if (!*strs || !*lens) {
		fprintf(stderr, "mkbase: out of memory\n");
		return -1;
	}
	json_array_foreach(arr, i, v) {
		if (!json_is_string(v) || json_string_length(v) > UINT32_MAX) {
			fprintf(stderr, "mkbase: %s: %s[%zu] is not a string\n",
				path, key, i);
			return -1;
		}
		(*strs)[i] = json_string_value(v);
		(*lens)[i] = (uint32_t)json_string_length(v);
	}
	return 0;
}

/* Reads integer @key of @root into *out, which must lie in [0, @limit). */
static int read_id(const char *path, json_t *root, const char *key,
		   uint32_t limit, int32_t *out)
{
	json_t *v = json_object_get(root, key);

	if (!json_is_integer(v) || json_integer_value(v) < 0 ||
	    json_integer_value(v) >= (json_int_t)limit) {
		fprintf(stderr, "mkbase: %s: \"%s\" is missing or not a token id below %u\n",
			path, key, limit);
		return -1;
	}
	*out = (int32_t)json_integer_value(v);
	return 0;
}

static int read_types(const char *path, struct vocab_file *vf)
{
	json_t *arr = json_object_get(vf->root, "types"), *v;
	size_t i;

	if (!json_is_array(arr) ||
	    json_array_size(arr) != vf->spec.n_vocab) {
		fprintf(stderr, "mkbase: %s: \"types\" is missing or does not have one entry per token (%u)\n",
			path, vf->spec.n_vocab);
		return -1;
	}
	vf->types = calloc(vf->spec.n_vocab, sizeof(*vf->types));
	if (!vf->types) {
		fprintf(stderr, "mkbase: out of memory\n");
		return -1;
	}
	json_array_foreach(arr, i, v) {
		json_int_t t = json_integer_value(v);

		if (!json_is_integer(v) || t < TOK_TYPE_NORMAL ||
		    t > TOK_TYPE_BYTE) {
			fprintf(stderr, "mkbase: %s: types[%zu] is not a token type 1 to 6\n",
				path, i);
			return -1;
		}
		vf->types[i] = (int32_t)t;
	}
	return 0;
}

static void vocab_free(struct vocab_file *vf)
{
	free(vf->tokens);
	free(vf->token_lens);
	free(vf->types);
	free(vf->merges);
	free(vf->merge_lens);
	json_decref(vf->root);
}

/* Loads @path into @vf. Returns 0, or -1 after printing a message. */
static int vocab_load(const char *path, struct vocab_file *vf)
{
	json_error_t jerr;
	json_t *model, *pre;
	uint32_t n;

	memset(vf, 0, sizeof(*vf));
	vf->root = json_load_file(path, 0, &jerr);
	if (!vf->root) {
		if (jerr.line > 0)
			fprintf(stderr, "mkbase: %s:%d: %s\n", path, jerr.line,
				jerr.text);
		else
			fprintf(stderr, "mkbase: %s\n", jerr.text);
		return -1;
	}
	model = json_object_get(vf->root, "model");
	pre = json_object_get(vf->root, "pre");
	if (!json_is_string(model) || strcmp(json_string_value(model), "gpt2") ||
	    !json_is_string(pre) || strcmp(json_string_value(pre), "default")) {
		fprintf(stderr, "mkbase: %s: expected \"model\": \"gpt2\" and \"pre\": \"default\", the only kind mkvocab.py writes\n",
			path);
		return -1;
	}
	if (read_strings(path, vf->root, "tokens", &vf->tokens,
			 &vf->token_lens, &vf->spec.n_vocab) ||
	    read_strings(path, vf->root, "merges", &vf->merges,
			 &vf->merge_lens, &n) ||
	    read_types(path, vf))
		return -1;
	vf->spec.kind = TOK_KIND_BPE;
	vf->spec.pre = TOK_PRE_GPT2;
	vf->spec.tokens = vf->tokens;
	vf->spec.token_lens = vf->token_lens;
	vf->spec.types = vf->types;
	vf->spec.n_merges = n;
	vf->spec.merges = vf->merges;
	vf->spec.merge_lens = vf->merge_lens;
	/* Pretraining feeds every text after BOS, so a plain prompt to
	 * kvchain-run should start with one too. */
	vf->spec.add_bos = true;
	vf->spec.unk_id = -1;
	vf->spec.pad_id = -1;
	if (read_id(path, vf->root, "bos", vf->spec.n_vocab, &vf->spec.bos_id) ||
	    read_id(path, vf->root, "eos", vf->spec.n_vocab, &vf->spec.eos_id))
		return -1;
	return 0;
}

/* Encodes one check's text and compares with its ids. Returns 0 if they
 * match, or -1 after printing where they differ. */
static int check_one(const char *path, const struct tokenizer *tok,
		     size_t index, json_t *check)
{
	json_t *text = json_object_get(check, "text");
	json_t *want = json_object_get(check, "ids");
	size_t n_want, i;
	int32_t *ids;
	int n, ret = -1;

	if (!json_is_string(text) || !json_is_array(want)) {
		fprintf(stderr, "mkbase: %s: checks[%zu] needs a string \"text\" and an array \"ids\"\n",
			path, index);
		return -1;
	}
	n_want = json_array_size(want);
	n = tok_encode(tok, json_string_value(text), json_string_length(text),
		       0, NULL, 0);
	if (n < 0) {
		fprintf(stderr, "mkbase: %s: checks[%zu]: the tokenizer failed: %s\n",
			path, index, strerror(-n));
		return -1;
	}
	ids = calloc((size_t)n + 1, sizeof(*ids));
	if (!ids) {
		fprintf(stderr, "mkbase: out of memory\n");
		return -1;
	}
	tok_encode(tok, json_string_value(text), json_string_length(text), 0,
		   ids, (size_t)n);
	for (i = 0; i < n_want && i < (size_t)n; i++)
		if (json_integer_value(json_array_get(want, i)) != ids[i])
			break;
	if (i == n_want && i == (size_t)n) {
		ret = 0;
	} else {
		fprintf(stderr, "mkbase: %s: checks[%zu]: the engine's tokens differ from mkvocab.py's at token %zu (%d tokens against %zu) in \"%s\"\n",
			path, index, i, n, n_want, json_string_value(text));
	}
	free(ids);
	return ret;
}

static int run_checks(const char *path, const struct vocab_file *vf)
{
	json_t *checks = json_object_get(vf->root, "checks"), *c;
	struct tokenizer *tok;
	char err[256];
	size_t i;
	int ret = 0;

	if (!json_is_array(checks) || !json_array_size(checks)) {
		fprintf(stderr, "mkbase: %s: \"checks\" is missing or empty\n",
			path);
		return -1;
	}
	if (tok_create(&vf->spec, &tok, err, sizeof(err))) {
		fprintf(stderr, "mkbase: %s: invalid vocabulary: %s\n", path,
			err);
		return -1;
	}
	json_array_foreach(checks, i, c)
		if (check_one(path, tok, i, c))
			ret = -1;
	tok_free(tok);
	return ret;
}

enum {
	OPT_DIM = 256, OPT_LAYERS, OPT_HEADS, OPT_KV_HEADS, OPT_FF, OPT_CTX,
	OPT_SEED,
};

static int parse_args(int argc, char **argv, struct testmodel_opts *o,
		      const char **vocab, const char **out)
{
	static const struct option longopts[] = {
		{ "vocab", required_argument, NULL, 'v' },
		{ "output", required_argument, NULL, 'o' },
		{ "dim", required_argument, NULL, OPT_DIM },
		{ "layers", required_argument, NULL, OPT_LAYERS },
		{ "heads", required_argument, NULL, OPT_HEADS },
		{ "kv-heads", required_argument, NULL, OPT_KV_HEADS },
		{ "ff", required_argument, NULL, OPT_FF },
		{ "ctx", required_argument, NULL, OPT_CTX },
		{ "seed", required_argument, NULL, OPT_SEED },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	uint32_t seed;
	int c, bad = 0;

	while ((c = getopt_long(argc, argv, "v:o:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'v':
			*vocab = optarg;
			break;
		case 'o':
			*out = optarg;
			break;
		case OPT_DIM:
			bad |= parse_u32("--dim", optarg, &o->d_model);
			break;
		case OPT_LAYERS:
			bad |= parse_u32("--layers", optarg, &o->n_layers);
			break;
		case OPT_HEADS:
			bad |= parse_u32("--heads", optarg, &o->n_heads);
			break;
		case OPT_KV_HEADS:
			bad |= parse_u32("--kv-heads", optarg, &o->n_kv_heads);
			break;
		case OPT_FF:
			bad |= parse_u32("--ff", optarg, &o->d_ff);
			break;
		case OPT_CTX:
			bad |= parse_u32("--ctx", optarg, &o->n_ctx);
			break;
		case OPT_SEED:
			bad |= parse_u32("--seed", optarg, &seed);
			o->seed = seed;
			break;
		case 'h':
			usage(stdout);
			return 1;
		default:
			usage(stderr);
			return -1;
		}
	}
	if (bad)
		return -1;
	if (optind < argc || !*vocab || !*out) {
		fprintf(stderr, "mkbase: %s\n", optind < argc ?
			"unexpected argument; see --help" :
			"--vocab and --output are required; see --help");
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct testmodel_opts o;
	struct vocab_file vf;
	const char *vocab_path = NULL, *out = NULL;
	char err[256];
	int ret;

	testmodel_defaults(&o);
	o.tok_kind = TOK_KIND_BPE;
	o.d_model = 256;
	o.n_layers = 4;
	o.n_heads = 4;
	o.n_kv_heads = 4;
	o.d_ff = 768;
	o.n_ctx = 1024;
	ret = parse_args(argc, argv, &o, &vocab_path, &out);
	if (ret)
		return ret > 0 ? 0 : 2;

	if (vocab_load(vocab_path, &vf) || run_checks(vocab_path, &vf)) {
		vocab_free(&vf);
		return 1;
	}
	ret = testmodel_write_vocab(out, &o, &vf.spec, err, sizeof(err));
	vocab_free(&vf);
	if (ret) {
		fprintf(stderr, "mkbase: %s\n", err);
		return 1;
	}
	return 0;
}
