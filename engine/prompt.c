/* SPDX-License-Identifier: MIT */
/*
 * prompt.c - stage prompts: soft prompts from float rows, hard prompts from
 * text, and the PEFT prompt-tuning adapter folder (adapter_config.json and
 * adapter_model.safetensors) that soft prompts load from and save to.
 *
 * safetensors layout: a u64 little-endian header length N, N bytes of a
 * JSON object mapping each tensor name to {"dtype", "shape", "data_offsets"}
 * (plus an optional "__metadata__" object of strings), then the data.
 * data_offsets [begin, end) count from the first byte after the header.
 * Every field is checked before use, so a hostile file gets an error naming
 * the file and the field, never a crash.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels.h"
#include "model.h"
#include "prompt.h"
#include "tokenizer.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "prompt.c reads and writes little-endian tensor data in place"
#endif

#define CONFIG_NAME "adapter_config.json"
#define TENSORS_NAME "adapter_model.safetensors"
#define TENSOR_KEY "prompt_embeddings"

/* The same bound as MAX_HEADER_SIZE in the safetensors Rust crate. */
#define HEADER_MAX (100u * 1000 * 1000)

/*
 * Largest adapter file read into memory: 16 stages of 1000 virtual tokens
 * at d_model 16384 in F32. Prompt-tuning adapters are usually far smaller.
 */
#define TENSORS_FILE_MAX ((size_t)1 << 30)
#define CONFIG_FILE_MAX ((size_t)1 << 20)

/* Bytes of a JSON string quoted in an error message. */
#define QUOTE_MAX 80

