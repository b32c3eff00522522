/* SPDX-License-Identifier: MIT */
/*
 * data.c - reads the paper-format data files (tune/data.h) with jansson,
 * checks their keys, tokenizes them as the engine frames spans, and builds
 * training layouts from them.
 */
#include "config.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "model.h"
#include "segment.h"
#include "tokenizer.h"

#define MAX_STAGE_LETTERS CHAIN_MAX_STAGES

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

char tune_stage_letter(uint32_t stage)
{
	return (char)('A' + stage);
}

static bool is_stage_letter(char c)
{
	return c >= 'A' && c < 'A' + MAX_STAGE_LETTERS;
}

/*
 * Parses a key name. Returns 0, or -EINVAL when @name is none of I_ALL,
 * I_<stage>, O_<stage>, O_<round><stage>.
 */
static int parse_key(const char *name, struct tune_key *key)
{
	size_t len = strlen(name);
	unsigned long round;
	char *end;

	memset(key, 0, sizeof(*key));
	if (len >= sizeof(key->name))
		return -EINVAL;
	memcpy(key->name, name, len + 1);
	if (!strcmp(name, "I_ALL")) {
		key->kind = SPAN_SHARED_INPUT;
		return 0;
	}
	if (len < 3 || name[1] != '_' || !is_stage_letter(name[len - 1]))
		return -EINVAL;
	key->stage = (uint32_t)(name[len - 1] - 'A');
	if (name[0] == 'I' && len == 3) {
		key->kind = SPAN_STAGE_INPUT;
		return 0;
	}
	if (name[0] != 'O')
		return -EINVAL;
	key->kind = SPAN_STAGE_OUTPUT;
	if (len == 3)
		return 0;
	if (name[2] < '1' || name[2] > '9')
		return -EINVAL;
	round = strtoul(name + 2, &end, 10);
	if (end != name + len - 1 || round == 0 || round > 999)
		return -EINVAL;
	key->round = (uint32_t)round;
	return 0;
}

/* Layout order of two keys: <0 when @a comes first. */
static int key_order(const struct tune_key *a, const struct tune_key *b,
		     bool multi_round)
{
	/* a rank per key: I_ALL, then inputs and outputs in chain order */
	uint64_t ra, rb;

	if (multi_round) {
		ra = a->kind == SPAN_SHARED_INPUT ? 0 :
		     a->kind == SPAN_STAGE_INPUT ? 1 + a->stage :
		     ((uint64_t)a->round << 8) + a->stage;
		rb = b->kind == SPAN_SHARED_INPUT ? 0 :
		     b->kind == SPAN_STAGE_INPUT ? 1 + b->stage :
		     ((uint64_t)b->round << 8) + b->stage;
	} else {
		ra = a->kind == SPAN_SHARED_INPUT ? 0 :
		     2 + 2 * (uint64_t)a->stage +
		     (a->kind == SPAN_STAGE_OUTPUT);
		rb = b->kind == SPAN_SHARED_INPUT ? 0 :
		     2 + 2 * (uint64_t)b->stage +
		     (b->kind == SPAN_STAGE_OUTPUT);
	}
	return ra < rb ? -1 : ra > rb;
}

int tune_data_find_key(const struct tune_data *data, const char *name)
{
	uint32_t i;

	for (i = 0; i < data->n_keys; i++)
		if (!strcmp(data->keys[i].name, name))
			return (int)i;
	return -1;
}

#define KEY_GRAMMAR "expected I_ALL, I_<stage>, O_<stage> or " \
		    "O_<round><stage> with a stage letter A to P"

/*
 * Fixes the key set from the first example @obj: parses, sorts into layout
 * order and checks that the outputs have no gap.
 */
