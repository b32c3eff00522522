/* SPDX-License-Identifier: MIT */
/*
 * testmodel.c - writes complete llama/qwen2 GGUF files with seeded random
 * weights and a made-up vocabulary (testvocab.c), using the keys and tensor
 * names that files converted by llama.cpp carry. The metadata is built in
 * memory. Tensor data is generated, quantised and written one row at a time,
 * so even a model of a few hundred million weights needs one row of memory.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"
#include "testmodel.h"
#include "testvocab.h"

#define TM_ALIGNMENT 32
#define TM_MAX_TENSORS_PER_LAYER 12

/* Llama 3.1 RoPE scaling: the rope_scaling values of its config.json. */
#define TM_L3_FACTOR 8.0
#define TM_L3_LOW_FREQ_FACTOR 1.0
#define TM_L3_HIGH_FREQ_FACTOR 4.0
#define TM_L3_ORIGINAL_CONTEXT 8192.0

/* ---- Random numbers: splitmix64 and Box-Muller ------------------------ */

struct rng {
	uint64_t state;
	bool has_spare;
	float spare;
};

static uint64_t splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Returns a uniform double in (0, 1]. */
static double rng_uniform(struct rng *r)
{
	return (double)((splitmix64(&r->state) >> 11) + 1) * 0x1.0p-53;
}

static float rng_normal(struct rng *r)
{
	double radius, angle;

	if (r->has_spare) {
		r->has_spare = false;
		return r->spare;
	}
	radius = sqrt(-2.0 * log(rng_uniform(r)));
	angle = 2.0 * M_PI * rng_uniform(r);
	r->spare = (float)(radius * sin(angle));
	r->has_spare = true;
	return (float)(radius * cos(angle));
}

/* ---- GGUF metadata writer -------------------------------------------- */

/* A growing byte buffer. A failed allocation sets @err, and later writes
 * are dropped. */
struct gbuf {
	uint8_t *data;
	size_t len;
	size_t cap;
	int err;
};

