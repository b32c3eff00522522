/* SPDX-License-Identifier: MIT */
/*
 * model.c - builds a struct model from a GGUF file: reads the architecture
 * keys, checks every tensor the forward pass needs for its name, shape and
 * type, and sets up RoPE. Weight matrices stay in the mapping; only the
 * small 1-D tensors (norms, biases) are copied out as floats.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "model.h"
#include "tokenizer.h"

struct loader {
	const char *path;
	const struct gguf_file *file;
	const char *arch;	/* "llama" or "qwen2" */
	char *err;
	size_t errlen;
};

static int load_error(struct loader *ld, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int load_error(struct loader *ld, int code, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!ld->err || !ld->errlen)
		return code;
	n = snprintf(ld->err, ld->errlen, "%s: ", ld->path);
	if (n < 0 || (size_t)n >= ld->errlen)
		return code;
	va_start(ap, fmt);
	vsnprintf(ld->err + n, ld->errlen - n, fmt, ap);
	va_end(ap);
	return code;
}

/*
 * Reads the integer key "<arch>.<name>". A missing key is an error unless
 * @optional, when *out keeps its value.
 */
static int arch_u32(struct loader *ld, const char *name, bool optional,
		    uint32_t *out)
{
	char key[128];
	int rc;

	snprintf(key, sizeof(key), "%s.%s", ld->arch, name);
	rc = gguf_get_u32(ld->file, key, out);
	if (rc == -ENOENT && optional)
		return 0;
	if (rc == -ENOENT)
		return load_error(ld, -EINVAL, "missing key %s", key);
	if (rc < 0)
		return load_error(ld, -EINVAL,
				  "key %s is not an unsigned 32-bit integer",
				  key);
	return 0;
}

/* Reads the float key "<arch>.<name>", or stores @fallback if missing. */
static int arch_f32(struct loader *ld, const char *name, float fallback,
		    float *out)
{
	char key[128];
	int rc;

	snprintf(key, sizeof(key), "%s.%s", ld->arch, name);
	rc = gguf_get_f32(ld->file, key, out);
	if (rc == -ENOENT) {
		*out = fallback;
		return 0;
	}
	if (rc < 0)
		return load_error(ld, -EINVAL, "key %s is not a float", key);
	return 0;
}

/*
 * Finds tensor @name and checks that it is 2-D with ne = (n_in, n_out) and
 * a supported type. A missing optional tensor leaves m->data NULL.
 */
static int load_matrix(struct loader *ld, const char *name, uint32_t n_in,
		       uint32_t n_out, bool optional, struct model_matrix *m)
{
	const struct gguf_tensor *t = gguf_find_tensor(ld->file, name);

	memset(m, 0, sizeof(*m));
	if (!t) {
		if (optional)
			return 0;
		return load_error(ld, -EINVAL, "missing tensor %s", name);
	}
	if (t->n_dims != 2 || t->ne[0] != n_in || t->ne[1] != n_out)
		return load_error(ld, -EINVAL,
				  "tensor %s has shape [%" PRIu64 ", %" PRIu64
				  "] (%" PRIu32 " dims), expected [%" PRIu32
				  ", %" PRIu32 "]",
				  name, t->ne[0], t->n_dims > 1 ? t->ne[1] : 1,
				  t->n_dims, n_in, n_out);
	if (!kern_type_supported(t->type) ||
	    kern_row_bytes(t->type, n_in) == 0)
		return load_error(ld, -EINVAL,
				  "tensor %s has type %s (%" PRIu32
				  "), which cannot hold rows of %" PRIu32
				  " elements",
				  name, kern_type_name(t->type), t->type, n_in);
	m->data = t->data;
	m->type = t->type;
	m->n_in = n_in;
	m->n_out = n_out;
	return 0;
}

