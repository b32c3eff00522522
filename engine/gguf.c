/* SPDX-License-Identifier: MIT */
/*
 * gguf.c - the GGUF v2/v3 reader. It maps a file read-only, checks every
 * count, length, offset and size against the mapping before using it, and
 * keeps sorted indexes of the keys and tensor names for lookup.
 *
 * Layout, with all integers little-endian. The header is the magic "GGUF",
 * u32 version, u64 n_tensors and u64 n_kv. Then come n_kv entries of
 * (string key, u32 value type, value) and n_tensors entries of (string name,
 * u32 n_dims, u64 ne[n_dims], u32 type, u64 offset). Padding to
 * general.alignment precedes the data section. A string is a u64 byte count
 * followed by the bytes.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"
#include "kernels.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c reads little-endian fields in place and needs a little-endian host"
#endif

#define GGUF_DEFAULT_ALIGNMENT 32

/*
 * Smallest encodings of a metadata entry (key length 8, value type 4, a
 * 1-byte value) and of a tensor info (name length 8, n_dims 4, one ne 8,
 * type 4, offset 8). Counts are bounded by the bytes left divided by these
 * before anything is allocated for them.
 */
#define GGUF_MIN_KV_BYTES 13
#define GGUF_MIN_TENSOR_BYTES 32

/* Bytes of a key or tensor name quoted in an error message. */
#define GGUF_QUOTE_MAX 64

#define container_of(ptr, type, member) \
	((type *)((char *)(ptr) - offsetof(type, member)))

struct gguf_file_priv {
	struct gguf_file pub;
	const struct gguf_str **kv_index;	/* (n_kv) keys, sorted */
	const struct gguf_str **tensor_index;	/* (n_tensors) names, sorted */
};

/* A bounds-checked cursor over the file, with the error buffer. */
struct reader {
	const uint8_t *base;
	size_t size;		/* bytes */
	size_t pos;		/* next byte to read */
	const char *name;	/* file name for messages */
	char *err;
	size_t errlen;
	char ctx[GGUF_QUOTE_MAX + 48]; /* "key 'x': " or "tensor 'x': " */
};