static int keys_from_first(struct tune_data *d, json_t *obj, uint32_t line,
			   char *err, size_t errlen)
{
	const char *name;
	json_t *val;
	struct tune_key k, outs[TUNE_MAX_KEYS];
	uint32_t i, j, n_out = 0, n_single = 0, n_multi = 0;

	json_object_foreach(obj, name, val) {
		if (parse_key(name, &k) < 0) {
			set_err(err, errlen, "%s:%u: unknown key \"%s\" (%s)",
				d->name, line, name, KEY_GRAMMAR);
			return -EINVAL;
		}
		if (d->n_keys == TUNE_MAX_KEYS) {
			set_err(err, errlen, "%s:%u: more than %d keys",
				d->name, line, TUNE_MAX_KEYS);
			return -E2BIG;
		}
		if (k.kind == SPAN_STAGE_OUTPUT) {
			if (k.round)
				n_multi++;
			else
				n_single++;
		}
		d->keys[d->n_keys++] = k;
	}
	if (n_single + n_multi == 0) {
		set_err(err, errlen, "%s:%u: no output key (O_A, O_1A, ...)",
			d->name, line);
		return -EINVAL;
	}
	if (n_single && n_multi) {
		for (i = 0; d->keys[i].kind != SPAN_STAGE_OUTPUT ||
			    d->keys[i].round; i++)
			;
		set_err(err, errlen,
			"%s:%u: key %s: single-round output keys (O_A) and multi-round ones (O_1A) in one file",
			d->name, line, d->keys[i].name);
		return -EINVAL;
	}
	d->multi_round = n_multi > 0;

	/* insertion sort into layout order */
	for (i = 1; i < d->n_keys; i++) {
		k = d->keys[i];
		for (j = i; j > 0 && key_order(&k, &d->keys[j - 1],
					       d->multi_round) < 0; j--)
			d->keys[j] = d->keys[j - 1];
		d->keys[j] = k;
	}

	/* outputs in order: A, B, ... or 1A, 1B, ..., 2A, ... */
	for (i = 0; i < d->n_keys; i++)
		if (d->keys[i].kind == SPAN_STAGE_OUTPUT)
			outs[n_out++] = d->keys[i];
	d->n_stages = 0;
	for (i = 0; i < n_out; i++)
		if (outs[i].stage + 1 > d->n_stages)
			d->n_stages = outs[i].stage + 1;
	d->n_rounds = d->multi_round ? outs[n_out - 1].round : 1;
	for (i = 0; i < n_out; i++) {
		uint32_t want_round = d->multi_round ? 1 + i / d->n_stages : 0;
		uint32_t want_stage = i % d->n_stages;

		if (outs[i].round != want_round || outs[i].stage != want_stage) {
			if (d->multi_round)
				set_err(err, errlen,
					"%s:%u: missing key O_%u%c: outputs must run O_1A, O_1B, ... without a gap",
					d->name, line, want_round,
					tune_stage_letter(want_stage));
			else
				set_err(err, errlen,
					"%s:%u: missing key O_%c: outputs must run O_A, O_B, ... without a gap",
					d->name, line,
					tune_stage_letter(want_stage));
			return -EINVAL;
		}
	}
	for (i = 0; i < d->n_keys; i++) {
		if (d->keys[i].kind == SPAN_STAGE_INPUT &&
		    d->keys[i].stage >= d->n_stages) {
			set_err(err, errlen,
				"%s:%u: key %s: stage %c has no output",
				d->name, line, d->keys[i].name,
				tune_stage_letter(d->keys[i].stage));
			return -EINVAL;
		}
	}
	return 0;
}

/* Copies the strings of @obj into example @ex, checking its keys. */
static int read_example(struct tune_data *d, json_t *obj,
			struct tune_example *ex, char *err, size_t errlen)
{
	const char *name;
	json_t *val;
	uint32_t i;
	int k;

	if (!json_is_object(obj)) {
		set_err(err, errlen, "%s:%u: example %u is not a JSON object",
			d->name, ex->line, ex->index);
		return -EINVAL;
	}
	if (d->n_keys == 0) {
		int rc = keys_from_first(d, obj, ex->line, err, errlen);

		if (rc < 0)
			return rc;
	}
	json_object_foreach(obj, name, val) {
		struct tune_key key;

		if (parse_key(name, &key) < 0) {
			set_err(err, errlen, "%s:%u: unknown key \"%s\" (%s)",
				d->name, ex->line, name, KEY_GRAMMAR);
			return -EINVAL;
		}
		k = tune_data_find_key(d, name);
		if (k < 0) {
			set_err(err, errlen,
				"%s:%u: unexpected key %s: the first example (line %u) has no such key",
				d->name, ex->line, name, d->examples[0].line);
			return -EINVAL;
		}
		if (!json_is_string(val)) {
			set_err(err, errlen, "%s:%u: key %s: value is not a string",
				d->name, ex->line, name);
			return -EINVAL;
		}
		ex->len[k] = json_string_length(val);
		ex->text[k] = malloc(ex->len[k] + 1);
		if (!ex->text[k])
			return -ENOMEM;
		memcpy(ex->text[k], json_string_value(val), ex->len[k] + 1);
		if (d->keys[k].kind == SPAN_STAGE_OUTPUT && ex->len[k] == 0) {
			set_err(err, errlen, "%s:%u: key %s: empty output",
				d->name, ex->line, name);
			return -EINVAL;
		}
	}
	for (i = 0; i < d->n_keys; i++) {
		if (!ex->text[i]) {
			set_err(err, errlen, "%s:%u: missing key %s", d->name,
				ex->line, d->keys[i].name);
			return -EINVAL;
		}
	}
	return 0;
}

