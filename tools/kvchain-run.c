/* SPDX-License-Identifier: MIT */
/*
 * kvchain-run - generates text from a GGUF model in one process, without
 * the daemon: loads the model, encodes the prompt, prefills, samples, and
 * prints the text followed by prefill and decode speeds on stderr.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "generate.h"
#include "kernels.h"
#include "model.h"
#include "tokenizer.h"

#define MAX_STOPS 16

struct options {
	const char *model_path;
	const char *prompt;
	const char *logits_path;
	uint32_t n_predict;
	uint32_t n_ctx;
	int n_threads;
	enum kern_type kv_type;
	bool parse_special;
	bool no_bos;
	bool print_ids;
	bool quiet;
	struct gen_params gen;
	const char *stop_strings[MAX_STOPS];
	int32_t stop_tokens[MAX_STOPS];
};

static void usage(FILE *out)
{
	fprintf(out,
"usage: kvchain-run -m MODEL.gguf -p PROMPT [options]\n"
"Generates text from a GGUF llama or qwen2 model in this process.\n"
"\n"
"  -m, --model FILE      GGUF model file\n"
"  -p, --prompt TEXT     prompt text\n"
"  -n, --tokens N        maximum tokens to generate, 1 or more (default 128)\n"
"  -t, --threads N       worker threads, 1 to 256 (default 2)\n"
"  -c, --ctx N           context length in tokens; 0 or absent: the model's,\n"
"                        at most 4096\n"
"      --temp F          sampling temperature; 0 is greedy (default 0)\n"
"      --top-k N         keep the N most likely tokens; 0 keeps all\n"
"      --top-p F         keep the smallest set with probability >= F\n"
"      --min-p F         drop tokens below F times the best probability\n"
"      --seed N          random seed (default 0)\n"
"      --stop TEXT       stop before TEXT (repeatable, up to %d)\n"
"      --stop-token ID   stop at token ID (repeatable, up to %d)\n"
"      --ignore-eos      keep generating past the end-of-sequence token\n"
"      --kv-type T       KV cache element type: f16 (default), f32, q8_0;\n"
"                        q8_0 needs a head size that is a multiple of 32\n"
"      --special         recognise special-token text in the prompt\n"
"      --no-bos          do not add BOS even if the model asks for it\n"
"      --print-ids       print prompt and generated token ids on stderr\n"
"      --logits FILE     write every logits row sampled from, one row a line\n"
"  -q, --quiet           print only the generated text\n"
"  -h, --help            show this help\n"
"\n"
"The environment variable KVCHAIN_ISA (scalar, avx2, avx512) caps the\n"
"instruction set the kernels use.\n", MAX_STOPS, MAX_STOPS);
}

static int parse_uint(const char *flag, const char *s, unsigned long min,
		      unsigned long max, unsigned long *out)
{
	char *end;

	errno = 0;
	*out = strtoul(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || *out < min ||
	    *out > max) {
		fprintf(stderr,
			"kvchain-run: invalid value '%s' for %s: expected an "
			"integer from %lu to %lu\n", s, flag, min, max);
		return -1;
	}
	return 0;
}

/* Parses a finite number in [min, max]. */
static int parse_float(const char *flag, const char *s, float min, float max,
		       float *out)
{
	char *end;

	errno = 0;
	*out = strtof(s, &end);
	if (errno || end == s || *end || !(*out >= min && *out <= max)) {
		fprintf(stderr,
			"kvchain-run: invalid value '%s' for %s: expected a "
			"number from %g to %g\n", s, flag, min, max);
		return -1;
	}
	return 0;
}

enum {
	OPT_TEMP = 256, OPT_TOP_K, OPT_TOP_P, OPT_MIN_P, OPT_SEED, OPT_STOP,
	OPT_STOP_TOKEN, OPT_IGNORE_EOS, OPT_KV_TYPE, OPT_SPECIAL, OPT_NO_BOS,
	OPT_PRINT_IDS, OPT_LOGITS,
};