/* Copies the 1-D tensor @name of @n elements out as floats. */
static int load_vector(struct loader *ld, const char *name, uint32_t n,
		       bool optional, float **out)
{
	const struct gguf_tensor *t = gguf_find_tensor(ld->file, name);

	*out = NULL;
	if (!t) {
		if (optional)
			return 0;
		return load_error(ld, -EINVAL, "missing tensor %s", name);
	}
	if (t->n_dims != 1 || t->ne[0] != n)
		return load_error(ld, -EINVAL,
				  "tensor %s has %" PRIu64
				  " elements in %" PRIu32
				  " dims, expected a vector of %" PRIu32,
				  name, t->ne[0], t->n_dims, n);
	if (t->type != KERN_TYPE_F32 && t->type != KERN_TYPE_F16 &&
	    t->type != KERN_TYPE_BF16)
		return load_error(ld, -EINVAL,
				  "tensor %s has type %s, expected F32, F16 "
				  "or BF16",
				  name, kern_type_name(t->type));
	*out = malloc((size_t)n * sizeof(float));
	if (!*out)
		return load_error(ld, -ENOMEM, "out of memory for %s", name);
	kern_dequantize_row(t->type, t->data, *out, n);
	return 0;
}

static int load_config(struct loader *ld, struct model_config *cfg)
{
	struct gguf_str arch;
	int rc;

	rc = gguf_get_str(ld->file, "general.architecture", &arch);
	if (rc == -ENOENT)
		return load_error(ld, -EINVAL,
				  "missing key general.architecture");
	if (rc < 0)
		return load_error(ld, -EINVAL,
				  "key general.architecture is not a string");
	if (gguf_str_eq(arch, "llama")) {
		cfg->arch = MODEL_ARCH_LLAMA;
		ld->arch = "llama";
	} else if (gguf_str_eq(arch, "qwen2")) {
		cfg->arch = MODEL_ARCH_QWEN2;
		ld->arch = "qwen2";
	} else {
		return load_error(ld, -EINVAL,
				  "general.architecture '%.*s' is not "
				  "supported (expected llama or qwen2)",
				  (int)(arch.len > 64 ? 64 : arch.len),
				  arch.ptr);
	}

	if ((rc = arch_u32(ld, "embedding_length", false, &cfg->d_model)) ||
	    (rc = arch_u32(ld, "block_count", false, &cfg->n_layers)) ||
	    (rc = arch_u32(ld, "feed_forward_length", false, &cfg->d_ff)) ||
	    (rc = arch_u32(ld, "attention.head_count", false,
			   &cfg->n_heads)) ||
	    (rc = arch_u32(ld, "context_length", false, &cfg->n_ctx_train)))
		return rc;

	/* Without the key, every query head has its own kv head. */
	cfg->n_kv_heads = cfg->n_heads;
	if ((rc = arch_u32(ld, "attention.head_count_kv", true,
			   &cfg->n_kv_heads)) ||
	    (rc = arch_f32(ld, "attention.layer_norm_rms_epsilon", 1e-5f,
			   &cfg->rms_eps)) ||
	    (rc = arch_f32(ld, "rope.freq_base", 10000.0f, &cfg->rope_theta)))
		return rc;

	if (cfg->d_model == 0 || cfg->d_model > 65536)
		return load_error(ld, -EINVAL,
				  "%s.embedding_length %" PRIu32
				  " is out of range (1..65536)",
				  ld->arch, cfg->d_model);
	if (cfg->n_layers == 0 || cfg->n_layers > 1024)
		return load_error(ld, -EINVAL,
				  "%s.block_count %" PRIu32
				  " is out of range (1..1024)",
				  ld->arch, cfg->n_layers);
	if (cfg->d_ff == 0 || cfg->d_ff > 1u << 20)
		return load_error(ld, -EINVAL,
				  "%s.feed_forward_length %" PRIu32
				  " is out of range",
				  ld->arch, cfg->d_ff);
	if (cfg->n_heads == 0 || cfg->d_model % cfg->n_heads != 0)
		return load_error(ld, -EINVAL,
				  "%s.attention.head_count %" PRIu32
				  " does not divide embedding_length %" PRIu32,
				  ld->arch, cfg->n_heads, cfg->d_model);
	if (cfg->n_kv_heads == 0 || cfg->n_heads % cfg->n_kv_heads != 0)
		return load_error(ld, -EINVAL,
				  "%s.attention.head_count_kv %" PRIu32
				  " does not divide head_count %" PRIu32,
				  ld->arch, cfg->n_kv_heads, cfg->n_heads);
	if (!(cfg->rms_eps > 0.0f) || !(cfg->rope_theta > 0.0f))
		return load_error(ld, -EINVAL,
				  "%s.attention.layer_norm_rms_epsilon or "
				  "rope.freq_base is not positive",
				  ld->arch);
	cfg->head_dim = cfg->d_model / cfg->n_heads;
	return 0;
}

