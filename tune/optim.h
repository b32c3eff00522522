/* SPDX-License-Identifier: MIT */
/*
 * optim.h - what kvchain-tune updates prompts with: AdamW, the linear
 * learning-rate schedule with warm-up, global-norm gradient clipping, a
 * seeded random generator, and checkpoints that hold all of their state so
 * a killed run resumes bit for bit.
 */
#ifndef KVCHAIN_TUNE_OPTIM_H
#define KVCHAIN_TUNE_OPTIM_H

#include <stddef.h>
#include <stdint.h>

struct tune_adamw {
	double lr;		/* peak learning rate */
	double beta1;
	double beta2;
	double eps;
	double weight_decay;	/* decoupled, times lr; 0 turns it off */
};

/*
 * Returns the learning rate of optimiser step @step (0-based) of @total:
 * lr * (step + 1) / warmup during the first @warmup steps, then falling
 * linearly to lr / (total - warmup) at the last step.
 */
double tune_lr_at(double lr, uint64_t step, uint64_t total, uint64_t warmup);

/*
 * Scales @g (n values) so its Euclidean norm is at most @max_norm (no
 * change for max_norm <= 0). Returns the norm before scaling.
 */
double tune_clip_grad(double *g, size_t n, double max_norm);

/*
 * One AdamW update of @w (n values) with gradient @g, moments @m and @v,
 * at 1-based step @t and learning rate @lr.
 */
void tune_adamw_step(const struct tune_adamw *opt, float *w, double *m,
		     double *v, const double *g, size_t n, uint64_t t,
		     double lr);

/* xoshiro256** state, seeded through splitmix64. */
struct tune_rng {
	uint64_t s[4];
};

void tune_rng_seed(struct tune_rng *rng, uint64_t seed);
uint64_t tune_rng_next(struct tune_rng *rng);
/* Returns a value in [0, n) for n > 0. */
uint64_t tune_rng_below(struct tune_rng *rng, uint64_t n);

/* FNV-1a over @n bytes, continuing from @h (start with TUNE_HASH_INIT). */
#define TUNE_HASH_INIT 0xcbf29ce484222325ull
uint64_t tune_hash(uint64_t h, const void *data, size_t n);

/* Everything a run needs to continue from an optimiser step. */
struct tune_checkpoint {
	uint64_t settings;	/* hash of data, model and options */
	uint32_t stage;		/* trained stage, or UINT32_MAX: all jointly */
	uint64_t step;		/* optimiser steps done */
	uint64_t total;		/* optimiser steps in the run of this stage */
	struct tune_rng rng;	/* state at the start of the current epoch */
	size_t n;		/* trained values */
	float *w;		/* (n) prompt rows */
	double *m;		/* (n) AdamW first moments */
	double *v;		/* (n) AdamW second moments */
};

/*
 * Writes @ck to @path through "@path.tmp": written, fsync'd, renamed, and
 * the folder fsync'd, so a crash leaves the previous checkpoint or the new
 * one. Returns 0 or a negative errno with a message.
 */
int tune_checkpoint_save(const char *path, const struct tune_checkpoint *ck,
			 char *err, size_t errlen);

/*
 * Reads a checkpoint into @ck, allocating its arrays (free them with
 * tune_checkpoint_free). Returns 0, -ENOENT when there is none, or a
 * negative errno with a message for a file that is short, corrupt (bad
 * magic or checksum) or of another version.
 */
int tune_checkpoint_load(const char *path, struct tune_checkpoint *ck,
			 char *err, size_t errlen);

void tune_checkpoint_free(struct tune_checkpoint *ck);

#endif /* KVCHAIN_TUNE_OPTIM_H */