static int parse_args(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "prompt", required_argument, NULL, 'p' },
		{ "tokens", required_argument, NULL, 'n' },
		{ "threads", required_argument, NULL, 't' },
		{ "ctx", required_argument, NULL, 'c' },
		{ "temp", required_argument, NULL, OPT_TEMP },
		{ "top-k", required_argument, NULL, OPT_TOP_K },
		{ "top-p", required_argument, NULL, OPT_TOP_P },
		{ "min-p", required_argument, NULL, OPT_MIN_P },
		{ "seed", required_argument, NULL, OPT_SEED },
		{ "stop", required_argument, NULL, OPT_STOP },
		{ "stop-token", required_argument, NULL, OPT_STOP_TOKEN },
		{ "ignore-eos", no_argument, NULL, OPT_IGNORE_EOS },
		{ "kv-type", required_argument, NULL, OPT_KV_TYPE },
		{ "special", no_argument, NULL, OPT_SPECIAL },
		{ "no-bos", no_argument, NULL, OPT_NO_BOS },
		{ "print-ids", no_argument, NULL, OPT_PRINT_IDS },
		{ "logits", required_argument, NULL, OPT_LOGITS },
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct sampler_params *sp = &o->gen.sampling;
	unsigned long v;
	int c;

	while ((c = getopt_long(argc, argv, "m:p:n:t:c:qh", longopts,
				NULL)) != -1) {
		switch (c) {
		case 'm':
			o->model_path = optarg;
			break;
		case 'p':
			o->prompt = optarg;
			break;
		case 'n':
			if (parse_uint("--tokens", optarg, 1, 1u << 20, &v))
				return -1;
			o->n_predict = (uint32_t)v;
			break;
		case 't':
			if (parse_uint("--threads", optarg, 1, 256, &v))
				return -1;
			o->n_threads = (int)v;
			break;
		case 'c':
			if (parse_uint("--ctx", optarg, 0, 1u << 20, &v))
				return -1;
			o->n_ctx = (uint32_t)v;
			break;
		case OPT_TEMP:
			if (parse_float("--temp", optarg, 0.0f, 100.0f,
					&sp->temperature))
				return -1;
			break;
		case OPT_TOP_K:
			if (parse_uint("--top-k", optarg, 0, UINT32_MAX, &v))
				return -1;
			sp->top_k = (uint32_t)v;
			break;
		case OPT_TOP_P:
			if (parse_float("--top-p", optarg, 0.0f, 1.0f, &sp->top_p))
				return -1;
			break;
		case OPT_MIN_P:
			if (parse_float("--min-p", optarg, 0.0f, 1.0f, &sp->min_p))
				return -1;
			break;
		case OPT_SEED:
			if (parse_uint("--seed", optarg, 0, ULONG_MAX, &v))
				return -1;
			sp->seed = v;
			break;
		case OPT_STOP:
			if (o->gen.n_stop_strings == MAX_STOPS) {
				fprintf(stderr, "kvchain-run: more than %d --stop options\n", MAX_STOPS);
				return -1;
			}
			o->stop_strings[o->gen.n_stop_strings++] = optarg;
			break;
		case OPT_STOP_TOKEN:
			if (o->gen.n_stop_tokens == MAX_STOPS) {
				fprintf(stderr, "kvchain-run: more than %d --stop-token options\n", MAX_STOPS);
				return -1;
			}
			if (parse_uint("--stop-token", optarg, 0, INT32_MAX, &v))
				return -1;
			o->stop_tokens[o->gen.n_stop_tokens++] = (int32_t)v;
			break;
		case OPT_IGNORE_EOS:
			o->gen.ignore_eos = true;
			break;
		case OPT_KV_TYPE:
			if (!strcasecmp(optarg, "f16")) {
				o->kv_type = KERN_TYPE_F16;
			} else if (!strcasecmp(optarg, "f32")) {
				o->kv_type = KERN_TYPE_F32;
			} else if (!strcasecmp(optarg, "q8_0")) {
				o->kv_type = KERN_TYPE_Q8_0;
			} else {
				fprintf(stderr, "kvchain-run: invalid --kv-type '%s': expected f16, f32 or q8_0\n", optarg);
				return -1;
			}
			break;
		case OPT_SPECIAL:
			o->parse_special = true;
			break;
		case OPT_NO_BOS:
			o->no_bos = true;
			break;
		case OPT_PRINT_IDS:
			o->print_ids = true;
			break;
		case OPT_LOGITS:
			o->logits_path = optarg;
			break;
		case 'q':
			o->quiet = true;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			/* getopt has named the option; point to the help */
			fprintf(stderr, "kvchain-run: see kvchain-run --help\n");
			return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "kvchain-run: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	if (!o->model_path || !o->prompt) {
		fprintf(stderr, "kvchain-run: both --model and --prompt are required (see --help)\n");
		return -1;
	}
	o->gen.stop_strings = o->stop_strings;
	o->gen.stop_tokens = o->stop_tokens;
	o->gen.max_tokens = o->n_predict;
	return 0;
}

