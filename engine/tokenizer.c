/* SPDX-License-Identifier: MIT */
/*
 * tokenizer.c - the tokenizer object: building it from a spec or from the
 * tokenizer.ggml.* keys of a GGUF file, the text-to-id table, special-token
 * splitting and the encode and decode drivers. The merge algorithms live
 * in tokenizer-spm.c and tokenizer-bpe.c.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "tokenizer-internal.h"

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

const char *tok_quote(const char *s, size_t len, char *buf, size_t cap)
{
	static const char hex[] = "0123456789abcdef";
	size_t i, o = 0;

	if (cap < 8) {
		if (cap)
			buf[0] = '\0';
		return buf;
	}
	buf[o++] = '"';
	for (i = 0; i < len && o + 8 < cap && i < 40; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x20 || c == 0x7f || c == '"' || c == '\\') {
			buf[o++] = '\\';
			buf[o++] = 'x';
			buf[o++] = hex[c >> 4];
			buf[o++] = hex[c & 15];
		} else {
			buf[o++] = (char)c;
		}
	}
	buf[o++] = '"';
	if (i < len) {
		buf[o++] = '.';
		buf[o++] = '.';
		buf[o++] = '.';
	}
	buf[o] = '\0';
	return buf;
}

size_t tok_utf8_len(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	unsigned char lo = 0x80, hi = 0xbf;
	size_t need, i;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		need = 2;
	} else if (c >= 0xe0 && c <= 0xef) {
		need = 3;
		if (c == 0xe0)
			lo = 0xa0;	/* shorter forms are overlong */
		else if (c == 0xed)
			hi = 0x9f;	/* U+D800..U+DFFF are surrogates */
	} else if (c >= 0xf0 && c <= 0xf4) {
		need = 4;
		if (c == 0xf0)
			lo = 0x90;	/* overlong */
		else if (c == 0xf4)
			hi = 0x8f;	/* above U+10FFFF */
	} else {
		return 0;
	}
	if (n < need)
		return 0;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < need; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return need;
}

/* ==== Text-to-id table ==== */

