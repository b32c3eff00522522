/* SPDX-License-Identifier: MIT */
/*
 * kvstore.h - paged KV storage: fixed-size blocks of key and value rows
 * handed out from a memory region the caller provides (shared memory in the
 * daemon, malloc'd memory in tests), with a reference count per block so
 * prompt KV, forks and shared inputs are stored once.
 *
 * A block holds @block_tokens consecutive positions of one span for every
 * layer: for layer l, block_tokens key rows, then block_tokens value rows,
 * each row n_kv_heads * head_dim elements of the store's element type.
 * Not thread-safe: one thread allocates and frees; worker threads may read
 * and write rows of blocks they were given.
 */
#ifndef KVCHAIN_KVSTORE_H
#define KVCHAIN_KVSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

struct model;
struct kv_store;

#define KV_BLOCK_NONE UINT32_MAX

struct kv_store_stats {
	uint32_t n_blocks;	/* blocks in the region */
	uint32_t n_free;	/* blocks not handed out */
	uint64_t n_allocs;	/* blocks handed out since creation */
	uint64_t n_frees;	/* blocks returned since creation */
	uint32_t block_tokens;
	size_t block_bytes;
};

/* Returns the bytes of one block, or 0 for an unsupported type. */
size_t kv_store_block_bytes(const struct model *model, enum kern_type type,
			    uint32_t block_tokens);

/*
 * Creates a store over @size bytes at @mem (64-byte aligned), which must
 * outlive it. Returns 0, -EINVAL for a type other than F32, F16 or Q8_0
 * (Q8_0 needs head_dim to be a multiple of 32), a zero block size, or a
 * region smaller than one block; -ENOMEM.
 */
int kv_store_create(void *mem, size_t size, const struct model *model,
		    enum kern_type type, uint32_t block_tokens,
		    struct kv_store **out);
void kv_store_destroy(struct kv_store *store);

enum kern_type kv_store_type(const struct kv_store *store);
uint32_t kv_store_block_tokens(const struct kv_store *store);

/* Takes a free block with a count of 1. Returns 0 or -ENOSPC. */
int kv_block_alloc(struct kv_store *store, uint32_t *id);

/* Adds a reference to block @id, which must be in use. */
void kv_block_ref(struct kv_store *store, uint32_t id);

/* Drops a reference; the block is free again when none is left. */
void kv_block_unref(struct kv_store *store, uint32_t id);

uint32_t kv_block_refcount(const struct kv_store *store, uint32_t id);

/* Returns the key row (value row if @value) of @slot in block @id, @layer. */
void *kv_block_row(const struct kv_store *store, uint32_t id,
		   uint32_t layer, uint32_t slot, bool value);

void kv_store_get_stats(const struct kv_store *store,
			struct kv_store_stats *stats);

#endif /* KVCHAIN_KVSTORE_H */
