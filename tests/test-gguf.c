/* SPDX-License-Identifier: MIT */
/*
 * test-gguf.c - the GGUF reader against files from testmodel.c (every
 * weight type, GGUF v2 and v3) and against hostile files: truncations and
 * single-field corruptions of a small hand-built file, each of which must
 * fail with a message naming the field.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cunit-main.h"
#include "gguf.h"
#include "kernels.h"
#include "testmodel.h"
#include "testvocab.h"

/* ---- Temporary files ------------------------------------------------- */

static char tmp_dir[64];

static void remove_tmp_dir(void)
{
	if (tmp_dir[0])
		rmdir(tmp_dir);
}

/* Writes the path of file @name in the test's own directory into @buf. */
static void tmp_path(char *buf, size_t cap, const char *name)
{
	if (!tmp_dir[0]) {
		const char *base = getenv("TMPDIR");

		snprintf(tmp_dir, sizeof(tmp_dir), "%s/test-gguf.XXXXXX",
			 base && strlen(base) < 40 ? base : "/tmp");
		if (!mkdtemp(tmp_dir)) {
			perror("mkdtemp");
			exit(1);
		}
		atexit(remove_tmp_dir);
	}
	snprintf(buf, cap, "%s/%s", tmp_dir, name);
}

static uint8_t *read_whole(const char *path, size_t *size)
{
	FILE *fp = fopen(path, "rb");
	uint8_t *buf = NULL;
	long n;

	if (!fp)
		return NULL;
	if (fseek(fp, 0, SEEK_END) || (n = ftell(fp)) < 0 ||
	    fseek(fp, 0, SEEK_SET))
		goto out_close;
	buf = malloc(n ? (size_t)n : 1);
	if (buf && fread(buf, 1, (size_t)n, fp) != (size_t)n) {
		free(buf);
		buf = NULL;
	}
	*size = (size_t)n;
out_close:
	fclose(fp);
	return buf;
}

static int write_whole(const char *path, const void *data, size_t size)
{
	FILE *fp = fopen(path, "wb");
	int ok;

	if (!fp)
		return -1;
	ok = fwrite(data, 1, size, fp) == size;
	return (fclose(fp) == 0 && ok) ? 0 : -1;
}

/* ---- Checks on a file written by testmodel_write ---------------------- */

static void check_u32(const struct gguf_file *f, const char *key,
		      uint32_t want)
{
	uint32_t v = 0;

	CU_ASSERT_EQUAL_FATAL(gguf_get_u32(f, key, &v), 0);
	CU_ASSERT_EQUAL(v, want);
}

static void check_str(const struct gguf_file *f, const char *key,
		      const char *want)
{
	struct gguf_str s = { 0 };

	CU_ASSERT_EQUAL_FATAL(gguf_get_str(f, key, &s), 0);
	CU_ASSERT_TRUE(gguf_str_eq(s, want));
}

static void check_hparams(const struct gguf_file *f,
			  const struct testmodel_opts *o, uint32_t n_vocab)
{
	char key[96];
	float eps = 0, theta = 0;

#define KEY(suffix) (snprintf(key, sizeof(key), "%s.%s", o->arch, suffix), key)
	check_str(f, "general.architecture", o->arch);
	check_u32(f, "general.alignment", 32);
	check_u32(f, KEY("context_length"), o->n_ctx);
	check_u32(f, KEY("embedding_length"), o->d_model);
	check_u32(f, KEY("block_count"), o->n_layers);
	check_u32(f, KEY("feed_forward_length"), o->d_ff);
	check_u32(f, KEY("attention.head_count"), o->n_heads);
	check_u32(f, KEY("attention.head_count_kv"), o->n_kv_heads);
	check_u32(f, KEY("rope.dimension_count"), o->d_model / o->n_heads);
	check_u32(f, KEY("vocab_size"), n_vocab);
	CU_ASSERT_EQUAL(gguf_get_f32(f, KEY("attention.layer_norm_rms_epsilon"),
				     &eps), 0);
	CU_ASSERT_DOUBLE_EQUAL(eps, 1e-5, 1e-9);
	CU_ASSERT_EQUAL(gguf_get_f32(f, KEY("rope.freq_base"), &theta), 0);
	CU_ASSERT_DOUBLE_EQUAL(theta, o->rope_theta, 1e-3);
#undef KEY
}