static void set_err(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* Copies @s into @buf for a message, with unprintable bytes as '?'. */
static const char *quote(const char *s, size_t len, char buf[QUOTE_MAX + 4])
{
	size_t i, n = len < QUOTE_MAX ? len : QUOTE_MAX;

	for (i = 0; i < n; i++)
		buf[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
	if (len > n) {
		memcpy(buf + n, "...", 3);
		n += 3;
	}
	buf[n] = '\0';
	return buf;
}

static struct stage_prompt *prompt_alloc_soft(uint32_t n, uint32_t d_model)
{
	struct stage_prompt *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->soft = true;
	p->n = n;
	p->d_model = d_model;
	p->embd = malloc((size_t)n * d_model * sizeof(float));
	if (!p->embd) {
		free(p);
		return NULL;
	}
	return p;
}

void stage_prompt_free(struct stage_prompt *prompt)
{
	if (!prompt)
		return;
	free(prompt->embd);
	free(prompt->tokens);
	free(prompt);
}

int stage_prompt_soft(const struct model *model, const float *embd,
		      uint32_t n, uint32_t width, struct stage_prompt **out,
		      char *err, size_t errlen)
{
	uint32_t d_model = model->cfg.d_model;
	struct stage_prompt *p;
	size_t i, count;

	*out = NULL;
	if (n == 0) {
		set_err(err, errlen, "soft prompt has no rows");
		return -EINVAL;
	}
	if (width != d_model) {
		set_err(err, errlen,
			"soft prompt width %" PRIu32 " differs from the model's d_model %" PRIu32,
			width, d_model);
		return -EINVAL;
	}
	if ((uint64_t)n * width > SIZE_MAX / sizeof(float)) {
		set_err(err, errlen, "soft prompt of %" PRIu32 " rows is too large",
			n);
		return -ENOMEM;
	}
	count = (size_t)n * width;
	for (i = 0; i < count; i++) {
		if (!isfinite(embd[i])) {
			set_err(err, errlen,
				"soft prompt value at row %zu, column %zu is not finite",
				i / width, i % width);
			return -EINVAL;
		}
	}

	p = prompt_alloc_soft(n, width);
	if (!p) {
		set_err(err, errlen, "out of memory for a soft prompt of %" PRIu32 " rows",
			n);
		return -ENOMEM;
	}
	memcpy(p->embd, embd, count * sizeof(float));
	*out = p;
	return 0;
}

int stage_prompt_hard(const struct model *model, const char *text,
		      struct stage_prompt **out, char *err, size_t errlen)
{
	size_t len = strlen(text);
	struct stage_prompt *p;
	int count, again;

	*out = NULL;
	count = tok_encode(model->tok, text, len, 0, NULL, 0);
	if (count < 0) {
		set_err(err, errlen, "hard prompt text cannot be tokenized: %s",
			strerror(-count));
		return count;
	}
	if (count == 0) {
		set_err(err, errlen, "hard prompt text encodes to no tokens");
		return -EINVAL;
	}

	p = calloc(1, sizeof(*p));
	if (!p)
		goto out_nomem;
	p->tokens = malloc((size_t)count * sizeof(*p->tokens));
	if (!p->tokens)
		goto out_free_prompt;
	again = tok_encode(model->tok, text, len, 0, p->tokens, (size_t)count);
	if (again != count) {
		stage_prompt_free(p);
		set_err(err, errlen, "hard prompt text encoded to %d tokens, then to %d",
			count, again);
		return again < 0 ? again : -EIO;
	}
	p->soft = false;
	p->n = (uint32_t)count;
	*out = p;
	return 0;

out_free_prompt:
	free(p);
out_nomem:
	set_err(err, errlen, "out of memory for a hard prompt of %d tokens", count);
	return -ENOMEM;
}

/* ---- safetensors ------------------------------------------------------ */

struct st_dtype {
	const char *name;
	enum kern_type type;
	size_t size;		/* bytes of one element */
};

static const struct st_dtype st_dtypes[] = {
	{ "F32", KERN_TYPE_F32, 4 },
	{ "F16", KERN_TYPE_F16, 2 },
	{ "BF16", KERN_TYPE_BF16, 2 },
};

/* Reads a JSON array of exactly @n non-negative integers into @vals. */
static bool get_uint_array(const json_t *arr, size_t n, uint64_t *vals)
{
	size_t i;

	if (!json_is_array(arr) || json_array_size(arr) != n)
		return false;
	for (i = 0; i < n; i++) {
		const json_t *v = json_array_get(arr, i);

		if (!json_is_integer(v) || json_integer_value(v) < 0)
			return false;
		vals[i] = (uint64_t)json_integer_value(v);
	}
	return true;
}

static float load_elem(const uint8_t *src, const struct st_dtype *dt)
{
	uint16_t h;
	float f;

	if (dt->type == KERN_TYPE_F32) {
		memcpy(&f, src, sizeof(f));
		return f;
	}
	memcpy(&h, src, sizeof(h));
	return dt->type == KERN_TYPE_F16 ? kern_f16_to_f32(h) :
					   kern_bf16_to_f32(h);
}

/*
 * Converts @rows x @cols elements at @src (rows a multiple of @n_virtual)
 * into prompts of @n_virtual rows each, rejecting values that are not
 * finite.
 */
static int split_prompts(const uint8_t *src, const struct st_dtype *dt,
			 uint64_t rows, uint32_t cols, uint32_t n_virtual,
			 const char *name, struct stage_prompt **out,
			 uint32_t *n_out, char *err, size_t errlen)
{
	uint32_t k = (uint32_t)(rows / n_virtual), s;
	size_t i, per = (size_t)n_virtual * cols;
	int ret;

	for (s = 0; s < k; s++)
		out[s] = NULL;
	for (s = 0; s < k; s++) {
		struct stage_prompt *p = prompt_alloc_soft(n_virtual, cols);

		if (!p) {
			set_err(err, errlen,
				"%s: out of memory for %" PRIu64 " rows of %" PRIu32 " floats",
				name, rows, cols);
			ret = -ENOMEM;
			goto out_free_prompts;
		}
		out[s] = p;
		for (i = 0; i < per; i++) {
			size_t at = s * per + i;
			float v = load_elem(src + at * dt->size, dt);

			if (!isfinite(v)) {
				set_err(err, errlen,
					"%s: tensor " TENSOR_KEY ": value at row %zu, column %zu is not finite",
					name, at / cols, at % cols);
				ret = -EINVAL;
				goto out_free_prompts;
			}
			p->embd[i] = v;
		}
	}
	*n_out = k;
	return 0;

out_free_prompts:
	for (s = 0; s < k; s++) {
		stage_prompt_free(out[s]);
		out[s] = NULL;
	}
	return ret;
}

/*
 * Checks the dtype, shape and data_offsets of tensor @t against the @data_size
 * bytes after the header, and stores its element type, rows, columns and
 * byte offset.
 */
static int check_tensor(const json_t *t, size_t data_size, const char *name,
			const struct st_dtype **dt_out, uint64_t *rows,
			uint64_t *cols, uint64_t *begin, char *err,
			size_t errlen)
{
	const json_t *dtype = json_object_get(t, "dtype");
	const json_t *shape = json_object_get(t, "shape");
	const struct st_dtype *dt = NULL;
	char q[QUOTE_MAX + 4];
	uint64_t dims[2], offs[2], elems, bytes;
	size_t i;

	if (!json_is_string(dtype)) {
		set_err(err, errlen, "%s: tensor " TENSOR_KEY ": dtype is missing or not a string",
			name);
		return -EINVAL;
	}
	for (i = 0; i < sizeof(st_dtypes) / sizeof(st_dtypes[0]); i++)
		if (!strcmp(json_string_value(dtype), st_dtypes[i].name) &&
		    json_string_length(dtype) == strlen(st_dtypes[i].name))
			dt = &st_dtypes[i];
	if (!dt) {
		set_err(err, errlen,
			"%s: tensor " TENSOR_KEY ": dtype '%s' is not F32, F16 or BF16",
			name, quote(json_string_value(dtype),
				    json_string_length(dtype), q));
		return -EINVAL;
	}

	if (!get_uint_array(shape, 2, dims) || !dims[0] || !dims[1]) {
		set_err(err, errlen,
			"%s: tensor " TENSOR_KEY ": shape must be [rows, columns] of positive integers",
			name);
		return -EINVAL;
	}
	if (__builtin_mul_overflow(dims[0], dims[1], &elems) ||
	    __builtin_mul_overflow(elems, (uint64_t)dt->size, &bytes)) {
		set_err(err, errlen,
			"%s: tensor " TENSOR_KEY ": shape [%" PRIu64 ", %" PRIu64 "] overflows 64 bits",
			name, dims[0], dims[1]);
		return -EINVAL;
	}

	if (!get_uint_array(json_object_get(t, "data_offsets"), 2, offs) ||
	    offs[0] > offs[1]) {
		set_err(err, errlen,
			"%s: tensor " TENSOR_KEY ": data_offsets must be [begin, end] with 0 <= begin <= end",
			name);
		return -EINVAL;
	}
	if (offs[1] - offs[0] != bytes) {
		set_err(err, errlen,
			"%s: tensor " TENSOR_KEY ": data_offsets [%" PRIu64 ", %" PRIu64 "] do not match shape [%" PRIu64 ", %" PRIu64 "] of %s (%" PRIu64 " bytes)",
			name, offs[0], offs[1], dims[0], dims[1], dt->name,
			bytes);
		return -EINVAL;
	}
	if (offs[1] > data_size) {
		set_err(err, errlen,
			"%s: tensor " TENSOR_KEY ": data_offsets [%" PRIu64 ", %" PRIu64 "] run past the end of the data (%zu bytes after the header)",
			name, offs[0], offs[1], data_size);
		return -EINVAL;
	}

	*dt_out = dt;
	*rows = dims[0];
	*cols = dims[1];
	*begin = offs[0];
	return 0;
}

/* Parses the header length and the JSON header into *root. */
static int parse_header(const uint8_t *bytes, size_t size, const char *name,
			json_t **root, size_t *header_len, char *err,
			size_t errlen)
{
	json_error_t jerr;
	uint64_t n;

	if (size < 8) {
		set_err(err, errlen,
			"%s: file is %zu bytes, too short for the 8-byte header length",
			name, size);
		return -EINVAL;
	}
	memcpy(&n, bytes, sizeof(n));
	if (n > HEADER_MAX) {
		set_err(err, errlen,
			"%s: header length %" PRIu64 " exceeds the limit of %u bytes",
			name, n, HEADER_MAX);
		return -EINVAL;
	}
	if (n > size - 8) {
		set_err(err, errlen,
			"%s: header length %" PRIu64 " runs past the end of the file (%zu bytes)",
			name, n, size);
		return -EINVAL;
	}

	*root = json_loadb((const char *)bytes + 8, (size_t)n,
			   JSON_REJECT_DUPLICATES, &jerr);
	if (!*root) {
		char q[QUOTE_MAX + 4];

		set_err(err, errlen, "%s: header is not valid JSON (line %d): %s",
			name, jerr.line,
			quote(jerr.text, strnlen(jerr.text, sizeof(jerr.text)), q));
		return -EINVAL;
	}
	if (!json_is_object(*root)) {
		json_decref(*root);
		*root = NULL;
		set_err(err, errlen, "%s: header is not a JSON object", name);
		return -EINVAL;
	}
	*header_len = (size_t)n;
	return 0;
}

int stage_prompt_parse_safetensors(const void *data, size_t size,
				   const char *name, uint32_t d_model,
				   uint32_t num_virtual_tokens,
				   struct stage_prompt *out[PROMPT_MAX_STAGES],
				   uint32_t *n_out, char *err, size_t errlen)
{
	const uint8_t *bytes = data;
	const struct st_dtype *dt;
	const json_t *tensor;
	json_t *root;
	size_t header_len, data_start;
	uint64_t rows, cols, begin;
	int ret;

	*n_out = 0;
	if (!num_virtual_tokens) {
		set_err(err, errlen, "%s: num_virtual_tokens is 0", name);
		return -EINVAL;
	}
	ret = parse_header(bytes, size, name, &root, &header_len, err, errlen);
	if (ret)
		return ret;
	data_start = 8 + header_len;

	tensor = json_object_get(root, TENSOR_KEY);
	if (!tensor) {
		set_err(err, errlen, "%s: tensor " TENSOR_KEY " not found", name);
		ret = -ENOENT;
		goto out_free_root;
	}
	if (!json_is_object(tensor)) {
		set_err(err, errlen, "%s: tensor " TENSOR_KEY " is not a JSON object",
			name);
		ret = -EINVAL;
		goto out_free_root;
	}
	ret = check_tensor(tensor, size - data_start, name, &dt, &rows, &cols,
			   &begin, err, errlen);
	if (ret)
		goto out_free_root;

	if (cols != d_model) {
		set_err(err, errlen,
			"%s: tensor " TENSOR_KEY ": width %" PRIu64 " (shape [%" PRIu64 ", %" PRIu64 "]) differs from the model's d_model %" PRIu32,
			name, cols, rows, cols, d_model);
		ret = -EINVAL;
		goto out_free_root;
	}
	if (rows % num_virtual_tokens ||
	    rows / num_virtual_tokens > PROMPT_MAX_STAGES) {
		set_err(err, errlen,
			"%s: tensor " TENSOR_KEY ": %" PRIu64 " rows are not k * num_virtual_tokens (%" PRIu32 ") for k from 1 to %d",
			name, rows, num_virtual_tokens, PROMPT_MAX_STAGES);
		ret = -EINVAL;
		goto out_free_root;
	}

	ret = split_prompts(bytes + data_start + begin, dt, rows, d_model,
			    num_virtual_tokens, name, out, n_out, err, errlen);

out_free_root:
	json_decref(root);
	return ret;
}

/* ---- Loading an adapter folder --------------------------------------- */

/*
 * Reads the whole file @path (at most @max bytes) into a malloc'd buffer.
 * Returns 0 or a negative errno (-ENOENT for a missing file) with a message
 * naming @path.
 */
static int read_whole(const char *path, size_t max, uint8_t **buf_out,
		      size_t *size_out, char *err, size_t errlen)
{
	struct stat st;
	uint8_t *buf;
	size_t size, got = 0;
	int fd, ret;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		set_err(err, errlen, "%s: cannot open: %s", path, strerror(-ret));
		return ret;
	}
	if (fstat(fd, &st)) {
		ret = -errno;
		set_err(err, errlen, "%s: cannot stat: %s", path, strerror(-ret));
		goto out_close;
	}
	if (!S_ISREG(st.st_mode)) {
		set_err(err, errlen, "%s: not a regular file", path);
		ret = -EINVAL;
		goto out_close;
	}
	if ((uint64_t)st.st_size > max) {
		set_err(err, errlen, "%s: file is %jd bytes, above the limit of %zu",
			path, (intmax_t)st.st_size, max);
		ret = -EFBIG;
		goto out_close;
	}
	size = (size_t)st.st_size;
	buf = malloc(size ? size : 1);
	if (!buf) {
		set_err(err, errlen, "%s: out of memory for %zu bytes", path, size);
		ret = -ENOMEM;
		goto out_close;
	}
	while (got < size) {
		ssize_t n = read(fd, buf + got, size - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ret = -errno;
			set_err(err, errlen, "%s: read failed: %s", path,
				strerror(-ret));
			goto out_free_buf;
		}
		if (n == 0)	/* the file shrank since fstat */
			break;
		got += (size_t)n;
	}
	close(fd);
	*buf_out = buf;
	*size_out = got;
	return 0;

out_free_buf:
	free(buf);
out_close:
	close(fd);
	return ret;
}

int stage_prompt_parse_config(const void *data, size_t size,
			      const char *path, uint32_t d_model,
			      uint32_t *n_virtual, char *err, size_t errlen)
{
	char q[QUOTE_MAX + 4];
	json_error_t jerr;
	const json_t *v;
	json_t *root;
	int ret;

	if (size > CONFIG_FILE_MAX) {
		set_err(err, errlen, "%s: %zu bytes, above the limit of %zu",
			path, size, (size_t)CONFIG_FILE_MAX);
		return -EFBIG;
	}
	root = json_loadb(data, size, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		set_err(err, errlen, "%s: invalid JSON (line %d): %s", path,
			jerr.line,
			quote(jerr.text, strnlen(jerr.text, sizeof(jerr.text)), q));
		return -EINVAL;
	}
	ret = -EINVAL;
	if (!json_is_object(root)) {
		set_err(err, errlen, "%s: not a JSON object", path);
		goto out_free_root;
	}

	v = json_object_get(root, "peft_type");
	if (v && !json_is_string(v)) {
		set_err(err, errlen,
			"%s: key peft_type is not a string; only PROMPT_TUNING adapters are supported",
			path);
		goto out_free_root;
	}
	if (v && strcmp(json_string_value(v), "PROMPT_TUNING")) {
		set_err(err, errlen,
			"%s: key peft_type is '%s', but only PROMPT_TUNING adapters are supported",
			path,
			quote(json_string_value(v), json_string_length(v), q));
		goto out_free_root;
	}

	v = json_object_get(root, "num_virtual_tokens");
	if (!v) {
		set_err(err, errlen, "%s: key num_virtual_tokens is missing", path);
		goto out_free_root;
	}
	if (!json_is_integer(v) || json_integer_value(v) <= 0 ||
	    json_integer_value(v) > UINT32_MAX) {
		set_err(err, errlen,
			"%s: key num_virtual_tokens must be a positive integer below 2^32",
			path);
		goto out_free_root;
	}
	*n_virtual = (uint32_t)json_integer_value(v);

	v = json_object_get(root, "token_dim");
	if (v && (!json_is_integer(v) ||
		  json_integer_value(v) != (json_int_t)d_model)) {
		if (json_is_integer(v))
			set_err(err, errlen,
				"%s: key token_dim is %" JSON_INTEGER_FORMAT ", but the model's d_model is %" PRIu32,
				path, json_integer_value(v), d_model);
		else
			set_err(err, errlen, "%s: key token_dim is not an integer",
				path);
		goto out_free_root;
	}
	ret = 0;

out_free_root:
	json_decref(root);
	return ret;
}

/* Reads num_virtual_tokens from the file @path. */
static int parse_config(const char *path, uint32_t d_model,
			uint32_t *n_virtual, char *err, size_t errlen)
{
	uint8_t *buf;
	size_t size;
	int ret;

	ret = read_whole(path, CONFIG_FILE_MAX, &buf, &size, err, errlen);
	if (ret)
		return ret;
	ret = stage_prompt_parse_config(buf, size, path, d_model, n_virtual,
					err, errlen);
	free(buf);
	return ret;
}

int stage_prompt_load_peft(const struct model *model, const char *dir,
			   struct stage_prompt *out[PROMPT_MAX_STAGES],
			   uint32_t *n_out, char *err, size_t errlen)
{
	uint32_t d_model = model->cfg.d_model, n_virtual = 0;
	size_t dir_len = strlen(dir), size;
	struct stat st;
	uint8_t *buf;
	char *path;
	int ret;

	*n_out = 0;
	if (stat(dir, &st)) {
		ret = -errno;
		set_err(err, errlen, "%s: cannot open adapter folder: %s", dir,
			strerror(-ret));
		return ret;
	}
	if (!S_ISDIR(st.st_mode)) {
		set_err(err, errlen, "%s: adapter path is not a folder", dir);
		return -ENOTDIR;
	}
	path = malloc(dir_len + sizeof("/" TENSORS_NAME));
	if (!path) {
		set_err(err, errlen, "%s: out of memory", dir);
		return -ENOMEM;
	}

	sprintf(path, "%s/%s", dir, CONFIG_NAME);
	ret = parse_config(path, d_model, &n_virtual, err, errlen);
	if (ret)
		goto out_free_path;

	sprintf(path, "%s/%s", dir, TENSORS_NAME);
	ret = read_whole(path, TENSORS_FILE_MAX, &buf, &size, err, errlen);
	if (ret == -ENOENT) {
		set_err(err, errlen,
			"%s: not found (an adapter_model.bin PyTorch pickle is not supported; convert it to safetensors)",
			path);
		goto out_free_path;
	}
	if (ret)
		goto out_free_path;
	ret = stage_prompt_parse_safetensors(buf, size, path, d_model, n_virtual,
					     out, n_out, err, errlen);
	free(buf);

out_free_path:
	free(path);
	return ret;
}

/* ---- Saving an adapter folder ---------------------------------------- */

int prompt_make_dirs(const char *dir, char *err, size_t errlen)
{
	char *copy, *p;
	struct stat st;
	int ret = 0;

	if (!dir[0]) {
		set_err(err, errlen, "adapter folder name is empty");
		return -EINVAL;
	}
	copy = strdup(dir);
	if (!copy) {
		set_err(err, errlen, "%s: out of memory", dir);
		return -ENOMEM;
	}
	for (p = copy + 1; ; p++) {
		char c = *p;

		if (c != '/' && c != '\0')
			continue;
		*p = '\0';
		/* mkdir of an existing folder may fail with EACCES or EROFS. */
		if (mkdir(copy, 0777) && errno != EEXIST) {
			ret = -errno;
			if (!stat(copy, &st) && S_ISDIR(st.st_mode))
				ret = 0;
		}
		if (ret) {
			set_err(err, errlen, "%s: cannot create folder: %s", copy,
				strerror(-ret));
			goto out_free_copy;
		}
		*p = c;
		if (c == '\0')
			break;
	}
	if (stat(dir, &st) || !S_ISDIR(st.st_mode)) {
		set_err(err, errlen, "%s: exists and is not a folder", dir);
		ret = -ENOTDIR;
	}

out_free_copy:
	free(copy);
	return ret;
}

static int write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/*
 * Writes the @n_parts buffers to "@dir/.@name.XXXXXX", flushes it to disk
 * and renames it to "@dir/@name", so readers see the old file or the whole
 * new one.
 */
static int write_file_atomic(const char *dir, const char *name,
			     const void *const *parts, const size_t *lens,
			     int n_parts, char *err, size_t errlen)
{
	size_t dir_len = strlen(dir), name_len = strlen(name);
	char *tmp, *final;
	int fd, i, ret = -ENOMEM;

	tmp = malloc(dir_len + name_len + sizeof("/..XXXXXX"));
	final = malloc(dir_len + name_len + 2);
	if (!tmp || !final) {
		set_err(err, errlen, "%s: out of memory", dir);
		goto out_free_names;
	}
	sprintf(tmp, "%s/.%s.XXXXXX", dir, name);
	sprintf(final, "%s/%s", dir, name);

	fd = mkstemp(tmp);
	if (fd < 0) {
		ret = -errno;
		set_err(err, errlen, "%s: cannot create: %s", tmp, strerror(-ret));
		goto out_free_names;
	}
	ret = fchmod(fd, 0644) ? -errno : 0;
	for (i = 0; !ret && i < n_parts; i++)
		ret = write_all(fd, parts[i], lens[i]);
	if (!ret && fsync(fd))
		ret = -errno;
	if (close(fd) && !ret)
		ret = -errno;
	if (!ret && rename(tmp, final))
		ret = -errno;
	if (ret) {
		set_err(err, errlen, "%s: write failed: %s", final, strerror(-ret));
		unlink(tmp);
	}

out_free_names:
	free(tmp);
	free(final);
	return ret;
}

/* Flushes the renames in @dir to disk. */
static int sync_dir(const char *dir, char *err, size_t errlen)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), ret = 0;

	if (fd < 0 || fsync(fd))
		ret = -errno;
	if (fd >= 0)
		close(fd);
	if (ret)
		set_err(err, errlen, "%s: cannot sync folder: %s", dir,
			strerror(-ret));
	return ret;
}

