/* SPDX-License-Identifier: MIT */
/*
 * client.c - libkvchain's public calls: error names, handles, prompts,
 * chains, segments, appends, generation and statistics. Each call builds
 * one Request, passes it to the transport in conn.c under the
 * connection's lock, and turns the Reply into the caller's types.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client-internal.h"

/* Smallest struct_size accepted: the size field and one more field. */
#define MIN_STRUCT_SIZE (2 * sizeof(uint32_t))

KVC_API const char *kvc_strerror(int code)
{
	switch (code) {
	case 0: return "success";
	case KVC_EINVAL: return "invalid argument";
	case KVC_ENOMEM: return "out of memory";
	case KVC_EIO: return "connection failed or closed";
	case KVC_EPROTO: return "protocol error";
	case KVC_ENOENT: return "not found (prompt, chain, span or adapter file)";
	case KVC_EUNKNOWN_HANDLE: return "unknown segment handle";
	case KVC_ERELEASED: return "segment released";
	case KVC_EEXPIRED: return "segment expired or evicted";
	case KVC_EPERM: return "permission denied (the daemon's allow_uids and allow_gids, or the socket's mode)";
	case KVC_EQUOTA: return "quota exceeded";
	case KVC_ECONTEXT: return "segment context full";
	case KVC_ENOSPC: return "KV arena full";
	case KVC_EDIM: return "prompt width differs from the model's";
	case KVC_EVERSION: return "protocol version mismatch";
	case KVC_ETOOBIG: return "message too big";
	case KVC_ETIMEDOUT: return "timed out";
	case KVC_ECANCELED: return "generation canceled";
	default: return "unknown error";
	}
}

KVC_API void kvc_free(void *p)
{
	free(p);
}

/* Copies the first @struct_size bytes of @full (of @size) to @out, after
 * its struct_size field, which stays the caller's. */
static void copy_out(void *out, const void *full, size_t size)
{
	uint32_t struct_size;

	memcpy(&struct_size, out, sizeof(struct_size));
	if (struct_size < size)
		size = struct_size;
	memcpy((uint8_t *)out + sizeof(uint32_t),
	       (const uint8_t *)full + sizeof(uint32_t),
	       size - sizeof(uint32_t));
}

static bool struct_size_ok(const void *p)
{
	uint32_t struct_size;

	memcpy(&struct_size, p, sizeof(struct_size));
	return struct_size >= MIN_STRUCT_SIZE;
}

/* ---- Handles ----------------------------------------------------------- */