static void check_vocab(const struct gguf_file *f, const struct tok_spec *v)
{
	const struct gguf_kv *tokens = NULL, *scores = NULL, *types = NULL;
	bool add_bos = !v->add_bos;
	uint32_t i;

	check_str(f, "tokenizer.ggml.model",
		  v->kind == TOK_KIND_BPE ? "gpt2" : "llama");
	CU_ASSERT_EQUAL_FATAL(gguf_get_array(f, "tokenizer.ggml.tokens",
					     GGUF_TYPE_STRING, &tokens), 0);
	CU_ASSERT_EQUAL_FATAL(tokens->arr_n, v->n_vocab);
	for (i = 0; i < v->n_vocab; i++) {
		struct gguf_str s = gguf_array_str(tokens, i);

		CU_ASSERT_EQUAL(s.len, v->token_lens[i]);
		if (s.len == v->token_lens[i])
			CU_ASSERT_EQUAL(memcmp(s.ptr, v->tokens[i], s.len), 0);
	}
	CU_ASSERT_EQUAL(gguf_get_array(f, "tokenizer.ggml.token_type",
				       GGUF_TYPE_INT32, &types), 0);
	if (types)
		CU_ASSERT_EQUAL(types->arr_n, v->n_vocab);
	if (v->scores) {
		CU_ASSERT_EQUAL_FATAL(gguf_get_array(f, "tokenizer.ggml.scores",
						     GGUF_TYPE_FLOAT32, &scores), 0);
		CU_ASSERT_EQUAL(scores->arr_n, v->n_vocab);
	}
	if (v->bos_id >= 0)
		check_u32(f, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos_id);
	else
		CU_ASSERT_PTR_NULL(gguf_find(f, "tokenizer.ggml.bos_token_id"));
	CU_ASSERT_EQUAL(gguf_get_bool(f, "tokenizer.ggml.add_bos_token",
				      &add_bos), 0);
	CU_ASSERT_EQUAL(add_bos, v->add_bos);
}

/* Checks one tensor's shape, type and placement. */
static void check_tensor(const struct gguf_file *f, const char *name,
			 uint32_t n_dims, uint64_t ne0, uint64_t ne1,
			 uint32_t type)
{
	const struct gguf_tensor *t = gguf_find_tensor(f, name);
	const uint8_t *data;

	CU_ASSERT_PTR_NOT_NULL_FATAL(t);
	CU_ASSERT_EQUAL(t->n_dims, n_dims);
	CU_ASSERT_EQUAL(t->ne[0], ne0);
	CU_ASSERT_EQUAL(t->ne[1], ne1);
	CU_ASSERT_EQUAL(t->ne[2], 1);
	CU_ASSERT_EQUAL(t->type, type);
	CU_ASSERT_EQUAL(t->size, kern_row_bytes(type, (int64_t)ne0) * ne1);
	CU_ASSERT_EQUAL(t->offset % f->alignment, 0);
	data = t->data;
	CU_ASSERT_TRUE(data >= f->base);
	CU_ASSERT_TRUE(data + t->size <= f->base + f->size);
	CU_ASSERT_EQUAL((uintptr_t)(data - f->base) % f->alignment, 0);
}

/* Dequantises the first row of @name and returns its mean and RMS. */
static void row_stats(const struct gguf_file *f, const char *name,
		      double *mean, double *rms)
{
	const struct gguf_tensor *t = gguf_find_tensor(f, name);
	double sum = 0, sq = 0;
	float *row;
	uint64_t i;

	*mean = *rms = NAN;
	CU_ASSERT_PTR_NOT_NULL_FATAL(t);
	row = malloc(t->ne[0] * sizeof(*row));
	CU_ASSERT_PTR_NOT_NULL_FATAL(row);
	kern_dequantize_row(t->type, t->data, row, (int64_t)t->ne[0]);
	for (i = 0; i < t->ne[0]; i++) {
		sum += row[i];
		sq += (double)row[i] * row[i];
	}
	*mean = sum / (double)t->ne[0];
	*rms = sqrt(sq / (double)t->ne[0]);
	free(row);
}