static int check_save_args(const struct stage_prompt *const *prompts,
			   uint32_t n_prompts, char *err, size_t errlen)
{
	uint32_t i;

	if (n_prompts == 0 || n_prompts > PROMPT_MAX_STAGES) {
		set_err(err, errlen, "cannot save %" PRIu32 " prompts: an adapter holds 1 to %d",
			n_prompts, PROMPT_MAX_STAGES);
		return -EINVAL;
	}
	for (i = 0; i < n_prompts; i++) {
		const struct stage_prompt *p = prompts[i];

		if (!p || !p->soft || !p->n || !p->d_model || !p->embd) {
			set_err(err, errlen, "cannot save prompt %" PRIu32 ": not a soft prompt",
				i);
			return -EINVAL;
		}
		if (p->n != prompts[0]->n || p->d_model != prompts[0]->d_model) {
			set_err(err, errlen,
				"cannot save prompt %" PRIu32 ": it is %" PRIu32 " x %" PRIu32 ", but prompt 0 is %" PRIu32 " x %" PRIu32,
				i, p->n, p->d_model, prompts[0]->n,
				prompts[0]->d_model);
			return -EINVAL;
		}
	}
	return 0;
}

/*
 * Writes adapter_model.safetensors: the header, padded with spaces so the
 * data starts 8-byte aligned, then every prompt's rows in F32.
 */