/* Makes room for one more example and returns it, zeroed. */
static struct tune_example *new_example(struct tune_data *d, size_t *cap)
{
	struct tune_example *ex;

	if (d->n_examples == *cap) {
		size_t n = *cap ? *cap * 2 : 16;

		ex = realloc(d->examples, n * sizeof(*ex));
		if (!ex)
			return NULL;
		d->examples = ex;
		*cap = n;
	}
	ex = &d->examples[d->n_examples];
	memset(ex, 0, sizeof(*ex));
	ex->index = d->n_examples++;
	return ex;
}

/*
 * Records in @lines the line of each element of the top-level array in
 * @buf, which jansson has already found to be valid JSON. Returns the
 * element count.
 */
static size_t array_element_lines(const char *buf, size_t len,
				  uint32_t *lines, size_t cap)
{
	uint32_t line = 1;
	size_t i, n = 0;
	int depth = 0;
	bool in_string = false, expect = false;

	for (i = 0; i < len; i++) {
		char c = buf[i];

		if (c == '\n')
			line++;
		if (in_string) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_string = false;
			continue;
		}
		if (depth == 1 && expect && c != ' ' && c != '\t' &&
		    c != '\r' && c != '\n' && c != ']') {
			if (n < cap)
				lines[n] = line;
			n++;
			expect = false;
		}
		if (c == '"') {
			in_string = true;
		} else if (c == '{' || c == '[') {
			if (++depth == 1)
				expect = true;
		} else if (c == '}' || c == ']') {
			depth--;
		} else if (c == ',' && depth == 1) {
			expect = true;
		}
	}
	return n;
}

static int parse_array(struct tune_data *d, const char *buf, size_t len,
		       char *err, size_t errlen)
{
	json_error_t jerr;
	json_t *root, *obj;
	uint32_t *lines = NULL;
	size_t i, n, cap = 0;
	int rc = 0;

	root = json_loadb(buf, len, JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		set_err(err, errlen, "%s:%d: invalid JSON: %s (column %d)",
			d->name, jerr.line, jerr.text, jerr.column);
		return -EINVAL;
	}
	if (!json_is_array(root)) {
		set_err(err, errlen, "%s:1: expected an array of examples",
			d->name);
		rc = -EINVAL;
		goto out_root;
	}
	n = json_array_size(root);
	lines = calloc(n ? n : 1, sizeof(*lines));
	if (!lines) {
		rc = -ENOMEM;
		goto out_root;
	}
	array_element_lines(buf, len, lines, n);
	json_array_foreach(root, i, obj) {
		struct tune_example *ex = new_example(d, &cap);

		if (!ex) {
			rc = -ENOMEM;
			break;
		}
		ex->line = lines[i];
		if ((rc = read_example(d, obj, ex, err, errlen)) < 0)
			break;
	}
	free(lines);
out_root:
	json_decref(root);
	return rc;
}

static int parse_lines(struct tune_data *d, const char *buf, size_t len,
		       char *err, size_t errlen)
{
	size_t pos = 0, cap = 0;
	uint32_t line = 0;
	int rc = 0;

	while (pos < len && rc == 0) {
		const char *nl = memchr(buf + pos, '\n', len - pos);
		size_t end = nl ? (size_t)(nl - buf) : len, j;
		struct tune_example *ex;
		json_error_t jerr;
		json_t *obj;

		line++;
		for (j = pos; j < end; j++)
			if (buf[j] != ' ' && buf[j] != '\t' && buf[j] != '\r')
				break;
		if (j == end) {
			pos = end + 1;
			continue;
		}
		obj = json_loadb(buf + pos, end - pos, JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &jerr);
		if (!obj) {
			set_err(err, errlen, "%s:%u: invalid JSON: %s (column %d)",
				d->name, line, jerr.text, jerr.column);
			return -EINVAL;
		}
		ex = new_example(d, &cap);
		if (!ex)
			rc = -ENOMEM;
		else {
			ex->line = line;
			rc = read_example(d, obj, ex, err, errlen);
		}
		json_decref(obj);
		pos = end + 1;
	}
	return rc;
}

int tune_data_parse(const char *buf, size_t len, const char *name,
		    struct tune_data *data, char *err, size_t errlen)
{
	size_t i = 0;
	int rc;

	memset(data, 0, sizeof(*data));
	data->name = strdup(name);
	if (!data->name)
		return -ENOMEM;
	while (i < len && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\r' ||
			   buf[i] == '\n'))
		i++;
	if (i < len && buf[i] == '[')
		rc = parse_array(data, buf, len, err, errlen);
	else
		rc = parse_lines(data, buf, len, err, errlen);
	if (rc == 0 && data->n_examples == 0) {
		set_err(err, errlen, "%s: no examples", name);
		rc = -EINVAL;
	}
	if (rc < 0)
		tune_data_free(data);
	return rc;
}