static int load_rope(struct loader *ld, struct model *m)
{
	const struct gguf_tensor *freqs;
	uint32_t n_rot = m->cfg.head_dim;
	float scale = 1.0f, factor;
	struct gguf_str type;
	int rc;

	if ((rc = arch_u32(ld, "rope.dimension_count", true, &n_rot)))
		return rc;
	if (n_rot == 0 || n_rot > m->cfg.head_dim || n_rot % 2 ||
	    n_rot > 1024)
		return load_error(ld, -EINVAL,
				  "%s.rope.dimension_count %" PRIu32
				  " is invalid for head size %" PRIu32,
				  ld->arch, n_rot, m->cfg.head_dim);

	/* Linear scaling divides positions by the factor. */
	char key[128];
	snprintf(key, sizeof(key), "%s.rope.scaling.type", ld->arch);
	if (gguf_get_str(ld->file, key, &type) == 0 &&
	    gguf_str_eq(type, "linear")) {
		if ((rc = arch_f32(ld, "rope.scaling.factor", 1.0f, &factor)))
			return rc;
		if (!(factor > 0.0f))
			return load_error(ld, -EINVAL,
					  "%s.rope.scaling.factor is not "
					  "positive", ld->arch);
		scale = 1.0f / factor;
	}

	/* Llama 3.x files carry their frequency divisors as a tensor. */
	const float *factors = NULL;
	freqs = gguf_find_tensor(ld->file, "rope_freqs.weight");
	if (freqs) {
		if (freqs->type != KERN_TYPE_F32 || freqs->n_dims != 1 ||
		    freqs->ne[0] != n_rot / 2)
			return load_error(ld, -EINVAL,
					  "tensor rope_freqs.weight must be "
					  "F32 with %" PRIu32 " elements",
					  n_rot / 2);
		factors = freqs->data;
	}

	rc = kern_rope_init(&m->rope, (int)n_rot,
			    m->cfg.arch == MODEL_ARCH_QWEN2,
			    m->cfg.rope_theta, scale, NULL, factors);
	if (rc < 0)
		return load_error(ld, rc, "RoPE setup failed for %" PRIu32
				  " rotated dimensions", n_rot);
	return 0;
}

static int load_layer(struct loader *ld, struct model *m, uint32_t i)
{
	const struct model_config *c = &m->cfg;
	struct model_layer *l = &m->layers[i];
	uint32_t q_dim = c->n_heads * c->head_dim;
	uint32_t kv_dim = c->n_kv_heads * c->head_dim;
	bool qwen2 = c->arch == MODEL_ARCH_QWEN2;
	char name[96];
	int rc;

#define TENSOR(suffix) (snprintf(name, sizeof(name), "blk.%" PRIu32 ".%s", \
				 i, suffix), name)
	if ((rc = load_vector(ld, TENSOR("attn_norm.weight"), c->d_model,
			      false, &l->attn_norm)) ||
	    (rc = load_matrix(ld, TENSOR("attn_q.weight"), c->d_model, q_dim,
			      false, &l->wq)) ||
	    (rc = load_matrix(ld, TENSOR("attn_k.weight"), c->d_model, kv_dim,
			      false, &l->wk)) ||
	    (rc = load_matrix(ld, TENSOR("attn_v.weight"), c->d_model, kv_dim,
			      false, &l->wv)) ||
	    (rc = load_matrix(ld, TENSOR("attn_output.weight"), q_dim,
			      c->d_model, false, &l->wo)) ||
	    (rc = load_vector(ld, TENSOR("attn_q.bias"), q_dim, !qwen2,
			      &l->bq)) ||
	    (rc = load_vector(ld, TENSOR("attn_k.bias"), kv_dim, !qwen2,
			      &l->bk)) ||
	    (rc = load_vector(ld, TENSOR("attn_v.bias"), kv_dim, !qwen2,
			      &l->bv)) ||
	    (rc = load_vector(ld, TENSOR("ffn_norm.weight"), c->d_model,
			      false, &l->ffn_norm)) ||
	    (rc = load_matrix(ld, TENSOR("ffn_gate.weight"), c->d_model,
			      c->d_ff, false, &l->w_gate)) ||
	    (rc = load_matrix(ld, TENSOR("ffn_up.weight"), c->d_model,
			      c->d_ff, false, &l->w_up)) ||
	    (rc = load_matrix(ld, TENSOR("ffn_down.weight"), c->d_ff,
			      c->d_model, false, &l->w_down)))
		return rc;