static void check_weights(const struct gguf_file *f,
			  const struct testmodel_opts *o, uint32_t n_vocab)
{
	uint32_t hd = o->d_model / o->n_heads;
	uint32_t q_dim = o->n_heads * hd, kv_dim = o->n_kv_heads * hd;
	uint64_t want_n = 2 + (uint64_t)o->n_layers * 9;
	bool qwen2 = !strcmp(o->arch, "qwen2");
	double mean, rms;
	char name[64];
	uint32_t l;

	want_n += !o->tied_output + o->llama3_rope + (qwen2 ? 3u * o->n_layers : 0);
	CU_ASSERT_EQUAL(f->n_tensors, want_n);
	check_tensor(f, "token_embd.weight", 2, o->d_model, n_vocab, o->wtype);
	check_tensor(f, "output_norm.weight", 1, o->d_model, 1, KERN_TYPE_F32);
	if (o->tied_output) {
		CU_ASSERT_PTR_NULL(gguf_find_tensor(f, "output.weight"));
	} else {
		check_tensor(f, "output.weight", 2, o->d_model, n_vocab,
			     o->wtype);
	}
	for (l = 0; l < o->n_layers; l++) {
#define T(s) (snprintf(name, sizeof(name), "blk.%u.%s", l, s), name)
		check_tensor(f, T("attn_norm.weight"), 1, o->d_model, 1, KERN_TYPE_F32);
		check_tensor(f, T("attn_q.weight"), 2, o->d_model, q_dim, o->wtype);
		check_tensor(f, T("attn_k.weight"), 2, o->d_model, kv_dim, o->wtype);
		check_tensor(f, T("attn_v.weight"), 2, o->d_model, kv_dim, o->wtype);
		check_tensor(f, T("attn_output.weight"), 2, q_dim, o->d_model, o->wtype);
		check_tensor(f, T("ffn_norm.weight"), 1, o->d_model, 1, KERN_TYPE_F32);
		check_tensor(f, T("ffn_gate.weight"), 2, o->d_model, o->d_ff, o->wtype);
		check_tensor(f, T("ffn_up.weight"), 2, o->d_model, o->d_ff, o->wtype);
		check_tensor(f, T("ffn_down.weight"), 2, o->d_ff, o->d_model, o->wtype);
		if (qwen2) {
			check_tensor(f, T("attn_q.bias"), 1, q_dim, 1, KERN_TYPE_F32);
			check_tensor(f, T("attn_k.bias"), 1, kv_dim, 1, KERN_TYPE_F32);
			check_tensor(f, T("attn_v.bias"), 1, kv_dim, 1, KERN_TYPE_F32);
		} else {
			CU_ASSERT_PTR_NULL(gguf_find_tensor(f, T("attn_q.bias")));
		}
#undef T
	}

	/* Norm weights sit around 1, matrices have RMS about 1/sqrt(n_in). */
	row_stats(f, "blk.0.attn_norm.weight", &mean, &rms);
	CU_ASSERT_TRUE(mean > 0.9 && mean < 1.1);
	row_stats(f, "blk.0.ffn_gate.weight", &mean, &rms);
	CU_ASSERT_TRUE(rms > 0.7 / sqrt(o->d_model));
	CU_ASSERT_TRUE(rms < 1.3 / sqrt(o->d_model));
	CU_ASSERT_TRUE(fabs(mean) < 0.5 / sqrt(o->d_model));
}

/* Checks that no two tensors' data overlap. */
static void check_no_overlap(const struct gguf_file *f)
{
	uint64_t i, j;

	for (i = 0; i < f->n_tensors; i++) {
		const struct gguf_tensor *a = &f->tensors[i];

		for (j = i + 1; j < f->n_tensors; j++) {
			const struct gguf_tensor *b = &f->tensors[j];
			bool apart = a->offset + a->size <= b->offset ||
				     b->offset + b->size <= a->offset;

			CU_ASSERT_TRUE(apart);
		}
	}
}

/* Writes the model @o, reads it back and checks everything it promised. */
static void roundtrip(const struct testmodel_opts *o)
{
	const struct tok_spec *v = testvocab_get(o->tok_kind, o->tok_pre);
	struct gguf_file *f = NULL;
	char path[128], err[256];
	int ret;

	CU_ASSERT_PTR_NOT_NULL_FATAL(v);
	tmp_path(path, sizeof(path), "model.gguf");
	ret = testmodel_write(path, o, err, sizeof(err));
	if (ret)
		fprintf(stderr, "testmodel_write: %s\n", err);
	CU_ASSERT_EQUAL_FATAL(ret, 0);
	ret = gguf_open(path, &f, err, sizeof(err));
	if (ret)
		fprintf(stderr, "gguf_open: %s\n", err);
	CU_ASSERT_EQUAL_FATAL(ret, 0);
	CU_ASSERT_EQUAL(f->version, o->gguf_version);
	CU_ASSERT_EQUAL(f->alignment, 32);
	CU_ASSERT_TRUE(f->mapped);
	check_hparams(f, o, v->n_vocab);
	check_vocab(f, v);
	check_weights(f, o, v->n_vocab);
	check_no_overlap(f);
	gguf_close(f);
	unlink(path);
}

static void test_roundtrip_types(void)
{
	static const enum kern_type types[] = {
		KERN_TYPE_F32, KERN_TYPE_F16, KERN_TYPE_BF16, KERN_TYPE_Q8_0,
		KERN_TYPE_Q4_0, KERN_TYPE_Q4_K, KERN_TYPE_Q6_K,
	};
	struct testmodel_opts o;
	size_t i;
	uint32_t version;

	for (i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		for (version = 2; version <= 3; version++) {
			testmodel_defaults(&o);
			o.wtype = types[i];
			o.gguf_version = version;
			o.d_model = 256;
			o.d_ff = 512;
			o.n_layers = 1;
			o.seed = 7 + i;
			roundtrip(&o);
		}
	}
}

