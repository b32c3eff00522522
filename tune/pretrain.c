/* SPDX-License-Identifier: MIT */
/*
 * pretrain.c - the trainable F32 copy of a model's weights, its GGUF
 * writer, one optimiser step over text windows, and the text reader of
 * kvchain-tune pretrain (tune/pretrain.h).
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data.h"
#include "gguf.h"
#include "kvstore.h"
#include "pretrain.h"
#include "segment.h"
#include "tokenizer.h"

static void set_err(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* ==== The F32 copy ==================================================== */

static bool is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool is_tied(const struct model *m)
{
	return m->output.data == m->tok_embd.data;
}

size_t tune_params_count(const struct model *m)
{
	const struct model_config *c = &m->cfg;
	size_t d = c->d_model, ff = c->d_ff;
	size_t q_dim = (size_t)c->n_heads * c->head_dim;
	size_t kv_dim = (size_t)c->n_kv_heads * c->head_dim;
	size_t layer, n;

	layer = 2 * d + d * q_dim * 2 + d * kv_dim * 2 + 3 * d * ff;
	if (c->arch == MODEL_ARCH_QWEN2)
		layer += q_dim + 2 * kv_dim;
	n = (size_t)c->n_vocab * d * (is_tied(m) ? 1 : 2) + d;
	return n + layer * c->n_layers;
}

/* Appends a tensor entry named @name to @p and adds its size to p->n. */
static struct tune_tensor *add_tensor(struct tune_params *p,
				      const char *name, uint32_t n_dims,
				      uint64_t ne0, uint64_t ne1)
{
	struct tune_tensor *t = &p->tensors[p->n_tensors++];

	snprintf(t->name, sizeof(t->name), "%s", name);
	t->n_dims = n_dims;
	t->ne[0] = ne0;
	t->ne[1] = n_dims > 1 ? ne1 : 1;
	t->offset = p->n;
	t->n = (size_t)ne0 * t->ne[1];
	p->n += t->n;
	return t;
}

/* Copies matrix @mm into the values of @t and points @view at them. */
static void copy_matrix(struct tune_params *p, const struct tune_tensor *t,
			const struct model_matrix *mm,
			struct model_matrix *view, double **grad)
{
	size_t row_bytes = kern_row_bytes(mm->type, mm->n_in);
	float *w = p->w + t->offset;
	uint32_t r;

	for (r = 0; r < mm->n_out; r++)
		kern_dequantize_row(mm->type,
				    (const uint8_t *)mm->data + r * row_bytes,
				    w + (size_t)r * mm->n_in, mm->n_in);
	*view = (struct model_matrix){
		.data = w, .type = KERN_TYPE_F32, .n_in = mm->n_in,
		.n_out = mm->n_out,
	};
	*grad = p->g + t->offset;
}

/* Copies vector @src (of t->n floats) and points @view and @grad at it. */
static void copy_vector(struct tune_params *p, const struct tune_tensor *t,
			const float *src, float **view, double **grad)
{
	memcpy(p->w + t->offset, src, t->n * sizeof(float));
	*view = p->w + t->offset;
	*grad = p->g + t->offset;
}

/* Lists the tensors of @m in p->tensors, in model_load's order. */
static void plan_tensors(struct tune_params *p, const struct model *m)
{
	const struct model_config *c = &m->cfg;
	uint32_t q_dim = c->n_heads * c->head_dim;
	uint32_t kv_dim = c->n_kv_heads * c->head_dim, i;
	char name[64];

#define BLK(suffix) (snprintf(name, sizeof(name), "blk.%" PRIu32 ".%s", i, \
			      suffix), name)
	add_tensor(p, "token_embd.weight", 2, c->d_model, c->n_vocab);
	if (!is_tied(m))
		add_tensor(p, "output.weight", 2, c->d_model, c->n_vocab);
	add_tensor(p, "output_norm.weight", 1, c->d_model, 1);
	for (i = 0; i < c->n_layers; i++) {
		add_tensor(p, BLK("attn_norm.weight"), 1, c->d_model, 1);
		add_tensor(p, BLK("attn_q.weight"), 2, c->d_model, q_dim);
		add_tensor(p, BLK("attn_k.weight"), 2, c->d_model, kv_dim);
		add_tensor(p, BLK("attn_v.weight"), 2, c->d_model, kv_dim);
		add_tensor(p, BLK("attn_output.weight"), 2, q_dim, c->d_model);
		if (m->layers[i].bq) {
			add_tensor(p, BLK("attn_q.bias"), 1, q_dim, 1);
			add_tensor(p, BLK("attn_k.bias"), 1, kv_dim, 1);
			add_tensor(p, BLK("attn_v.bias"), 1, kv_dim, 1);
		}
		add_tensor(p, BLK("ffn_norm.weight"), 1, c->d_model, 1);
		add_tensor(p, BLK("ffn_gate.weight"), 2, c->d_model, c->d_ff);
		add_tensor(p, BLK("ffn_up.weight"), 2, c->d_model, c->d_ff);
		add_tensor(p, BLK("ffn_down.weight"), 2, c->d_ff, c->d_model);
	}
