/* SPDX-License-Identifier: MIT */
/*
 * test-prompt.c - checks stage prompts: soft and hard prompts, PEFT adapter
 * save and load (F32 round trips, F16 and BF16 files written here byte by
 * byte), and an error naming the field for each kind of broken adapter.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels.h"
#include "model.h"
#include "prompt.h"
#include "testmodel.h"
#include "tokenizer.h"

#include "cunit-main.h"

#define D_MODEL 64
#define F32_ROW_BYTES (D_MODEL * 4)

static char tmpdir[] = "/tmp/test-prompt-XXXXXX";
static struct model *model;

/* Returns "tmpdir/name" in a static buffer. */
static const char *tmp_path(const char *name)
{
	static char path[512];

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	return path;
}

/* Fills @n floats with a seeded sequence in [-1, 1) of 1/128 steps, which
 * F16 and BF16 hold exactly. */
static void fill_values(float *v, size_t n, uint32_t seed)
{
	uint32_t x = seed * 2654435761u + 1;
	size_t i;

	for (i = 0; i < n; i++) {
		x = x * 1664525u + 1013904223u;
		v[i] = (float)((int)(x >> 24) - 128) / 128.0f;
	}
}

/* Encodes @f as F16, exact for normal numbers with at most 11 significant
 * bits and for zero. */
static uint16_t f16_exact(float f)
{
	uint32_t b;
	uint16_t sign;
	int exp;

	memcpy(&b, &f, sizeof(b));
	sign = (uint16_t)((b >> 16) & 0x8000);
	if ((b & 0x7fffffff) == 0)
		return sign;
	exp = (int)((b >> 23) & 0xff) - 127 + 15;
	return (uint16_t)(sign | (exp << 10) | ((b >> 13) & 0x3ff));
}

/* Encodes @f as BF16, exact when its low 16 bits are zero. */
static uint16_t bf16_exact(float f)
{
	uint32_t b;

	memcpy(&b, &f, sizeof(b));
	return (uint16_t)(b >> 16);
}

static void write_file(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");

	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	CU_ASSERT_EQUAL(fwrite(data, 1, len, f), len);
	CU_ASSERT_EQUAL(fclose(f), 0);
}

/* Creates folder @dir under tmpdir holding adapter_config.json = @config
 * (unless NULL); returns its path. */
static const char *make_adapter(const char *dir, const char *config)
{
	static char path[512];
	char file[600];

	snprintf(path, sizeof(path), "%s/%s", tmpdir, dir);
	CU_ASSERT_EQUAL(mkdir(path, 0755), 0);
	if (config) {
		snprintf(file, sizeof(file), "%s/adapter_config.json", path);
		write_file(file, config, strlen(config));
	}
	return path;
}

/*
 * Writes @dir/adapter_model.safetensors: the length of @header (or
 * @len_field if nonzero), @header, then @data_len bytes of @data.
 */
static void write_tensors(const char *dir, const char *header,
			  uint64_t len_field, const void *data, size_t data_len)
{
	size_t hlen = strlen(header);
	uint64_t n = len_field ? len_field : hlen;
	uint8_t *buf = malloc(8 + hlen + data_len);
	char file[600];
	int i;

	CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
	for (i = 0; i < 8; i++)
		buf[i] = (uint8_t)(n >> (8 * i));
	memcpy(buf + 8, header, hlen);
	if (data_len)
		memcpy(buf + 8 + hlen, data, data_len);
	snprintf(file, sizeof(file), "%s/adapter_model.safetensors", dir);
	write_file(file, buf, 8 + hlen + data_len);
	free(buf);
}

/* Writes an adapter of @rows F32 rows of @cols, all zero, with @config. */
static const char *make_f32_adapter(const char *name, const char *config,
				    uint64_t rows, uint64_t cols)
{
	const char *dir = make_adapter(name, config);
	size_t bytes = rows * cols * 4;
	char header[256];
	void *data = calloc(1, bytes);

	CU_ASSERT_PTR_NOT_NULL_FATAL(data);
	snprintf(header, sizeof(header),
		 "{\"prompt_embeddings\":{\"dtype\":\"F32\",\"shape\":[%llu,%llu],\"data_offsets\":[0,%zu]}}",
		 (unsigned long long)rows, (unsigned long long)cols, bytes);
	write_tensors(dir, header, 0, data, bytes);
	free(data);
	return dir;
}