static int save_tensors(const char *dir,
			const struct stage_prompt *const *prompts,
			uint32_t n_prompts, char *err, size_t errlen)
{
	uint64_t rows = (uint64_t)n_prompts * prompts[0]->n;
	uint32_t d = prompts[0]->d_model, i;
	size_t prompt_bytes = (size_t)prompts[0]->n * d * sizeof(float);
	const void *parts[2 + PROMPT_MAX_STAGES];
	size_t lens[2 + PROMPT_MAX_STAGES];
	uint64_t header_len;
	char header[256];
	int n;

	n = snprintf(header, sizeof(header),
		     "{\"" TENSOR_KEY "\":{\"dtype\":\"F32\",\"shape\":[%" PRIu64 ",%" PRIu32 "],\"data_offsets\":[0,%" PRIu64 "]},\"__metadata__\":{\"format\":\"pt\"}}",
		     rows, d, rows * d * sizeof(float));
	if (n < 0 || (size_t)n + 8 > sizeof(header)) {
		set_err(err, errlen, "%s: safetensors header does not fit", dir);
		return -EOVERFLOW;
	}
	while (n % 8)
		header[n++] = ' ';
	header_len = (uint64_t)n;

	parts[0] = &header_len;
	lens[0] = sizeof(header_len);
	parts[1] = header;
	lens[1] = (size_t)n;
	for (i = 0; i < n_prompts; i++) {
		parts[2 + i] = prompts[i]->embd;
		lens[2 + i] = prompt_bytes;
	}
	return write_file_atomic(dir, TENSORS_NAME, parts, lens,
				 2 + (int)n_prompts, err, errlen);
}

