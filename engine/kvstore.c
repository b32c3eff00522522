/* SPDX-License-Identifier: MIT */
/*
 * kvstore.c - the block allocator of the paged KV cache: a free list over
 * the caller's region and a reference count per block. Block metadata lives
 * in ordinary memory, not in the region, so the region holds nothing but
 * key and value rows.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kvstore.h"
#include "model.h"

struct kv_store {
	uint8_t *base;
	enum kern_type type;
	uint32_t block_tokens;
	uint32_t n_layers;
	size_t row_bytes;	/* one kv_dim row */
	size_t block_bytes;
	uint32_t n_blocks;
	uint32_t n_free;
	uint32_t *refcount;	/* (n_blocks) */
	uint32_t *free_list;	/* (n_blocks) stack of free ids */
	uint64_t n_allocs;
	uint64_t n_frees;
};

static size_t row_bytes_of(const struct model *model, enum kern_type type)
{
	const struct model_config *c = &model->cfg;
	uint32_t kv_dim = c->n_kv_heads * c->head_dim;

	if (type != KERN_TYPE_F32 && type != KERN_TYPE_F16 &&
	    type != KERN_TYPE_Q8_0)
		return 0;
	if (type == KERN_TYPE_Q8_0 && c->head_dim % KERN_QK8_0 != 0)
		return 0;
	return kern_row_bytes(type, kv_dim);
}

size_t kv_store_block_bytes(const struct model *model, enum kern_type type,
			    uint32_t block_tokens)
{
	size_t row = row_bytes_of(model, type);

	/*
	 * Keys and values of every layer. Rows are not padded, because
	 * kern_attention reads the rows of a run back to back.
	 */
	return 2 * (size_t)model->cfg.n_layers * block_tokens * row;
}

int kv_store_create(void *mem, size_t size, const struct model *model,
		    enum kern_type type, uint32_t block_tokens,
		    struct kv_store **out)
{
	struct kv_store *s;
	size_t block_bytes;
	uint32_t i;

	*out = NULL;
	if (block_tokens == 0 || row_bytes_of(model, type) == 0 ||
	    ((uintptr_t)mem & 63) != 0)
		return -EINVAL;
	block_bytes = kv_store_block_bytes(model, type, block_tokens);
	if (size / block_bytes == 0 || size / block_bytes > UINT32_MAX - 1)
		return -EINVAL;

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->base = mem;
	s->type = type;
	s->block_tokens = block_tokens;
	s->n_layers = model->cfg.n_layers;
	s->row_bytes = row_bytes_of(model, type);
	s->block_bytes = block_bytes;
	s->n_blocks = (uint32_t)(size / block_bytes);
	s->refcount = calloc(s->n_blocks, sizeof(uint32_t));
	s->free_list = malloc((size_t)s->n_blocks * sizeof(uint32_t));
	if (!s->refcount || !s->free_list) {
		kv_store_destroy(s);
		return -ENOMEM;
	}
	/* lowest ids on top of the stack, so allocation order is predictable */
	for (i = 0; i < s->n_blocks; i++)
		s->free_list[i] = s->n_blocks - 1 - i;
	s->n_free = s->n_blocks;
	*out = s;
	return 0;
}

void kv_store_destroy(struct kv_store *s)
{
	if (!s)
		return;
	free(s->refcount);
	free(s->free_list);
	free(s);
}

enum kern_type kv_store_type(const struct kv_store *s)
{
	return s->type;
}

uint32_t kv_store_block_tokens(const struct kv_store *s)
{
	return s->block_tokens;
}

int kv_block_alloc(struct kv_store *s, uint32_t *id)
{
	if (s->n_free == 0)
		return -ENOSPC;
	*id = s->free_list[--s->n_free];
	s->refcount[*id] = 1;
	s->n_allocs++;
	return 0;
}

void kv_block_ref(struct kv_store *s, uint32_t id)
{
	s->refcount[id]++;
}

void kv_block_unref(struct kv_store *s, uint32_t id)
{
	if (s->refcount[id] == 0)
		return;	/* a double free would corrupt the free list */
	if (--s->refcount[id] == 0) {
		s->free_list[s->n_free++] = id;
		s->n_frees++;
	}
}

uint32_t kv_block_refcount(const struct kv_store *s, uint32_t id)
{
	return id < s->n_blocks ? s->refcount[id] : 0;
}

void *kv_block_row(const struct kv_store *s, uint32_t id, uint32_t layer,
		   uint32_t slot, bool value)
{
	size_t off = (size_t)id * s->block_bytes +
		     ((size_t)layer * 2 + (value ? 1 : 0)) * s->block_tokens *
			     s->row_bytes +
		     (size_t)slot * s->row_bytes;

	return s->base + off;
}

void kv_store_get_stats(const struct kv_store *s, struct kv_store_stats *st)
{
	st->n_blocks = s->n_blocks;
	st->n_free = s->n_free;
	st->n_allocs = s->n_allocs;
	st->n_frees = s->n_frees;
	st->block_tokens = s->block_tokens;
	st->block_bytes = s->block_bytes;
}