#undef BLK
}

/* Fills the values, the model view and the gradient pointers. */
static void fill_params(struct tune_params *p, const struct model *src)
{
	struct model *v = &p->model;
	struct tune_grads *g = &p->grads;
	const struct tune_tensor *t = p->tensors;
	uint32_t i;

	copy_matrix(p, t++, &src->tok_embd, &v->tok_embd, &g->tok_embd);
	if (is_tied(src)) {
		v->output = v->tok_embd;
		g->output = g->tok_embd;
	} else {
		copy_matrix(p, t++, &src->output, &v->output, &g->output);
	}
	copy_vector(p, t++, src->output_norm, &v->output_norm,
		    &g->output_norm);
	for (i = 0; i < src->cfg.n_layers; i++) {
		const struct model_layer *sl = &src->layers[i];
		struct model_layer *l = &v->layers[i];
		struct tune_layer_grads *lg = &g->layers[i];

		copy_vector(p, t++, sl->attn_norm, &l->attn_norm,
			    &lg->attn_norm);
		copy_matrix(p, t++, &sl->wq, &l->wq, &lg->wq);
		copy_matrix(p, t++, &sl->wk, &l->wk, &lg->wk);
		copy_matrix(p, t++, &sl->wv, &l->wv, &lg->wv);
		copy_matrix(p, t++, &sl->wo, &l->wo, &lg->wo);
		if (sl->bq) {
			copy_vector(p, t++, sl->bq, &l->bq, &lg->bq);
			copy_vector(p, t++, sl->bk, &l->bk, &lg->bk);
			copy_vector(p, t++, sl->bv, &l->bv, &lg->bv);
		}
		copy_vector(p, t++, sl->ffn_norm, &l->ffn_norm,
			    &lg->ffn_norm);
		copy_matrix(p, t++, &sl->w_gate, &l->w_gate, &lg->w_gate);
		copy_matrix(p, t++, &sl->w_up, &l->w_up, &lg->w_up);
		copy_matrix(p, t++, &sl->w_down, &l->w_down, &lg->w_down);
	}
}

int tune_params_create(const struct model *src, size_t max_params,
		       struct tune_params **out, char *err, size_t errlen)
{
	size_t count = tune_params_count(src);
	struct tune_params *p;

	*out = NULL;
	if (count > max_params) {
		set_err(err, errlen,
			"the model has %zu weights; pretrain trains models of at most %zu (each weight takes 28 bytes of memory while training)",
			count, max_params);
		return -EFBIG;
	}
	p = calloc(1, sizeof(*p));
	if (!p)
		goto out_nomem;
	p->model = *src;
	p->model.layers = calloc(src->cfg.n_layers ? src->cfg.n_layers : 1,
				 sizeof(*p->model.layers));
	p->grads.layers = calloc(src->cfg.n_layers ? src->cfg.n_layers : 1,
				 sizeof(*p->grads.layers));
	p->tensors = calloc(3 + (size_t)src->cfg.n_layers * 12,
			    sizeof(*p->tensors));
	if (!p->model.layers || !p->grads.layers || !p->tensors)
		goto out_free;
	plan_tensors(p, src);
	p->w = malloc(p->n * sizeof(float));
	p->g = calloc(p->n, sizeof(double));
	if (!p->w || !p->g)
		goto out_free;
	fill_params(p, src);
	*out = p;
	return 0;

out_free:
	tune_params_free(p);
out_nomem:
	set_err(err, errlen, "out of memory for %zu weights", count);
	return -ENOMEM;
}