static void test_roundtrip_qwen2(void)
{
	struct testmodel_opts o;

	testmodel_defaults(&o);
	o.arch = "qwen2";
	o.tok_kind = TOK_KIND_BPE;
	o.tok_pre = TOK_PRE_QWEN2;
	o.tied_output = true;
	o.wtype = KERN_TYPE_Q8_0;
	o.rope_theta = 1000000.0f;
	roundtrip(&o);
}

static void test_roundtrip_bpe_pre(void)
{
	struct testmodel_opts o;
	struct gguf_file *f = NULL;
	struct gguf_str s;
	char path[128], err[256];

	testmodel_defaults(&o);
	o.tok_kind = TOK_KIND_BPE;
	o.tok_pre = TOK_PRE_LLAMA3;
	roundtrip(&o);

	tmp_path(path, sizeof(path), "bpe.gguf");
	CU_ASSERT_EQUAL_FATAL(testmodel_write(path, &o, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(gguf_open(path, &f, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(gguf_get_str(f, "tokenizer.ggml.pre", &s), 0);
	CU_ASSERT_TRUE(gguf_str_eq(s, "llama-bpe"));
	gguf_close(f);
	unlink(path);
}

static void test_llama3_rope_freqs(void)
{
	struct testmodel_opts o;
	struct gguf_file *f = NULL;
	const struct gguf_tensor *t;
	char path[128], err[256];
	const float *d;
	uint64_t i;

	testmodel_defaults(&o);
	o.llama3_rope = true;
	o.rope_theta = 500000.0f;
	roundtrip(&o);

	tmp_path(path, sizeof(path), "llama3.gguf");
	CU_ASSERT_EQUAL_FATAL(testmodel_write(path, &o, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(gguf_open(path, &f, err, sizeof(err)), 0);
	t = gguf_find_tensor(f, "rope_freqs.weight");
	CU_ASSERT_PTR_NOT_NULL_FATAL(t);
	CU_ASSERT_EQUAL(t->type, KERN_TYPE_F32);
	CU_ASSERT_EQUAL(t->ne[0], o.d_model / o.n_heads / 2);
	d = t->data;
	/* The fastest frequency is kept; the slowest is divided by 8. */
	CU_ASSERT_DOUBLE_EQUAL(d[0], 1.0, 1e-6);
	CU_ASSERT_DOUBLE_EQUAL(d[t->ne[0] - 1], 8.0, 1e-6);
	for (i = 1; i < t->ne[0]; i++)
		CU_ASSERT_TRUE(d[i] >= d[i - 1]);
	gguf_close(f);
	unlink(path);
}

static void test_seed_determinism(void)
{
	struct testmodel_opts o;
	char a[128], b[128], err[256];
	uint8_t *da, *db;
	size_t na = 0, nb = 0;

	testmodel_defaults(&o);
	o.wtype = KERN_TYPE_Q8_0;
	tmp_path(a, sizeof(a), "seed-a.gguf");
	tmp_path(b, sizeof(b), "seed-b.gguf");
	CU_ASSERT_EQUAL_FATAL(testmodel_write(a, &o, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(testmodel_write(b, &o, err, sizeof(err)), 0);
	da = read_whole(a, &na);
	db = read_whole(b, &nb);
	CU_ASSERT_PTR_NOT_NULL_FATAL(da);
	CU_ASSERT_PTR_NOT_NULL_FATAL(db);
	CU_ASSERT_EQUAL(na, nb);
	CU_ASSERT_TRUE(na == nb && !memcmp(da, db, na));
	free(db);

	o.seed++;
	CU_ASSERT_EQUAL_FATAL(testmodel_write(b, &o, err, sizeof(err)), 0);
	db = read_whole(b, &nb);
	CU_ASSERT_PTR_NOT_NULL_FATAL(db);
	CU_ASSERT_EQUAL(na, nb);
	CU_ASSERT_FALSE(na == nb && !memcmp(da, db, na));
	free(da);
	free(db);
	unlink(a);
	unlink(b);
}

static void test_write_bad_opts(void)
{
	struct testmodel_opts o;
	char path[128], err[256] = "";

	tmp_path(path, sizeof(path), "bad.gguf");
	testmodel_defaults(&o);
	o.wtype = KERN_TYPE_Q4_K;	/* d_model 64 is not a whole block */
	CU_ASSERT_EQUAL(testmodel_write(path, &o, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "d_model"));
	CU_ASSERT_NOT_EQUAL(access(path, F_OK), 0);

	testmodel_defaults(&o);
	o.n_kv_heads = 3;
	CU_ASSERT_EQUAL(testmodel_write(path, &o, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "n_kv_heads"));
}

static void test_getter_types(void)
{
	struct testmodel_opts o;
	struct gguf_file *f = NULL;
	const struct gguf_kv *kv = NULL;
	struct gguf_str s;
	char path[128], err[256];
	uint32_t u;
	float x;
	bool b;

	testmodel_defaults(&o);
	tmp_path(path, sizeof(path), "getters.gguf");
	CU_ASSERT_EQUAL_FATAL(testmodel_write(path, &o, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(gguf_open(path, &f, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(gguf_get_u32(f, "no.such.key", &u), -ENOENT);
	CU_ASSERT_EQUAL(gguf_get_u32(f, "general.architecture", &u), -EINVAL);
	CU_ASSERT_EQUAL(gguf_get_f32(f, "llama.block_count", &x), -EINVAL);
	CU_ASSERT_EQUAL(gguf_get_bool(f, "llama.block_count", &b), -EINVAL);
	CU_ASSERT_EQUAL(gguf_get_str(f, "llama.block_count", &s), -EINVAL);
	CU_ASSERT_EQUAL(gguf_get_array(f, "tokenizer.ggml.tokens",
				       GGUF_TYPE_FLOAT32, &kv), -EINVAL);
	CU_ASSERT_EQUAL(gguf_get_array(f, "llama.block_count",
				       GGUF_TYPE_UINT32, &kv), -EINVAL);
	CU_ASSERT_PTR_NULL(gguf_find_tensor(f, "blk.99.attn_q.weight"));
	CU_ASSERT_PTR_NULL(gguf_find_tensor(f, ""));
	gguf_close(f);
	unlink(path);
}

static void test_open_errors(void)
{
	struct gguf_file *f = NULL;
	char path[128], err[256] = "";

	tmp_path(path, sizeof(path), "missing.gguf");
	CU_ASSERT_EQUAL(gguf_open(path, &f, err, sizeof(err)), -ENOENT);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, path));

	CU_ASSERT_EQUAL_FATAL(write_whole(path, "GGUF", 4), 0);
	CU_ASSERT_TRUE(gguf_open(path, &f, err, sizeof(err)) < 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, path));
	unlink(path);

	CU_ASSERT_TRUE(gguf_open(tmp_dir, &f, err, sizeof(err)) < 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "regular file"));
}

/* ---- Hostile files ---------------------------------------------------- */

/*
 * A small valid file built by hand, and the offsets of the fields the cases
 * below corrupt: four keys (a string, the alignment, a string array and a
 * float array) and two F32 tensors, t.a [32, 2] and t.b [32].
 */
struct raw {
	uint8_t buf[1024];
	size_t len;
	size_t at_key0_len, at_kv1_type, at_align, at_arr_type, at_arr_n;
	size_t at_farr_n, at_str_len;
	size_t at_t0_ndims, at_t0_ne0, at_t0_ne1, at_t0_type, at_t0_offset;
	size_t at_t1_offset, at_data;
};

static void raw_put(struct raw *r, const void *p, size_t n)
{
	CU_ASSERT_FATAL(r->len + n <= sizeof(r->buf));
	memcpy(r->buf + r->len, p, n);
	r->len += n;
}

static void raw_u32(struct raw *r, uint32_t v)
{
	raw_put(r, &v, 4);
}

static void raw_u64(struct raw *r, uint64_t v)
{
	raw_put(r, &v, 8);
}

static void raw_str(struct raw *r, const char *s)
{
	raw_u64(r, strlen(s));
	raw_put(r, s, strlen(s));
}

static void raw_patch32(struct raw *r, size_t at, uint32_t v)
{
	memcpy(r->buf + at, &v, 4);
}

static void raw_patch64(struct raw *r, size_t at, uint64_t v)
{
	memcpy(r->buf + at, &v, 8);
}

/* Builds the file; @key3 and @t1 name the last key and the second tensor. */
static void raw_build(struct raw *r, const char *key3, const char *t1)
{
	static const char *const strs[] = { "a", "bc", "def" };
	const float scores[3] = { -1, -2, -3 };
	float data[96];
	int i;

	memset(r, 0, sizeof(*r));
	raw_put(r, "GGUF", 4);
	raw_u32(r, 3);
	raw_u64(r, 2);		/* n_tensors */
	raw_u64(r, 4);		/* n_kv */

	r->at_key0_len = r->len;
	raw_str(r, "general.architecture");
	raw_u32(r, GGUF_TYPE_STRING);
	r->at_str_len = r->len;
	raw_str(r, "llama");

	raw_str(r, "general.alignment");
	r->at_kv1_type = r->len;
	raw_u32(r, GGUF_TYPE_UINT32);
	r->at_align = r->len;
	raw_u32(r, 32);

	raw_str(r, "tokenizer.ggml.tokens");
	raw_u32(r, GGUF_TYPE_ARRAY);
	r->at_arr_type = r->len;
	raw_u32(r, GGUF_TYPE_STRING);
	r->at_arr_n = r->len;
	raw_u64(r, 3);
	for (i = 0; i < 3; i++)
		raw_str(r, strs[i]);

	raw_str(r, key3);
	raw_u32(r, GGUF_TYPE_ARRAY);
	raw_u32(r, GGUF_TYPE_FLOAT32);
	r->at_farr_n = r->len;
	raw_u64(r, 3);
	raw_put(r, scores, sizeof(scores));

	raw_str(r, "t.a");
	r->at_t0_ndims = r->len;
	raw_u32(r, 2);
	r->at_t0_ne0 = r->len;
	raw_u64(r, 32);
	r->at_t0_ne1 = r->len;
	raw_u64(r, 2);
	r->at_t0_type = r->len;
	raw_u32(r, KERN_TYPE_F32);
	r->at_t0_offset = r->len;
	raw_u64(r, 0);

	raw_str(r, t1);
	raw_u32(r, 1);
	raw_u64(r, 32);
	raw_u32(r, KERN_TYPE_F32);
	r->at_t1_offset = r->len;
	raw_u64(r, 256);

	while (r->len % 32)
		raw_put(r, "", 1);
	r->at_data = r->len;
	for (i = 0; i < 96; i++)
		data[i] = (float)i;
	raw_put(r, data, sizeof(data));
}

/*
 * Parses @len bytes of @data from an exact-size copy, so ASan reports any
 * read past the end. Returns the result and fills @err.
 */
static int parse_copy(const void *data, size_t len, char *err, size_t cap)
{
	struct gguf_file *f = NULL;
	uint8_t *copy = malloc(len ? len : 1);
	int ret;

	CU_ASSERT_PTR_NOT_NULL_FATAL(copy);
	memcpy(copy, data, len);
	ret = gguf_parse(copy, len, &f, err, cap);
	if (!ret)
		gguf_close(f);
	free(copy);
	return ret;
}

static void test_raw_valid(void)
{
	struct raw r;
	struct gguf_file *f = NULL;
	const struct gguf_tensor *t;
	const struct gguf_kv *kv = NULL;
	struct gguf_str s;
	char err[256] = "";

	raw_build(&r, "tokenizer.ggml.scores", "t.b");
	CU_ASSERT_EQUAL_FATAL(gguf_parse(r.buf, r.len, &f, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(f->n_kv, 4);
	CU_ASSERT_EQUAL(f->n_tensors, 2);
	CU_ASSERT_EQUAL(gguf_get_array(f, "tokenizer.ggml.tokens",
				       GGUF_TYPE_STRING, &kv), 0);
	CU_ASSERT_EQUAL_FATAL(kv->arr_n, 3);
	s = gguf_array_str(kv, 2);
	CU_ASSERT_TRUE(gguf_str_eq(s, "def"));
	t = gguf_find_tensor(f, "t.b");
	CU_ASSERT_PTR_NOT_NULL_FATAL(t);
	CU_ASSERT_EQUAL((const uint8_t *)t->data - r.buf, r.at_data + 256);
	CU_ASSERT_EQUAL(((const float *)t->data)[0], 64.0f);
	gguf_close(f);
}

enum patch_kind { P32, P64 };

struct hostile_case {
	const char *name;
	enum patch_kind kind;
	size_t field;		/* offsetof(struct raw, at_...) */
	uint64_t value;
	const char *want;	/* in the error message */
};

static const struct hostile_case hostile_cases[] = {
	{ "magic", P32, (size_t)-1, 0x46554746, "magic" },
	{ "version 1", P32, (size_t)-2, 1, "version" },
	{ "version 4", P32, (size_t)-2, 4, "version" },
	{ "big-endian", P32, (size_t)-2, 0x03000000, "big-endian" },
	{ "n_tensors 2^63", P64, (size_t)-3, 1ull << 63, "n_tensors" },
	{ "n_kv 2^63", P64, (size_t)-4, 1ull << 63, "n_kv" },
	{ "n_tensors too many", P64, (size_t)-3, 3, "tensor" },
	{ "key length", P64, offsetof(struct raw, at_key0_len), 1ull << 40, "key length" },
	{ "string length", P64, offsetof(struct raw, at_str_len), 5000, "string length" },
	{ "string length 2^64-1", P64, offsetof(struct raw, at_str_len), UINT64_MAX, "string length" },
	{ "value type", P32, offsetof(struct raw, at_kv1_type), 99, "value type" },
	{ "alignment 3", P32, offsetof(struct raw, at_align), 3, "alignment" },
	{ "alignment 0", P32, offsetof(struct raw, at_align), 0, "alignment" },
	{ "array of arrays", P32, offsetof(struct raw, at_arr_type), GGUF_TYPE_ARRAY, "array" },
	{ "array type", P32, offsetof(struct raw, at_arr_type), 77, "array type" },
	{ "string array count", P64, offsetof(struct raw, at_arr_n), 1ull << 62, "array count" },
	{ "string array count 4", P64, offsetof(struct raw, at_arr_n), 4, "length" },
	{ "float array count", P64, offsetof(struct raw, at_farr_n), 1ull << 62, "array count" },
	{ "float array count 2^64-1", P64, offsetof(struct raw, at_farr_n), UINT64_MAX, "array count" },
	{ "n_dims 5", P32, offsetof(struct raw, at_t0_ndims), 5, "n_dims" },
	{ "n_dims 0", P32, offsetof(struct raw, at_t0_ndims), 0, "n_dims" },
	{ "ne 0", P64, offsetof(struct raw, at_t0_ne1), 0, "ne[1]" },
	{ "ne overflow", P64, offsetof(struct raw, at_t0_ne1), 1ull << 62, "ne[1]" },
	{ "ne0 2^62", P64, offsetof(struct raw, at_t0_ne0), 1ull << 62, "ne[1]" },
	{ "size overflow", P64, offsetof(struct raw, at_t0_ne0), 1ull << 61, "size" },
	{ "type 99", P32, offsetof(struct raw, at_t0_type), 99, "type 99" },
	{ "type Q8_0 ne0 16", P32, offsetof(struct raw, at_t0_type), KERN_TYPE_Q8_0, "t.a" },
	{ "offset misaligned", P64, offsetof(struct raw, at_t1_offset), 260, "offset" },
	{ "offset past end", P64, offsetof(struct raw, at_t1_offset), 4096, "past end" },
	{ "offset overflow", P64, offsetof(struct raw, at_t1_offset), UINT64_MAX - 31, "t.b" },
	{ "size past end", P64, offsetof(struct raw, at_t0_ne1), 4, "past end" },
};

static void run_hostile_case(const struct hostile_case *c)
{
	struct raw r;
	size_t at;
	char err[256] = "";
	int ret;

	raw_build(&r, "tokenizer.ggml.scores", "t.b");
	switch (c->field) {
	case (size_t)-1: at = 0; break;
	case (size_t)-2: at = 4; break;
	case (size_t)-3: at = 8; break;
	case (size_t)-4: at = 16; break;
	default: memcpy(&at, (const uint8_t *)&r + c->field, sizeof(at));
	}
	if (c->kind == P32)
		raw_patch32(&r, at, (uint32_t)c->value);
	else
		raw_patch64(&r, at, c->value);
	/* The Q8_0 case needs ne0 16, which is half a block. */
	if (c->value == KERN_TYPE_Q8_0 && c->field == offsetof(struct raw, at_t0_type))
		raw_patch64(&r, r.at_t0_ne0, 16);
	ret = parse_copy(r.buf, r.len, err, sizeof(err));
	if (ret >= 0 || !strstr(err, c->want) || !strstr(err, "<buffer>"))
		fprintf(stderr, "\ncase '%s': ret %d, message '%s'\n", c->name,
			ret, err);
	CU_ASSERT_TRUE(ret < 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, c->want));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "<buffer>"));
	CU_ASSERT_PTR_NULL(strchr(err, '\n'));
}

static void test_hostile_fields(void)
{
	size_t i;

	for (i = 0; i < sizeof(hostile_cases) / sizeof(hostile_cases[0]); i++)
		run_hostile_case(&hostile_cases[i]);
}

static void test_hostile_duplicates(void)
{
	struct raw r;
	char err[256] = "";

	raw_build(&r, "tokenizer.ggml.scores", "t.a");
	CU_ASSERT_TRUE(parse_copy(r.buf, r.len, err, sizeof(err)) < 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "duplicate"));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "t.a"));

	raw_build(&r, "tokenizer.ggml.tokens", "t.b");
	CU_ASSERT_TRUE(parse_copy(r.buf, r.len, err, sizeof(err)) < 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "duplicate"));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "tokenizer.ggml.tokens"));
}

/* Every proper prefix of the hand-built file must be rejected. */
static void test_hostile_truncated_raw(void)
{
	struct raw r;
	char err[256];
	size_t len;

	raw_build(&r, "tokenizer.ggml.scores", "t.b");
	for (len = 0; len < r.len; len++) {
		int ret = parse_copy(r.buf, len, err, sizeof(err));

		CU_ASSERT_TRUE(ret < 0);
		if (ret >= 0)
			fprintf(stderr, "\nprefix of %zu bytes parsed\n", len);
	}
}

/*
 * Every 7th prefix of a real test model up to its data section must fail,
 * as must one that cuts the last tensor short by one byte.
 */
static void test_hostile_truncated_model(void)
{
	struct testmodel_opts o;
	struct gguf_file *f = NULL;
	char path[128], err[256];
	uint8_t *data;
	size_t size = 0, data_start, data_end = 0, len;
	uint64_t i;

	testmodel_defaults(&o);
	o.wtype = KERN_TYPE_Q8_0;
	tmp_path(path, sizeof(path), "truncate.gguf");
	CU_ASSERT_EQUAL_FATAL(testmodel_write(path, &o, err, sizeof(err)), 0);
	data = read_whole(path, &size);
	CU_ASSERT_PTR_NOT_NULL_FATAL(data);
	CU_ASSERT_EQUAL_FATAL(gguf_parse(data, size, &f, err, sizeof(err)), 0);
	data_start = (size_t)((const uint8_t *)f->tensors[0].data - f->base) -
		     (size_t)f->tensors[0].offset;
	for (i = 0; i < f->n_tensors; i++) {
		size_t end = data_start + f->tensors[i].offset +
			     f->tensors[i].size;

		data_end = end > data_end ? end : data_end;
	}
	gguf_close(f);

	for (len = 0; len <= data_start; len += 7)
		CU_ASSERT_TRUE(parse_copy(data, len, err, sizeof(err)) < 0);
	CU_ASSERT_TRUE(data_end <= size);
	CU_ASSERT_TRUE(parse_copy(data, data_end - 1, err, sizeof(err)) < 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "extends past end of file"));
	free(data);
	unlink(path);
}

