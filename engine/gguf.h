/* SPDX-License-Identifier: MIT */
/*
 * gguf.h - a reader for GGUF v2 and v3 model files.
 *
 * The file is memory-mapped read-only and parsed once: every count, offset,
 * size, alignment and string is checked against the mapping before use, with
 * overflow-safe arithmetic, so a hostile file yields an error that names the
 * offending field and never a read outside the mapping. Strings point into
 * the mapping and are not NUL-terminated.
 */
#ifndef KVCHAIN_GGUF_H
#define KVCHAIN_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Metadata value types, numbered as GGUF numbers them. */
enum gguf_vtype {
	GGUF_TYPE_UINT8 = 0,
	GGUF_TYPE_INT8 = 1,
	GGUF_TYPE_UINT16 = 2,
	GGUF_TYPE_INT16 = 3,
	GGUF_TYPE_UINT32 = 4,
	GGUF_TYPE_INT32 = 5,
	GGUF_TYPE_FLOAT32 = 6,
	GGUF_TYPE_BOOL = 7,
	GGUF_TYPE_STRING = 8,
	GGUF_TYPE_ARRAY = 9,
	GGUF_TYPE_UINT64 = 10,
	GGUF_TYPE_INT64 = 11,
	GGUF_TYPE_FLOAT64 = 12,
};

#define GGUF_MAX_DIMS 4

struct gguf_str {
	const char *ptr;	/* into the mapping, not NUL-terminated */
	uint64_t len;		/* bytes */
};

struct gguf_kv {
	struct gguf_str key;
	uint32_t type;		/* enum gguf_vtype */
	const uint8_t *value;	/* scalar value, or first array element */
	uint32_t arr_type;	/* element type when type is ARRAY */
	uint64_t arr_n;		/* element count when type is ARRAY */
	const uint8_t **arr_str; /* start of each string of a string array */
};

struct gguf_tensor {
	struct gguf_str name;
	uint32_t n_dims;
	uint64_t ne[GGUF_MAX_DIMS]; /* elements per dimension, ne[0] fastest */
	uint32_t type;		/* enum kern_type */
	uint64_t offset;	/* from the start of the data section */
	const void *data;	/* into the mapping */
	uint64_t size;		/* bytes */
};

struct gguf_file {
	uint32_t version;
	uint32_t alignment;
	uint64_t n_kv;
	struct gguf_kv *kv;
	uint64_t n_tensors;
	struct gguf_tensor *tensors;
	const uint8_t *base;	/* the whole file */
	size_t size;		/* bytes */
	bool mapped;		/* base came from mmap and is ours to unmap */
};

/*
 * Maps and parses @path. On success stores the file in *out and returns 0.
 * On failure returns a negative errno and writes a one-line message naming
 * the file and the field into @err (NUL-terminated, at most @errlen bytes).
 */
int gguf_open(const char *path, struct gguf_file **out, char *err,
	      size_t errlen);

/*
 * Parses @size bytes at @data, which must outlive the result; used by
 * gguf_open and by the fuzz target. Errors as for gguf_open.
 */
int gguf_parse(const void *data, size_t size, struct gguf_file **out,
	       char *err, size_t errlen);

void gguf_close(struct gguf_file *file);

/* Returns the entry for @key, or NULL. */
const struct gguf_kv *gguf_find(const struct gguf_file *file,
				const char *key);

/*
 * Typed getters. Each returns 0, -ENOENT when the key is missing, or
 * -EINVAL when its type does not fit (an integer getter accepts any integer
 * type whose value is in range; the float getter accepts F32 and F64).
 */
int gguf_get_u32(const struct gguf_file *file, const char *key,
		 uint32_t *out);
int gguf_get_f32(const struct gguf_file *file, const char *key, float *out);
int gguf_get_bool(const struct gguf_file *file, const char *key, bool *out);
int gguf_get_str(const struct gguf_file *file, const char *key,
		 struct gguf_str *out);

/*
 * Finds array @key with elements of @elem_type; stores it in *out.
 * Returns 0, -ENOENT, or -EINVAL if it is not such an array.
 */
int gguf_get_array(const struct gguf_file *file, const char *key,
		   uint32_t elem_type, const struct gguf_kv **out);

/* Returns string @i of string array @kv (i < kv->arr_n). */
struct gguf_str gguf_array_str(const struct gguf_kv *kv, uint64_t i);

/* Returns true if @s equals the C string @cstr. */
bool gguf_str_eq(struct gguf_str s, const char *cstr);

/* Returns the tensor named @name, or NULL. */
const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *file,
					   const char *name);

#endif /* KVCHAIN_GGUF_H */