void tune_params_free(struct tune_params *p)
{
	if (!p)
		return;
	free(p->model.layers);
	free(p->grads.layers);
	free(p->tensors);
	free(p->w);
	free(p->g);
	free(p);
}

/* ==== GGUF writer ===================================================== */

/* Bytes of a scalar metadata value of @type, 0 for strings and arrays. */
static size_t scalar_bytes(uint32_t type)
{
	switch (type) {
	case GGUF_TYPE_UINT8:
	case GGUF_TYPE_INT8:
	case GGUF_TYPE_BOOL:
		return 1;
	case GGUF_TYPE_UINT16:
	case GGUF_TYPE_INT16:
		return 2;
	case GGUF_TYPE_UINT32:
	case GGUF_TYPE_INT32:
	case GGUF_TYPE_FLOAT32:
		return 4;
	case GGUF_TYPE_UINT64:
	case GGUF_TYPE_INT64:
	case GGUF_TYPE_FLOAT64:
		return 8;
	}
	return 0;
}

static int put(FILE *f, const void *p, size_t n)
{
	return fwrite(p, 1, n, f) == n ? 0 : -EIO;
}

static int put_u32(FILE *f, uint32_t v)
{
	return put(f, &v, sizeof(v));
}

static int put_u64(FILE *f, uint64_t v)
{
	return put(f, &v, sizeof(v));
}

/* Writes a GGUF string (u64 length, bytes) of @len bytes at @s. */
static int put_str(FILE *f, const char *s, uint64_t len)
{
	int rc = put_u64(f, len);

	return rc ? rc : put(f, s, (size_t)len);
}

/* Copies metadata entry @kv as the source file encodes it. */
static int put_kv(FILE *f, const struct gguf_kv *kv)
{
	uint64_t len, i;
	int rc;

	if ((rc = put_str(f, kv->key.ptr, kv->key.len)) ||
	    (rc = put_u32(f, kv->type)))
		return rc;
	if (kv->type == GGUF_TYPE_STRING) {
		memcpy(&len, kv->value, sizeof(len));
		return put(f, kv->value, sizeof(len) + (size_t)len);
	}
	if (kv->type != GGUF_TYPE_ARRAY)
		return put(f, kv->value, scalar_bytes(kv->type));
	if ((rc = put_u32(f, kv->arr_type)) || (rc = put_u64(f, kv->arr_n)))
		return rc;
	if (kv->arr_type == GGUF_TYPE_STRING) {
		for (i = 0; i < kv->arr_n && rc == 0; i++) {
			struct gguf_str s = gguf_array_str(kv, i);

			rc = put_str(f, s.ptr, s.len);
		}
		return rc;
	}
	if (!scalar_bytes(kv->arr_type))
		return -ENOTSUP;	/* arrays of arrays */
	return put(f, kv->value, (size_t)kv->arr_n * scalar_bytes(kv->arr_type));
}

static int put_pad(FILE *f, uint64_t *pos, uint32_t align)
{
	static const uint8_t zero[256];
	uint64_t pad = (align - *pos % align) % align;

	*pos += pad;
	return put(f, zero, (size_t)pad);
}

/* Returns the trained tensor named @name, or NULL. */
static const struct tune_tensor *find_trained(const struct tune_params *p,
					      struct gguf_str name)
{
	uint32_t i;

	for (i = 0; i < p->n_tensors; i++)
		if (gguf_str_eq(name, p->tensors[i].name))
			return &p->tensors[i];
	return NULL;
}

static uint64_t tensor_elems(const struct gguf_tensor *t)
{
	uint64_t n = 1;
	uint32_t i;

	for (i = 0; i < t->n_dims; i++)
		n *= t->ne[i];
	return n;
}