static int save_config(const char *dir, uint32_t n_virtual, uint32_t d_model,
		       char *err, size_t errlen)
{
	const void *parts[1];
	size_t lens[1];
	json_t *root;
	char *text;
	int ret;

	root = json_pack("{s:s, s:s, s:I, s:I, s:i, s:s, s:b}",
			 "peft_type", "PROMPT_TUNING",
			 "task_type", "CAUSAL_LM",
			 "num_virtual_tokens", (json_int_t)n_virtual,
			 "token_dim", (json_int_t)d_model,
			 "num_transformer_submodules", 1,
			 "prompt_tuning_init", "RANDOM",
			 "inference_mode", 1);
	text = root ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER) :
		      NULL;
	json_decref(root);
	if (!text) {
		set_err(err, errlen, "%s: out of memory for " CONFIG_NAME, dir);
		return -ENOMEM;
	}
	parts[0] = text;
	lens[0] = strlen(text);
	ret = write_file_atomic(dir, CONFIG_NAME, parts, lens, 1, err, errlen);
	free(text);
	return ret;
}

int stage_prompt_save_peft(const char *dir,
			   const struct stage_prompt *const *prompts,
			   uint32_t n_prompts, char *err, size_t errlen)
{
	int ret;

	ret = check_save_args(prompts, n_prompts, err, errlen);
	if (ret)
		return ret;
	if ((uint64_t)prompts[0]->n * prompts[0]->d_model >
	    SIZE_MAX / sizeof(float) / PROMPT_MAX_STAGES) {
		set_err(err, errlen, "cannot save prompts of %" PRIu32 " x %" PRIu32 ": too large",
			prompts[0]->n, prompts[0]->d_model);
		return -EOVERFLOW;
	}
	ret = prompt_make_dirs(dir, err, errlen);
	if (ret)
		return ret;
	ret = save_tensors(dir, prompts, n_prompts, err, errlen);
	if (ret)
		return ret;
	ret = save_config(dir, prompts[0]->n, prompts[0]->d_model, err, errlen);
	if (ret)
		return ret;
	return sync_dir(dir, err, errlen);
}
