/* SPDX-License-Identifier: MIT */
/*
 * metrics.h - the answer metrics of extractive QA that the FTHSS paper
 * reports: exact match and token F1 after normalising both texts
 * (lowercase ASCII letters, drop ASCII punctuation, drop the articles
 * "a", "an" and "the", split on whitespace).
 */
#ifndef KVCHAIN_TUNE_METRICS_H
#define KVCHAIN_TUNE_METRICS_H

#include <stddef.h>

/*
 * Writes the normalised form of @len bytes of @text into @out (room for
 * len + 1 bytes): its words joined by single spaces. Returns the length.
 */
size_t tune_normalize(const char *text, size_t len, char *out);

/* Returns 1 when the normalised texts are equal, else 0; -1 if out of
 * memory. */
int tune_exact_match(const char *pred, size_t pred_len, const char *ref,
		     size_t ref_len);

/*
 * Returns the token F1 of @pred against @ref: with the multiset overlap c
 * of their normalised words, 2c / (|pred| + |ref|). Two texts with no
 * words score 1, one empty text against a non-empty one 0. Returns a
 * negative value when out of memory.
 */
double tune_token_f1(const char *pred, size_t pred_len, const char *ref,
		     size_t ref_len);

#endif /* KVCHAIN_TUNE_METRICS_H */