/* Writes tensor @t's values as F32: trained ones from p->w. */
static int put_tensor_data(FILE *f, const struct tune_params *p,
			   const struct gguf_tensor *t, float *row)
{
	const struct tune_tensor *tt = find_trained(p, t->name);
	uint64_t rows, r;
	size_t row_bytes;
	int rc = 0;

	if (tt)
		return put(f, p->w + tt->offset, tt->n * sizeof(float));
	rows = tensor_elems(t) / t->ne[0];
	row_bytes = kern_row_bytes(t->type, (int64_t)t->ne[0]);
	for (r = 0; r < rows && rc == 0; r++) {
		kern_dequantize_row(t->type,
				    (const uint8_t *)t->data + r * row_bytes,
				    row, (int64_t)t->ne[0]);
		rc = put(f, row, (size_t)t->ne[0] * sizeof(float));
	}
	return rc;
}

static int write_gguf(FILE *f, const struct tune_params *p)
{
	const struct gguf_file *src = p->model.file;
	uint64_t i, pos = 0, off = 0, max_row = 1;
	uint32_t align = src->alignment, d;
	float *row;
	int rc;

	if ((rc = put(f, "GGUF", 4)) || (rc = put_u32(f, 3)) ||
	    (rc = put_u64(f, src->n_tensors)) || (rc = put_u64(f, src->n_kv)))
		return rc;
	for (i = 0; i < src->n_kv; i++)
		if ((rc = put_kv(f, &src->kv[i])))
			return rc;
	for (i = 0; i < src->n_tensors; i++) {
		const struct gguf_tensor *t = &src->tensors[i];

		if ((rc = put_str(f, t->name.ptr, t->name.len)) ||
		    (rc = put_u32(f, t->n_dims)))
			return rc;
		for (d = 0; d < t->n_dims; d++)
			if ((rc = put_u64(f, t->ne[d])))
				return rc;
		if ((rc = put_u32(f, KERN_TYPE_F32)) || (rc = put_u64(f, off)))
			return rc;
		off += tensor_elems(t) * sizeof(float);
		off += (align - off % align) % align;
		if (t->ne[0] > max_row)
			max_row = t->ne[0];
	}
	pos = (uint64_t)ftell(f);
	if ((rc = put_pad(f, &pos, align)))
		return rc;
	row = malloc((size_t)max_row * sizeof(float));
	if (!row)
		return -ENOMEM;
	for (i = 0; i < src->n_tensors && rc == 0; i++) {
		const struct gguf_tensor *t = &src->tensors[i];

		rc = put_tensor_data(f, p, t, row);
		pos += tensor_elems(t) * sizeof(float);
		if (rc == 0)
			rc = put_pad(f, &pos, align);
	}
	free(row);
	return rc;
}

int tune_params_write_gguf(const struct tune_params *p, const char *path,
			   char *err, size_t errlen)
{
	char tmp[4096];
	FILE *f;
	int rc;

	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)) {
		set_err(err, errlen, "%s: path too long", path);
		return -ENAMETOOLONG;
	}
	f = fopen(tmp, "wb");
	if (!f) {
		rc = -errno;
		set_err(err, errlen, "cannot create %s: %s", tmp, strerror(-rc));
		return rc;
	}
	rc = write_gguf(f, p);
	if (rc == 0 && (fflush(f) || fsync(fileno(f))))
		rc = -errno;
	if (fclose(f) && rc == 0)
		rc = -errno;
	if (rc == 0 && rename(tmp, path) < 0)
		rc = -errno;
	if (rc < 0) {
		set_err(err, errlen, "cannot write %s: %s", path,
			rc == -ENOTSUP ? "the input holds a metadata array of arrays" :
			strerror(-rc));
		unlink(tmp);
	}
	return rc;
}

/* ==== Training step =================================================== */

int tune_pretrain_layout(const int32_t *tokens, uint32_t len, int32_t next,
			 struct tune_layout *lay)
{
	struct tune_span *sp = &lay->spans[0];

	memset(lay, 0, sizeof(*lay));
	if (len == 0 || next < 0)
		return -EINVAL;
	sp->tokens = malloc((size_t)len * sizeof(int32_t));
	if (!sp->tokens)
		return -ENOMEM;
	memcpy(sp->tokens, tokens, (size_t)len * sizeof(int32_t));
	/* a shared input attends only to itself here, causally */
	sp->kind = SPAN_SHARED_INPUT;
	sp->n = len;
	sp->loss = true;
	sp->stop_id = next;
	lay->n_spans = 1;
	lay->n_pos = len;
	return 0;
}

