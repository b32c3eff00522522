/* SPDX-License-Identifier: MIT */
/*
 * test-tune-cli.c - the parts of kvchain-tune around the training pass:
 * data files in both formats and their error messages, span framing and
 * training layouts, the answer metrics, the optimiser and checkpoints.
 * Last, "kvchain-tune train" runs in-process and the engine loads its
 * prompts, whose logits must match the trainer's own forward pass.
 */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cunit-main.h"
#include "commands.h"
#include "data.h"
#include "kvstore.h"
#include "metrics.h"
#include "model.h"
#include "optim.h"
#include "prompt.h"
#include "segment.h"
#include "testmodel.h"
#include "tokenizer.h"
#include "train.h"

/*
 * Engine logits against tune_forward with an F32 KV store differ only by
 * rounding and summation order, up to 3.2e-6 in test-tune.c on the same
 * kind of model. A prompt row off by one position or a wrong framing
 * moves logits by far more than 1e-4.
 */
#define LOGIT_TOL 1e-4
#define N_CTX 128
#define BLOCK_TOKENS 4

static char model_path[] = "/tmp/kvchain-test-tune-cli-XXXXXX";
static char work_dir[] = "/tmp/kvchain-test-tune-cli-dir-XXXXXX";
static struct model *model;

/* ---- Data files ---------------------------------------------------------- */

static int parse(const char *text, struct tune_data *d, char *err,
		 size_t errlen)
{
	err[0] = '\0';
	return tune_data_parse(text, strlen(text), "t.json", d, err, errlen);
}

static void test_data_lines(void)
{
	const char *text =
		"{\"O_B\": \"b1\", \"I_A\": \"ia\", \"I_ALL\": \"q\", \"O_A\": \"a1\"}\n"
		"\n"
		"{\"I_ALL\": \"q2\", \"I_A\": \"ia2\", \"O_A\": \"a2\", \"O_B\": \"b2\"}\n";
	struct tune_data d;
	char err[256];

	CU_ASSERT_EQUAL_FATAL(parse(text, &d, err, sizeof(err)), 0);
	CU_ASSERT_FALSE(d.multi_round);
	CU_ASSERT_EQUAL(d.n_stages, 2);
	CU_ASSERT_EQUAL(d.n_examples, 2);
	CU_ASSERT_EQUAL(d.n_keys, 4);
	/* layout order, whatever the order in the file */
	CU_ASSERT_STRING_EQUAL(d.keys[0].name, "I_ALL");
	CU_ASSERT_STRING_EQUAL(d.keys[1].name, "I_A");
	CU_ASSERT_STRING_EQUAL(d.keys[2].name, "O_A");
	CU_ASSERT_STRING_EQUAL(d.keys[3].name, "O_B");
	CU_ASSERT_EQUAL(d.keys[3].kind, SPAN_STAGE_OUTPUT);
	CU_ASSERT_EQUAL(d.keys[3].stage, 1);
	CU_ASSERT_EQUAL(d.examples[0].line, 1);
	CU_ASSERT_EQUAL(d.examples[1].line, 3);
	CU_ASSERT_STRING_EQUAL(d.examples[0].text[3], "b1");
	CU_ASSERT_STRING_EQUAL(d.examples[1].text[1], "ia2");
	tune_data_free(&d);
}