static void free_prompts(struct stage_prompt **p, uint32_t n)
{
	uint32_t i;

	for (i = 0; i < n; i++)
		stage_prompt_free(p[i]);
}

/* Loads @dir and checks that it fails with @code and a message that
 * contains @word. */
static void expect_error(const char *dir, int code, const char *word)
{
	struct stage_prompt *p[PROMPT_MAX_STAGES];
	uint32_t n = 99;
	char err[256] = "";
	int rc;

	rc = stage_prompt_load_peft(model, dir, p, &n, err, sizeof(err));
	CU_ASSERT_EQUAL(rc, code);
	CU_ASSERT_EQUAL(n, 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, word));
	CU_ASSERT_PTR_NULL(strchr(err, '\n'));
	if (rc == 0)
		free_prompts(p, n);
	if (!strstr(err, word))
		fprintf(stderr, "\n  message: %s (expected '%s')\n", err, word);
}

#define CONFIG_5 "{\"peft_type\":\"PROMPT_TUNING\",\"num_virtual_tokens\":5}"
#define CONFIG_2 "{\"num_virtual_tokens\":2}"

/* ---- Soft and hard prompts ------------------------------------------- */

static void test_soft_copies(void)
{
	float v[3 * D_MODEL];
	struct stage_prompt *p = NULL;
	char err[256];

	fill_values(v, 3 * D_MODEL, 1);
	CU_ASSERT_EQUAL_FATAL(stage_prompt_soft(model, v, 3, D_MODEL, &p, err,
						sizeof(err)), 0);
	CU_ASSERT(p->soft);
	CU_ASSERT_EQUAL(p->n, 3);
	CU_ASSERT_EQUAL(p->d_model, D_MODEL);
	CU_ASSERT_PTR_NULL(p->tokens);
	CU_ASSERT_PTR_NOT_EQUAL(p->embd, v);
	CU_ASSERT_EQUAL(memcmp(p->embd, v, sizeof(v)), 0);
	stage_prompt_free(p);
}

static void test_soft_rejects(void)
{
	float v[2 * D_MODEL];
	struct stage_prompt *p = NULL;
	char err[256];

	fill_values(v, 2 * D_MODEL, 2);
	CU_ASSERT_EQUAL(stage_prompt_soft(model, v, 2, D_MODEL / 2, &p, err,
					  sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "d_model"));
	CU_ASSERT_EQUAL(stage_prompt_soft(model, v, 0, D_MODEL, &p, err,
					  sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "no rows"));
	v[D_MODEL + 7] = NAN;
	CU_ASSERT_EQUAL(stage_prompt_soft(model, v, 2, D_MODEL, &p, err,
					  sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "row 1, column 7"));
	CU_ASSERT_PTR_NULL(p);
}

static void test_hard_tokens(void)
{
	const char *text = "hello world, this is stage A";
	struct stage_prompt *p = NULL;
	int32_t ids[256];
	char err[256];
	int n, i;

	n = tok_encode(model->tok, text, strlen(text), 0, ids, 256);
	CU_ASSERT_FATAL(n > 0 && n <= 256);
	CU_ASSERT_EQUAL_FATAL(stage_prompt_hard(model, text, &p, err,
						sizeof(err)), 0);
	CU_ASSERT(!p->soft);
	CU_ASSERT_PTR_NULL(p->embd);
	CU_ASSERT_EQUAL_FATAL(p->n, (uint32_t)n);
	for (i = 0; i < n; i++)
		CU_ASSERT_EQUAL(p->tokens[i], ids[i]);
	CU_ASSERT_NOT_EQUAL(p->tokens[0], tok_bos(model->tok));
	stage_prompt_free(p);
}

static void test_hard_empty(void)
{
	struct stage_prompt *p = NULL;
	char err[256];

	CU_ASSERT_EQUAL(stage_prompt_hard(model, "", &p, err, sizeof(err)),
			-EINVAL);
	CU_ASSERT_PTR_NULL(p);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "no tokens"));
}