int tune_pretrain_step(struct tune_ctx *ctx, struct tune_params *p,
		       const struct tune_adamw *opt, double *m, double *v,
		       struct tune_pretrain_step *st)
{
	struct tune_layout lay;
	double loss, sum = 0.0;
	uint32_t k, j, n_used = 0;
	size_t i;
	int rc;

	memset(p->g, 0, p->n * sizeof(double));
	for (k = 0; k < st->n_win; k++) {
		const int32_t *tok = st->stream + st->starts[k];
		/* position j of the window predicts stream token start + j + 1 */
		const uint8_t *skip = st->untrained ?
				      st->untrained + st->starts[k] + 1 : NULL;

		for (j = 0; skip && j < st->len && skip[j]; j++)
			;
		if (skip && j == st->len)
			continue;	/* nothing to train in this window */
		n_used++;
		rc = tune_pretrain_layout(tok, st->len, tok[st->len], &lay);
		if (rc < 0)
			return rc;
		lay.spans[0].untrained = skip;
		rc = tune_forward(ctx, &lay, NULL, &loss, NULL);
		if (rc == 0)
			rc = tune_backward_weights(ctx, NULL, &p->grads);
		tune_layout_free(&lay);
		if (rc < 0)
			return rc;
		sum += loss;
	}
	if (n_used == 0) {
		/* no window predicts a trained token: the weights stay */
		st->loss = 0.0;
		st->grad_norm = 0.0;
		return 0;
	}
	for (i = 0; i < p->n; i++)
		p->g[i] /= n_used;
	st->loss = sum / n_used;
	st->grad_norm = tune_clip_grad(p->g, p->n, st->clip);
	tune_adamw_step(opt, p->w, m, v, p->g, p->n, st->t, st->lr);
	return 0;
}

/* ==== Text ============================================================ */

/*
 * A growing token stream and, when untrained is not NULL, a byte per token
 * that is 1 where the token is not a target of the loss.
 */
struct stream {
	int32_t *ids;
	uint8_t *untrained;
	bool mark;		/* keep untrained */
	size_t n;
	size_t cap;
};

/* Appends @n tokens whose untrained byte is @skip. */
static int stream_add_marked(struct stream *s, const int32_t *ids, size_t n,
			     uint8_t skip)
{
	if (s->n + n > s->cap) {
		size_t cap = s->cap ? s->cap : 4096;
		int32_t *p;

		while (cap < s->n + n)
			cap *= 2;
		p = realloc(s->ids, cap * sizeof(int32_t));
		if (!p)
			return -ENOMEM;
		s->ids = p;
		if (s->mark) {
			uint8_t *u = realloc(s->untrained, cap);

			if (!u)
				return -ENOMEM;
			s->untrained = u;
		}
		s->cap = cap;
	}
	memcpy(s->ids + s->n, ids, n * sizeof(int32_t));
	if (s->mark)
		memset(s->untrained + s->n, skip, n);
	s->n += n;
	return 0;
}

static int stream_add(struct stream *s, const int32_t *ids, size_t n)
{
	return stream_add_marked(s, ids, n, 1);
}

/* Appends BOS + the tokens of @text + EOS (where they exist) to @s. */
static int add_text(struct stream *s, const struct tokenizer *tok,
		    const char *text, size_t len)
{
	int32_t bos = tok_bos(tok), eos = tok_eos(tok), *ids;
	int n, rc;

	n = tok_encode(tok, text, len, 0, NULL, 0);
	if (n < 0)
		return n;
	ids = malloc(((size_t)n + 1) * sizeof(int32_t));
	if (!ids)
		return -ENOMEM;
	tok_encode(tok, text, len, 0, ids, (size_t)n);
	rc = bos >= 0 ? stream_add(s, &bos, 1) : 0;
	if (rc == 0)
		rc = stream_add(s, ids, (size_t)n);
	if (rc == 0 && eos >= 0)
		rc = stream_add(s, &eos, 1);
	free(ids);
	return rc;
}

