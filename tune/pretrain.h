/* SPDX-License-Identifier: MIT */
/*
 * pretrain.h - kvchain-tune pretrain: trains every weight of a tiny llama
 * or qwen2 model on plain text, to build the demo base model. The input
 * GGUF file gives the architecture, tokenizer and starting weights; the
 * result is a GGUF file with F32 weights and the input's metadata.
 *
 * tune_params contains an F32 copy of every weight, their F64 gradients, and
 * a struct model whose weight pointers lead into that copy, so the
 * training pass (tune/train.h) runs on the weights as they are updated.
 */
#ifndef KVCHAIN_TUNE_PRETRAIN_H
#define KVCHAIN_TUNE_PRETRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "layout.h"
#include "model.h"
#include "optim.h"
#include "train.h"

/*
 * Largest model pretrain accepts by default: F32 weights, F64 gradients
 * and two F64 AdamW moments take 28 bytes a parameter, 1.4 GB at this
 * size, and the pass is single-sequence CPU code.
 */
#define TUNE_PRETRAIN_MAX_PARAMS 50000000u

/* One trained tensor of a tune_params, as the GGUF file names it. */
struct tune_tensor {
	char name[64];
	uint32_t n_dims;	/* 1 or 2 */
	uint64_t ne[2];		/* ne[0] is the row length */
	size_t offset;		/* of its first value in w and g */
	size_t n;		/* values */
};

struct tune_params {
	/* the source's config, tokenizer and RoPE; weights point into w */
	struct model model;
	struct tune_grads grads;	/* point into g */
	float *w;			/* (n) every weight */
	double *g;			/* (n) their gradients */
	size_t n;
	struct tune_tensor *tensors;	/* (n_tensors) in file order */
	uint32_t n_tensors;
};

/* Returns the number of weights tune_params_create would copy from @m. */
size_t tune_params_count(const struct model *m);

/*
 * Copies every weight of @src to F32 (dequantising quantised matrices).
 * @src must outlive the result, whose model shares its tokenizer and
 * file. Returns 0, -EFBIG with a message for a model of more than
 * @max_params weights, or -ENOMEM.
 */
int tune_params_create(const struct model *src, size_t max_params,
		       struct tune_params **out, char *err, size_t errlen);
void tune_params_free(struct tune_params *p);

/*
 * Writes @p as a GGUF v3 file at @path (through "@path.tmp", renamed):
 * the metadata of the source file unchanged, then every tensor of the
 * source in its order as F32, trained ones from p->w and the others
 * (rope_freqs.weight) converted. Returns 0 or a negative errno with a
 * message.
 */
int tune_params_write_gguf(const struct tune_params *p, const char *path,
			   char *err, size_t errlen);

/*
 * Lays out one training window: no prompt slots and one content span of
 * the @len tokens, each predicting the token after it; the last predicts
 * @next. Returns 0, -EINVAL for an empty window, or -ENOMEM.
 */
int tune_pretrain_layout(const int32_t *tokens, uint32_t len, int32_t next,
			 struct tune_layout *lay);

/* One optimiser step of pretrain. */
struct tune_pretrain_step {
	const int32_t *stream;	/* the tokenized text */
	const uint8_t *untrained; /* NULL, or 1 for each stream token that is
				   * not a target of the loss */
	const size_t *starts;	/* (n_win) first token of each window */
	uint32_t n_win;
	uint32_t len;		/* tokens fed per window */
	double lr;		/* learning rate of this step */
	double clip;		/* maximum global gradient norm, 0 for none */
	uint64_t t;		/* 1-based AdamW step */
	double loss;		/* out: mean loss over the windows */
	double grad_norm;	/* out: before clipping */
};

/*
 * Runs forward and backward over each window of @st (stream[start] ..
 * stream[start + len - 1], the last predicting stream[start + len]),
 * averages the weight gradients into p->g over the windows that predict a
 * trained token (every window when st->untrained is NULL; st->loss is the
 * mean over the same windows), clips them and applies AdamW
 * with moments @m and @v (p->n values each) to p->w. @ctx must have been
 * made for p->model with max_len >= len. Returns 0 or a negative errno of
 * the training pass.
 */
int tune_pretrain_step(struct tune_ctx *ctx, struct tune_params *p,
		       const struct tune_adamw *opt, double *m, double *v,
		       struct tune_pretrain_step *st);

/*
 * Reads the training text at @path and tokenizes it with @model's
 * tokenizer into one stream (*out, *n_out tokens, free() it):
 * - JSON Lines (or a JSON array) of objects {"text": "..."}: each text
 *   becomes BOS + its tokens + EOS, where the vocabulary has them;
 * - the FTHSS segment format (tune/data.h): each example's spans framed
 *   as kvchaind frames them (an input is its text + "\n", an output is
 *   BOS + its tokens followed by EOS), in layout order.
 * The first object decides: a "text" key means the first format. Returns
 * 0 or a negative errno with a message naming the file and line.
 */
int tune_pretrain_load_text(const char *path, const struct model *model,
			    int32_t **out, size_t *n_out, char *err,
			    size_t errlen);

/*
 * Loads the FTHSS segment format as tune_pretrain_load_text() does. Also
 * returns in *untrained (n_out bytes, free with free()) a 1 for each token
 * that is not an output's own token or its EOS. Those are the inputs and
 * each output's BOS, which the chain feeds rather than predicts. A file of
 * {"text": ...} objects has no outputs and is rejected with -EINVAL.
 */
int tune_pretrain_load_outputs(const char *path, const struct model *model,
			       int32_t **out, uint8_t **untrained,
			       size_t *n_out, char *err, size_t errlen);

/* kvchain-tune pretrain ...: argv[0] is "pretrain". */
int tune_cmd_pretrain(int argc, char **argv);

#endif /* KVCHAIN_TUNE_PRETRAIN_H */