/* ---- Save and load round trips --------------------------------------- */

/* Saves @k prompts of @n rows, loads them back and compares bit for bit. */
static void roundtrip(const char *name, uint32_t k, uint32_t n)
{
	struct stage_prompt *src[PROMPT_MAX_STAGES], *got[PROMPT_MAX_STAGES];
	size_t count = (size_t)n * D_MODEL;
	float *v = malloc(count * sizeof(float));
	uint32_t i, n_got = 0;
	char err[256];

	CU_ASSERT_PTR_NOT_NULL_FATAL(v);
	for (i = 0; i < k; i++) {
		fill_values(v, count, 10 + i);
		CU_ASSERT_EQUAL_FATAL(stage_prompt_soft(model, v, n, D_MODEL,
							&src[i], err,
							sizeof(err)), 0);
	}
	/* Values that only F32 holds, so a narrowing write would show. */
	src[0]->embd[0] = 0.1f;
	src[k - 1]->embd[count - 1] = -3.3e-7f;

	CU_ASSERT_EQUAL_FATAL(stage_prompt_save_peft(tmp_path(name),
			(const struct stage_prompt *const *)src, k, err,
			sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(stage_prompt_load_peft(model, tmp_path(name),
			got, &n_got, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(n_got, k);
	for (i = 0; i < k; i++) {
		CU_ASSERT(got[i]->soft);
		CU_ASSERT_EQUAL(got[i]->n, n);
		CU_ASSERT_EQUAL(got[i]->d_model, D_MODEL);
		CU_ASSERT_EQUAL(memcmp(got[i]->embd, src[i]->embd,
				       count * sizeof(float)), 0);
	}
	free_prompts(got, n_got);
	free_prompts(src, k);
	free(v);
}

static void test_roundtrip_one(void)
{
	roundtrip("rt1", 1, 7);
}

static void test_roundtrip_two(void)
{
	roundtrip("rt2/nested", 2, 5);
}

/* Checks the config keys and the safetensors header that a PEFT reader of
 * the saved adapter relies on. */
static void test_saved_format(void)
{
	struct stage_prompt *p[2];
	float v[4 * D_MODEL];
	char err[256], file[600];
	json_error_t jerr;
	json_t *cfg, *hdr, *t;
	uint8_t buf[8];
	uint64_t hlen = 0;
	char *header;
	FILE *f;
	int i;

	fill_values(v, 4 * D_MODEL, 3);
	CU_ASSERT_EQUAL_FATAL(stage_prompt_soft(model, v, 4, D_MODEL, &p[0],
						err, sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(stage_prompt_soft(model, v, 4, D_MODEL, &p[1],
						err, sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(stage_prompt_save_peft(tmp_path("fmt"),
			(const struct stage_prompt *const *)p, 2, err,
			sizeof(err)), 0);
	free_prompts(p, 2);

	snprintf(file, sizeof(file), "%s/adapter_config.json", tmp_path("fmt"));
	cfg = json_load_file(file, 0, &jerr);
	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(cfg, "peft_type")),
			       "PROMPT_TUNING");
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(cfg, "task_type")),
			       "CAUSAL_LM");
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(cfg, "num_virtual_tokens")), 4);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(cfg, "token_dim")), D_MODEL);
	json_decref(cfg);

	snprintf(file, sizeof(file), "%s/adapter_model.safetensors",
		 tmp_path("fmt"));
	f = fopen(file, "rb");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	CU_ASSERT_EQUAL_FATAL(fread(buf, 1, 8, f), 8);
	for (i = 0; i < 8; i++)
		hlen |= (uint64_t)buf[i] << (8 * i);
	CU_ASSERT_EQUAL(hlen % 8, 0);
	CU_ASSERT_FATAL(hlen > 0 && hlen < 4096);
	header = malloc(hlen);
	CU_ASSERT_EQUAL_FATAL(fread(header, 1, hlen, f), hlen);
	CU_ASSERT_EQUAL(fseek(f, 0, SEEK_END), 0);
	CU_ASSERT_EQUAL(ftell(f), (long)(8 + hlen + 8 * F32_ROW_BYTES));
	fclose(f);
	hdr = json_loadb(header, hlen, 0, &jerr);
	free(header);
	CU_ASSERT_PTR_NOT_NULL_FATAL(hdr);
	t = json_object_get(hdr, "prompt_embeddings");
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(t, "dtype")), "F32");
	CU_ASSERT_EQUAL(json_integer_value(json_array_get(json_object_get(t, "shape"), 0)), 8);
	CU_ASSERT_EQUAL(json_integer_value(json_array_get(json_object_get(t, "shape"), 1)), D_MODEL);
	CU_ASSERT_EQUAL(json_integer_value(json_array_get(json_object_get(t, "data_offsets"), 1)),
			8 * F32_ROW_BYTES);
	json_decref(hdr);
}

