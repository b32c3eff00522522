/* SPDX-License-Identifier: MIT */
/*
 * testmodel.h - writes small GGUF files with seeded random weights, so tests
 * and benchmarks need no downloaded model. Also a plain GGUF writer that the
 * hostile-file tests use to build broken files on purpose.
 */
#ifndef KVCHAIN_TESTMODEL_H
#define KVCHAIN_TESTMODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "tokenizer.h"

struct testmodel_opts {
	const char *arch;	/* "llama" or "qwen2" */
	enum kern_type wtype;	/* type of every 2-D weight matrix */
	enum tok_kind tok_kind;
	enum tok_pre tok_pre;	/* BPE pre-tokenizer */
	uint32_t d_model;
	uint32_t n_layers;
	uint32_t n_heads;
	uint32_t n_kv_heads;
	uint32_t d_ff;
	uint32_t n_ctx;		/* context_length key */
	bool tied_output;	/* no output.weight: reuse token_embd */
	bool llama3_rope;	/* write rope_freqs.weight with Llama 3 factors */
	float rope_theta;
	uint32_t gguf_version;	/* 2 or 3 */
	uint64_t seed;
};

/* Fills @opts with a tiny llama model: F32, SPM, d_model 64, 2 layers. */
void testmodel_defaults(struct testmodel_opts *opts);

/* Writes the model @opts describes to @path. Returns 0 or a negative errno
 * with a message in @err. */
int testmodel_write(const char *path, const struct testmodel_opts *opts,
		    char *err, size_t errlen);

/* As testmodel_write, with the tokenizer @vocab in place of the test
 * vocabulary; opts->tok_kind and opts->tok_pre are then not used. */
int testmodel_write_vocab(const char *path, const struct testmodel_opts *opts,
			  const struct tok_spec *vocab, char *err,
			  size_t errlen);

#endif /* KVCHAIN_TESTMODEL_H */