static int fail(struct reader *rd, int ret, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(struct reader *rd, int ret, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!rd->err || !rd->errlen)
		return ret;
	n = snprintf(rd->err, rd->errlen, "%s: %s", rd->name, rd->ctx);
	if (n >= 0 && (size_t)n < rd->errlen) {
		va_start(ap, fmt);
		vsnprintf(rd->err + n, rd->errlen - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return ret;
}

/*
 * Writes the first bytes of @s into @dst as printable ASCII, so a hostile
 * name cannot break the one-line message.
 */
static void quote(char *dst, size_t cap, struct gguf_str s)
{
	size_t i, n = 0;

	for (i = 0; i < s.len && n + 4 < cap && i < GGUF_QUOTE_MAX; i++) {
		unsigned char c = (unsigned char)s.ptr[i];

		dst[n++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
	}
	if (i < s.len && n + 4 <= cap) {
		memcpy(dst + n, "...", 3);
		n += 3;
	}
	dst[n] = '\0';
}

static void set_ctx(struct reader *rd, const char *what, struct gguf_str s)
{
	char q[GGUF_QUOTE_MAX + 4];

	quote(q, sizeof(q), s);
	snprintf(rd->ctx, sizeof(rd->ctx), "%s '%s': ", what, q);
}

static void set_ctx_index(struct reader *rd, const char *what, uint64_t i)
{
	snprintf(rd->ctx, sizeof(rd->ctx), "%s %" PRIu64 ": ", what, i);
}

static size_t left(const struct reader *rd)
{
	return rd->size - rd->pos;
}

/* Advances over @n bytes named @field and stores their start in *out. */
static int rd_bytes(struct reader *rd, uint64_t n, const uint8_t **out,
		    const char *field)
{
	if (n > left(rd))
		return fail(rd, -EINVAL,
			    "%s at offset %zu (%" PRIu64
			    " bytes) extends past end of file (%zu bytes)",
			    field, rd->pos, n, rd->size);
	*out = rd->base + rd->pos;
	rd->pos += (size_t)n;
	return 0;
}

static int rd_u32(struct reader *rd, uint32_t *v, const char *field)
{
	const uint8_t *p = NULL;
	int ret = rd_bytes(rd, sizeof(*v), &p, field);

	if (!ret)
		memcpy(v, p, sizeof(*v));
	return ret;
}

static int rd_u64(struct reader *rd, uint64_t *v, const char *field)
{
	const uint8_t *p = NULL;
	int ret = rd_bytes(rd, sizeof(*v), &p, field);

	if (!ret)
		memcpy(v, p, sizeof(*v));
	return ret;
}

/* Reads a string whose length field is called @field ("key length"). */
static int rd_str(struct reader *rd, struct gguf_str *s, const char *field)
{
	const uint8_t *p;
	uint64_t len;
	size_t at = rd->pos;
	int ret;

	ret = rd_u64(rd, &len, field);
	if (ret)
		return ret;
	if (len > left(rd))
		return fail(rd, -EINVAL,
			    "%s %" PRIu64 " at offset %zu extends past end of file (%zu bytes)",
			    field, len, at, rd->size);
	ret = rd_bytes(rd, len, &p, field);
	if (ret)
		return ret;
	s->ptr = (const char *)p;
	s->len = len;
	return 0;
}

/* Returns the byte size of a fixed-size value type, or 0 for the others. */
static size_t vtype_size(uint32_t type)
{
	switch (type) {
	case GGUF_TYPE_UINT8:
	case GGUF_TYPE_INT8:
	case GGUF_TYPE_BOOL:
		return 1;
	case GGUF_TYPE_UINT16:
	case GGUF_TYPE_INT16:
		return 2;
	case GGUF_TYPE_UINT32:
	case GGUF_TYPE_INT32:
	case GGUF_TYPE_FLOAT32:
		return 4;
	case GGUF_TYPE_UINT64:
	case GGUF_TYPE_INT64:
	case GGUF_TYPE_FLOAT64:
		return 8;
	default:
		return 0;
	}
}

static int read_string_array(struct reader *rd, struct gguf_kv *kv)
{
	uint64_t i;
	int ret;

	/* Each string needs at least its 8-byte length. */
	if (kv->arr_n > left(rd) / 8)
		return fail(rd, -EINVAL,
			    "array count %" PRIu64 " of strings at offset %zu extends past end of file (%zu bytes)",
			    kv->arr_n, rd->pos, rd->size);
	kv->arr_str = calloc(kv->arr_n ? kv->arr_n : 1, sizeof(*kv->arr_str));
	if (!kv->arr_str)
		return fail(rd, -ENOMEM, "out of memory for %" PRIu64 " strings",
			    kv->arr_n);
	for (i = 0; i < kv->arr_n; i++) {
		struct gguf_str s;
		char field[48];

		kv->arr_str[i] = rd->base + rd->pos;
		snprintf(field, sizeof(field), "string %" PRIu64 " length", i);
		ret = rd_str(rd, &s, field);
		if (ret)
			return ret;
	}
	return 0;
}

static int read_array(struct reader *rd, struct gguf_kv *kv)
{
	const uint8_t *p;
	size_t elem;
	int ret;

	ret = rd_u32(rd, &kv->arr_type, "array type");
	if (ret)
		return ret;
	ret = rd_u64(rd, &kv->arr_n, "array count");
	if (ret)
		return ret;
	kv->value = rd->base + rd->pos;
	if (kv->arr_type == GGUF_TYPE_ARRAY)
		return fail(rd, -EINVAL, "array type: arrays of arrays are not supported");
	if (kv->arr_type == GGUF_TYPE_STRING)
		return read_string_array(rd, kv);
	elem = vtype_size(kv->arr_type);
	if (!elem)
		return fail(rd, -EINVAL, "array type %" PRIu32 " is unknown",
			    kv->arr_type);
	if (kv->arr_n > left(rd) / elem)
		return fail(rd, -EINVAL,
			    "array count %" PRIu64 " of %zu-byte elements at offset %zu extends past end of file (%zu bytes)",
			    kv->arr_n, elem, rd->pos, rd->size);
	return rd_bytes(rd, kv->arr_n * elem, &p, "array");
}

static int read_kv(struct reader *rd, struct gguf_kv *kv, uint64_t i)
{
	struct gguf_str s;
	const uint8_t *p;
	size_t sz;
	int ret;

	set_ctx_index(rd, "kv", i);
	ret = rd_str(rd, &kv->key, "key length");
	if (ret)
		return ret;
	if (!kv->key.len)
		return fail(rd, -EINVAL, "key is empty");
	set_ctx(rd, "key", kv->key);
	ret = rd_u32(rd, &kv->type, "value type");
	if (ret)
		return ret;
	if (kv->type == GGUF_TYPE_ARRAY)
		return read_array(rd, kv);
	kv->value = rd->base + rd->pos;
	if (kv->type == GGUF_TYPE_STRING)
		return rd_str(rd, &s, "string length");
	sz = vtype_size(kv->type);
	if (!sz)
		return fail(rd, -EINVAL, "value type %" PRIu32 " is unknown",
			    kv->type);
	return rd_bytes(rd, sz, &p, "value");
}

static int cmp_str(struct gguf_str a, struct gguf_str b)
{
	size_t n = a.len < b.len ? (size_t)a.len : (size_t)b.len;
	int c = n ? memcmp(a.ptr, b.ptr, n) : 0;

	if (c)
		return c;
	return (a.len > b.len) - (a.len < b.len);
}

static int cmp_index(const void *a, const void *b)
{
	const struct gguf_str *const *sa = a;
	const struct gguf_str *const *sb = b;

	return cmp_str(**sa, **sb);
}

/*
 * Sorts @n names into a new index and rejects duplicates. @stride is the
 * byte distance between the names of consecutive entries starting at @first.
 */
static int build_index(struct reader *rd, const struct gguf_str ***out,
		       const void *first, size_t stride, uint64_t n,
		       const char *what)
{
	const struct gguf_str **idx;
	uint64_t i;

	idx = calloc(n ? n : 1, sizeof(*idx));
	if (!idx)
		return fail(rd, -ENOMEM, "out of memory for %" PRIu64 " %ss", n,
			    what);
	for (i = 0; i < n; i++)
		idx[i] = (const void *)((const char *)first + i * stride);
	qsort(idx, n, sizeof(*idx), cmp_index);
	*out = idx;
	for (i = 1; i < n; i++) {
		if (!cmp_str(*idx[i - 1], *idx[i])) {
			set_ctx(rd, what, *idx[i]);
			return fail(rd, -EINVAL, "duplicate %s name", what);
		}
	}
	return 0;
}

static const struct gguf_str *find_index(const struct gguf_str **idx,
					 uint64_t n, const char *name)
{
	struct gguf_str key = { name, strlen(name) };
	uint64_t lo = 0, hi = n;

	while (lo < hi) {
		uint64_t mid = lo + (hi - lo) / 2;
		int c = cmp_str(*idx[mid], key);

		if (!c)
			return idx[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

static int read_header(struct reader *rd, struct gguf_file *f)
{
	const uint8_t *magic = NULL;
	int ret;

	ret = rd_bytes(rd, 4, &magic, "magic");
	if (ret)
		return ret;
	if (memcmp(magic, "GGUF", 4))
		return fail(rd, -EINVAL,
			    "bad magic %02x %02x %02x %02x: not a GGUF file",
			    magic[0], magic[1], magic[2], magic[3]);
	ret = rd_u32(rd, &f->version, "version");
	if (ret)
		return ret;
	if (f->version && !(f->version & 0xffff))
		return fail(rd, -ENOTSUP,
			    "version field 0x%08" PRIx32 " is byte-swapped: big-endian GGUF files are not supported",
			    f->version);
	if (f->version == 1)
		return fail(rd, -ENOTSUP,
			    "version 1 is not supported: convert the file to GGUF v3");
	if (f->version != 2 && f->version != 3)
		return fail(rd, -ENOTSUP,
			    "version %" PRIu32 " is not supported (expected 2 or 3)",
			    f->version);
	ret = rd_u64(rd, &f->n_tensors, "n_tensors");
	if (ret)
		return ret;
	ret = rd_u64(rd, &f->n_kv, "n_kv");
	if (ret)
		return ret;
	if (f->n_tensors > left(rd) / GGUF_MIN_TENSOR_BYTES)
		return fail(rd, -EINVAL,
			    "n_tensors = %" PRIu64 " is more than the %zu bytes left can hold",
			    f->n_tensors, left(rd));
	if (f->n_kv > left(rd) / GGUF_MIN_KV_BYTES)
		return fail(rd, -EINVAL,
			    "n_kv = %" PRIu64 " is more than the %zu bytes left can hold",
			    f->n_kv, left(rd));
	return 0;
}

static int read_alignment(struct reader *rd, struct gguf_file *f)
{
	const char *key = "general.alignment";
	uint32_t a;
	int ret;

	f->alignment = GGUF_DEFAULT_ALIGNMENT;
	ret = gguf_get_u32(f, key, &a);
	if (ret == -ENOENT)
		return 0;
	rd->ctx[0] = '\0';
	if (ret)
		return fail(rd, -EINVAL,
			    "%s is not an unsigned 32-bit integer", key);
	if (!a || (a & (a - 1)))
		return fail(rd, -EINVAL, "%s = %" PRIu32 " is not a power of two",
			    key, a);
	f->alignment = a;
	return 0;
}

/* Reads one tensor info. place_data checks its data range afterwards. */
static int read_tensor_info(struct reader *rd, struct gguf_tensor *t,
			    uint64_t i, uint32_t alignment)
{
	uint64_t n_elem = 1, block, row;
	uint32_t d;
	char field[16];
	int ret;

	set_ctx_index(rd, "tensor", i);
	ret = rd_str(rd, &t->name, "name length");
	if (ret)
		return ret;
	if (!t->name.len)
		return fail(rd, -EINVAL, "name is empty");
	set_ctx(rd, "tensor", t->name);
	ret = rd_u32(rd, &t->n_dims, "n_dims");
	if (ret)
		return ret;
	if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
		return fail(rd, -EINVAL, "n_dims = %" PRIu32 " is not in 1..%d",
			    t->n_dims, GGUF_MAX_DIMS);
	for (d = 0; d < GGUF_MAX_DIMS; d++)
		t->ne[d] = 1;
	for (d = 0; d < t->n_dims; d++) {
		snprintf(field, sizeof(field), "ne[%" PRIu32 "]", d);
		ret = rd_u64(rd, &t->ne[d], field);
		if (ret)
			return ret;
		if (!t->ne[d])
			return fail(rd, -EINVAL, "%s = 0: empty dimensions are not allowed", field);
		if (__builtin_mul_overflow(n_elem, t->ne[d], &n_elem) ||
		    n_elem > INT64_MAX)
			return fail(rd, -EINVAL,
				    "element count overflows at %s = %" PRIu64,
				    field, t->ne[d]);
	}
	ret = rd_u32(rd, &t->type, "type");
	if (ret)
		return ret;
	if (!kern_type_supported(t->type))
		return fail(rd, -EINVAL, "type %" PRIu32 " is unknown or unsupported",
			    t->type);
	/*
	 * kern_row_bytes would wrap for a huge ne[0], so the size is computed
	 * here from the block layout with overflow checks.
	 */
	block = (uint64_t)kern_type_block_elems(t->type);
	if (t->ne[0] % block)
		return fail(rd, -EINVAL,
			    "ne[0] = %" PRIu64 " is not a multiple of the %s block size %" PRIu64,
			    t->ne[0], kern_type_name(t->type), block);
	if (__builtin_mul_overflow(t->ne[0] / block,
				   (uint64_t)kern_type_block_bytes(t->type),
				   &row) ||
	    __builtin_mul_overflow(row, n_elem / t->ne[0], &t->size))
		return fail(rd, -EINVAL, "size in bytes overflows");
	ret = rd_u64(rd, &t->offset, "offset");
	if (ret)
		return ret;
	if (t->offset % alignment)
		return fail(rd, -EINVAL,
			    "offset %" PRIu64 " is not a multiple of the alignment %" PRIu32,
			    t->offset, alignment);
	return 0;
}

/* Places the data section and checks that every tensor lies inside it. */
static int place_data(struct reader *rd, struct gguf_file *f)
{
	uint64_t start, end, i;

	rd->ctx[0] = '\0';
	if (__builtin_add_overflow((uint64_t)rd->pos, f->alignment - 1, &start))
		return fail(rd, -EINVAL, "data section offset overflows");
	start &= ~(uint64_t)(f->alignment - 1);
	for (i = 0; i < f->n_tensors; i++) {
		struct gguf_tensor *t = &f->tensors[i];
		uint64_t at;

		set_ctx(rd, "tensor", t->name);
		if (__builtin_add_overflow(start, t->offset, &at) ||
		    __builtin_add_overflow(at, t->size, &end))
			return fail(rd, -EINVAL,
				    "data [offset %" PRIu64 " + data section %" PRIu64
				    ", %" PRIu64 " bytes] overflows",
				    t->offset, start, t->size);
		if (end > rd->size)
			return fail(rd, -EINVAL,
				    "data [offset %" PRIu64 ", %" PRIu64
				    " bytes] extends past end of file (%zu bytes)",
				    at, t->size, rd->size);
		t->data = rd->base + at;
	}
	return 0;
}

static int parse(struct reader *rd, struct gguf_file_priv *pf)
{
	struct gguf_file *f = &pf->pub;
	uint64_t i;
	int ret;

	ret = read_header(rd, f);
	if (ret)
		return ret;

	f->kv = calloc(f->n_kv ? f->n_kv : 1, sizeof(*f->kv));
	if (!f->kv)
		return fail(rd, -ENOMEM, "out of memory for n_kv = %" PRIu64,
			    f->n_kv);
	for (i = 0; i < f->n_kv; i++) {
		ret = read_kv(rd, &f->kv[i], i);
		if (ret)
			return ret;
	}
	rd->ctx[0] = '\0';
	ret = build_index(rd, &pf->kv_index, &f->kv[0].key, sizeof(f->kv[0]),
			  f->n_kv, "key");
	if (ret)
		return ret;
	ret = read_alignment(rd, f);
	if (ret)
		return ret;

	/* Recheck: the metadata may have used up the bytes n_tensors needs. */
	rd->ctx[0] = '\0';
	if (f->n_tensors > left(rd) / GGUF_MIN_TENSOR_BYTES)
		return fail(rd, -EINVAL,
			    "n_tensors = %" PRIu64 " is more than the %zu bytes left after the metadata can hold",
			    f->n_tensors, left(rd));
	f->tensors = calloc(f->n_tensors ? f->n_tensors : 1,
			    sizeof(*f->tensors));
	if (!f->tensors)
		return fail(rd, -ENOMEM, "out of memory for n_tensors = %" PRIu64,
			    f->n_tensors);
	for (i = 0; i < f->n_tensors; i++) {
		ret = read_tensor_info(rd, &f->tensors[i], i, f->alignment);
		if (ret)
			return ret;
	}
	rd->ctx[0] = '\0';
	ret = build_index(rd, &pf->tensor_index, &f->tensors[0].name,
			  sizeof(f->tensors[0]), f->n_tensors, "tensor");
	if (ret)
		return ret;
	return place_data(rd, f);
}

static int parse_named(const void *data, size_t size, const char *name,
		       struct gguf_file_priv **out, char *err, size_t errlen)
{
	struct reader rd = {
		.base = data, .size = size, .name = name,
		.err = err, .errlen = errlen,
	};
	struct gguf_file_priv *pf;
	int ret;

	if (err && errlen)
		err[0] = '\0';
	pf = calloc(1, sizeof(*pf));
	if (!pf)
		return fail(&rd, -ENOMEM, "out of memory");
	pf->pub.base = data;
	pf->pub.size = size;
	ret = parse(&rd, pf);
	if (ret) {
		gguf_close(&pf->pub);
		return ret;
	}
	*out = pf;
	return 0;
}

int gguf_parse(const void *data, size_t size, struct gguf_file **out,
	       char *err, size_t errlen)
{
	struct gguf_file_priv *pf;
	int ret;

	ret = parse_named(data, size, "<buffer>", &pf, err, errlen);
	if (ret)
		return ret;
	*out = &pf->pub;
	return 0;
}

int gguf_open(const char *path, struct gguf_file **out, char *err,
	      size_t errlen)
{
	struct reader rd = { .name = path, .err = err, .errlen = errlen };
	struct gguf_file_priv *pf;
	struct stat st;
	void *map;
	int fd, ret;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		return fail(&rd, ret, "cannot open: %s", strerror(-ret));
	}
	if (fstat(fd, &st)) {
		ret = fail(&rd, -errno, "cannot stat: %s", strerror(errno));
		goto out_close;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = fail(&rd, -EINVAL, "not a regular file");
		goto out_close;
	}
	if (st.st_size < 8 || (uint64_t)st.st_size > SIZE_MAX) {
		ret = fail(&rd, -EINVAL,
			   "file size %jd is too small or too large for a GGUF file",
			   (intmax_t)st.st_size);
		goto out_close;
	}
	map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (map == MAP_FAILED) {
		ret = fail(&rd, -errno, "cannot map: %s", strerror(errno));
		goto out_close;
	}
	close(fd);

	ret = parse_named(map, (size_t)st.st_size, path, &pf, err, errlen);
	if (ret) {
		munmap(map, (size_t)st.st_size);
		return ret;
	}
	pf->pub.mapped = true;
	*out = &pf->pub;
	return 0;

out_close:
	close(fd);
	return ret;
}

void gguf_close(struct gguf_file *file)
{
	struct gguf_file_priv *pf;
	uint64_t i;

	if (!file)
		return;
	pf = container_of(file, struct gguf_file_priv, pub);
	if (file->kv)
		for (i = 0; i < file->n_kv; i++)
			free(file->kv[i].arr_str);
	free(file->kv);
	free(file->tensors);
	free(pf->kv_index);
	free(pf->tensor_index);
	if (file->mapped)
		munmap((void *)file->base, file->size);
	free(pf);
}

const struct gguf_kv *gguf_find(const struct gguf_file *file, const char *key)
{
	const struct gguf_file_priv *pf;
	const struct gguf_str *s;

	pf = container_of(file, const struct gguf_file_priv, pub);
	if (!pf->kv_index)
		return NULL;
	s = find_index(pf->kv_index, file->n_kv, key);
	return s ? container_of(s, const struct gguf_kv, key) : NULL;
}

/*
 * Decodes the integer at @p of value type @type: a negative value goes to *s
 * with *neg set, any other to *u. Returns -EINVAL for a non-integer type.
 */
static int read_int(uint32_t type, const uint8_t *p, int64_t *s, uint64_t *u,
		    bool *neg)
{
	union {
		uint8_t u8; int8_t i8; uint16_t u16; int16_t i16;
		uint32_t u32; int32_t i32; uint64_t u64; int64_t i64;
	} v;

	*neg = false;
	*s = 0;
	*u = 0;
	switch (type) {
	case GGUF_TYPE_UINT8:  memcpy(&v.u8, p, 1);  *u = v.u8; break;
	case GGUF_TYPE_UINT16: memcpy(&v.u16, p, 2); *u = v.u16; break;
	case GGUF_TYPE_UINT32: memcpy(&v.u32, p, 4); *u = v.u32; break;
	case GGUF_TYPE_UINT64: memcpy(&v.u64, p, 8); *u = v.u64; break;
	case GGUF_TYPE_INT8:   memcpy(&v.i8, p, 1);  *s = v.i8; break;
	case GGUF_TYPE_INT16:  memcpy(&v.i16, p, 2); *s = v.i16; break;
	case GGUF_TYPE_INT32:  memcpy(&v.i32, p, 4); *s = v.i32; break;
	case GGUF_TYPE_INT64:  memcpy(&v.i64, p, 8); *s = v.i64; break;
	default:
		return -EINVAL;
	}
	if (*s < 0)
		*neg = true;
	else if (*s > 0)
		*u = (uint64_t)*s;
	return 0;
}

int gguf_get_u32(const struct gguf_file *file, const char *key, uint32_t *out)
{
	const struct gguf_kv *kv = gguf_find(file, key);
	uint64_t u;
	int64_t s;
	bool neg;

	if (!kv)
		return -ENOENT;
	if (read_int(kv->type, kv->value, &s, &u, &neg) || neg ||
	    u > UINT32_MAX)
		return -EINVAL;
	*out = (uint32_t)u;
	return 0;
}

int gguf_get_f32(const struct gguf_file *file, const char *key, float *out)
{
	const struct gguf_kv *kv = gguf_find(file, key);
	double d;
	float f;

	if (!kv)
		return -ENOENT;
	if (kv->type == GGUF_TYPE_FLOAT32) {
		memcpy(&f, kv->value, sizeof(f));
		*out = f;
		return 0;
	}
	if (kv->type == GGUF_TYPE_FLOAT64) {
		memcpy(&d, kv->value, sizeof(d));
		*out = (float)d;
		return 0;
	}
	return -EINVAL;
}

int gguf_get_bool(const struct gguf_file *file, const char *key, bool *out)
{
	const struct gguf_kv *kv = gguf_find(file, key);

	if (!kv)
		return -ENOENT;
	if (kv->type != GGUF_TYPE_BOOL)
		return -EINVAL;
	*out = kv->value[0] != 0;
	return 0;
}

int gguf_get_str(const struct gguf_file *file, const char *key,
		 struct gguf_str *out)
{
	const struct gguf_kv *kv = gguf_find(file, key);
	uint64_t len;

	if (!kv)
		return -ENOENT;
	if (kv->type != GGUF_TYPE_STRING)
		return -EINVAL;
	memcpy(&len, kv->value, sizeof(len));
	out->ptr = (const char *)kv->value + sizeof(len);
	out->len = len;
	return 0;
}

int gguf_get_array(const struct gguf_file *file, const char *key,
		   uint32_t elem_type, const struct gguf_kv **out)
{
	const struct gguf_kv *kv = gguf_find(file, key);

	if (!kv)
		return -ENOENT;
	if (kv->type != GGUF_TYPE_ARRAY || kv->arr_type != elem_type)
		return -EINVAL;
	*out = kv;
	return 0;
}

/* arr_str[i] points at the 8-byte length that precedes string i. */
struct gguf_str gguf_array_str(const struct gguf_kv *kv, uint64_t i)
{
	struct gguf_str s;
	uint64_t len;

	memcpy(&len, kv->arr_str[i], sizeof(len));
	s.ptr = (const char *)kv->arr_str[i] + sizeof(len);
	s.len = len;
	return s;
}

bool gguf_str_eq(struct gguf_str s, const char *cstr)
{
	size_t n = strlen(cstr);

	return s.len == n && (!n || !memcmp(s.ptr, cstr, n));
}

const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *file,
					   const char *name)
{
	const struct gguf_file_priv *pf;
	const struct gguf_str *s;

	pf = container_of(file, const struct gguf_file_priv, pub);
	if (!pf->tensor_index)
		return NULL;
	s = find_index(pf->tensor_index, file->n_tensors, name);
	return s ? container_of(s, const struct gguf_tensor, name) : NULL;
}