#undef TENSOR
	return 0;
}

int model_load(const char *path, struct model **out, char *err,
	       size_t errlen)
{
	struct loader ld = { .path = path, .err = err, .errlen = errlen };
	struct model *m;
	uint32_t i;
	int rc;

	*out = NULL;
	if (err && errlen)
		err[0] = '\0';
	m = calloc(1, sizeof(*m));
	if (!m)
		return load_error(&ld, -ENOMEM, "out of memory");

	rc = gguf_open(path, &m->file, err, errlen);
	if (rc < 0)
		goto out_free;
	ld.file = m->file;

	if ((rc = load_config(&ld, &m->cfg)))
		goto out_free;

	rc = tok_load_gguf(m->file, &m->tok, err, errlen);
	if (rc < 0) {
		/* Prefix the tokenizer's message with the file name. */
		char msg[512];

		snprintf(msg, sizeof(msg), "%s", err ? err : "");
		load_error(&ld, rc, "%s", msg);
		goto out_free;
	}
	m->cfg.n_vocab = tok_n_vocab(m->tok);

	if ((rc = load_matrix(&ld, "token_embd.weight", m->cfg.d_model,
			      m->cfg.n_vocab, false, &m->tok_embd)) ||
	    (rc = load_matrix(&ld, "output.weight", m->cfg.d_model,
			      m->cfg.n_vocab, true, &m->output)) ||
	    (rc = load_vector(&ld, "output_norm.weight", m->cfg.d_model,
			      false, &m->output_norm)))
		goto out_free;
	if (!m->output.data)
		m->output = m->tok_embd;

	if ((rc = load_rope(&ld, m)))
		goto out_free;

	m->layers = calloc(m->cfg.n_layers, sizeof(*m->layers));
	if (!m->layers) {
		rc = load_error(&ld, -ENOMEM, "out of memory");
		goto out_free;
	}
	for (i = 0; i < m->cfg.n_layers; i++)
		if ((rc = load_layer(&ld, m, i)))
			goto out_free;

	*out = m;
	return 0;

out_free:
	model_free(m);
	return rc;
}

void model_free(struct model *m)
{
	uint32_t i;

	if (!m)
		return;
	if (m->layers) {
		for (i = 0; i < m->cfg.n_layers; i++) {
			struct model_layer *l = &m->layers[i];

			free(l->attn_norm);
			free(l->ffn_norm);
			free(l->bq);
			free(l->bk);
			free(l->bv);
		}
		free(m->layers);
	}
	free(m->output_norm);
	tok_free(m->tok);
	gguf_close(m->file);
	free(m);
}

void model_embed(const struct model *m, int32_t id, float *out)
{
	size_t row = kern_row_bytes(m->tok_embd.type, m->cfg.d_model);
	const uint8_t *src = (const uint8_t *)m->tok_embd.data +
			     (size_t)id * row;

	kern_dequantize_row(m->tok_embd.type, src, out, m->cfg.d_model);
}