int tune_data_load(const char *path, struct tune_data *data, char *err,
		   size_t errlen)
{
	FILE *f;
	char *buf = NULL;
	size_t len = 0, cap = 0, got;
	int rc;

	memset(data, 0, sizeof(*data));
	f = fopen(path, "rb");
	if (!f) {
		rc = -errno;
		set_err(err, errlen, "%s: %s", path, strerror(errno));
		return rc;
	}
	do {
		if (len == cap) {
			char *p;

			cap = cap ? cap * 2 : 65536;
			p = realloc(buf, cap);
			if (!p) {
				rc = -ENOMEM;
				goto out_close;
			}
			buf = p;
		}
		got = fread(buf + len, 1, cap - len, f);
		len += got;
	} while (got > 0);
	if (ferror(f)) {
		rc = -EIO;
		set_err(err, errlen, "%s: read failed", path);
		goto out_close;
	}
	rc = tune_data_parse(buf, len, path, data, err, errlen);
out_close:
	fclose(f);
	free(buf);
	return rc;
}

void tune_data_free(struct tune_data *data)
{
	uint32_t e, k;

	for (e = 0; e < data->n_examples; e++) {
		for (k = 0; k < TUNE_MAX_KEYS; k++) {
			free(data->examples[e].text[k]);
			free(data->examples[e].ids[k]);
		}
	}
	free(data->examples);
	free(data->name);
	memset(data, 0, sizeof(*data));
}

/* Tokenizes an output: BOS, then the text's own tokens. */
static int encode_output(const struct tokenizer *tok, const char *text,
			 size_t len, int32_t **out)
{
	int32_t *ids;
	int n;

	*out = NULL;
	n = tok_encode(tok, text, len, 0, NULL, 0);
	if (n < 0)
		return n;
	ids = malloc(((size_t)n + 1) * sizeof(int32_t));
	if (!ids)
		return -ENOMEM;
	ids[0] = tok_bos(tok);
	n = tok_encode(tok, text, len, 0, ids + 1, (size_t)n);
	if (n < 0) {
		free(ids);
		return n;
	}
	*out = ids;
	return n + 1;
}

int tune_data_tokenize(struct tune_data *data, const struct engine *eng,
		       char *err, size_t errlen)
{
	const struct tokenizer *tok = engine_model(eng)->tok;
	uint32_t e, k;
	int n;

	if (tok_bos(tok) < 0 || tok_eos(tok) < 0) {
		set_err(err, errlen,
			"the model's vocabulary has no %s token, which framing outputs needs",
			tok_bos(tok) < 0 ? "BOS" : "EOS");
		return -EINVAL;
	}
	for (e = 0; e < data->n_examples; e++) {
		struct tune_example *ex = &data->examples[e];

		for (k = 0; k < data->n_keys; k++) {
			free(ex->ids[k]);
			if (data->keys[k].kind == SPAN_STAGE_OUTPUT)
				n = encode_output(tok, ex->text[k], ex->len[k],
						  &ex->ids[k]);
			else
				n = engine_encode_input(eng, ex->text[k],
							ex->len[k],
							&ex->ids[k]);
			if (n < 0) {
				set_err(err, errlen,
					"%s:%u: key %s: text cannot be tokenized (%s)",
					data->name, ex->line,
					data->keys[k].name, strerror(-n));
				return n;
			}
			ex->n_ids[k] = (uint32_t)n;
		}
	}
	return 0;
}

int tune_data_layout(const struct tune_data *data,
		     const struct tune_example *ex, const uint32_t *rows,
		     int train_stage, int32_t eos, struct tune_layout *lay)
{
	uint32_t k;
	int rc;

	rc = tune_layout_init(lay, data->n_stages, rows);
	if (rc < 0)
		return rc;
	for (k = 0; k < data->n_keys; k++) {
		const struct tune_key *key = &data->keys[k];
		bool out = key->kind == SPAN_STAGE_OUTPUT;
		bool loss = out && (train_stage < 0 ||
				    key->stage == (uint32_t)train_stage);

		rc = tune_layout_add(lay, key->kind, key->stage, ex->ids[k],
				     ex->n_ids[k], loss, loss ? eos : -1);
		if (rc < 0)
			goto out_free;
		if (train_stage >= 0 && out &&
		    key->stage == (uint32_t)train_stage)
			break;
	}
	return 0;
out_free:
	tune_layout_free(lay);
	return rc;
}