/* Adds the "text" of JSON object @obj from line @line of @name. */
static int add_object(struct stream *s, const struct tokenizer *tok,
		      json_t *obj, const char *name, size_t line, char *err,
		      size_t errlen)
{
	json_t *text = json_is_object(obj) ? json_object_get(obj, "text") :
			NULL;
	int rc;

	if (!json_is_string(text)) {
		set_err(err, errlen,
			"%s:%zu: expected an object with a string \"text\"",
			name, line);
		return -EINVAL;
	}
	rc = add_text(s, tok, json_string_value(text),
		      json_string_length(text));
	if (rc == -EINVAL)
		set_err(err, errlen,
			"%s:%zu: the text holds bytes the vocabulary cannot encode",
			name, line);
	else if (rc < 0)
		set_err(err, errlen, "%s:%zu: %s", name, line, strerror(-rc));
	return rc;
}

/* Reads JSON Lines of {"text": ...}, or one JSON array of them. */
static int read_texts(struct stream *s, const struct tokenizer *tok,
		      const char *buf, size_t len, const char *name,
		      bool array, char *err, size_t errlen)
{
	json_error_t jerr;
	size_t pos = 0, line = 0, i;
	json_t *obj;
	int rc = 0;

	if (array) {
		json_t *root = json_loadb(buf, len, 0, &jerr);

		if (!root) {
			set_err(err, errlen, "%s:%d: invalid JSON: %s", name,
				jerr.line, jerr.text);
			return -EINVAL;
		}
		json_array_foreach(root, i, obj) {
			if ((rc = add_object(s, tok, obj, name, i + 1, err,
					     errlen)) < 0)
				break;
		}
		json_decref(root);
		return rc;
	}
	while (pos < len && rc == 0) {
		const char *nl = memchr(buf + pos, '\n', len - pos);
		size_t end = nl ? (size_t)(nl - buf) : len, j;

		line++;
		for (j = pos; j < end && is_blank(buf[j]); j++)
			;
		if (j < end) {
			obj = json_loadb(buf + pos, end - pos, 0, &jerr);
			if (!obj) {
				set_err(err, errlen,
					"%s:%zu: invalid JSON: %s (column %d)",
					name, line, jerr.text, jerr.column);
				return -EINVAL;
			}
			rc = add_object(s, tok, obj, name, line, err, errlen);
			json_decref(obj);
		}
		pos = end + 1;
	}
	return rc;
}

/*
 * Tokenizes @data through a throw-away engine, so inputs are framed by
 * the engine's own engine_encode_input, as kvchain-tune train does.
 */
static int tokenize_segments(struct tune_data *data,
			     const struct model *model, char *err,
			     size_t errlen)
{
	size_t bytes = kv_store_block_bytes(model, KERN_TYPE_F32, 1);
	size_t size = (bytes + 63) & ~(size_t)63;
	struct kv_store *store = NULL;
	struct engine *eng;
	void *mem;
	int rc = -ENOMEM;

	mem = aligned_alloc(64, size);
	if (!mem)
		goto out;
	rc = kv_store_create(mem, size, model, KERN_TYPE_F32, 1, &store);
	if (rc < 0)
		goto out_mem;
	eng = engine_create(model, store, NULL, 1, 1);
	if (!eng) {
		rc = -ENOMEM;
		goto out_store;
	}
	rc = tune_data_tokenize(data, eng, err, errlen);
	engine_destroy(eng);
out_store:
	kv_store_destroy(store);
out_mem:
	free(mem);
out:
	if (rc == -ENOMEM)
		set_err(err, errlen, "out of memory");
	return rc;
}

/* Concatenates the framed spans of every example of the FTHSS file. */
static int read_segments(struct stream *s, const struct model *model,
			 const char *buf, size_t len, const char *name,
			 char *err, size_t errlen)
{
	int32_t eos = tok_eos(model->tok);
	struct tune_data data;
	uint32_t e, k;
	int rc;

	rc = tune_data_parse(buf, len, name, &data, err, errlen);
	if (rc < 0)
		return rc;
	rc = tokenize_segments(&data, model, err, errlen);
	for (e = 0; e < data.n_examples && rc == 0; e++) {
		const struct tune_example *ex = &data.examples[e];

		for (k = 0; k < data.n_keys && rc == 0; k++) {
			const int32_t *ids = ex->ids[k];
			size_t n = ex->n_ids[k];

			if (data.keys[k].kind != SPAN_STAGE_OUTPUT) {
				rc = stream_add(s, ids, n);
				continue;
			}
			/* an output: BOS (fed, not predicted), its tokens, EOS */
			rc = stream_add(s, ids, 1);
			if (rc == 0)
				rc = stream_add_marked(s, ids + 1, n - 1, 0);
			if (rc == 0)
				rc = stream_add_marked(s, &eos, 1, 0);
		}
	}
	tune_data_free(&data);
	return rc;
}

