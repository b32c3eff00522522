/* SPDX-License-Identifier: MIT */
/*
 * fuzz-gguf.c - libFuzzer target for the GGUF reader. Each input goes to
 * gguf_parse. When it parses, every key, value, array element, string and
 * tensor is read through the public interface, so ASan reports any pointer
 * from the reader that leaves the input. A failed parse must leave a
 * one-line, NUL-terminated message. scripts/fuzz.sh builds and runs it.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "kernels.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Everything read is summed into this, so no read can be optimised away. */
static volatile uint64_t sink;

static void touch(const void *p, uint64_t n)
{
	const uint8_t *b = p;
	uint64_t i, sum = 0;

	for (i = 0; i < n; i++)
		sum += b[i];
	sink += sum;
}

static size_t elem_size(uint32_t type)
{
	switch (type) {
	case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL:
		return 1;
	case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16:
		return 2;
	case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32:
		return 4;
	case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64:
		return 8;
	default:
		return 0;
	}
}

/*
 * Checks that gguf_find returns @kv for its own key, and runs every typed
 * getter on that key.
 */
static void check_lookup(const struct gguf_file *f, const struct gguf_kv *kv)
{
	char name[256];
	uint32_t u;
	float x;
	bool b;
	struct gguf_str s;

	if (kv->key.len >= sizeof(name) || memchr(kv->key.ptr, 0, kv->key.len))
		return;
	memcpy(name, kv->key.ptr, kv->key.len);
	name[kv->key.len] = '\0';
	if (gguf_find(f, name) != kv)
		abort();
	if (!gguf_get_u32(f, name, &u))
		sink += u;
	if (!gguf_get_f32(f, name, &x))
		sink += (uint64_t)(x == x);
	if (!gguf_get_bool(f, name, &b))
		sink += b;
	if (!gguf_get_str(f, name, &s))
		touch(s.ptr, s.len);
}

static void walk_kv(const struct gguf_file *f, const struct gguf_kv *kv)
{
	uint64_t i;

	touch(kv->key.ptr, kv->key.len);
	check_lookup(f, kv);
	if (kv->type != GGUF_TYPE_ARRAY) {
		touch(kv->value, elem_size(kv->type));
		return;
	}
	if (kv->arr_type == GGUF_TYPE_STRING) {
		for (i = 0; i < kv->arr_n; i++) {
			struct gguf_str s = gguf_array_str(kv, i);

			touch(s.ptr, s.len);
		}
		return;
	}
	touch(kv->value, kv->arr_n * elem_size(kv->arr_type));
}

static void walk_tensor(const struct gguf_file *f,
			const struct gguf_tensor *t)
{
	const uint8_t *d = t->data;
	char name[256];

	touch(t->name.ptr, t->name.len);
	if (d < f->base || t->size > f->size ||
	    (size_t)(d - f->base) > f->size - t->size)
		abort();
	if (t->size) {
		touch(d, 1);
		touch(d + t->size - 1, 1);
	}
	if (t->name.len < sizeof(name) && !memchr(t->name.ptr, 0, t->name.len)) {
		memcpy(name, t->name.ptr, t->name.len);
		name[t->name.len] = '\0';
		if (gguf_find_tensor(f, name) != t)
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct gguf_file *f = NULL;
	char err[256];
	uint64_t i;

	memset(err, 'x', sizeof(err));
	if (gguf_parse(data, size, &f, err, sizeof(err))) {
		if (!memchr(err, '\0', sizeof(err)) || strchr(err, '\n'))
			abort();
		return 0;
	}
	for (i = 0; i < f->n_kv; i++)
		walk_kv(f, &f->kv[i]);
	for (i = 0; i < f->n_tensors; i++)
		walk_tensor(f, &f->tensors[i]);
	gguf_close(f);
	return 0;
}
