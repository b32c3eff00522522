/* SPDX-License-Identifier: MIT */
/*
 * data.h - the training and test files of kvchain-tune: a JSON array, or
 * JSON Lines, of objects whose keys name the segments of one example, as
 * the FTHSS authors' code reads them:
 *
 *   I_ALL        shared input, seen by every stage
 *   I_A, I_B     input of one stage (stages are the letters A to P)
 *   O_A, O_B     output of one stage, single-round chains
 *   O_1A, O_1B,  output of stage A (B) in round 1, 2, ...: multi-round
 *   O_2A, ...    chains, whose stages alternate
 *
 * Every value is a string. The first example fixes the set of keys; every
 * other example must have exactly the same set. Outputs must run without a
 * gap: stages A, B, ... in single-round files; rounds 1, 2, ... in
 * multi-round ones, every round but the last holding every stage and the
 * last a leading run of them.
 *
 * Spans are laid out in chain order: I_ALL, then per stage its input and
 * output (single-round), or every stage input and then the outputs round
 * by round (multi-round). Text is framed as the engine frames it
 * (engine/segment.h): an input is its text + "\n" (engine_encode_input),
 * an output is BOS + the tokens of its text, and its training target ends
 * with EOS, which is predicted but not fed.
 */
#ifndef KVCHAIN_TUNE_DATA_H
#define KVCHAIN_TUNE_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layout.h"

struct engine;

/* Largest number of keys (segments) in one example. */
#define TUNE_MAX_KEYS 64

/* One segment key, e.g. O_2B: an output of stage 1 in round 2. */
struct tune_key {
	enum span_kind kind;	/* shared input, stage input or output */
	uint32_t stage;		/* 0 for A; 0 for I_ALL */
	uint32_t round;		/* 1-based for multi-round outputs, else 0 */
	char name[12];		/* as written in the file */
};

struct tune_example {
	uint32_t line;		/* 1-based line where the object starts */
	uint32_t index;		/* 0-based position in the file */
	char *text[TUNE_MAX_KEYS]; /* (n_keys) UTF-8, in key order */
	size_t len[TUNE_MAX_KEYS];
	int32_t *ids[TUNE_MAX_KEYS]; /* framed tokens, after tune_data_tokenize */
	uint32_t n_ids[TUNE_MAX_KEYS];
};

struct tune_data {
	char *name;		/* file name for messages */
	bool multi_round;
	uint32_t n_stages;
	uint32_t n_rounds;	/* 1 for single-round files */
	uint32_t n_keys;
	struct tune_key keys[TUNE_MAX_KEYS]; /* in layout order */
	uint32_t n_examples;
	struct tune_example *examples;
};

/*
 * Reads the data file at @path into @data. Returns 0, or a negative errno
 * with a one-line message "FILE:LINE: ..." naming the key where one is at
 * fault: a file that cannot be read, invalid JSON, an example that is not
 * an object, an unknown key, a key missing from an example or absent from
 * the first, a value that is not a string, an empty output, or outputs
 * with a gap.
 */
int tune_data_load(const char *path, struct tune_data *data, char *err,
		   size_t errlen);

/* As tune_data_load, from @len bytes in memory named @name. */
int tune_data_parse(const char *buf, size_t len, const char *name,
		    struct tune_data *data, char *err, size_t errlen);

void tune_data_free(struct tune_data *data);

/*
 * Tokenizes every segment of every example, framed as above. Returns 0, or
 * a negative errno with a message naming the file, line and key: a text
 * the vocabulary cannot encode, or a model without BOS or EOS.
 */
int tune_data_tokenize(struct tune_data *data, const struct engine *eng,
		       char *err, size_t errlen);

/* Returns the index of the key named @name, or -1. */
int tune_data_find_key(const struct tune_data *data, const char *name);

/*
 * Builds the training layout of example @ex (tokenized): the prompt slots
 * of every stage (rows[i] rows each), then the content spans in layout
 * order. With @train_stage >= 0 (single-round) the layout ends with that
 * stage's output, the only span in the loss; with -1 (multi-round) every
 * output is in the loss. Each loss span must predict @eos after its last
 * token. Returns 0 or a negative errno from tune_layout_add.
 */
int tune_data_layout(const struct tune_data *data,
		     const struct tune_example *ex, const uint32_t *rows,
		     int train_stage, int32_t eos, struct tune_layout *lay);

/* Returns the letter of stage @stage: 'A' for 0. */
char tune_stage_letter(uint32_t stage);

#endif /* KVCHAIN_TUNE_DATA_H */
