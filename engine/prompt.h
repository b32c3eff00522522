/* SPDX-License-Identifier: MIT */
/*
 * prompt.h - stage prompts: the soft prompt (n virtual-token embeddings of
 * d_model floats each) or hard prompt (text) that turns the base model into
 * one stage of a chain.
 *
 * Soft prompts load from and save to the PEFT prompt-tuning adapter format:
 * a folder holding adapter_model.safetensors, whose tensor
 * "prompt_embeddings" is [n, d_model] (F32, F16 or BF16), and
 * adapter_config.json, whose "num_virtual_tokens" is n. An adapter whose
 * tensor holds k * n rows (a multi-round adapter with k stages) loads as k
 * prompts of n rows each, in row order.
 */
#ifndef KVCHAIN_PROMPT_H
#define KVCHAIN_PROMPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct model;

struct stage_prompt {
	bool soft;		/* embeddings, else token ids of a text */
	uint32_t n;		/* virtual tokens (soft) or token ids (hard) */
	uint32_t d_model;	/* width of each embedding (soft only) */
	float *embd;		/* (n, d_model), soft only */
	int32_t *tokens;	/* (n), hard only */
};

/*
 * Makes a soft prompt from @n rows of @width floats. Returns 0, or -EINVAL
 * with a message when @width differs from the model's d_model, n is 0, or a
 * value is not finite; -ENOMEM.
 */
int stage_prompt_soft(const struct model *model, const float *embd,
		      uint32_t n, uint32_t width, struct stage_prompt **out,
		      char *err, size_t errlen);

/*
 * Makes a hard prompt from @text, tokenized like every span: no BOS or EOS,
 * the SentencePiece space prefix at its start. Returns 0, -EINVAL for text
 * that encodes to no tokens, or -ENOMEM.
 */
int stage_prompt_hard(const struct model *model, const char *text,
		      struct stage_prompt **out, char *err, size_t errlen);

void stage_prompt_free(struct stage_prompt *prompt);

/* Upper bound on the stages one adapter file may hold. */
#define PROMPT_MAX_STAGES 16

/*
 * Loads the PEFT adapter in folder @dir. Stores the prompts (one, or k for
 * a tensor of k * num_virtual_tokens rows) in @out and their count in
 * *n_out. Returns 0 or a negative errno with a one-line message naming the
 * file and the field: a missing file, a safetensors header that is not
 * valid (length, JSON, dtype, shape, data offsets outside the file), a
 * missing prompt_embeddings tensor, a num_virtual_tokens that does not
 * divide the tensor's rows, or a width that differs from d_model.
 */
int stage_prompt_load_peft(const struct model *model, const char *dir,
			   struct stage_prompt *out[PROMPT_MAX_STAGES],
			   uint32_t *n_out, char *err, size_t errlen);

/*
 * Parses @size bytes of an adapter_model.safetensors file, already in
 * memory, against the num_virtual_tokens of its adapter_config.json.
 * stage_prompt_load_peft and the fuzz target share it. @name is the file
 * name for messages. Returns and stores like stage_prompt_load_peft.
 */
int stage_prompt_parse_safetensors(const void *data, size_t size,
				   const char *name, uint32_t d_model,
				   uint32_t num_virtual_tokens,
				   struct stage_prompt *out[PROMPT_MAX_STAGES],
				   uint32_t *n_out, char *err, size_t errlen);

/*
 * Parses @size bytes of an adapter_config.json, already in memory, into
 * its num_virtual_tokens, checking peft_type (PROMPT_TUNING) and token_dim
 * (@d_model) when present. @name is the file name for messages. Returns 0
 * or -EINVAL (-EFBIG for an oversized file) with a message.
 */
int stage_prompt_parse_config(const void *data, size_t size,
			      const char *name, uint32_t d_model,
			      uint32_t *n_virtual, char *err, size_t errlen);

/*
 * Writes @n_prompts soft prompts of equal length into folder @dir (created
 * if missing) as one PEFT adapter: their rows concatenated in F32, with
 * num_virtual_tokens the length of one. Files are written to temporary
 * names and renamed into place. Returns 0 or a negative errno with a
 * message.
 */
int stage_prompt_save_peft(const char *dir,
			   const struct stage_prompt *const *prompts,
			   uint32_t n_prompts, char *err, size_t errlen);

/*
 * Creates folder @dir and its missing parents, like mkdir -p. Returns 0
 * (also when it exists) or a negative errno with a message naming the
 * folder that could not be made.
 */
int prompt_make_dirs(const char *dir, char *err, size_t errlen);

#endif /* KVCHAIN_PROMPT_H */