static void test_data_array(void)
{
	const char *text =
		"[\n"
		"  {\"I_ALL\": \"q, with [brackets] and \\\"{\\\"\",\n"
		"   \"O_A\": \"a\"},\n"
		"  {\"I_ALL\": \"q\", \"O_A\": \"b\"}, {\"I_ALL\": \"r\",\n"
		"   \"O_A\": \"c\"}\n"
		"]\n";
	struct tune_data d;
	char err[256];

	CU_ASSERT_EQUAL_FATAL(parse(text, &d, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(d.n_examples, 3);
	CU_ASSERT_EQUAL(d.n_stages, 1);
	CU_ASSERT_EQUAL(d.examples[0].line, 2);
	CU_ASSERT_EQUAL(d.examples[1].line, 4);
	CU_ASSERT_EQUAL(d.examples[2].line, 4);
	CU_ASSERT_STRING_EQUAL(d.examples[0].text[0],
			       "q, with [brackets] and \"{\"");
	tune_data_free(&d);
}

static void test_data_multi_round(void)
{
	const char *text =
		"{\"O_2A\": \"r2\", \"O_1B\": \"m1\", \"I_ALL\": \"q\", "
		"\"O_1A\": \"r1\", \"O_2B\": \"m2\", \"O_3A\": \"r3\"}\n";
	struct tune_data d;
	char err[256];

	CU_ASSERT_EQUAL_FATAL(parse(text, &d, err, sizeof(err)), 0);
	CU_ASSERT_TRUE(d.multi_round);
	CU_ASSERT_EQUAL(d.n_stages, 2);
	CU_ASSERT_EQUAL(d.n_rounds, 3);
	CU_ASSERT_STRING_EQUAL(d.keys[0].name, "I_ALL");
	CU_ASSERT_STRING_EQUAL(d.keys[1].name, "O_1A");
	CU_ASSERT_STRING_EQUAL(d.keys[2].name, "O_1B");
	CU_ASSERT_STRING_EQUAL(d.keys[3].name, "O_2A");
	CU_ASSERT_STRING_EQUAL(d.keys[4].name, "O_2B");
	CU_ASSERT_STRING_EQUAL(d.keys[5].name, "O_3A");
	CU_ASSERT_EQUAL(d.keys[4].round, 2);
	CU_ASSERT_EQUAL(d.keys[4].stage, 1);
	tune_data_free(&d);
}

/* Each bad file must fail with a message holding the expected text. */
static void test_data_errors(void)
{
	static const struct {
		const char *text;
		const char *message;
	} cases[] = {
		{ "{\"I_ALL\": \"q\", \"O_A\": \"a\", \"O_B\": \"b\"}\n"
		  "{\"I_ALL\": \"q\", \"O_A\": \"a\"}\n",
		  "t.json:2: missing key O_B" },
		{ "{\"I_ALL\": \"q\", \"O_A\": \"a\", \"answer\": \"b\"}\n",
		  "t.json:1: unknown key \"answer\"" },
		{ "{\"O_A\": \"a\"}\n{\"O_A\": \"a\"}\n{\"O_A\": \"a\",}\n",
		  "t.json:3: invalid JSON" },
		{ "[\n{\"O_A\": \"a\"},\n{\"O_A\": \"a\"\n]\n",
		  "t.json:4: invalid JSON" },
		{ "{\"O_A\": \"a\"}\n{\"O_A\": \"\"}\n",
		  "t.json:2: key O_A: empty output" },
		{ "{\"O_A\": 5}\n", "t.json:1: key O_A: value is not a string" },
		{ "{\"O_A\": \"a\"}\n{\"O_A\": \"a\", \"I_A\": \"x\"}\n",
		  "t.json:2: unexpected key I_A" },
		{ "{\"O_A\": \"a\", \"O_C\": \"c\"}\n",
		  "t.json:1: missing key O_B" },
		{ "{\"O_1A\": \"a\", \"O_2B\": \"a\", \"O_1B\": \"b\"}\n",
		  "t.json:1: missing key O_2A" },
		{ "{\"O_A\": \"a\", \"O_1B\": \"b\"}\n",
		  "t.json:1: key O_A: single-round output keys" },
		{ "{\"O_A\": \"a\", \"I_B\": \"x\"}\n",
		  "t.json:1: key I_B: stage B has no output" },
		{ "{\"O_A\": \"a\", \"O_A\": \"b\"}\n", "t.json:1: invalid JSON" },
		{ "[\n{\"O_A\": \"a\"},\n[1]\n]\n",
		  "t.json:3: example 1 is not a JSON object" },
		{ "{\"I_ALL\": \"q\"}\n", "t.json:1: no output key" },
		{ "\n\n", "t.json: no examples" },
	};
	struct tune_data d;
	char err[256];
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int rc = parse(cases[i].text, &d, err, sizeof(err));

		CU_ASSERT(rc < 0);
		if (!strstr(err, cases[i].message))
			printf("\n    case %zu: got \"%s\", expected \"%s\"", i,
			       err, cases[i].message);
		CU_ASSERT_PTR_NOT_NULL(strstr(err, cases[i].message));
	}
}

static void test_data_missing_file(void)
{
	struct tune_data d;
	char err[256] = "";

	CU_ASSERT_EQUAL(tune_data_load("/nonexistent/t.json", &d, err,
				       sizeof(err)), -ENOENT);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "/nonexistent/t.json"));
}