/* Returns true if the first JSON object in @buf has a "text" key. */
static bool has_text_key(const char *buf, size_t len, bool array)
{
	json_error_t jerr;
	json_t *root, *first;
	const char *nl;
	bool yes;

	if (array) {
		root = json_loadb(buf, len, 0, &jerr);
		first = root ? json_array_get(root, 0) : NULL;
	} else {
		while (len && is_blank(*buf)) {
			buf++;
			len--;
		}
		nl = memchr(buf, '\n', len);
		root = json_loadb(buf, nl ? (size_t)(nl - buf) : len, 0, &jerr);
		first = root;
	}
	yes = json_is_object(first) && json_object_get(first, "text");
	json_decref(root);
	return yes;
}

static int read_file(const char *path, char **out, size_t *len, char *err,
		     size_t errlen)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t cap = 0, n = 0, got;
	int rc;

	if (!f) {
		rc = -errno;
		set_err(err, errlen, "cannot open %s: %s", path, strerror(-rc));
		return rc;
	}
	do {
		if (n == cap) {
			char *p = realloc(buf, cap ? cap * 2 : 65536);

			if (!p) {
				free(buf);
				fclose(f);
				set_err(err, errlen, "out of memory reading %s",
					path);
				return -ENOMEM;
			}
			buf = p;
			cap = cap ? cap * 2 : 65536;
		}
		got = fread(buf + n, 1, cap - n, f);
		n += got;
	} while (got > 0);
	if (ferror(f)) {
		free(buf);
		fclose(f);
		set_err(err, errlen, "cannot read %s", path);
		return -EIO;
	}
	fclose(f);
	*out = buf;
	*len = n;
	return 0;
}

/* Loads @path into @s; with s->mark only the segment format is accepted. */
static int load_stream(const char *path, const struct model *model,
		       struct stream *s, char *err, size_t errlen)
{
	char *buf = NULL;
	size_t len = 0, i = 0;
	bool array;
	int rc;

	if ((rc = read_file(path, &buf, &len, err, errlen)) < 0)
		return rc;
	while (i < len && is_blank(buf[i]))
		i++;
	array = i < len && buf[i] == '[';
	if (!has_text_key(buf, len, array))
		rc = read_segments(s, model, buf, len, path, err, errlen);
	else if (!s->mark)
		rc = read_texts(s, model->tok, buf, len, path, array, err,
				errlen);
	else {
		set_err(err, errlen,
			"%s: plain {\"text\": ...} objects have no outputs to train; the loss on outputs needs the FTHSS segment format",
			path);
		rc = -EINVAL;
	}
	free(buf);
	if (rc == 0 && s->n < 2) {
		set_err(err, errlen, "%s: fewer than 2 tokens of text", path);
		rc = -EINVAL;
	}
	if (rc < 0) {
		free(s->ids);
		free(s->untrained);
	}
	return rc;
}

int tune_pretrain_load_text(const char *path, const struct model *model,
			    int32_t **out, size_t *n_out, char *err,
			    size_t errlen)
{
	struct stream s = { 0 };
	int rc = load_stream(path, model, &s, err, errlen);

	if (rc < 0)
		return rc;
	*out = s.ids;
	*n_out = s.n;
	return 0;
}

int tune_pretrain_load_outputs(const char *path, const struct model *model,
			       int32_t **out, uint8_t **untrained,
			       size_t *n_out, char *err, size_t errlen)
{
	struct stream s = { .mark = true };
	int rc = load_stream(path, model, &s, err, errlen);

	if (rc < 0)
		return rc;
	*out = s.ids;
	*untrained = s.untrained;
	*n_out = s.n;
	return 0;
}