KVC_API void kvc_handle_format(const kvc_handle *handle,
			       char out[KVC_HANDLE_STRLEN + 1])
{
	static const char digits[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < sizeof(handle->bytes); i++) {
		out[2 * i] = digits[handle->bytes[i] >> 4];
		out[2 * i + 1] = digits[handle->bytes[i] & 15];
	}
	out[KVC_HANDLE_STRLEN] = '\0';
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Accepts upper- and lowercase digits; nothing may precede or follow. */
KVC_API int kvc_handle_parse(const char *text, kvc_handle *handle)
{
	uint8_t bytes[sizeof(handle->bytes)];
	size_t i;
	int hi, lo;

	if (!text || !handle)
		return KVC_EINVAL;
	for (i = 0; i < sizeof(bytes); i++) {
		hi = hex_value(text[2 * i]);
		if (hi < 0)
			return KVC_EINVAL;
		lo = hex_value(text[2 * i + 1]);
		if (lo < 0)
			return KVC_EINVAL;
		bytes[i] = (uint8_t)(hi << 4 | lo);
	}
	if (text[KVC_HANDLE_STRLEN] != '\0')
		return KVC_EINVAL;
	memcpy(handle->bytes, bytes, sizeof(bytes));
	return 0;
}

static ProtobufCBinaryData handle_field(const kvc_handle *handle)
{
	ProtobufCBinaryData b = {
		.len = sizeof(handle->bytes),
		.data = (uint8_t *)handle->bytes,
	};

	return b;
}

static int take_handle(struct kvc_conn *conn, const Kvchain__SegmentReply *s,
		       kvc_handle *out)
{
	if (s->handle.len != sizeof(out->bytes))
		return kvc__fail(conn, KVC_EPROTO,
				 "the daemon sent a %zu-byte handle, expected %zu",
				 s->handle.len, sizeof(out->bytes));
	memcpy(out->bytes, s->handle.data, sizeof(out->bytes));
	return 0;
}

/* ---- Prompts and chains ------------------------------------------------ */

/* Sends RegisterPrompt and stores up to @cap of the ids it returns. */
static int register_prompt(struct kvc_conn *conn, Kvchain__RegisterPrompt *rp,
			   uint64_t *ids, uint32_t cap, uint32_t *n)
{
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__Reply *reply;
	const Kvchain__PromptReply *p;
	int rc;

	req.body_case = KVCHAIN__REQUEST__BODY_REGISTER_PROMPT;
	req.register_prompt = rp;
	rc = kvc__call(conn, &req, KVCHAIN__REPLY__BODY_PROMPT, &reply);
	if (rc < 0)
		return rc;
	p = reply->prompt;
	if (p->n_prompt_ids == 0)
		rc = kvc__fail(conn, KVC_EPROTO,
			       "the daemon registered the prompt but returned no id");
	else if (p->n_prompt_ids > cap)
		rc = kvc__fail(conn, KVC_EINVAL,
			       "the source holds %zu prompts, more than the %u the caller has room for",
			       p->n_prompt_ids, cap);
	if (rc == 0) {
		memcpy(ids, p->prompt_ids, p->n_prompt_ids * sizeof(*ids));
		*n = (uint32_t)p->n_prompt_ids;
	}
	kvchain__reply__free_unpacked(reply, NULL);
	return rc;
}

/* Embeddings go on the wire as little-endian float32. */
static int embeddings_field(struct kvc_conn *conn, const float *embd,
			    size_t count, ProtobufCBinaryData *out,
			    void **copy)
{
	*copy = NULL;
	out->len = count * sizeof(float);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	{
		uint32_t *w = malloc(out->len ? out->len : 1);
		size_t i;

		if (!w)
			return kvc__fail(conn, KVC_ENOMEM,
					 "cannot copy %zu bytes of embeddings",
					 out->len);
		memcpy(w, embd, out->len);
		for (i = 0; i < count; i++)
			w[i] = __builtin_bswap32(w[i]);
		*copy = w;
		out->data = (uint8_t *)w;
		return 0;
	}
#else
	(void)conn;
	out->data = (uint8_t *)embd;
	return 0;
#endif
}

KVC_API int kvc_prompt_soft(kvc_conn *conn, const float *embeddings,
			    uint32_t n, uint32_t d_model, uint64_t *prompt_id)
{
	Kvchain__RegisterPrompt rp = KVCHAIN__REGISTER_PROMPT__INIT;
	uint32_t n_ids;
	void *copy;
	int rc;

	if (!conn)
		return KVC_EINVAL;
	pthread_mutex_lock(&conn->lock);
	if (!embeddings || !prompt_id || n == 0 || d_model == 0) {
		rc = kvc__fail(conn, KVC_EINVAL,
			       "a soft prompt needs embeddings, at least one row and a width");
		goto out_unlock;
	}
	if (d_model != conn->info.d_model) {
		rc = kvc__fail(conn, KVC_EDIM,
			       "the prompt is %u wide, the model's d_model is %u",
			       d_model, conn->info.d_model);
		goto out_unlock;
	}
	if ((uint64_t)n * d_model * sizeof(float) > conn->sock_max) {
		rc = kvc__fail(conn, KVC_ETOOBIG,
			       "%u x %u embeddings exceed the daemon's %u-byte message limit",
			       n, d_model, conn->sock_max);
		goto out_unlock;
	}
	rc = embeddings_field(conn, embeddings, (size_t)n * d_model,
			      &rp.embeddings, &copy);
	if (rc < 0)
		goto out_unlock;
	rp.source_case = KVCHAIN__REGISTER_PROMPT__SOURCE_EMBEDDINGS;
	rp.n_virtual = n;
	rc = register_prompt(conn, &rp, prompt_id, 1, &n_ids);
	free(copy);
out_unlock:
	pthread_mutex_unlock(&conn->lock);
	return rc;
}

KVC_API int kvc_prompt_text(kvc_conn *conn, const char *text,
			    uint64_t *prompt_id)
{
	Kvchain__RegisterPrompt rp = KVCHAIN__REGISTER_PROMPT__INIT;
	uint32_t n_ids;
	int rc;

	if (!conn)
		return KVC_EINVAL;
	pthread_mutex_lock(&conn->lock);
	if (!text || !prompt_id) {
		rc = kvc__fail(conn, KVC_EINVAL, "a hard prompt needs text");
		goto out_unlock;
	}
	rp.source_case = KVCHAIN__REGISTER_PROMPT__SOURCE_TEXT;
	rp.text = (char *)text;
	rc = register_prompt(conn, &rp, prompt_id, 1, &n_ids);
out_unlock:
	pthread_mutex_unlock(&conn->lock);
	return rc;
}

/*
 * Reads the whole file @dir/@name into a new buffer. Files over @limit
 * bytes are rejected, because the daemon would reject the message.
 */
static int read_file(struct kvc_conn *conn, const char *dir, const char *name,
		     size_t limit, ProtobufCBinaryData *out)
{
	char path[4096];
	struct stat st;
	size_t done = 0;
	ssize_t n;
	uint8_t *buf;
	int fd, rc = 0;

	if (snprintf(path, sizeof(path), "%s/%s", dir, name) >=
	    (int)sizeof(path))
		return kvc__fail(conn, KVC_EINVAL, "the path %s/%s is too long",
				 dir, name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return kvc__fail(conn, errno == ENOENT ? KVC_ENOENT : KVC_EIO,
				 "cannot open %s: %s", path, strerror(errno));
	if (fstat(fd, &st) < 0) {
		rc = kvc__fail(conn, KVC_EIO, "fstat on %s failed: %s", path,
			       strerror(errno));
		goto out_close;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = kvc__fail(conn, KVC_EINVAL, "%s is not a regular file",
			       path);
		goto out_close;
	}
	if ((uint64_t)st.st_size > limit) {
		rc = kvc__fail(conn, KVC_ETOOBIG,
			       "%s has %lld bytes, the daemon accepts messages of at most %zu",
			       path, (long long)st.st_size, limit);
		goto out_close;
	}
	buf = malloc(st.st_size ? (size_t)st.st_size : 1);
	if (!buf) {
		rc = kvc__fail(conn, KVC_ENOMEM, "cannot allocate %lld bytes for %s",
			       (long long)st.st_size, path);
		goto out_close;
	}
	while (done < (size_t)st.st_size) {
		n = read(fd, buf + done, (size_t)st.st_size - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			rc = kvc__fail(conn, KVC_EIO, "reading %s failed: %s",
				       path, n < 0 ? strerror(errno) :
				       "the file shrank");
			free(buf);
			goto out_close;
		}
		done += (size_t)n;
	}
	out->data = buf;
	out->len = done;
out_close:
	close(fd);
	return rc;
}

KVC_API int kvc_prompt_peft(kvc_conn *conn, const char *dir,
			    uint64_t *prompt_ids, uint32_t cap, uint32_t *n)
{
	Kvchain__RegisterPrompt rp = KVCHAIN__REGISTER_PROMPT__INIT;
	Kvchain__PeftAdapter peft = KVCHAIN__PEFT_ADAPTER__INIT;
	int rc;

	if (!conn)
		return KVC_EINVAL;
	pthread_mutex_lock(&conn->lock);
	if (!dir || !prompt_ids || !n || cap == 0) {
		rc = kvc__fail(conn, KVC_EINVAL,
			       "a PEFT adapter needs a folder and room for at least one id");
		goto out_unlock;
	}
	rc = read_file(conn, dir, "adapter_model.safetensors", conn->sock_max,
		       &peft.safetensors);
	if (rc < 0)
		goto out_unlock;
	rc = read_file(conn, dir, "adapter_config.json", conn->sock_max,
		       &peft.config);
	if (rc < 0)
		goto out_free_safetensors;
	rp.source_case = KVCHAIN__REGISTER_PROMPT__SOURCE_PEFT;
	rp.peft = &peft;
	rc = register_prompt(conn, &rp, prompt_ids, cap, n);
	free(peft.config.data);
out_free_safetensors:
	free(peft.safetensors.data);
out_unlock:
	pthread_mutex_unlock(&conn->lock);
	return rc;
}

KVC_API int kvc_chain_create(kvc_conn *conn, const uint64_t *prompt_ids,
			     uint32_t n, uint64_t *chain_id)
{
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__CreateChain body = KVCHAIN__CREATE_CHAIN__INIT;
	Kvchain__Reply *reply;
	int rc;

	if (!conn)
		return KVC_EINVAL;
	pthread_mutex_lock(&conn->lock);
	if (!prompt_ids || n == 0 || !chain_id) {
		rc = kvc__fail(conn, KVC_EINVAL,
			       "a chain needs at least one prompt id");
		goto out_unlock;
	}
	body.n_prompt_ids = n;
	body.prompt_ids = (uint64_t *)prompt_ids;
	req.body_case = KVCHAIN__REQUEST__BODY_CREATE_CHAIN;
	req.create_chain = &body;
	rc = kvc__call(conn, &req, KVCHAIN__REPLY__BODY_CHAIN, &reply);
	if (rc == 0) {
		*chain_id = reply->chain->chain_id;
		kvchain__reply__free_unpacked(reply, NULL);
	}
out_unlock:
	pthread_mutex_unlock(&conn->lock);
	return rc;
}

/* ---- Segments ---------------------------------------------------------- */

KVC_API int kvc_segment_create(kvc_conn *conn, uint64_t chain_id,
			       kvc_handle *out)
{
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__CreateSegment body = KVCHAIN__CREATE_SEGMENT__INIT;
	Kvchain__Reply *reply;
	int rc;

	if (!conn)
		return KVC_EINVAL;
	pthread_mutex_lock(&conn->lock);
	if (!out) {
		rc = kvc__fail(conn, KVC_EINVAL, "no place for the handle");
		goto out_unlock;
	}
	body.chain_id = chain_id;
	req.body_case = KVCHAIN__REQUEST__BODY_CREATE_SEGMENT;
	req.create_segment = &body;
	rc = kvc__call(conn, &req, KVCHAIN__REPLY__BODY_SEGMENT, &reply);
	if (rc == 0) {
		rc = take_handle(conn, reply->segment, out);
		kvchain__reply__free_unpacked(reply, NULL);
	}
out_unlock:
	pthread_mutex_unlock(&conn->lock);
	return rc;
}

/*
 * Attach, Release and Fork: a handle in, a SegmentReply out. Only Fork
 * reads the reply's handle; the others accept any body.
 */
static int handle_call(struct kvc_conn *conn, Kvchain__Request__BodyCase which,
		       const kvc_handle *handle, kvc_handle *out)
{
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__Attach attach = KVCHAIN__ATTACH__INIT;
	Kvchain__Release release = KVCHAIN__RELEASE__INIT;
	Kvchain__Fork fork_body = KVCHAIN__FORK__INIT;
	Kvchain__Reply *reply;
	int rc;

	if (!conn)
		return KVC_EINVAL;
	pthread_mutex_lock(&conn->lock);
	if (!handle || (which == KVCHAIN__REQUEST__BODY_FORK && !out)) {
		rc = kvc__fail(conn, KVC_EINVAL,
			       "a handle, and for a fork a place for the new one, are required");
		goto out_unlock;
	}
	req.body_case = which;
	switch (which) {
	case KVCHAIN__REQUEST__BODY_ATTACH:
		attach.handle = handle_field(handle);
		req.attach = &attach;
		break;
	case KVCHAIN__REQUEST__BODY_RELEASE:
		release.handle = handle_field(handle);
		req.release = &release;
		break;
	default:
		fork_body.handle = handle_field(handle);
		req.fork = &fork_body;
		break;
	}
	rc = kvc__call(conn, &req, out ? KVCHAIN__REPLY__BODY_SEGMENT :
			KVCHAIN__REPLY__BODY__NOT_SET, &reply);
	if (rc == 0) {
		if (out)
			rc = take_handle(conn, reply->segment, out);
		kvchain__reply__free_unpacked(reply, NULL);
	}
out_unlock:
	pthread_mutex_unlock(&conn->lock);
	return rc;
}

KVC_API int kvc_attach(kvc_conn *conn, const kvc_handle *handle)
{
	return handle_call(conn, KVCHAIN__REQUEST__BODY_ATTACH, handle, NULL);
}

KVC_API int kvc_release(kvc_conn *conn, const kvc_handle *handle)
{
	return handle_call(conn, KVCHAIN__REQUEST__BODY_RELEASE, handle, NULL);
}

KVC_API int kvc_fork(kvc_conn *conn, const kvc_handle *handle, kvc_handle *out)
{
	return handle_call(conn, KVCHAIN__REQUEST__BODY_FORK, handle, out);
}

KVC_API int kvc_drop_span(kvc_conn *conn, const kvc_handle *handle,
			  uint32_t span_id)
{
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__DropSpan body = KVCHAIN__DROP_SPAN__INIT;
	Kvchain__Reply *reply;
	int rc;

	if (!conn)
		return KVC_EINVAL;
	pthread_mutex_lock(&conn->lock);
	if (!handle) {
		rc = kvc__fail(conn, KVC_EINVAL, "no handle given");
		goto out_unlock;
	}
	body.handle = handle_field(handle);
	body.span_id = span_id;
	req.body_case = KVCHAIN__REQUEST__BODY_DROP_SPAN;
	req.drop_span = &body;
	rc = kvc__call(conn, &req, KVCHAIN__REPLY__BODY__NOT_SET, &reply);
	if (rc == 0)
		kvchain__reply__free_unpacked(reply, NULL);
out_unlock:
	pthread_mutex_unlock(&conn->lock);
	return rc;
}

/* ---- Appends ----------------------------------------------------------- */

/* Checks what both append calls share; returns 0 or KVC_EINVAL. */
static int check_append(struct kvc_conn *conn, const kvc_handle *handle,
			int kind, const uint32_t *view, uint32_t n_view)
{
	if (!handle)
		return kvc__fail(conn, KVC_EINVAL, "no handle given");
	if (kind != KVC_SHARED_INPUT && kind != KVC_STAGE_INPUT)
		return kvc__fail(conn, KVC_EINVAL,
				 "span kind %d is not KVC_SHARED_INPUT or KVC_STAGE_INPUT",
				 kind);
	if (n_view && !view)
		return kvc__fail(conn, KVC_EINVAL,
				 "n_view is %u but view is NULL", n_view);
	return 0;
}

/* Sends @body (its content set) and stores the new span's id. */
static int send_append(struct kvc_conn *conn, Kvchain__Append *body,
		       const kvc_handle *handle, int kind, uint32_t stage,
		       const uint32_t *view, uint32_t n_view, uint32_t *span_id)
{
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__View v = KVCHAIN__VIEW__INIT;
	Kvchain__Reply *reply;
	int rc;

	body->handle = handle_field(handle);
	body->kind = kind == KVC_SHARED_INPUT ?
		KVCHAIN__SPAN_KIND__SPAN_KIND_SHARED_INPUT :
		KVCHAIN__SPAN_KIND__SPAN_KIND_STAGE_INPUT;
	body->stage = stage;
	if (view) {
		/* present even when empty: an empty view is not the default */
		v.n_span_ids = n_view;
		v.span_ids = (uint32_t *)view;
		body->view = &v;
	}
	req.body_case = KVCHAIN__REQUEST__BODY_APPEND;
	req.append = body;
	rc = kvc__call(conn, &req, KVCHAIN__REPLY__BODY_SPAN, &reply);
	if (rc < 0)
		return rc;
	if (span_id)
		*span_id = reply->span->span_id;
	kvchain__reply__free_unpacked(reply, NULL);
	return 0;
}

KVC_API int kvc_append_text(kvc_conn *conn, const kvc_handle *handle, int kind,
			    uint32_t stage, const char *text, size_t len,
			    const uint32_t *view, uint32_t n_view,
			    uint32_t *span_id)
{
	Kvchain__Append body = KVCHAIN__APPEND__INIT;
	char *copy;
	int rc;

	if (!conn)
		return KVC_EINVAL;
	pthread_mutex_lock(&conn->lock);
	rc = check_append(conn, handle, kind, view, n_view);
	if (rc < 0)
		goto out_unlock;
	if (!text && len) {
		rc = kvc__fail(conn, KVC_EINVAL, "len is %zu but text is NULL",
			       len);
		goto out_unlock;
	}
	if (len && memchr(text, '\0', len)) {
		rc = kvc__fail(conn, KVC_EINVAL,
			       "the text contains a NUL byte before its end");
		goto out_unlock;
	}
	/* the protobuf string field needs a terminated copy */
	copy = malloc(len + 1);
	if (!copy) {
		rc = kvc__fail(conn, KVC_ENOMEM,
			       "cannot copy %zu bytes of text", len);
		goto out_unlock;
	}
	if (len)
		memcpy(copy, text, len);
	copy[len] = '\0';
	body.content_case = KVCHAIN__APPEND__CONTENT_TEXT;
	body.text = copy;
	rc = send_append(conn, &body, handle, kind, stage, view, n_view,
			 span_id);
	free(copy);
out_unlock:
	pthread_mutex_unlock(&conn->lock);
	return rc;
}

KVC_API int kvc_append_tokens(kvc_conn *conn, const kvc_handle *handle,
			      int kind, uint32_t stage, const int32_t *ids,
			      uint32_t n, const uint32_t *view,
			      uint32_t n_view, uint32_t *span_id)
{
	Kvchain__Append body = KVCHAIN__APPEND__INIT;
	Kvchain__TokenList tokens = KVCHAIN__TOKEN_LIST__INIT;
	int rc;

	if (!conn)
		return KVC_EINVAL;
	pthread_mutex_lock(&conn->lock);
	rc = check_append(conn, handle, kind, view, n_view);
	if (rc < 0)
		goto out_unlock;
	if (!ids || n == 0) {
		rc = kvc__fail(conn, KVC_EINVAL,
			       "a token append needs at least one id");
		goto out_unlock;
	}
	tokens.n_ids = n;
	tokens.ids = (int32_t *)ids;
	body.content_case = KVCHAIN__APPEND__CONTENT_TOKENS;
	body.tokens = &tokens;
	rc = send_append(conn, &body, handle, kind, stage, view, n_view,
			 span_id);
out_unlock:
	pthread_mutex_unlock(&conn->lock);
	return rc;
}

/* ---- Generation -------------------------------------------------------- */

KVC_API void kvc_gen_params_init(struct kvc_gen_params *params)
{
	if (!params)
		return;
	memset(params, 0, sizeof(*params));
	params->struct_size = sizeof(*params);
	params->temperature = 0.0f;
	params->top_k = 0;
	params->top_p = 1.0f;
	params->min_p = 0.0f;
	params->max_tokens = 128;
}

/*
 * Reads the caller's parameters (NULL: the defaults) into @p; a shorter
 * struct from an older caller keeps the defaults for fields it lacks.
 */
static int read_params(struct kvc_conn *conn,
		       const struct kvc_gen_params *params,
		       struct kvc_gen_params *p)
{
	size_t size;
	uint32_t i;

	kvc_gen_params_init(p);
	if (params) {
		if (params->struct_size < MIN_STRUCT_SIZE)
			return kvc__fail(conn, KVC_EINVAL,
					 "params->struct_size is %u; call kvc_gen_params_init first",
					 params->struct_size);
		size = params->struct_size < sizeof(*p) ? params->struct_size :
							  sizeof(*p);
		memcpy(p, params, size);
		p->struct_size = sizeof(*p);
	}
	if (p->max_tokens == 0)
		return kvc__fail(conn, KVC_EINVAL,
				 "max_tokens is 0, expected at least 1");
	if ((p->n_stop && !p->stop) || (p->n_stop_tokens && !p->stop_tokens) ||
	    (p->n_view && !p->view))
		return kvc__fail(conn, KVC_EINVAL,
				 "a stop, stop-token or view count is set but its array is NULL");
	for (i = 0; i < p->n_stop; i++)
		if (!p->stop[i] || !p->stop[i][0])
			return kvc__fail(conn, KVC_EINVAL,
					 "stop string %u is NULL or empty", i);
	return 0;
}

/* Sends one Generate request for @stage with parameters @p. */
static int send_generate(struct kvc_conn *conn, const kvc_handle *handle,
			 uint32_t stage, const struct kvc_gen_params *p,
			 uint64_t *id, bool *via_socket)
{
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__Generate body = KVCHAIN__GENERATE__INIT;
	Kvchain__Sampling sampling = KVCHAIN__SAMPLING__INIT;
	Kvchain__View v = KVCHAIN__VIEW__INIT;
	int rc;

	sampling.temperature = p->temperature;
	sampling.top_k = p->top_k;
	sampling.top_p = p->top_p;
	sampling.min_p = p->min_p;
	sampling.seed = p->seed;
	body.handle = handle_field(handle);
	body.stage = stage;
	body.sampling = &sampling;
	body.max_tokens = p->max_tokens;
	body.n_stop = p->n_stop;
	body.stop = (char **)p->stop;
	body.n_stop_tokens = p->n_stop_tokens;
	body.stop_tokens = (int32_t *)p->stop_tokens;
	body.ignore_eos = p->ignore_eos != 0;
	if (p->view) {
		v.n_span_ids = p->n_view;
		v.span_ids = (uint32_t *)p->view;
		body.view = &v;
	}
	req.body_case = KVCHAIN__REQUEST__BODY_GENERATE;
	req.generate = &body;
	rc = kvc__send(conn, &req, via_socket);
	*id = req.id;
	return rc;
}

/* Fills @r from the GenerateDone that ended a generation. */
static void take_done(const Kvchain__GenerateDone *d, struct kvc_gen_result *r)
{
	memset(r, 0, sizeof(*r));
	r->struct_size = sizeof(*r);
	r->span_id = d->span_id;
	r->n_generated = d->n_generated;
	r->stop_reason = d->stop_reason;
	r->prefill_seconds = d->prefill_seconds;
	r->decode_seconds = d->decode_seconds;
}

/*
 * Reads Token replies until GenerateDone. Once the callback returns
 * nonzero, the remaining tokens are read and dropped.
 * NOTE: the protocol has no Cancel request yet, so the daemon generates
 * up to its own stop; a Cancel message would let it stop early.
 */
static int read_tokens(struct kvc_conn *conn, uint64_t id, bool via_socket,
		       kvc_token_fn on_token, void *arg,
		       struct kvc_gen_result *r)
{
	Kvchain__Reply *reply;
	bool canceled = false;
	int rc;

	for (;;) {
		rc = kvc__receive(conn, id, via_socket, &reply);
		if (rc < 0)
			return rc;
		rc = kvc__reply_error(conn, reply);
		if (rc < 0)
			goto out_free_reply;
		if (reply->body_case == KVCHAIN__REPLY__BODY_GENERATE_DONE) {
			take_done(reply->generate_done, r);
			if (canceled) {
				r->stop_reason = KVC_STOP_CANCELED;
				rc = kvc__fail(conn, KVC_ECANCELED,
					       "the token callback stopped generation");
			}
			goto out_free_reply;
		}
		if (reply->body_case != KVCHAIN__REPLY__BODY_TOKEN) {
			rc = kvc__fail(conn, KVC_EPROTO,
				       "the daemon answered Generate with body %d",
				       (int)reply->body_case);
			goto out_free_reply;
		}
		/* an empty text arrives as NULL; callers get "" */
		if (on_token && !canceled &&
		    on_token(arg, reply->token->id,
			     reply->token->text.data ?
			     (const char *)reply->token->text.data : "",
			     reply->token->text.len) != 0)
			canceled = true;
		kvchain__reply__free_unpacked(reply, NULL);
	}

out_free_reply:
	kvchain__reply__free_unpacked(reply, NULL);
	return rc;
}

/* kvc_generate with the lock held. */
static int generate_locked(struct kvc_conn *conn, const kvc_handle *handle,
			   uint32_t stage, const struct kvc_gen_params *params,
			   kvc_token_fn on_token, void *arg,
			   struct kvc_gen_result *result)
{
	struct kvc_gen_params p;
	struct kvc_gen_result r;
	bool via_socket;
	uint64_t id;
	int rc;

	if (!handle)
		return kvc__fail(conn, KVC_EINVAL, "no handle given");
	if (result && !struct_size_ok(result))
		return kvc__fail(conn, KVC_EINVAL,
				 "result->struct_size is %u, expected sizeof(struct kvc_gen_result)",
				 result->struct_size);
	rc = read_params(conn, params, &p);
	if (rc < 0)
		return rc;
	rc = send_generate(conn, handle, stage, &p, &id, &via_socket);
	if (rc < 0)
		return rc;
	memset(&r, 0, sizeof(r));
	rc = read_tokens(conn, id, via_socket, on_token, arg, &r);
	/* a canceled generation still committed its span: report it */
	if (result && (rc == 0 || rc == KVC_ECANCELED))
		copy_out(result, &r, sizeof(r));
	return rc;
}

/*
 * @params may be NULL for kvc_gen_params_init's defaults and @result may
 * be NULL. The timeout (KVCHAIN_TIMEOUT_MS) applies to each wait for the
 * next token, not to the whole generation.
 */
KVC_API int kvc_generate(kvc_conn *conn, const kvc_handle *handle,
			 uint32_t stage, const struct kvc_gen_params *params,
			 kvc_token_fn on_token, void *arg,
			 struct kvc_gen_result *result)
{
	int rc;

	if (!conn)
		return KVC_EINVAL;
	pthread_mutex_lock(&conn->lock);
	rc = generate_locked(conn, handle, stage, params, on_token, arg,
			     result);
	pthread_mutex_unlock(&conn->lock);
	return rc;
}

/* The growing text of kvc_generate_text. */
struct text_buf {
	char *data;
	size_t len;
	size_t cap;
	bool out_of_memory;
};

static int append_token_text(void *arg, int32_t id, const char *text,
			     size_t len)
{
	struct text_buf *t = arg;
	size_t cap;
	char *p;

	(void)id;
	if (t->len + len + 1 > t->cap) {
		cap = t->cap ? t->cap : 256;
		while (cap < t->len + len + 1)
			cap *= 2;
		p = realloc(t->data, cap);
		if (!p) {
			t->out_of_memory = true;
			return 1;
		}
		t->data = p;
		t->cap = cap;
	}
	memcpy(t->data + t->len, text, len);
	t->len += len;
	t->data[t->len] = '\0';
	return 0;
}

/* @len and @result may be NULL; the text is NUL-terminated. */
KVC_API int kvc_generate_text(kvc_conn *conn, const kvc_handle *handle,
			      uint32_t stage,
			      const struct kvc_gen_params *params, char **text,
			      size_t *len, struct kvc_gen_result *result)
{
	struct text_buf t = { 0 };
	int rc;

	if (!conn)
		return KVC_EINVAL;
	pthread_mutex_lock(&conn->lock);
	if (!text) {
		rc = kvc__fail(conn, KVC_EINVAL, "no place for the text");
		goto out_unlock;
	}
	*text = NULL;
	rc = generate_locked(conn, handle, stage, params, append_token_text,
			     &t, result);
	if (rc == KVC_ECANCELED && t.out_of_memory)
		rc = kvc__fail(conn, KVC_ENOMEM,
			       "cannot grow the text beyond %zu bytes", t.len);
	if (rc == 0 && !t.data) {
		t.data = calloc(1, 1);
		if (!t.data)
			rc = kvc__fail(conn, KVC_ENOMEM, "out of memory");
	}
	if (rc < 0) {
		free(t.data);
		goto out_unlock;
	}
	*text = t.data;
	if (len)
		*len = t.len;
out_unlock:
	pthread_mutex_unlock(&conn->lock);
	return rc;
}

/* ---- Statistics -------------------------------------------------------- */

KVC_API int kvc_stats(kvc_conn *conn, struct kvc_stats *stats)
{
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__Stats body = KVCHAIN__STATS__INIT;
	const Kvchain__StatsReply *s;
	struct kvc_stats full;
	Kvchain__Reply *reply;
	int rc;

	if (!conn)
		return KVC_EINVAL;
	pthread_mutex_lock(&conn->lock);
	if (!stats || !struct_size_ok(stats)) {
		rc = kvc__fail(conn, KVC_EINVAL,
			       "stats is NULL or its struct_size is not set");
		goto out_unlock;
	}
	req.body_case = KVCHAIN__REQUEST__BODY_STATS;
	req.stats = &body;
	rc = kvc__call(conn, &req, KVCHAIN__REPLY__BODY_STATS, &reply);
	if (rc < 0)
		goto out_unlock;
	s = reply->stats;
	memset(&full, 0, sizeof(full));
	full.struct_size = sizeof(full);
	full.blocks_total = s->blocks_total;
	full.blocks_free = s->blocks_free;
	full.block_bytes = s->block_bytes;
	full.segments = s->segments;
	full.chains = s->chains;
	full.prompts = s->prompts;
	full.connections = s->connections;
	full.tokens_generated = s->tokens_generated;
	copy_out(stats, &full, sizeof(full));
	kvchain__reply__free_unpacked(reply, NULL);
out_unlock:
	pthread_mutex_unlock(&conn->lock);
	return rc;
}