static void test_save_rejects(void)
{
	struct stage_prompt *p[2];
	float v[3 * D_MODEL];
	char err[256];

	fill_values(v, 3 * D_MODEL, 4);
	CU_ASSERT_EQUAL_FATAL(stage_prompt_soft(model, v, 3, D_MODEL, &p[0],
						err, sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(stage_prompt_soft(model, v, 2, D_MODEL, &p[1],
						err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(stage_prompt_save_peft(tmp_path("bad-save"),
			(const struct stage_prompt *const *)p, 2, err,
			sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "prompt 1"));
	stage_prompt_free(p[1]);

	CU_ASSERT_EQUAL_FATAL(stage_prompt_hard(model, "hi", &p[1], err,
						sizeof(err)), 0);
	CU_ASSERT_EQUAL(stage_prompt_save_peft(tmp_path("bad-save"),
			(const struct stage_prompt *const *)p, 2, err,
			sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "soft"));
	CU_ASSERT_EQUAL(stage_prompt_save_peft(tmp_path("bad-save"),
			(const struct stage_prompt *const *)p, 0, err,
			sizeof(err)), -EINVAL);
	CU_ASSERT_EQUAL(access(tmp_path("bad-save"), F_OK), -1);
	free_prompts(p, 2);
}

/* ---- Half-precision files written by hand ---------------------------- */

static void test_load_f16(void)
{
	const char *dir = make_adapter("f16", CONFIG_2);
	float v[4 * D_MODEL];
	uint16_t h[4 * D_MODEL];
	struct stage_prompt *p[PROMPT_MAX_STAGES];
	uint32_t n = 0, i;
	char err[256];

	fill_values(v, 4 * D_MODEL, 5);
	v[0] = 0.0f;
	v[1] = -1.0f;
	v[2] = 1024.0f;
	for (i = 0; i < 4 * D_MODEL; i++)
		h[i] = f16_exact(v[i]);
	write_tensors(dir,
		      "{\"__metadata__\":{\"format\":\"pt\"},\"prompt_embeddings\":"
		      "{\"dtype\":\"F16\",\"shape\":[4,64],\"data_offsets\":[0,512]}}",
		      0, h, sizeof(h));
	CU_ASSERT_EQUAL_FATAL(stage_prompt_load_peft(model, dir, p, &n, err,
						     sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(n, 2);
	CU_ASSERT_EQUAL(p[0]->n, 2);
	CU_ASSERT_EQUAL(p[1]->n, 2);
	CU_ASSERT_EQUAL(memcmp(p[0]->embd, v, 2 * F32_ROW_BYTES), 0);
	CU_ASSERT_EQUAL(memcmp(p[1]->embd, v + 2 * D_MODEL, 2 * F32_ROW_BYTES), 0);
	free_prompts(p, n);
}

/* BF16 data after another tensor, so it starts at an odd offset. */
static void test_load_bf16(void)
{
	const char *dir = make_adapter("bf16", CONFIG_2);
	uint8_t data[3 + 2 * F32_ROW_BYTES / 2];
	float v[2 * D_MODEL];
	struct stage_prompt *p[PROMPT_MAX_STAGES];
	uint32_t n = 0, i;
	char err[256];

	fill_values(v, 2 * D_MODEL, 6);
	memset(data, 0x7f, 3);
	for (i = 0; i < 2 * D_MODEL; i++) {
		uint16_t b = bf16_exact(v[i]);

		memcpy(data + 3 + 2 * i, &b, 2);
	}
	write_tensors(dir,
		      "{\"other\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]},"
		      "\"prompt_embeddings\":{\"dtype\":\"BF16\",\"shape\":[2,64],"
		      "\"data_offsets\":[3,259]}}   ",
		      0, data, sizeof(data));
	CU_ASSERT_EQUAL_FATAL(stage_prompt_load_peft(model, dir, p, &n, err,
						     sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(n, 1);
	CU_ASSERT_EQUAL(p[0]->n, 2);
	CU_ASSERT_EQUAL(memcmp(p[0]->embd, v, sizeof(v)), 0);
	free_prompts(p, n);
}

/* ---- Broken adapters -------------------------------------------------- */

static void test_missing_folder(void)
{
	expect_error(tmp_path("does-not-exist"), -ENOENT, "folder");
}

static void test_missing_config(void)
{
	expect_error(make_f32_adapter("no-config", NULL, 5, D_MODEL), -ENOENT,
		     "adapter_config.json");
}

static void test_missing_tensors(void)
{
	expect_error(make_adapter("no-tensors", CONFIG_5), -ENOENT,
		     "adapter_model.safetensors");
}

static void test_config_not_json(void)
{
	expect_error(make_f32_adapter("cfg-json", "{\"num_virtual_tokens\":",
				      5, D_MODEL), -EINVAL, "invalid JSON");
}

static void test_peft_type_other(void)
{
	expect_error(make_f32_adapter("peft-type",
			"{\"peft_type\":\"P_TUNING\",\"num_virtual_tokens\":5}",
			5, D_MODEL), -EINVAL, "PROMPT_TUNING");
}

static void test_virtual_missing(void)
{
	expect_error(make_f32_adapter("nvt-missing", "{\"token_dim\":64}", 5,
				      D_MODEL), -EINVAL, "num_virtual_tokens");
}

static void test_virtual_zero(void)
{
	expect_error(make_f32_adapter("nvt-zero", "{\"num_virtual_tokens\":0}",
				      5, D_MODEL), -EINVAL, "num_virtual_tokens");
}

static void test_virtual_real(void)
{
	expect_error(make_f32_adapter("nvt-real", "{\"num_virtual_tokens\":5.0}",
				      5, D_MODEL), -EINVAL, "num_virtual_tokens");
}

static void test_virtual_string(void)
{
	expect_error(make_f32_adapter("nvt-string",
				      "{\"num_virtual_tokens\":\"5\"}", 5,
				      D_MODEL), -EINVAL, "num_virtual_tokens");
}

static void test_virtual_not_dividing(void)
{
	expect_error(make_f32_adapter("nvt-divide",
				      "{\"num_virtual_tokens\":50}", 64,
				      D_MODEL), -EINVAL, "num_virtual_tokens");
}

static void test_too_many_stages(void)
{
	expect_error(make_f32_adapter("nvt-stages",
				      "{\"num_virtual_tokens\":1}",
				      PROMPT_MAX_STAGES + 1, D_MODEL),
		     -EINVAL, "num_virtual_tokens");
}

static void test_token_dim(void)
{
	expect_error(make_f32_adapter("token-dim",
			"{\"num_virtual_tokens\":5,\"token_dim\":32}", 5,
			D_MODEL), -EINVAL, "token_dim");
}

static void test_shape_width(void)
{
	expect_error(make_f32_adapter("width", CONFIG_5, 5, D_MODEL / 2),
		     -EINVAL, "d_model");
}

static void test_file_too_short(void)
{
	const char *dir = make_adapter("short", CONFIG_5);
	char file[600];

	snprintf(file, sizeof(file), "%s/adapter_model.safetensors", dir);
	write_file(file, "\x10\x00\x00", 3);
	expect_error(dir, -EINVAL, "too short");
}

static void test_header_past_end(void)
{
	const char *dir = make_adapter("hdr-end", CONFIG_5);

	write_tensors(dir, "{}", 4096, NULL, 0);
	expect_error(dir, -EINVAL, "header length");
}

static void test_header_huge(void)
{
	const char *dir = make_adapter("hdr-huge", CONFIG_5);

	write_tensors(dir, "{}", (uint64_t)1 << 63, NULL, 0);
	expect_error(dir, -EINVAL, "header length");
}

static void test_header_bad_json(void)
{
	const char *dir = make_adapter("hdr-json", CONFIG_5);

	write_tensors(dir, "{\"prompt_embeddings\":{\"dtype\":", 0, NULL, 0);
	expect_error(dir, -EINVAL, "JSON");
}

static void test_header_not_object(void)
{
	const char *dir = make_adapter("hdr-array", CONFIG_5);

	write_tensors(dir, "[1, 2]  ", 0, NULL, 0);
	expect_error(dir, -EINVAL, "JSON object");
}

static void test_tensor_missing(void)
{
	const char *dir = make_adapter("no-tensor", CONFIG_5);

	write_tensors(dir,
		      "{\"embeddings\":{\"dtype\":\"F32\",\"shape\":[5,64],"
		      "\"data_offsets\":[0,0]}}", 0, NULL, 0);
	expect_error(dir, -ENOENT, "prompt_embeddings");
}

static void test_dtype_i8(void)
{
	const char *dir = make_adapter("dtype", CONFIG_5);
	uint8_t data[5 * D_MODEL] = { 0 };

	write_tensors(dir,
		      "{\"prompt_embeddings\":{\"dtype\":\"I8\",\"shape\":[5,64],"
		      "\"data_offsets\":[0,320]}}", 0, data, sizeof(data));
	expect_error(dir, -EINVAL, "dtype");
}

static void test_shape_three_dims(void)
{
	const char *dir = make_adapter("dims", CONFIG_5);
	float data[5 * D_MODEL] = { 0 };

	write_tensors(dir,
		      "{\"prompt_embeddings\":{\"dtype\":\"F32\",\"shape\":[1,5,64],"
		      "\"data_offsets\":[0,1280]}}", 0, data, sizeof(data));
	expect_error(dir, -EINVAL, "shape");
}

static void test_shape_overflow(void)
{
	const char *dir = make_adapter("overflow", CONFIG_5);

	write_tensors(dir,
		      "{\"prompt_embeddings\":{\"dtype\":\"F32\","
		      "\"shape\":[4611686018427387904,64],"
		      "\"data_offsets\":[0,0]}}", 0, NULL, 0);
	expect_error(dir, -EINVAL, "overflows");
}

static void test_offsets_past_end(void)
{
	const char *dir = make_adapter("offs-end", CONFIG_5);
	float data[5 * D_MODEL] = { 0 };

	write_tensors(dir,
		      "{\"prompt_embeddings\":{\"dtype\":\"F32\",\"shape\":[5,64],"
		      "\"data_offsets\":[8,1288]}}", 0, data, sizeof(data));
	expect_error(dir, -EINVAL, "past the end");
}

static void test_offsets_mismatch(void)
{
	const char *dir = make_adapter("offs-shape",
				       "{\"num_virtual_tokens\":50}");
	float data[50 * D_MODEL] = { 0 };

	write_tensors(dir,
		      "{\"prompt_embeddings\":{\"dtype\":\"F32\",\"shape\":[50,64],"
		      "\"data_offsets\":[0,4096]}}", 0, data, sizeof(data));
	expect_error(dir, -EINVAL, "do not match");
}

static void test_offsets_reversed(void)
{
	const char *dir = make_adapter("offs-reversed", CONFIG_5);
	float data[5 * D_MODEL] = { 0 };

	write_tensors(dir,
		      "{\"prompt_embeddings\":{\"dtype\":\"F32\",\"shape\":[5,64],"
		      "\"data_offsets\":[1280,0]}}", 0, data, sizeof(data));
	expect_error(dir, -EINVAL, "data_offsets");
}

static void test_value_nan(void)
{
	const char *dir = make_adapter("nan", CONFIG_5);
	float data[5 * D_MODEL] = { 0 };
	char header[256];

	data[3 * D_MODEL + 9] = NAN;
	snprintf(header, sizeof(header),
		 "{\"prompt_embeddings\":{\"dtype\":\"F32\",\"shape\":[5,64],"
		 "\"data_offsets\":[0,%zu]}}", sizeof(data));
	write_tensors(dir, header, 0, data, sizeof(data));
	expect_error(dir, -EINVAL, "row 3, column 9 is not finite");
}

static void test_truncated(void)
{
	const char *dir = make_f32_adapter("truncated", CONFIG_5, 5, D_MODEL);
	char file[600];
	struct stat st;

	snprintf(file, sizeof(file), "%s/adapter_model.safetensors", dir);
	CU_ASSERT_EQUAL_FATAL(stat(file, &st), 0);
	CU_ASSERT_EQUAL_FATAL(truncate(file, st.st_size - 1), 0);
	expect_error(dir, -EINVAL, "data_offsets");
	/* Cut inside the header instead. */
	CU_ASSERT_EQUAL_FATAL(truncate(file, 20), 0);
	expect_error(dir, -EINVAL, "header length");
}

static const struct test_case prompt_cases[] = {
	{ "soft copies rows", test_soft_copies },
	{ "soft rejects", test_soft_rejects },
	{ "hard matches tok_encode", test_hard_tokens },
	{ "hard empty text", test_hard_empty },
	{ NULL, NULL },
};

static const struct test_case peft_cases[] = {
	{ "round trip one prompt", test_roundtrip_one },
	{ "round trip two prompts", test_roundtrip_two },
	{ "saved format", test_saved_format },
	{ "save rejects", test_save_rejects },
	{ "load F16", test_load_f16 },
	{ "load BF16 at odd offset", test_load_bf16 },
	{ NULL, NULL },
};

static const struct test_case error_cases[] = {
	{ "missing folder", test_missing_folder },
	{ "missing config", test_missing_config },
	{ "missing safetensors", test_missing_tensors },
	{ "config not JSON", test_config_not_json },
	{ "peft_type other", test_peft_type_other },
	{ "virtual tokens missing", test_virtual_missing },
	{ "virtual tokens zero", test_virtual_zero },
	{ "virtual tokens real", test_virtual_real },
	{ "virtual tokens string", test_virtual_string },
	{ "virtual tokens not dividing", test_virtual_not_dividing },
	{ "too many stages", test_too_many_stages },
	{ "token_dim", test_token_dim },
	{ "shape width", test_shape_width },
	{ "file too short", test_file_too_short },
	{ "header past end", test_header_past_end },
	{ "header length 2^63", test_header_huge },
	{ "header bad JSON", test_header_bad_json },
	{ "header not object", test_header_not_object },
	{ "tensor missing", test_tensor_missing },
	{ "dtype I8", test_dtype_i8 },
	{ "shape three dims", test_shape_three_dims },
	{ "shape overflow", test_shape_overflow },
	{ "offsets past end", test_offsets_past_end },
	{ "offsets mismatch shape", test_offsets_mismatch },
	{ "offsets reversed", test_offsets_reversed },
	{ "value NaN", test_value_nan },
	{ "truncated file", test_truncated },
	{ NULL, NULL },
};

static const struct test_suite suites[] = {
	{ "prompt", prompt_cases },
	{ "peft", peft_cases },
	{ "peft errors", error_cases },
};

static int setup(void)
{
	struct testmodel_opts opts;
	char err[256];

	kern_init();
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	testmodel_defaults(&opts);
	if (opts.d_model != D_MODEL) {
		fprintf(stderr, "test model has d_model %u, expected %d\n",
			opts.d_model, D_MODEL);
		return 1;
	}
	if (testmodel_write(tmp_path("model.gguf"), &opts, err, sizeof(err))) {
		fprintf(stderr, "testmodel_write: %s\n", err);
		return 1;
	}
	if (model_load(tmp_path("model.gguf"), &model, err, sizeof(err))) {
		fprintf(stderr, "model_load: %s\n", err);
		return 1;
	}
	return 0;
}

static void teardown(void)
{
	char cmd[128];

	model_free(model);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
}

#define TEST_SETUP setup
#define TEST_TEARDOWN teardown
#include "cunit-main.h"