/* Encodes the prompt, with BOS when the model metadata requests it. */
static int encode_prompt(const struct model *m, const struct options *o,
			 int32_t **ids_out)
{
	unsigned flags = o->no_bos ? 0 : TOK_ADD_SPECIAL;
	size_t len = strlen(o->prompt);
	int32_t *ids;
	int n;

	if (o->parse_special)
		flags |= TOK_PARSE_SPECIAL;
	n = tok_encode(m->tok, o->prompt, len, flags, NULL, 0);
	if (n < 0)
		return n;
	ids = malloc(((size_t)n + 1) * sizeof(*ids));
	if (!ids)
		return -ENOMEM;
	n = tok_encode(m->tok, o->prompt, len, flags, ids, (size_t)n + 1);
	*ids_out = ids;
	return n;
}

static int print_text(void *arg, int32_t id, const char *text, size_t len)
{
	fwrite(text, 1, len, stdout);
	fflush(stdout);
	return 0;
}

static void write_logits(void *arg, const float *logits, uint32_t n)
{
	FILE *f = arg;
	uint32_t i;

	for (i = 0; i < n; i++)
		fprintf(f, "%s%.9g", i ? " " : "", logits[i]);
	fputc('\n', f);
}

static const char *stop_reason_name(enum gen_stop_reason r)
{
	switch (r) {
	case GEN_STOP_MAX_TOKENS:
		return "token limit";
	case GEN_STOP_EOS:
		return "end of sequence";
	case GEN_STOP_TOKEN:
		return "stop token";
	case GEN_STOP_STRING:
		return "stop string";
	case GEN_STOP_CALLBACK:
		return "callback";
	case GEN_STOP_CONTEXT:
		return "context full";
	}
	return "unknown";
}

static void print_ids(const char *what, const int32_t *ids, int n)
{
	int i;

	fprintf(stderr, "%s:", what);
	for (i = 0; i < n; i++)
		fprintf(stderr, " %" PRId32, ids[i]);
	fputc('\n', stderr);
}

/* Records generated ids for --print-ids. */
struct id_log {
	int32_t ids[4096];
	int n;
};

static int print_and_log(void *arg, int32_t id, const char *text, size_t len)
{
	struct id_log *log = arg;

	if (id >= 0 && log->n < (int)(sizeof(log->ids) / sizeof(log->ids[0])))
		log->ids[log->n++] = id;
	return print_text(NULL, id, text, len);
}