static void gb_put(struct gbuf *b, const void *p, size_t n)
{
	if (b->err)
		return;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		uint8_t *d;

		while (cap < b->len + n)
			cap *= 2;
		d = realloc(b->data, cap);
		if (!d) {
			b->err = -ENOMEM;
			return;
		}
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

static void gb_u32(struct gbuf *b, uint32_t v)
{
	gb_put(b, &v, sizeof(v));
}

static void gb_u64(struct gbuf *b, uint64_t v)
{
	gb_put(b, &v, sizeof(v));
}

static void gb_str(struct gbuf *b, const char *s, size_t len)
{
	gb_u64(b, len);
	gb_put(b, s, len);
}

static void gb_key(struct gbuf *b, uint32_t *n_kv, const char *key,
		   uint32_t type)
{
	gb_str(b, key, strlen(key));
	gb_u32(b, type);
	(*n_kv)++;
}

static void kv_u32(struct gbuf *b, uint32_t *n_kv, const char *key,
		   uint32_t v)
{
	gb_key(b, n_kv, key, GGUF_TYPE_UINT32);
	gb_u32(b, v);
}

static void kv_f32(struct gbuf *b, uint32_t *n_kv, const char *key, float v)
{
	gb_key(b, n_kv, key, GGUF_TYPE_FLOAT32);
	gb_put(b, &v, sizeof(v));
}

static void kv_bool(struct gbuf *b, uint32_t *n_kv, const char *key, bool v)
{
	uint8_t byte = v;

	gb_key(b, n_kv, key, GGUF_TYPE_BOOL);
	gb_put(b, &byte, 1);
}

static void kv_str(struct gbuf *b, uint32_t *n_kv, const char *key,
		   const char *v)
{
	gb_key(b, n_kv, key, GGUF_TYPE_STRING);
	gb_str(b, v, strlen(v));
}

static void kv_arr_str(struct gbuf *b, uint32_t *n_kv, const char *key,
		       uint32_t n, const char *const *strs,
		       const uint32_t *lens)
{
	uint32_t i;

	gb_key(b, n_kv, key, GGUF_TYPE_ARRAY);
	gb_u32(b, GGUF_TYPE_STRING);
	gb_u64(b, n);
	for (i = 0; i < n; i++)
		gb_str(b, strs[i], lens[i]);
}

/* Writes an array of @n 4-byte elements of @type (F32 or I32). */
static void kv_arr_4(struct gbuf *b, uint32_t *n_kv, const char *key,
		     uint32_t type, uint32_t n, const void *values)
{
	gb_key(b, n_kv, key, GGUF_TYPE_ARRAY);
	gb_u32(b, type);
	gb_u64(b, n);
	gb_put(b, values, (size_t)n * 4);
}

/* ---- Tensors ---------------------------------------------------------- */

enum tm_fill {
	FILL_MATRIX,		/* normal, scaled by 1/sqrt(ne[0]) */
	FILL_NORM,		/* 1 + 0.1 * normal */
	FILL_BIAS,		/* 0.1 * normal */
	FILL_ROPE_FREQS,	/* Llama 3.1 frequency divisors */
};

struct tm_tensor {
	char name[48];
	uint32_t n_dims;
	uint64_t ne[2];
	enum kern_type type;
	enum tm_fill fill;
	uint64_t offset;	/* from the start of the data section */
	uint64_t size;		/* bytes */
};

struct tm_plan {
	struct tm_tensor *t;
	size_t n;
	size_t cap;
	uint64_t data_size;	/* bytes, with padding */
};

static void tm_errf(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void tm_errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static int plan_add(struct tm_plan *p, const char *name, uint32_t n_dims,
		    uint64_t ne0, uint64_t ne1, enum kern_type type,
		    enum tm_fill fill)
{
	struct tm_tensor *t;

	if (p->n == p->cap)
		return -ENOMEM;
	t = &p->t[p->n++];
	snprintf(t->name, sizeof(t->name), "%s", name);
	t->n_dims = n_dims;
	t->ne[0] = ne0;
	t->ne[1] = ne1;
	t->type = type;
	t->fill = fill;
	t->size = kern_row_bytes(type, (int64_t)ne0) * ne1;
	t->offset = p->data_size;
	p->data_size += (t->size + TM_ALIGNMENT - 1) & ~(uint64_t)(TM_ALIGNMENT - 1);
	return 0;
}

static int plan_layer(struct tm_plan *p, const struct testmodel_opts *o,
		      uint32_t layer)
{
	uint32_t head_dim = o->d_model / o->n_heads;
	uint32_t q_dim = o->n_heads * head_dim;
	uint32_t kv_dim = o->n_kv_heads * head_dim;
	bool bias = !strcmp(o->arch, "qwen2");
	enum kern_type w = o->wtype;
	char name[48];
	int ret = 0;

#define ADD(suffix, nd, ne0, ne1, type, fill)				\
	do {								\
		snprintf(name, sizeof(name), "blk.%u.%s", layer, suffix); \
		ret = ret ? ret : plan_add(p, name, nd, ne0, ne1, type, fill); \
	} while (0)

	ADD("attn_norm.weight", 1, o->d_model, 1, KERN_TYPE_F32, FILL_NORM);
	ADD("attn_q.weight", 2, o->d_model, q_dim, w, FILL_MATRIX);
	ADD("attn_k.weight", 2, o->d_model, kv_dim, w, FILL_MATRIX);
	ADD("attn_v.weight", 2, o->d_model, kv_dim, w, FILL_MATRIX);
	if (bias) {
		ADD("attn_q.bias", 1, q_dim, 1, KERN_TYPE_F32, FILL_BIAS);
		ADD("attn_k.bias", 1, kv_dim, 1, KERN_TYPE_F32, FILL_BIAS);
		ADD("attn_v.bias", 1, kv_dim, 1, KERN_TYPE_F32, FILL_BIAS);
	}
	ADD("attn_output.weight", 2, q_dim, o->d_model, w, FILL_MATRIX);
	ADD("ffn_norm.weight", 1, o->d_model, 1, KERN_TYPE_F32, FILL_NORM);
	ADD("ffn_gate.weight", 2, o->d_model, o->d_ff, w, FILL_MATRIX);
	ADD("ffn_up.weight", 2, o->d_model, o->d_ff, w, FILL_MATRIX);
	ADD("ffn_down.weight", 2, o->d_ff, o->d_model, w, FILL_MATRIX);
#undef ADD
	return ret;
}

static int plan_model(struct tm_plan *p, const struct testmodel_opts *o,
		      uint32_t n_vocab)
{
	uint32_t head_dim = o->d_model / o->n_heads;
	uint32_t layer;
	int ret = 0;

	p->cap = 4 + (size_t)o->n_layers * TM_MAX_TENSORS_PER_LAYER;
	p->t = calloc(p->cap, sizeof(*p->t));
	if (!p->t)
		return -ENOMEM;
	ret = plan_add(p, "token_embd.weight", 2, o->d_model, n_vocab,
		       o->wtype, FILL_MATRIX);
	if (!ret && o->llama3_rope)
		ret = plan_add(p, "rope_freqs.weight", 1, head_dim / 2, 1,
			       KERN_TYPE_F32, FILL_ROPE_FREQS);
	for (layer = 0; !ret && layer < o->n_layers; layer++)
		ret = plan_layer(p, o, layer);
	if (!ret)
		ret = plan_add(p, "output_norm.weight", 1, o->d_model, 1,
			       KERN_TYPE_F32, FILL_NORM);
	if (!ret && !o->tied_output)
		ret = plan_add(p, "output.weight", 2, o->d_model, n_vocab,
			       o->wtype, FILL_MATRIX);
	return ret;
}

/*
 * Fills @out with the divisors of each RoPE frequency that Llama 3.1 scaling
 * applies: 1 for short wavelengths, the full factor for long ones, and a
 * smooth blend between the two wavelength limits.
 */
static void llama3_freq_divisors(float *out, uint32_t n, float theta,
				 uint32_t head_dim)
{
	double low_wavelen = TM_L3_ORIGINAL_CONTEXT / TM_L3_LOW_FREQ_FACTOR;
	double high_wavelen = TM_L3_ORIGINAL_CONTEXT / TM_L3_HIGH_FREQ_FACTOR;
	uint32_t i;

	for (i = 0; i < n; i++) {
		double freq = pow(theta, -2.0 * i / head_dim);
		double wavelen = 2.0 * M_PI / freq;
		double smooth;

		if (wavelen < high_wavelen) {
			out[i] = 1.0f;
		} else if (wavelen > low_wavelen) {
			out[i] = (float)TM_L3_FACTOR;
		} else {
			smooth = (TM_L3_ORIGINAL_CONTEXT / wavelen -
				  TM_L3_LOW_FREQ_FACTOR) /
				 (TM_L3_HIGH_FREQ_FACTOR - TM_L3_LOW_FREQ_FACTOR);
			out[i] = (float)(1.0 / ((1.0 - smooth) / TM_L3_FACTOR +
						smooth));
		}
	}
}

static void fill_row(float *row, const struct tm_tensor *t, struct rng *r,
		     const struct testmodel_opts *o)
{
	float scale = 1.0f / sqrtf((float)t->ne[0]);
	uint64_t i;

	switch (t->fill) {
	case FILL_MATRIX:
		for (i = 0; i < t->ne[0]; i++)
			row[i] = scale * rng_normal(r);
		break;
	case FILL_NORM:
		for (i = 0; i < t->ne[0]; i++)
			row[i] = 1.0f + 0.1f * rng_normal(r);
		break;
	case FILL_BIAS:
		for (i = 0; i < t->ne[0]; i++)
			row[i] = 0.1f * rng_normal(r);
		break;
	case FILL_ROPE_FREQS:
		llama3_freq_divisors(row, (uint32_t)t->ne[0], o->rope_theta,
				     o->d_model / o->n_heads);
		break;
	}
}

/* Writes every tensor's data, each padded to the alignment. */
static int write_data(FILE *fp, const struct tm_plan *p,
		      const struct testmodel_opts *o)
{
	static const uint8_t zeros[TM_ALIGNMENT];
	uint64_t max_ne0 = 0, pos = 0;
	float *row = NULL;
	void *qrow = NULL;
	size_t i;
	int ret = -ENOMEM;

	for (i = 0; i < p->n; i++)
		if (p->t[i].ne[0] > max_ne0)
			max_ne0 = p->t[i].ne[0];
	row = malloc(max_ne0 * sizeof(*row));
	qrow = malloc(max_ne0 * sizeof(*row));
	if (!row || !qrow)
		goto out_free;

	ret = -EIO;
	for (i = 0; i < p->n; i++) {
		const struct tm_tensor *t = &p->t[i];
		uint64_t seed = o->seed + 0x632be59bd9b4e019ull * (i + 1);
		struct rng r = { .state = splitmix64(&seed) };
		size_t row_bytes = kern_row_bytes(t->type, (int64_t)t->ne[0]);
		uint64_t j;

		if (fwrite(zeros, 1, t->offset - pos, fp) != t->offset - pos)
			goto out_free;
		for (j = 0; j < t->ne[1]; j++) {
			fill_row(row, t, &r, o);
			kern_quantize_row(t->type, row, qrow, (int64_t)t->ne[0]);
			if (fwrite(qrow, 1, row_bytes, fp) != row_bytes)
				goto out_free;
		}
		pos = t->offset + t->size;
	}
	if (fwrite(zeros, 1, p->data_size - pos, fp) != p->data_size - pos)
		goto out_free;
	ret = 0;

out_free:
	free(qrow);
	free(row);
	return ret;
}

/* ---- Metadata --------------------------------------------------------- */

static const char *pre_name(enum tok_pre pre)
{
	switch (pre) {
	case TOK_PRE_LLAMA3:
		return "llama-bpe";
	case TOK_PRE_QWEN2:
		return "qwen2";
	case TOK_PRE_GPT2:
	default:
		return "default";
	}
}

static void put_tokenizer(struct gbuf *b, uint32_t *n_kv,
			  const struct tok_spec *v)
{
	const char *ids[] = {
		"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
		"tokenizer.ggml.unknown_token_id",
		"tokenizer.ggml.padding_token_id",
	};
	int32_t id_values[] = { v->bos_id, v->eos_id, v->unk_id, v->pad_id };
	bool bpe = v->kind == TOK_KIND_BPE;
	uint32_t i;

	kv_str(b, n_kv, "tokenizer.ggml.model", bpe ? "gpt2" : "llama");
	if (bpe)
		kv_str(b, n_kv, "tokenizer.ggml.pre", pre_name(v->pre));
	kv_arr_str(b, n_kv, "tokenizer.ggml.tokens", v->n_vocab, v->tokens,
		   v->token_lens);
	if (v->scores)
		kv_arr_4(b, n_kv, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32,
			 v->n_vocab, v->scores);
	if (v->types) {
		kv_arr_4(b, n_kv, "tokenizer.ggml.token_type", GGUF_TYPE_INT32,
			 v->n_vocab, v->types);
	} else {
		/* Converted files carry token types, so mark every token
		 * normal when the vocabulary has none. */
		gb_key(b, n_kv, "tokenizer.ggml.token_type", GGUF_TYPE_ARRAY);
		gb_u32(b, GGUF_TYPE_INT32);
		gb_u64(b, v->n_vocab);
		for (i = 0; i < v->n_vocab; i++)
			gb_u32(b, TOK_TYPE_NORMAL);
	}
	if (bpe && v->n_merges)
		kv_arr_str(b, n_kv, "tokenizer.ggml.merges", v->n_merges,
			   v->merges, v->merge_lens);
	for (i = 0; i < 4; i++)
		if (id_values[i] >= 0)
			kv_u32(b, n_kv, ids[i], (uint32_t)id_values[i]);
	kv_bool(b, n_kv, "tokenizer.ggml.add_bos_token", v->add_bos);
	kv_bool(b, n_kv, "tokenizer.ggml.add_eos_token", v->add_eos);
	kv_bool(b, n_kv, "tokenizer.ggml.add_space_prefix",
		v->add_space_prefix);
}

static void put_hparams(struct gbuf *b, uint32_t *n_kv,
			const struct testmodel_opts *o, uint32_t n_vocab)
{
	const char *a = o->arch;
	char key[96];

#define KEY(suffix) (snprintf(key, sizeof(key), "%s.%s", a, suffix), key)
	kv_u32(b, n_kv, KEY("context_length"), o->n_ctx);
	kv_u32(b, n_kv, KEY("embedding_length"), o->d_model);
	kv_u32(b, n_kv, KEY("block_count"), o->n_layers);
	kv_u32(b, n_kv, KEY("feed_forward_length"), o->d_ff);
	kv_u32(b, n_kv, KEY("attention.head_count"), o->n_heads);
	kv_u32(b, n_kv, KEY("attention.head_count_kv"), o->n_kv_heads);
	kv_f32(b, n_kv, KEY("attention.layer_norm_rms_epsilon"), 1e-5f);
	kv_f32(b, n_kv, KEY("rope.freq_base"), o->rope_theta);
	kv_u32(b, n_kv, KEY("rope.dimension_count"), o->d_model / o->n_heads);
	kv_u32(b, n_kv, KEY("vocab_size"), n_vocab);
#undef KEY
}

/* Builds the whole header: fixed fields, metadata and tensor infos. */
static int build_header(struct gbuf *b, const struct testmodel_opts *o,
			const struct tok_spec *vocab, const struct tm_plan *p)
{
	uint32_t n_kv = 0;
	size_t n_kv_at, i;
	uint64_t n64;
	char name[64];

	gb_put(b, "GGUF", 4);
	gb_u32(b, o->gguf_version);
	gb_u64(b, p->n);
	n_kv_at = b->len;
	gb_u64(b, 0);

	kv_str(b, &n_kv, "general.architecture", o->arch);
	snprintf(name, sizeof(name), "kvchain test %s", o->arch);
	kv_str(b, &n_kv, "general.name", name);
	kv_u32(b, &n_kv, "general.alignment", TM_ALIGNMENT);
	put_hparams(b, &n_kv, o, vocab->n_vocab);
	put_tokenizer(b, &n_kv, vocab);

	for (i = 0; i < p->n; i++) {
		const struct tm_tensor *t = &p->t[i];

		gb_str(b, t->name, strlen(t->name));
		gb_u32(b, t->n_dims);
		gb_u64(b, t->ne[0]);
		if (t->n_dims > 1)
			gb_u64(b, t->ne[1]);
		gb_u32(b, t->type);
		gb_u64(b, t->offset);
	}
	while (b->len % TM_ALIGNMENT)
		gb_put(b, "", 1);
	if (b->err)
		return b->err;
	n64 = n_kv;
	memcpy(b->data + n_kv_at, &n64, sizeof(n64));
	return 0;
}

void testmodel_defaults(struct testmodel_opts *opts)
{
	memset(opts, 0, sizeof(*opts));
	opts->arch = "llama";
	opts->wtype = KERN_TYPE_F32;
	opts->tok_kind = TOK_KIND_SPM;
	opts->tok_pre = TOK_PRE_GPT2;
	opts->d_model = 64;
	opts->n_layers = 2;
	opts->n_heads = 4;
	opts->n_kv_heads = 2;
	opts->d_ff = 128;
	opts->n_ctx = 256;
	opts->rope_theta = 10000.0f;
	opts->gguf_version = 3;
	opts->seed = 1;
}

/* Checks that @n elements form whole blocks of the weight type. */
static int check_blocks(const struct testmodel_opts *o, const char *what,
			uint32_t n, char *err, size_t errlen)
{
	if (kern_row_bytes(o->wtype, n))
		return 0;
	tm_errf(err, errlen, "%s %u is not a multiple of the %s block size %d",
		what, n, kern_type_name(o->wtype),
		kern_type_block_elems(o->wtype));
	return -EINVAL;
}

static int check_opts(const struct testmodel_opts *o, char *err,
		      size_t errlen)
{
	if (!o->arch || (strcmp(o->arch, "llama") && strcmp(o->arch, "qwen2"))) {
		tm_errf(err, errlen, "architecture '%s' is not llama or qwen2",
			o->arch ? o->arch : "(null)");
		return -EINVAL;
	}
	if (o->gguf_version != 2 && o->gguf_version != 3) {
		tm_errf(err, errlen, "GGUF version %u is not 2 or 3",
			o->gguf_version);
		return -EINVAL;
	}
	if (!kern_type_supported(o->wtype)) {
		tm_errf(err, errlen, "weight type %u is not supported",
			(unsigned)o->wtype);
		return -EINVAL;
	}
	if (!o->d_model || !o->n_layers || !o->n_heads || !o->n_kv_heads ||
	    !o->d_ff || !o->n_ctx) {
		tm_errf(err, errlen, "d_model, n_layers, n_heads, n_kv_heads, d_ff and n_ctx must all be positive");
		return -EINVAL;
	}
	if (o->d_model % o->n_heads || (o->d_model / o->n_heads) % 2) {
		tm_errf(err, errlen, "d_model %u is not an even head size times n_heads %u",
			o->d_model, o->n_heads);
		return -EINVAL;
	}
	if (o->n_heads % o->n_kv_heads) {
		tm_errf(err, errlen, "n_heads %u is not a multiple of n_kv_heads %u",
			o->n_heads, o->n_kv_heads);
		return -EINVAL;
	}
	if (check_blocks(o, "d_model", o->d_model, err, errlen) ||
	    check_blocks(o, "d_ff", o->d_ff, err, errlen))
		return -EINVAL;
	return 0;
}

static int write_file(FILE *fp, const struct gbuf *header,
		      const struct tm_plan *plan,
		      const struct testmodel_opts *opts)
{
	int ret;

	if (fwrite(header->data, 1, header->len, fp) != header->len)
		return -EIO;
	ret = write_data(fp, plan, opts);
	if (ret)
		return ret;
	if (fflush(fp) || ferror(fp))
		return -EIO;
	return 0;
}

int testmodel_write(const char *path, const struct testmodel_opts *opts,
		    char *err, size_t errlen)
{
	const struct tok_spec *vocab;
	int ret;

	/* Invalid options are reported before a missing vocabulary. */
	ret = check_opts(opts, err, errlen);
	if (ret)
		return ret;
	vocab = testvocab_get(opts->tok_kind, opts->tok_pre);
	if (!vocab) {
		tm_errf(err, errlen, "no test vocabulary for this tokenizer");
		return -EINVAL;
	}
	return testmodel_write_vocab(path, opts, vocab, err, errlen);
}

int testmodel_write_vocab(const char *path, const struct testmodel_opts *opts,
			  const struct tok_spec *vocab, char *err,
			  size_t errlen)
{
	struct tm_plan plan = { 0 };
	struct gbuf header = { 0 };
	char *tmp = NULL;
	FILE *fp;
	int fd, ret;

	ret = check_opts(opts, err, errlen);
	if (ret)
		return ret;
	ret = plan_model(&plan, opts, vocab->n_vocab);
	if (!ret)
		ret = build_header(&header, opts, vocab, &plan);
	if (ret) {
		tm_errf(err, errlen, "out of memory building the header");
		goto out_free;
	}

	ret = -ENOMEM;
	if (asprintf(&tmp, "%s.tmp.XXXXXX", path) < 0) {
		tmp = NULL;
		tm_errf(err, errlen, "out of memory");
		goto out_free;
	}
	fd = mkstemp(tmp);
	if (fd < 0) {
		ret = -errno;
		tm_errf(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
		goto out_free;
	}
	/* mkstemp creates the file with mode 0600, but a model is public. */
	fchmod(fd, 0644);
	fp = fdopen(fd, "wb");
	if (!fp) {
		ret = -errno;
		tm_errf(err, errlen, "%s: cannot open: %s", tmp, strerror(errno));
		close(fd);
		goto out_unlink;
	}
	setvbuf(fp, NULL, _IOFBF, 1 << 20);
	ret = write_file(fp, &header, &plan, opts);
	if (fclose(fp) && !ret)
		ret = -EIO;
	if (ret) {
		tm_errf(err, errlen, "%s: write failed: %s", tmp, strerror(-ret));
		goto out_unlink;
	}
	if (rename(tmp, path)) {
		ret = -errno;
		tm_errf(err, errlen, "cannot rename %s to %s: %s", tmp, path,
			strerror(errno));
		goto out_unlink;
	}
	ret = 0;
	goto out_free;

out_unlink:
	unlink(tmp);
out_free:
	free(tmp);
	free(header.data);
	free(plan.t);
	return ret;
}