/* gguf_open must name the file, not "<buffer>". */
static void test_hostile_open_names_file(void)
{
	struct raw r;
	struct gguf_file *f = NULL;
	char path[128], err[256] = "";

	raw_build(&r, "tokenizer.ggml.scores", "t.b");
	raw_patch32(&r, r.at_t0_type, 99);
	tmp_path(path, sizeof(path), "hostile.gguf");
	CU_ASSERT_EQUAL_FATAL(write_whole(path, r.buf, r.len), 0);
	CU_ASSERT_TRUE(gguf_open(path, &f, err, sizeof(err)) < 0);
	CU_ASSERT_EQUAL(strncmp(err, path, strlen(path)), 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "tensor 't.a': type 99"));
	unlink(path);
}

/* A tiny error buffer gets a truncated, terminated message. */
static void test_hostile_short_errbuf(void)
{
	struct raw r;
	char err[8];

	memset(err, 'x', sizeof(err));
	raw_build(&r, "tokenizer.ggml.scores", "t.b");
	raw_patch32(&r, r.at_t0_type, 99);
	CU_ASSERT_TRUE(parse_copy(r.buf, r.len, err, sizeof(err)) < 0);
	CU_ASSERT_EQUAL(err[sizeof(err) - 1], '\0');
	CU_ASSERT_TRUE(parse_copy(r.buf, r.len, NULL, 0) < 0);
}

static const struct test_case model_cases[] = {
	{ "roundtrip every type", test_roundtrip_types },
	{ "roundtrip qwen2 tied", test_roundtrip_qwen2 },
	{ "roundtrip bpe llama3", test_roundtrip_bpe_pre },
	{ "llama3 rope_freqs", test_llama3_rope_freqs },
	{ "same seed same bytes", test_seed_determinism },
	{ "write bad options", test_write_bad_opts },
	{ "getter type checks", test_getter_types },
	{ "open errors", test_open_errors },
	{ NULL, NULL },
};

static const struct test_case hostile_cases_suite[] = {
	{ "raw file valid", test_raw_valid },
	{ "corrupt fields", test_hostile_fields },
	{ "duplicate names", test_hostile_duplicates },
	{ "truncated raw file", test_hostile_truncated_raw },
	{ "truncated model", test_hostile_truncated_model },
	{ "open names file", test_hostile_open_names_file },
	{ "short error buffer", test_hostile_short_errbuf },
	{ NULL, NULL },
};

static const struct test_suite suites[] = {
	{ "gguf model", model_cases },
	{ "gguf hostile", hostile_cases_suite },
};

#include "cunit-main.h"