int main(int argc, char **argv)
{
	struct options o = {
		.n_predict = 128, .n_threads = 2, .kv_type = KERN_TYPE_F16,
	};
	struct kv_cache cache = { 0 };
	struct forward_ctx *ctx = NULL;
	struct kern_pool *pool = NULL;
	struct model *m = NULL;
	struct gen_stats stats;
	static struct id_log log;
	FILE *logits_file = NULL;
	int32_t *prompt = NULL;
	char err[512];
	int n_prompt, rc, status = 1;
	uint32_t n_ctx;

	sampler_params_default(&o.gen.sampling);
	opterr = 1;
	argv[0] = "kvchain-run";	/* getopt's messages name the program */
	if (parse_args(argc, argv, &o))
		return 1;
	if (kern_init() < 0)
		fprintf(stderr, "kvchain-run: warning: KVCHAIN_ISA='%s' is not an instruction set this CPU supports (scalar, avx2, avx512); using %s\n",
			getenv("KVCHAIN_ISA"), kern_isa_name(kern_isa_current()));
	if (o.n_threads > sysconf(_SC_NPROCESSORS_ONLN))
		fprintf(stderr, "kvchain-run: warning: %d threads on %ld online CPUs will run slower than one thread per CPU\n",
			o.n_threads, sysconf(_SC_NPROCESSORS_ONLN));

	rc = model_load(o.model_path, &m, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "kvchain-run: %s\n", err);
		return 1;
	}

	n_prompt = encode_prompt(m, &o, &prompt);
	if (n_prompt < 0) {
		fprintf(stderr, "kvchain-run: cannot encode the prompt: %s\n", strerror(-n_prompt));
		goto out;
	}
	if (n_prompt == 0) {
		fprintf(stderr, "kvchain-run: the prompt encodes to no tokens; give a non-empty prompt\n");
		goto out;
	}
	n_ctx = o.n_ctx ? o.n_ctx : (m->cfg.n_ctx_train < 4096 ? m->cfg.n_ctx_train : 4096);
	if ((uint32_t)n_prompt >= n_ctx) {
		fprintf(stderr, "kvchain-run: the prompt has %d tokens, which leaves no room to generate in a context of %" PRIu32 "; raise --ctx\n",
			n_prompt, n_ctx);
		goto out;
	}
	if (o.print_ids)
		print_ids("prompt ids", prompt, n_prompt);

	rc = kv_cache_init(&cache, m, n_ctx, o.kv_type);
	if (rc < 0) {
		fprintf(stderr, "kvchain-run: cannot allocate a %s KV cache of %" PRIu32 " positions: %s\n",
			kern_type_name(o.kv_type), n_ctx,
			rc == -EINVAL ? "the type needs a head size that is a multiple of 32; use --kv-type f16" : strerror(-rc));
		goto out;
	}
	pool = kern_pool_create(o.n_threads);
	ctx = forward_ctx_create(m, 64, n_ctx, pool);
	if (!pool || !ctx) {
		fprintf(stderr, "kvchain-run: out of memory for the forward pass\n");
		goto out;
	}
	if (o.logits_path) {
		logits_file = fopen(o.logits_path, "w");
		if (!logits_file) {
			fprintf(stderr, "kvchain-run: cannot write %s: %s\n", o.logits_path, strerror(errno));
			goto out;
		}
		o.gen.on_logits = write_logits;
		o.gen.logits_arg = logits_file;
	}

	rc = generate(ctx, &cache, m, prompt, (uint32_t)n_prompt, &o.gen,
		      print_and_log, &log, &stats);
	putchar('\n');
	fflush(stdout);	/* before the statistics on stderr */
	if (rc < 0) {
		fprintf(stderr, "kvchain-run: generation failed: %s\n", strerror(-rc));
		goto out;
	}
	if (o.print_ids)
		print_ids("generated ids", log.ids, log.n);
	if (!o.quiet) {
		fprintf(stderr,
			"prefill: %" PRIu32 " tokens in %.3f s, %.1f tokens/s\n",
			stats.n_prompt, stats.prefill_seconds,
			stats.n_prompt / (stats.prefill_seconds > 0 ? stats.prefill_seconds : 1e-9));
		fprintf(stderr,
			"decode: %" PRIu32 " tokens in %.3f s, %.1f tokens/s (stopped: %s; %d threads, %s kernels)\n",
			stats.n_generated, stats.decode_seconds,
			stats.n_generated / (stats.decode_seconds > 0 ? stats.decode_seconds : 1e-9),
			stop_reason_name(stats.stop), o.n_threads,
			kern_isa_name(kern_isa_current()));
	}
	status = 0;

out:
	if (logits_file && fclose(logits_file) != 0 && status == 0) {
		fprintf(stderr, "kvchain-run: writing %s failed\n", o.logits_path);
		status = 1;
	}
	forward_ctx_free(ctx);
	kern_pool_destroy(pool);
	kv_cache_free(&cache);
	free(prompt);
	model_free(m);
	return status;
}
