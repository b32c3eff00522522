/* SPDX-License-Identifier: MIT */
/*
 * metrics.c - exact match and token F1 over normalised answers.
 */
#include "config.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
	       c == '\v';
}

static bool is_punct(char c)
{
	return (c >= '!' && c <= '/') || (c >= ':' && c <= '@') ||
	       (c >= '[' && c <= '`') || (c >= '{' && c <= '~');
}

static bool is_article(const char *w, size_t n)
{
	return (n == 1 && w[0] == 'a') || (n == 2 && !memcmp(w, "an", 2)) ||
	       (n == 3 && !memcmp(w, "the", 3));
}

size_t tune_normalize(const char *text, size_t len, char *out)
{
	size_t i, n = 0, o = 0, w0;

	/* lowercase and drop punctuation */
	for (i = 0; i < len; i++) {
		char c = text[i];

		if (is_punct(c))
			continue;
		if (c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		out[n++] = c;
	}

	/* split on whitespace, drop articles, join with one space */
	i = 0;
	while (i < n) {
		while (i < n && is_space(out[i]))
			i++;
		w0 = i;
		while (i < n && !is_space(out[i]))
			i++;
		if (i == w0 || is_article(out + w0, i - w0))
			continue;
		if (o > 0)
			out[o++] = ' ';
		memmove(out + o, out + w0, i - w0);
		o += i - w0;
	}
	out[o] = '\0';
	return o;
}

static char *normalized_copy(const char *text, size_t len, size_t *out_len)
{
	char *s = malloc(len + 1);

	if (s)
		*out_len = tune_normalize(text, len, s);
	return s;
}

int tune_exact_match(const char *pred, size_t pred_len, const char *ref,
		     size_t ref_len)
{
	size_t np, nr;
	char *p = normalized_copy(pred, pred_len, &np);
	char *r = normalized_copy(ref, ref_len, &nr);
	int rc = -1;

	if (p && r)
		rc = np == nr && !memcmp(p, r, np);
	free(p);
	free(r);
	return rc;
}

/* Splits a normalised text in place into its words. */
static size_t split_words(char *s, size_t len, char **words)
{
	size_t i, n = 0;

	if (len == 0)
		return 0;
	words[n++] = s;
	for (i = 0; i < len; i++) {
		if (s[i] == ' ') {
			s[i] = '\0';
			words[n++] = s + i + 1;
		}
	}
	return n;
}

double tune_token_f1(const char *pred, size_t pred_len, const char *ref,
		     size_t ref_len)
{
	size_t np = 0, nr = 0, wp, wr, i, j, common = 0;
	char *p = normalized_copy(pred, pred_len, &np);
	char *r = normalized_copy(ref, ref_len, &nr);
	char **pw = NULL, **rw = NULL;
	double f1 = -1.0;

	if (!p || !r)
		goto out_free;
	pw = malloc((np / 2 + 1) * sizeof(char *));
	rw = malloc((nr / 2 + 1) * sizeof(char *));
	if (!pw || !rw)
		goto out_free;
	wp = split_words(p, np, pw);
	wr = split_words(r, nr, rw);
	if (wp == 0 || wr == 0) {
		f1 = wp == wr ? 1.0 : 0.0;
		goto out_free;
	}

	/* multiset overlap: each reference word matches at most once */
	for (i = 0; i < wp; i++) {
		for (j = 0; j < wr; j++) {
			if (rw[j] && !strcmp(pw[i], rw[j])) {
				rw[j] = NULL;
				common++;
				break;
			}
		}
	}
	f1 = 2.0 * (double)common / (double)(wp + wr);
out_free:
	free(p);
	free(r);
	free(pw);
	free(rw);
	return f1;
}