static uint64_t hash_bytes(const char *s, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ull;	/* FNV-1a */
	size_t i;

	for (i = 0; i < len; i++) {
		h ^= (unsigned char)s[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

/* Builds the table. A text that occurs twice keeps its lowest id. */
static int text_map_build(struct tokenizer *tok)
{
	uint32_t cap = 16, i;

	while (cap < 2ull * tok->n_vocab) {
		if (cap > UINT32_MAX / 2)
			return -ENOMEM;
		cap *= 2;
	}
	tok->text_map.slots = calloc(cap, sizeof(*tok->text_map.slots));
	if (!tok->text_map.slots)
		return -ENOMEM;
	tok->text_map.mask = cap - 1;

	for (i = 0; i < tok->n_vocab; i++) {
		const struct tok_token *t = &tok->vocab[i];
		uint32_t slot = (uint32_t)hash_bytes(t->text, t->len) &
				tok->text_map.mask;

		for (;;) {
			uint32_t v = tok->text_map.slots[slot];
			const struct tok_token *o;

			if (!v) {
				tok->text_map.slots[slot] = i + 1;
				break;
			}
			o = &tok->vocab[v - 1];
			if (o->len == t->len &&
			    !memcmp(o->text, t->text, t->len))
				break;
			slot = (slot + 1) & tok->text_map.mask;
		}
	}
	return 0;
}

int32_t tok_lookup(const struct tokenizer *tok, const char *text, size_t len)
{
	uint32_t slot = (uint32_t)hash_bytes(text, len) & tok->text_map.mask;

	for (;;) {
		uint32_t v = tok->text_map.slots[slot];
		const struct tok_token *t;

		if (!v)
			return -1;
		t = &tok->vocab[v - 1];
		if (t->len == len && !memcmp(t->text, text, len))
			return (int32_t)(v - 1);
		slot = (slot + 1) & tok->text_map.mask;
	}
}

int32_t tok_find(const struct tokenizer *tok, const char *text, size_t len)
{
	if (!text && len)
		return -1;
	return tok_lookup(tok, text ? text : "", len);
}

/* ==== Merge queue and scratch space ==== */

static bool bigram_less(const struct tok_bigram *a, const struct tok_bigram *b)
{
	if (a->priority != b->priority)
		return a->priority < b->priority;
	return a->left < b->left;
}

int tok_heap_push(struct tok_heap *heap, const struct tok_bigram *item)
{
	size_t i;

	if (heap->n == heap->cap) {
		size_t cap = heap->cap ? heap->cap * 2 : 64;
		struct tok_bigram *items;

		items = realloc(heap->items, cap * sizeof(*items));
		if (!items)
			return -ENOMEM;
		heap->items = items;
		heap->cap = cap;
	}
	i = heap->n++;
	while (i > 0) {
		size_t parent = (i - 1) / 2;

		if (!bigram_less(item, &heap->items[parent]))
			break;
		heap->items[i] = heap->items[parent];
		i = parent;
	}
	heap->items[i] = *item;
	return 0;
}

bool tok_heap_pop(struct tok_heap *heap, struct tok_bigram *item)
{
	struct tok_bigram last;
	size_t i = 0;

	if (!heap->n)
		return false;
	*item = heap->items[0];
	last = heap->items[--heap->n];
	for (;;) {
		size_t child = 2 * i + 1;

		if (child >= heap->n)
			break;
		if (child + 1 < heap->n &&
		    bigram_less(&heap->items[child + 1], &heap->items[child]))
			child++;
		if (!bigram_less(&heap->items[child], &last))
			break;
		heap->items[i] = heap->items[child];
		i = child;
	}
	if (heap->n)
		heap->items[i] = last;
	return true;
}

int tok_scratch_symbols(struct tok_scratch *scratch, size_t n)
{
	struct tok_symbol *symbols;
	size_t cap;

	if (n <= scratch->symbols_cap)
		return 0;
	cap = n < 64 ? 64 : n + n / 2;
	symbols = realloc(scratch->symbols, cap * sizeof(*symbols));
	if (!symbols)
		return -ENOMEM;
	scratch->symbols = symbols;
	scratch->symbols_cap = cap;
	return 0;
}

int tok_scratch_buf(struct tok_scratch *scratch, size_t n)
{
	char *buf;
	size_t cap;

	if (n <= scratch->buf_cap)
		return 0;
	cap = n < 256 ? 256 : n + n / 2;
	buf = realloc(scratch->buf, cap);
	if (!buf)
		return -ENOMEM;
	scratch->buf = buf;
	scratch->buf_cap = cap;
	return 0;
}

static void scratch_free(struct tok_scratch *scratch)
{
	free(scratch->symbols);
	free(scratch->heap.items);
	free(scratch->buf);
}

/* ==== Building ==== */

static int check_id(int32_t id, uint32_t n_vocab, const char *name,
		    char *err, size_t errlen)
{
	if (id >= -1 && (id < 0 || (uint32_t)id < n_vocab))
		return 0;
	set_err(err, errlen,
		"tokenizer: %s %d is outside the vocabulary (0 to %u, or -1 for none)",
		name, id, n_vocab - 1);
	return -EINVAL;
}

static int check_spec(const struct tok_spec *spec, char *err, size_t errlen)
{
	uint32_t i;
	int ret;

	if (spec->kind != TOK_KIND_SPM && spec->kind != TOK_KIND_BPE) {
		set_err(err, errlen, "tokenizer: invalid kind %d",
			(int)spec->kind);
		return -EINVAL;
	}
	if (spec->pre != TOK_PRE_GPT2 && spec->pre != TOK_PRE_LLAMA3 &&
	    spec->pre != TOK_PRE_QWEN2) {
		set_err(err, errlen, "tokenizer: invalid pre-tokenizer %d",
			(int)spec->pre);
		return -EINVAL;
	}
	if (!spec->n_vocab || !spec->tokens || !spec->token_lens) {
		set_err(err, errlen, "tokenizer: the vocabulary is empty");
		return -EINVAL;
	}
	if (spec->kind == TOK_KIND_SPM && !spec->scores) {
		set_err(err, errlen,
			"tokenizer: an SPM vocabulary needs token scores");
		return -EINVAL;
	}
	if (spec->n_merges && (!spec->merges || !spec->merge_lens)) {
		set_err(err, errlen,
			"tokenizer: %u merges given without their texts",
			spec->n_merges);
		return -EINVAL;
	}
	for (i = 0; i < spec->n_vocab; i++) {
		if (!spec->tokens[i] || !spec->token_lens[i]) {
			set_err(err, errlen,
				"tokenizer: token %u has an empty text", i);
			return -EINVAL;
		}
		if (spec->token_lens[i] > TOK_MAX_TOKEN_LEN) {
			set_err(err, errlen,
				"tokenizer: token %u is %u bytes long (the maximum is %u)",
				i, spec->token_lens[i], TOK_MAX_TOKEN_LEN);
			return -EINVAL;
		}
		if (spec->types && (spec->types[i] < TOK_TYPE_NORMAL ||
				    spec->types[i] > TOK_TYPE_BYTE)) {
			set_err(err, errlen,
				"tokenizer: token %u has invalid type %d",
				i, spec->types[i]);
			return -EINVAL;
		}
		if (spec->scores && isnan(spec->scores[i])) {
			set_err(err, errlen,
				"tokenizer: token %u has a NaN score", i);
			return -EINVAL;
		}
	}
	ret = check_id(spec->bos_id, spec->n_vocab, "bos id", err, errlen);
	if (!ret)
		ret = check_id(spec->eos_id, spec->n_vocab, "eos id", err,
			       errlen);
	if (!ret)
		ret = check_id(spec->unk_id, spec->n_vocab, "unknown id", err,
			       errlen);
	if (!ret)
		ret = check_id(spec->pad_id, spec->n_vocab, "padding id", err,
			       errlen);
	return ret;
}

/* Copies the token texts into one pool and fills tok->vocab. */
static int copy_vocab(struct tokenizer *tok, const struct tok_spec *spec)
{
	size_t total = 0, off = 0;
	uint32_t i;

	for (i = 0; i < spec->n_vocab; i++) {
		if (total > SIZE_MAX - spec->token_lens[i] - 1)
			return -ENOMEM;
		total += (size_t)spec->token_lens[i] + 1;
	}
	tok->vocab = calloc(spec->n_vocab, sizeof(*tok->vocab));
	tok->pool = malloc(total);
	if (!tok->vocab || !tok->pool)
		return -ENOMEM;

	for (i = 0; i < spec->n_vocab; i++) {
		struct tok_token *t = &tok->vocab[i];

		memcpy(tok->pool + off, spec->tokens[i], spec->token_lens[i]);
		tok->pool[off + spec->token_lens[i]] = '\0';
		t->text = tok->pool + off;
		t->len = spec->token_lens[i];
		t->score = spec->scores ? spec->scores[i] : 0.0f;
		t->type = spec->types ? spec->types[i] : TOK_TYPE_NORMAL;
		off += (size_t)t->len + 1;
	}

	/* Without a type array the declared ids are the only special tokens. */
	if (!spec->types) {
		if (spec->bos_id >= 0)
			tok->vocab[spec->bos_id].type = TOK_TYPE_CONTROL;
		if (spec->eos_id >= 0)
			tok->vocab[spec->eos_id].type = TOK_TYPE_CONTROL;
		if (spec->pad_id >= 0)
			tok->vocab[spec->pad_id].type = TOK_TYPE_CONTROL;
		if (spec->unk_id >= 0)
			tok->vocab[spec->unk_id].type = TOK_TYPE_UNKNOWN;
	}
	return 0;
}

struct special_key {
	uint32_t len;
	int32_t id;
};

static int cmp_special(const void *a, const void *b)
{
	const struct special_key *x = a, *y = b;

	if (x->len != y->len)
		return x->len > y->len ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

/* Collects the control and user-defined tokens, longest first, so that
 * matching them in order finds the longest one at each position. */
static int collect_specials(struct tokenizer *tok)
{
	struct special_key *keys;
	uint32_t i, n = 0;

	for (i = 0; i < tok->n_vocab; i++)
		if (tok->vocab[i].type == TOK_TYPE_CONTROL ||
		    tok->vocab[i].type == TOK_TYPE_USER_DEFINED)
			n++;
	if (!n)
		return 0;
	keys = malloc(n * sizeof(*keys));
	tok->specials = malloc(n * sizeof(*tok->specials));
	if (!keys || !tok->specials) {
		free(keys);
		return -ENOMEM;
	}
	for (i = 0; i < tok->n_vocab; i++) {
		const struct tok_token *t = &tok->vocab[i];
		unsigned char c = (unsigned char)t->text[0];

		if (t->type != TOK_TYPE_CONTROL &&
		    t->type != TOK_TYPE_USER_DEFINED)
			continue;
		keys[tok->n_specials].len = t->len;
		keys[tok->n_specials].id = (int32_t)i;
		tok->n_specials++;
		tok->special_first[c >> 3] |= (uint8_t)(1u << (c & 7));
	}
	qsort(keys, n, sizeof(*keys), cmp_special);
	for (i = 0; i < n; i++)
		tok->specials[i] = keys[i].id;
	free(keys);
	return 0;
}

int tok_create(const struct tok_spec *spec, struct tokenizer **out,
	       char *err, size_t errlen)
{
	struct tokenizer *tok;
	int ret;

	*out = NULL;
	ret = check_spec(spec, err, errlen);
	if (ret)
		return ret;

	tok = calloc(1, sizeof(*tok));
	if (!tok)
		goto out_nomem;
	tok->kind = spec->kind;
	tok->pre = spec->pre;
	tok->n_vocab = spec->n_vocab;
	tok->bos_id = spec->bos_id;
	tok->eos_id = spec->eos_id;
	tok->unk_id = spec->unk_id;
	tok->pad_id = spec->pad_id;
	tok->add_bos = spec->add_bos;
	tok->add_eos = spec->add_eos;
	tok->add_space_prefix = spec->add_space_prefix;

	if (copy_vocab(tok, spec) || text_map_build(tok) ||
	    collect_specials(tok))
		goto out_free_tok;

	if (tok->kind == TOK_KIND_SPM)
		ret = tok_spm_init(tok, err, errlen);
	else
		ret = tok_bpe_init(tok, spec, err, errlen);
	if (ret) {
		tok_free(tok);
		return ret;
	}
	*out = tok;
	return 0;

out_free_tok:
	tok_free(tok);
out_nomem:
	set_err(err, errlen, "tokenizer: out of memory");
	return -ENOMEM;
}

void tok_free(struct tokenizer *tok)
{
	if (!tok)
		return;
	tok_bpe_free(tok);
	free(tok->specials);
	free(tok->text_map.slots);
	free(tok->pool);
	free(tok->vocab);
	free(tok);
}

enum tok_kind tok_get_kind(const struct tokenizer *tok)
{
	return tok->kind;
}

uint32_t tok_n_vocab(const struct tokenizer *tok)
{
	return tok->n_vocab;
}

int32_t tok_bos(const struct tokenizer *tok)
{
	return tok->bos_id;
}

int32_t tok_eos(const struct tokenizer *tok)
{
	return tok->eos_id;
}

bool tok_is_control(const struct tokenizer *tok, int32_t id)
{
	return id >= 0 && (uint32_t)id < tok->n_vocab &&
	       tok->vocab[id].type == TOK_TYPE_CONTROL;
}

/* ==== Loading from GGUF ==== */

/* The parts of a spec read from GGUF arrays, owned until tok_create has
 * copied them. */
struct gguf_vocab {
	const char **tokens;
	uint32_t *token_lens;
	float *scores;
	int32_t *types;
	const char **merges;
	uint32_t *merge_lens;
};

static void gguf_vocab_free(struct gguf_vocab *v)
{
	free(v->tokens);
	free(v->token_lens);
	free(v->scores);
	free(v->types);
	free(v->merges);
	free(v->merge_lens);
}

static int read_kind(const struct gguf_file *file, struct tok_spec *spec,
		     char *err, size_t errlen)
{
	struct gguf_str s;
	char q[64];
	int ret;

	ret = gguf_get_str(file, "tokenizer.ggml.model", &s);
	if (ret) {
		set_err(err, errlen, "tokenizer: tokenizer.ggml.model is %s",
			ret == -ENOENT ? "missing" : "not a string");
		return ret == -ENOENT ? -EINVAL : ret;
	}
	if (gguf_str_eq(s, "llama")) {
		spec->kind = TOK_KIND_SPM;
	} else if (gguf_str_eq(s, "gpt2")) {
		spec->kind = TOK_KIND_BPE;
	} else {
		set_err(err, errlen,
			"tokenizer: unsupported tokenizer.ggml.model %s (expected \"llama\" or \"gpt2\")",
			tok_quote(s.ptr, s.len, q, sizeof(q)));
		return -EINVAL;
	}

	spec->pre = TOK_PRE_GPT2;
	ret = gguf_get_str(file, "tokenizer.ggml.pre", &s);
	if (ret == -ENOENT || spec->kind == TOK_KIND_SPM)
		return 0;
	if (ret) {
		set_err(err, errlen,
			"tokenizer: tokenizer.ggml.pre is not a string");
		return ret;
	}
	if (gguf_str_eq(s, "default") || gguf_str_eq(s, "gpt2")) {
		spec->pre = TOK_PRE_GPT2;
	} else if (gguf_str_eq(s, "llama3") || gguf_str_eq(s, "llama-bpe")) {
		spec->pre = TOK_PRE_LLAMA3;
	} else if (gguf_str_eq(s, "qwen2")) {
		spec->pre = TOK_PRE_QWEN2;
	} else {
		set_err(err, errlen,
			"tokenizer: unsupported tokenizer.ggml.pre %s (expected default, gpt2, llama3, llama-bpe or qwen2)",
			tok_quote(s.ptr, s.len, q, sizeof(q)));
		return -EINVAL;
	}
	return 0;
}

/* Reads string array @key into @texts and @lens, and its length into *n. */
static int read_strings(const struct gguf_file *file, const char *key,
			const char ***texts, uint32_t **lens, uint32_t *n,
			char *err, size_t errlen)
{
	const struct gguf_kv *kv;
	uint64_t i;
	int ret;

	ret = gguf_get_array(file, key, GGUF_TYPE_STRING, &kv);
	if (ret) {
		set_err(err, errlen, "tokenizer: %s is %s", key,
			ret == -ENOENT ? "missing" : "not a string array");
		return ret;
	}
	if (kv->arr_n > INT32_MAX) {
		set_err(err, errlen,
			"tokenizer: %s has too many entries (%llu)",
			key, (unsigned long long)kv->arr_n);
		return -EINVAL;
	}
	*n = (uint32_t)kv->arr_n;
	if (!*n)
		return 0;
	*texts = malloc(*n * sizeof(**texts));
	*lens = malloc(*n * sizeof(**lens));
	if (!*texts || !*lens) {
		set_err(err, errlen, "tokenizer: out of memory");
		return -ENOMEM;
	}
	for (i = 0; i < kv->arr_n; i++) {
		struct gguf_str s = gguf_array_str(kv, i);

		if (s.len > UINT32_MAX) {
			set_err(err, errlen, "tokenizer: %s[%llu] is too long",
				key, (unsigned long long)i);
			return -EINVAL;
		}
		(*texts)[i] = s.ptr;
		(*lens)[i] = (uint32_t)s.len;
	}
	return 0;
}

/* Reads the optional scores and token_type arrays, which must have one
 * entry per token. */
static int read_token_info(const struct gguf_file *file, uint32_t n_vocab,
			   struct gguf_vocab *v, char *err, size_t errlen)
{
	const struct gguf_kv *kv;
	uint32_t i;
	int ret;

	ret = gguf_get_array(file, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32,
			     &kv);
	if (ret && ret != -ENOENT) {
		set_err(err, errlen,
			"tokenizer: tokenizer.ggml.scores is not a float32 array");
		return ret;
	}
	if (!ret) {
		if (kv->arr_n != n_vocab) {
			set_err(err, errlen,
				"tokenizer: tokenizer.ggml.scores has %llu entries for %u tokens",
				(unsigned long long)kv->arr_n, n_vocab);
			return -EINVAL;
		}
		v->scores = malloc(n_vocab * sizeof(*v->scores));
		if (!v->scores)
			goto out_nomem;
		/* The mapping gives no alignment guarantee for array data. */
		for (i = 0; i < n_vocab; i++)
			memcpy(&v->scores[i], kv->value + 4 * (size_t)i, 4);
	}

	ret = gguf_get_array(file, "tokenizer.ggml.token_type", GGUF_TYPE_INT32,
			     &kv);
	if (ret == -EINVAL)
		ret = gguf_get_array(file, "tokenizer.ggml.token_type",
				     GGUF_TYPE_UINT32, &kv);
	if (ret && ret != -ENOENT) {
		set_err(err, errlen,
			"tokenizer: tokenizer.ggml.token_type is not an int32 array");
		return ret;
	}
	if (!ret) {
		if (kv->arr_n != n_vocab) {
			set_err(err, errlen,
				"tokenizer: tokenizer.ggml.token_type has %llu entries for %u tokens",
				(unsigned long long)kv->arr_n, n_vocab);
			return -EINVAL;
		}
		v->types = malloc(n_vocab * sizeof(*v->types));
		if (!v->types)
			goto out_nomem;
		for (i = 0; i < n_vocab; i++)
			memcpy(&v->types[i], kv->value + 4 * (size_t)i, 4);
	}
	return 0;

out_nomem:
	set_err(err, errlen, "tokenizer: out of memory");
	return -ENOMEM;
}

static int read_id(const struct gguf_file *file, const char *key,
		   int32_t *id, char *err, size_t errlen)
{
	const struct gguf_kv *kv = gguf_find(file, key);
	uint32_t v;
	int32_t i32;
	int ret = gguf_get_u32(file, key, &v);

	*id = -1;
	if (ret == -ENOENT)
		return 0;
	/*
	 * "No such token" is written as -1: llama.cpp's llama2.c converter
	 * stores it as the UINT32 4294967295, other writers as the INT32 -1.
	 */
	if (ret == 0 && v == UINT32_MAX)
		return 0;
	if (ret && kv && kv->type == GGUF_TYPE_INT32) {
		memcpy(&i32, kv->value, sizeof(i32));
		if (i32 == -1)
			return 0;
	}
	if (ret || v > INT32_MAX) {
		set_err(err, errlen,
			"tokenizer: %s is not a non-negative integer", key);
		return -EINVAL;
	}
	*id = (int32_t)v;
	return 0;
}

static int read_flag(const struct gguf_file *file, const char *key,
		     bool *flag, bool dflt, char *err, size_t errlen)
{
	int ret = gguf_get_bool(file, key, flag);

	if (ret == -ENOENT) {
		*flag = dflt;
		return 0;
	}
	if (ret)
		set_err(err, errlen, "tokenizer: %s is not a bool", key);
	return ret;
}

/*
 * Returns add_bos for a file without tokenizer.ggml.add_bos_token: true for
 * SPM, false for BPE except llama3. Llama 3 files often lack the key while
 * the model expects its BOS first (llama.cpp assumes true there as well).
 */
static bool default_add_bos(const struct tok_spec *spec)
{
	return spec->kind == TOK_KIND_SPM || spec->pre == TOK_PRE_LLAMA3;
}

int tok_load_gguf(const struct gguf_file *file, struct tokenizer **out,
		  char *err, size_t errlen)
{
	struct tok_spec spec = { 0 };
	struct gguf_vocab v = { 0 };
	bool spm;
	int ret;

	*out = NULL;
	ret = read_kind(file, &spec, err, errlen);
	if (ret)
		return ret;
	spm = spec.kind == TOK_KIND_SPM;

	ret = read_strings(file, "tokenizer.ggml.tokens", &v.tokens,
			   &v.token_lens, &spec.n_vocab, err, errlen);
	if (ret)
		goto out_free_vocab;
	ret = read_token_info(file, spec.n_vocab, &v, err, errlen);
	if (ret)
		goto out_free_vocab;
	/* A BPE vocabulary without merges encodes byte by byte. */
	if (!spm && gguf_find(file, "tokenizer.ggml.merges")) {
		ret = read_strings(file, "tokenizer.ggml.merges", &v.merges,
				   &v.merge_lens, &spec.n_merges, err, errlen);
		if (ret)
			goto out_free_vocab;
	}
	if ((ret = read_id(file, "tokenizer.ggml.bos_token_id", &spec.bos_id,
			   err, errlen)) ||
	    (ret = read_id(file, "tokenizer.ggml.eos_token_id", &spec.eos_id,
			   err, errlen)) ||
	    (ret = read_id(file, "tokenizer.ggml.unknown_token_id",
			   &spec.unk_id, err, errlen)) ||
	    (ret = read_id(file, "tokenizer.ggml.padding_token_id",
			   &spec.pad_id, err, errlen)) ||
	    (ret = read_flag(file, "tokenizer.ggml.add_bos_token",
			     &spec.add_bos, default_add_bos(&spec), err,
			     errlen)) ||
	    (ret = read_flag(file, "tokenizer.ggml.add_eos_token",
			     &spec.add_eos, false, err, errlen)) ||
	    (ret = read_flag(file, "tokenizer.ggml.add_space_prefix",
			     &spec.add_space_prefix, spm, err, errlen)))
		goto out_free_vocab;

	if (spm && !v.scores) {
		set_err(err, errlen,
			"tokenizer: tokenizer.ggml.scores is missing (an SPM vocabulary needs it)");
		ret = -EINVAL;
		goto out_free_vocab;
	}
	spec.tokens = v.tokens;
	spec.token_lens = v.token_lens;
	spec.scores = v.scores;
	spec.types = v.types;
	spec.merges = v.merges;
	spec.merge_lens = v.merge_lens;
	ret = tok_create(&spec, out, err, errlen);

out_free_vocab:
	gguf_vocab_free(&v);
	return ret;
}

/* ==== Encoding ==== */

/* Returns the special token whose text starts at @s (longest first), or
 * -1. */
static int32_t match_special(const struct tokenizer *tok, const char *s,
			     size_t n)
{
	unsigned char c = (unsigned char)s[0];
	uint32_t i;

	if (!(tok->special_first[c >> 3] & (1u << (c & 7))))
		return -1;
	for (i = 0; i < tok->n_specials; i++) {
		const struct tok_token *t = &tok->vocab[tok->specials[i]];

		if (t->len <= n && !memcmp(t->text, s, t->len))
			return tok->specials[i];
	}
	return -1;
}

static int encode_fragment(const struct tokenizer *tok, const char *text,
			   size_t len, bool space_prefix,
			   struct tok_scratch *scratch, struct tok_out *out)
{
	if (!len)
		return 0;
	if (tok->kind == TOK_KIND_SPM)
		return tok_spm_encode(tok, text, len, space_prefix, scratch,
				      out);
	return tok_bpe_encode(tok, text, len, scratch, out);
}

/*
 * With TOK_PARSE_SPECIAL the text is cut at every special-token text, and
 * the pieces between are encoded on their own. The SPM space prefix goes
 * only before text that starts the input, never after a special token, so
 * decoding gives back the input.
 */
int tok_encode(const struct tokenizer *tok, const char *text, size_t len,
	       unsigned flags, int32_t *ids, size_t cap)
{
	struct tok_out out = { .ids = ids, .cap = ids ? cap : 0 };
	struct tok_scratch scratch = { 0 };
	bool prefix = tok->kind == TOK_KIND_SPM && tok->add_space_prefix &&
		      !(flags & TOK_NO_SPACE_PREFIX);
	size_t pos = 0;
	int ret = 0;

	if (len > TOK_MAX_TEXT || (!text && len))
		return -EINVAL;
	if ((flags & TOK_ADD_SPECIAL) && tok->add_bos && tok->bos_id >= 0)
		tok_out_push(&out, tok->bos_id);

	while (pos < len) {
		size_t end = len, i;
		int32_t special = -1;

		if ((flags & TOK_PARSE_SPECIAL) && tok->n_specials) {
			for (i = pos; i < len; i++) {
				special = match_special(tok, text + i, len - i);
				if (special >= 0) {
					end = i;
					break;
				}
			}
		}
		ret = encode_fragment(tok, text + pos, end - pos,
				      prefix && pos == 0, &scratch, &out);
		if (ret)
			goto out_free_scratch;
		if (special < 0)
			break;
		tok_out_push(&out, special);
		pos = end + tok->vocab[special].len;
	}

	if ((flags & TOK_ADD_SPECIAL) && tok->add_eos && tok->eos_id >= 0)
		tok_out_push(&out, tok->eos_id);
	ret = out.n > INT_MAX ? -EOVERFLOW : (int)out.n;

out_free_scratch:
	scratch_free(&scratch);
	return ret;
}

/* ==== Decoding ==== */

int tok_token_to_piece(const struct tokenizer *tok, int32_t id, char *buf,
		       size_t cap)
{
	if (id < 0 || (uint32_t)id >= tok->n_vocab)
		return -EINVAL;
	if (!buf)
		cap = 0;
	if (tok->kind == TOK_KIND_SPM)
		return tok_spm_piece(tok, id, buf, cap);
	return tok_bpe_piece(tok, id, buf, cap);
}

/*
 * Returns true when the SPM space prefix should be dropped: the first
 * token that gives any bytes is an ordinary token starting with a space.
 * Control tokens (a leading BOS) are skipped because they give no bytes.
 * NOTE: so "<s> hi" encoded with TOK_PARSE_SPECIAL decodes to "hi", since
 * its "▁hi" cannot be told from the prefixed text after an added BOS.
 */
static bool strip_first_space(const struct tokenizer *tok, const int32_t *ids,
			      size_t n, unsigned flags)
{
	size_t i;

	if (tok->kind != TOK_KIND_SPM || !tok->add_space_prefix ||
	    (flags & TOK_DECODE_KEEP_LEADING_SPACE))
		return false;
	for (i = 0; i < n; i++) {
		const struct tok_token *t = &tok->vocab[ids[i]];
		char c;

		if (t->type == TOK_TYPE_CONTROL)
			continue;
		if (t->type != TOK_TYPE_NORMAL && t->type != TOK_TYPE_UNUSED)
			return false;
		return tok_spm_piece(tok, ids[i], &c, 1) > 0 && c == ' ';
	}
	return false;
}

/* Writes the piece of @id without its first byte (the prefix space). */
static int piece_drop_first(const struct tokenizer *tok, int32_t id,
			    char *dst, size_t room)
{
	char small[128], *tmp = small;
	int n = tok_token_to_piece(tok, id, NULL, 0);

	if (n <= 0)
		return n;
	if ((size_t)n > sizeof(small)) {
		tmp = malloc((size_t)n);
		if (!tmp)
			return -ENOMEM;
	}
	tok_token_to_piece(tok, id, tmp, (size_t)n);
	if (room)
		memcpy(dst, tmp + 1,
		       (size_t)n - 1 < room ? (size_t)n - 1 : room);
	if (tmp != small)
		free(tmp);
	return n - 1;
}

int tok_decode(const struct tokenizer *tok, const int32_t *ids, size_t n,
	       unsigned flags, char *buf, size_t cap)
{
	size_t total = 0, i;
	bool strip;

	if (!buf)
		cap = 0;
	for (i = 0; i < n; i++)
		if (ids[i] < 0 || (uint32_t)ids[i] >= tok->n_vocab)
			return -EINVAL;
	strip = strip_first_space(tok, ids, n, flags);

	for (i = 0; i < n; i++) {
		size_t room = total < cap ? cap - total : 0;
		char *dst = room ? buf + total : NULL;
		int got;

		if (strip && !tok_is_control(tok, ids[i])) {
			got = piece_drop_first(tok, ids[i], dst, room);
			strip = false;
		} else {
			got = tok_token_to_piece(tok, ids[i], dst, room);
		}
		if (got < 0)
			return got;
		if (total + (size_t)got > INT_MAX)
			return -EOVERFLOW;
		total += (size_t)got;
	}
	if (total < cap)
		buf[total] = '\0';
	return (int)total;
}