/* ---- Framing and layouts ------------------------------------------------ */

/* An engine over an F32 store of @n_blocks blocks. */
struct fixture {
	void *mem;
	struct kv_store *store;
	struct engine *eng;
};

static int fixture_init(struct fixture *f, uint32_t n_blocks)
{
	size_t bytes = kv_store_block_bytes(model, KERN_TYPE_F32,
					    BLOCK_TOKENS) * n_blocks;

	memset(f, 0, sizeof(*f));
	f->mem = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
	if (!f->mem)
		return -ENOMEM;
	if (kv_store_create(f->mem, bytes, model, KERN_TYPE_F32, BLOCK_TOKENS,
			    &f->store) < 0)
		return -EINVAL;
	f->eng = engine_create(model, f->store, NULL, 8, N_CTX);
	return f->eng ? 0 : -ENOMEM;
}

static void fixture_free(struct fixture *f)
{
	engine_destroy(f->eng);
	kv_store_destroy(f->store);
	free(f->mem);
}

static const char chain_text[] =
	"{\"I_ALL\": \"the world\", \"I_A\": \"hello 123\", "
	"\"O_A\": \"hello\", \"I_B\": \"ing\", \"O_B\": \"world hello\"}\n";

static void test_layout_framing(void)
{
	const struct tokenizer *tok = model->tok;
	uint32_t rows[2] = { 3, 2 };
	struct tune_data d;
	struct tune_layout lay;
	struct fixture f;
	int32_t *ids, bos = tok_bos(tok), eos = tok_eos(tok);
	char err[256];
	int n;

	CU_ASSERT_EQUAL_FATAL(fixture_init(&f, 4), 0);
	CU_ASSERT_EQUAL_FATAL(parse(chain_text, &d, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(tune_data_tokenize(&d, f.eng, err, sizeof(err)),
			      0);

	/* an input is text + "\n", as the engine frames it */
	n = engine_encode_input(f.eng, "hello 123", 9, &ids);
	CU_ASSERT_EQUAL_FATAL(n, (int)d.examples[0].n_ids[1]);
	CU_ASSERT(memcmp(ids, d.examples[0].ids[1],
			 (size_t)n * sizeof(int32_t)) == 0);
	free(ids);

	/* an output is BOS + its own tokens, with no EOS */
	n = tok_encode(tok, "world hello", 11, 0, NULL, 0);
	CU_ASSERT_EQUAL(d.examples[0].n_ids[4], (uint32_t)n + 1);
	CU_ASSERT_EQUAL(d.examples[0].ids[4][0], bos);
	CU_ASSERT_NOT_EQUAL(d.examples[0].ids[4][n], eos);

	/* stage B: every slot, then I_ALL, I_A, O_A, I_B, O_B; loss on O_B */
	CU_ASSERT_EQUAL_FATAL(tune_data_layout(&d, &d.examples[0], rows, 1,
					       eos, &lay), 0);
	CU_ASSERT_EQUAL(lay.n_stages, 2);
	CU_ASSERT_EQUAL(lay.n_spans, 7);
	CU_ASSERT_EQUAL(lay.spans[2].pos0, 5);
	CU_ASSERT_EQUAL(lay.spans[2].kind, SPAN_SHARED_INPUT);
	CU_ASSERT_EQUAL(lay.spans[3].kind, SPAN_STAGE_INPUT);
	CU_ASSERT_EQUAL(lay.spans[3].stage, 0);
	CU_ASSERT_EQUAL(lay.spans[4].kind, SPAN_STAGE_OUTPUT);
	CU_ASSERT_FALSE(lay.spans[4].loss);
	CU_ASSERT_EQUAL(lay.spans[5].kind, SPAN_STAGE_INPUT);
	CU_ASSERT_EQUAL(lay.spans[5].stage, 1);
	CU_ASSERT_TRUE(lay.spans[6].loss);
	CU_ASSERT_EQUAL(lay.spans[6].stop_id, eos);
	tune_layout_free(&lay);

	/* stage A: the layout ends with O_A, the loss span */
	CU_ASSERT_EQUAL_FATAL(tune_data_layout(&d, &d.examples[0], rows, 0,
					       eos, &lay), 0);
	CU_ASSERT_EQUAL(lay.n_spans, 5);
	CU_ASSERT_TRUE(lay.spans[4].loss);
	CU_ASSERT_EQUAL(lay.spans[4].stop_id, eos);
	CU_ASSERT_EQUAL(lay.n_pos, lay.spans[4].pos0 + lay.spans[4].n);
	tune_layout_free(&lay);

	tune_data_free(&d);
	fixture_free(&f);
}

static void test_layout_multi_round(void)
{
	const char *text = "{\"I_ALL\": \"the\", \"O_1A\": \"hello\", "
			   "\"O_1B\": \"world\", \"O_2A\": \"ing\"}\n";
	uint32_t rows[2] = { 2, 2 }, s, n_loss = 0;
	struct tune_data d;
	struct tune_layout lay;
	struct fixture f;
	char err[256];

	CU_ASSERT_EQUAL_FATAL(fixture_init(&f, 4), 0);
	CU_ASSERT_EQUAL_FATAL(parse(text, &d, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(tune_data_tokenize(&d, f.eng, err, sizeof(err)),
			      0);
	CU_ASSERT_EQUAL_FATAL(tune_data_layout(&d, &d.examples[0], rows, -1,
					       tok_eos(model->tok), &lay), 0);
	CU_ASSERT_EQUAL(lay.n_spans, 6);
	for (s = 2; s < lay.n_spans; s++)
		n_loss += lay.spans[s].loss;
	CU_ASSERT_EQUAL(n_loss, 3);
	CU_ASSERT_EQUAL(lay.spans[5].stage, 0);
	CU_ASSERT_EQUAL(lay.spans[4].stage, 1);
	tune_layout_free(&lay);
	tune_data_free(&d);
	fixture_free(&f);
}

/* ---- Metrics -------------------------------------------------------------- */

static void test_metrics_normalize(void)
{
	const char *in = "  The Cat, an  APPLE!\tand a dog.";
	char out[64];
	size_t n = tune_normalize(in, strlen(in), out);

	CU_ASSERT_STRING_EQUAL(out, "cat apple and dog");
	CU_ASSERT_EQUAL(n, strlen("cat apple and dog"));
	n = tune_normalize("a the, an.", 10, out);
	CU_ASSERT_EQUAL(n, 0);
}

static void test_metrics_scores(void)
{
	/* normalised, "The cat sat." is "cat sat" against "cat sat down" */
	double f1 = tune_token_f1("The cat sat.", 12, "cat sat down", 12);

	CU_ASSERT_DOUBLE_EQUAL(f1, 0.8, 1e-12);
	CU_ASSERT_EQUAL(tune_exact_match("The cat sat.", 12, "cat sat", 7), 1);
	CU_ASSERT_EQUAL(tune_exact_match("cat sat", 7, "cat sat down", 12), 0);
	/* a repeated word counts once per occurrence in the reference */
	f1 = tune_token_f1("go go go", 8, "go", 2);
	CU_ASSERT_DOUBLE_EQUAL(f1, 0.5, 1e-12);
	CU_ASSERT_DOUBLE_EQUAL(tune_token_f1("", 0, "", 0), 1.0, 0.0);
	CU_ASSERT_DOUBLE_EQUAL(tune_token_f1("x", 1, "", 0), 0.0, 0.0);
	CU_ASSERT_DOUBLE_EQUAL(tune_token_f1("x", 1, "y", 1), 0.0, 0.0);
}

/* ---- Optimiser and checkpoints --------------------------------------------- */

static void test_optim_schedule(void)
{
	CU_ASSERT_DOUBLE_EQUAL(tune_lr_at(1.0, 0, 10, 2), 0.5, 1e-12);
	CU_ASSERT_DOUBLE_EQUAL(tune_lr_at(1.0, 1, 10, 2), 1.0, 1e-12);
	CU_ASSERT_DOUBLE_EQUAL(tune_lr_at(1.0, 2, 10, 2), 1.0, 1e-12);
	CU_ASSERT_DOUBLE_EQUAL(tune_lr_at(1.0, 6, 10, 2), 0.5, 1e-12);
	CU_ASSERT_DOUBLE_EQUAL(tune_lr_at(1.0, 9, 10, 2), 0.125, 1e-12);
	CU_ASSERT_DOUBLE_EQUAL(tune_lr_at(1.0, 0, 4, 0), 1.0, 1e-12);
}

static void test_optim_adamw(void)
{
	struct tune_adamw opt = { .lr = 0.1, .beta1 = 0.9, .beta2 = 0.999,
				  .eps = 1e-8 };
	float w[2] = { 1.0f, -1.0f };
	double m[2] = { 0 }, v[2] = { 0 }, g[2] = { 3.0, -0.5 };
	double norm;

	/* the first step moves each value by lr against its gradient's sign */
	tune_adamw_step(&opt, w, m, v, g, 2, 1, 0.1);
	CU_ASSERT_DOUBLE_EQUAL(w[0], 0.9, 1e-6);
	CU_ASSERT_DOUBLE_EQUAL(w[1], -0.9, 1e-6);
	CU_ASSERT_DOUBLE_EQUAL(m[0], 0.3, 1e-12);
	CU_ASSERT_DOUBLE_EQUAL(v[1], 0.001 * 0.25, 1e-12);

	/* decoupled weight decay shrinks w by lr * decay first */
	opt.weight_decay = 0.5;
	w[0] = 2.0f;
	m[0] = v[0] = 0.0;
	g[0] = 0.0;
	tune_adamw_step(&opt, w, m, v, g, 1, 1, 0.1);
	CU_ASSERT_DOUBLE_EQUAL(w[0], 1.9, 1e-6);

	g[0] = 3.0;
	g[1] = 4.0;
	norm = tune_clip_grad(g, 2, 1.0);
	CU_ASSERT_DOUBLE_EQUAL(norm, 5.0, 1e-12);
	CU_ASSERT_DOUBLE_EQUAL(g[0], 0.6, 1e-9);
	CU_ASSERT_DOUBLE_EQUAL(g[1], 0.8, 1e-9);
}

static void test_optim_checkpoint(void)
{
	float w[3] = { 1.5f, -2.0f, 0.25f };
	double m[3] = { 0.1, 0.2, 0.3 }, v[3] = { 1e-3, 2e-3, 3e-3 };
	struct tune_checkpoint ck = {
		.settings = 42, .stage = 1, .step = 7, .total = 9, .n = 3,
		.w = w, .m = m, .v = v,
	}, got;
	char path[512], err[256];
	FILE *f;

	tune_rng_seed(&ck.rng, 5);
	snprintf(path, sizeof(path), "%s/ck", work_dir);
	CU_ASSERT_EQUAL_FATAL(tune_checkpoint_save(path, &ck, err,
						   sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(tune_checkpoint_load(path, &got, err,
						   sizeof(err)), 0);
	CU_ASSERT_EQUAL(got.settings, 42);
	CU_ASSERT_EQUAL(got.stage, 1);
	CU_ASSERT_EQUAL(got.step, 7);
	CU_ASSERT_EQUAL(got.total, 9);
	CU_ASSERT_EQUAL(got.n, 3);
	CU_ASSERT(memcmp(got.rng.s, ck.rng.s, sizeof(ck.rng.s)) == 0);
	CU_ASSERT(memcmp(got.w, w, sizeof(w)) == 0);
	CU_ASSERT(memcmp(got.m, m, sizeof(m)) == 0);
	CU_ASSERT(memcmp(got.v, v, sizeof(v)) == 0);
	tune_checkpoint_free(&got);

	/* one flipped byte of the moments fails the checksum */
	f = fopen(path, "r+b");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fseek(f, -20, SEEK_END);
	fputc(0x5a, f);
	fclose(f);
	CU_ASSERT_EQUAL(tune_checkpoint_load(path, &got, err, sizeof(err)),
			-EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "checksum"));

	snprintf(path, sizeof(path), "%s/none", work_dir);
	CU_ASSERT_EQUAL(tune_checkpoint_load(path, &got, err, sizeof(err)),
			-ENOENT);
}

/* ---- Trained prompt in the engine ----------------------------------------- */

/* The logits rows the engine sampled from, by position. */
struct engine_logits {
	uint32_t n_vocab;
	float *rows;		/* (N_CTX, n_vocab) */
	uint8_t have[N_CTX];
	uint32_t next;
};

static void on_logits(void *arg, const float *logits, uint32_t n)
{
	struct engine_logits *el = arg;

	if (el->next >= N_CTX)
		return;
	memcpy(el->rows + (size_t)el->next * n, logits, n * sizeof(float));
	el->have[el->next++] = 1;
}

/* Trains stages A and B of chain_text for a few steps into work_dir/p. */
static int train_in_process(void)
{
	char data[512], out[512];
	char *argv[] = {
		"train", "-m", model_path, "-d", data, "-o", out, "-n", "4",
		"-b", "1", "--epochs", "3", "--lr", "0.05", "--seed", "3",
		"-t", "1", NULL,
	};
	FILE *f;

	snprintf(data, sizeof(data), "%s/chain.jsonl", work_dir);
	snprintf(out, sizeof(out), "%s/p", work_dir);
	f = fopen(data, "w");
	if (!f)
		return -errno;
	fputs(chain_text, f);
	fclose(f);
	return tune_cmd_train(sizeof(argv) / sizeof(argv[0]) - 1, argv);
}

/* Appends the text of key @k of @ex to the segment, recording its logits. */
static int append_key(struct segment *seg, const struct tune_data *d,
		      uint32_t k, struct engine_logits *el)
{
	const struct tune_example *ex = &d->examples[0];
	uint32_t pos0 = segment_n_positions(seg);

	el->have[pos0 + ex->n_ids[k] - 1] = 1;
	return segment_append_text(seg, d->keys[k].kind, d->keys[k].stage,
				   ex->text[k], ex->len[k], NULL, NULL,
				   el->rows + (size_t)(pos0 + ex->n_ids[k] - 1) *
				   el->n_vocab);
}

/* Generates @n tokens past EOS as @stage, recording every logits row. */
static int generate_stage(struct segment *seg, uint32_t stage, uint32_t n,
			  struct engine_logits *el)
{
	struct gen_params gp;
	struct gen_stats st;

	memset(&gp, 0, sizeof(gp));
	sampler_params_default(&gp.sampling);
	gp.max_tokens = n;
	gp.ignore_eos = true;
	gp.on_logits = on_logits;
	gp.logits_arg = el;
	el->next = segment_n_positions(seg);
	return segment_generate(seg, stage, &gp, NULL, NULL, NULL, NULL, &st);
}

static void test_engine_logits(void)
{
	struct stage_prompt *pa[PROMPT_MAX_STAGES], *pb[PROMPT_MAX_STAGES];
	const struct stage_prompt *both[2];
	struct engine_logits el = { 0 };
	struct tune_layout lay, train_lay;
	struct tune_data d;
	struct fixture f;
	struct chain *chain;
	struct segment *seg;
	struct span_info info;
	struct tune_ctx *ctx;
	const float *rows[2];
	uint32_t n_a, n_b, rows_n[2], s, p, i, n_checked = 0;
	char dir[512], err[256];
	float *logits;
	double loss, worst = 0.0;

	CU_ASSERT_EQUAL_FATAL(train_in_process(), 0);
	snprintf(dir, sizeof(dir), "%s/p/A", work_dir);
	CU_ASSERT_EQUAL_FATAL(stage_prompt_load_peft(model, dir, pa, &n_a, err,
						     sizeof(err)), 0);
	snprintf(dir, sizeof(dir), "%s/p/B", work_dir);
	CU_ASSERT_EQUAL_FATAL(stage_prompt_load_peft(model, dir, pb, &n_b, err,
						     sizeof(err)), 0);
	CU_ASSERT_EQUAL(n_a, 1);
	CU_ASSERT_EQUAL(n_b, 1);
	CU_ASSERT_EQUAL(pa[0]->n, 4);
	both[0] = pa[0];
	both[1] = pb[0];

	/* the engine runs the chain: I_ALL, I_A, A, I_B, B */
	CU_ASSERT_EQUAL_FATAL(fixture_init(&f, 96), 0);
	CU_ASSERT_EQUAL_FATAL(parse(chain_text, &d, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(tune_data_tokenize(&d, f.eng, err, sizeof(err)),
			      0);
	el.n_vocab = model->cfg.n_vocab;
	el.rows = calloc((size_t)N_CTX * el.n_vocab, sizeof(float));
	CU_ASSERT_EQUAL_FATAL(chain_create(f.eng, both, 2, &chain, err,
					   sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(segment_create(chain, &seg), 0);
	CU_ASSERT_EQUAL_FATAL(append_key(seg, &d, 0, &el), 0);
	CU_ASSERT_EQUAL_FATAL(append_key(seg, &d, 1, &el), 0);
	CU_ASSERT_EQUAL_FATAL(generate_stage(seg, 0, 3, &el), 0);
	CU_ASSERT_EQUAL_FATAL(append_key(seg, &d, 3, &el), 0);
	CU_ASSERT_EQUAL_FATAL(generate_stage(seg, 1, 4, &el), 0);

	/* the same spans as a training layout, with the loaded prompts */
	rows_n[0] = pa[0]->n;
	rows_n[1] = pb[0]->n;
	CU_ASSERT_EQUAL_FATAL(tune_layout_init(&lay, 2, rows_n), 0);
	for (s = 2; s < segment_n_spans(seg); s++) {
		CU_ASSERT_EQUAL_FATAL(segment_span_info(seg, s, &info), 0);
		CU_ASSERT_EQUAL_FATAL(tune_layout_add(&lay, info.kind,
						      info.stage, info.tokens,
						      info.n, false, -1), 0);
		CU_ASSERT_EQUAL(lay.spans[s].pos0, info.pos0);
	}

	/* the trainer's own layout frames the inputs and O_A's BOS alike */
	CU_ASSERT_EQUAL_FATAL(tune_data_layout(&d, &d.examples[0], rows_n, 1,
					       tok_eos(model->tok),
					       &train_lay), 0);
	for (s = 2; s < 4; s++) {
		CU_ASSERT_EQUAL(train_lay.spans[s].n, lay.spans[s].n);
		CU_ASSERT(memcmp(train_lay.spans[s].tokens,
				 lay.spans[s].tokens,
				 lay.spans[s].n * sizeof(int32_t)) == 0);
	}
	CU_ASSERT_EQUAL(train_lay.spans[4].tokens[0], lay.spans[4].tokens[0]);
	tune_layout_free(&train_lay);

	ctx = tune_ctx_create(model, NULL, lay.n_pos, TUNE_F32);
	CU_ASSERT_PTR_NOT_NULL_FATAL(ctx);
	logits = malloc((size_t)lay.n_pos * el.n_vocab * sizeof(float));
	rows[0] = pa[0]->embd;
	rows[1] = pb[0]->embd;
	CU_ASSERT_EQUAL(tune_forward(ctx, &lay, rows, &loss, logits), 0);
	for (p = 0; p < lay.n_pos; p++) {
		if (!el.have[p])
			continue;
		n_checked++;
		for (i = 0; i < el.n_vocab; i++) {
			double e = fabs(logits[(size_t)p * el.n_vocab + i] -
					el.rows[(size_t)p * el.n_vocab + i]);

			if (e > worst)
				worst = e;
		}
	}
	printf("\n    trained prompts: %u positions, max |logit difference| %.2g",
	       n_checked, worst);
	/* 3 appended spans' last tokens, 3 + 4 generated rows */
	CU_ASSERT_EQUAL(n_checked, 10);
	CU_ASSERT(worst < LOGIT_TOL);

	free(logits);
	tune_ctx_free(ctx);
	tune_layout_free(&lay);
	segment_release(seg);
	chain_release(chain);
	free(el.rows);
	tune_data_free(&d);
	fixture_free(&f);
	stage_prompt_free(pa[0]);
	stage_prompt_free(pb[0]);
}

/* ---- Setup -------------------------------------------------------------- */

static int setup(void)
{
	struct testmodel_opts o;
	char err[256];
	int fd;

	fd = mkstemp(model_path);
	if (fd < 0 || !mkdtemp(work_dir))
		return 1;
	close(fd);
	testmodel_defaults(&o);
	o.n_ctx = N_CTX;
	o.seed = 11;
	if (testmodel_write(model_path, &o, err, sizeof(err)) < 0 ||
	    model_load(model_path, &model, err, sizeof(err)) < 0) {
		fprintf(stderr, "setup: %s\n", err);
		return 1;
	}
	return 0;
}

static void teardown(void)
{
	char cmd[600];

	model_free(model);
	unlink(model_path);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", work_dir);
	if (system(cmd) != 0)
		fprintf(stderr, "teardown: could not remove %s\n", work_dir);
}

static const struct test_case data_cases[] = {
	{ "json lines", test_data_lines },
	{ "array with lines", test_data_array },
	{ "multi-round keys", test_data_multi_round },
	{ "bad files", test_data_errors },
	{ "missing file", test_data_missing_file },
	{ "framing and layout", test_layout_framing },
	{ "multi-round layout", test_layout_multi_round },
	{ NULL, NULL },
};

static const struct test_case metric_cases[] = {
	{ "normalize", test_metrics_normalize },
	{ "exact match and f1", test_metrics_scores },
	{ NULL, NULL },
};

static const struct test_case optim_cases[] = {
	{ "schedule", test_optim_schedule },
	{ "adamw and clipping", test_optim_adamw },
	{ "checkpoint", test_optim_checkpoint },
	{ NULL, NULL },
};

static const struct test_case engine_cases[] = {
	{ "trained prompt logits", test_engine_logits },
	{ NULL, NULL },
};

static const struct test_suite suites[] = {
	{ "tune data", data_cases },
	{ "tune metrics", metric_cases },
	{ "tune optimiser", optim_cases },
	{ "tune engine", engine_cases },
};

#define TEST_SETUP setup
#define TEST_TEARDOWN teardown
#include "cunit-main.h"
