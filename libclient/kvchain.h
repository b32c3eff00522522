/* SPDX-License-Identifier: MIT */
/*
 * kvchain.h - libkvchain, the client library of kvchaind.
 *
 * A chain stage is a process that connects to the daemon, attaches to a
 * KV cache segment by its handle, appends its input and generates with its
 * stage prompt, reading the KV that earlier stages left in the segment.
 *
 * Conventions:
 * - Every call that can fail returns 0 or a negative KVC_E* code.
 *   kvc_strerror() names the code, and kvc_last_error() returns the
 *   daemon's or library's message for the last failure on a connection.
 * - The library never prints and never exits.
 * - Thread safety: calls on one connection are serialised by a lock in the
 *   connection, so threads may share one; a token callback must not call
 *   back into the same connection. Separate connections are independent.
 * - Only what this header declares is part of the ABI. Structures a caller
 *   fills carry their own size in their first field so later versions can
 *   grow them.
 */
#ifndef KVCHAIN_H
#define KVCHAIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KVC_PROTOCOL_VERSION 1

/* Error codes. Each is negative; 0 means success. */
#define KVC_EINVAL -1		/* invalid argument */
#define KVC_ENOMEM -2		/* out of memory */
#define KVC_EIO -3		/* the connection failed or was closed */
#define KVC_EPROTO -4		/* the other side broke the protocol */
#define KVC_ENOENT -5		/* no such prompt, chain or span */
#define KVC_EUNKNOWN_HANDLE -6	/* no segment has this handle */
#define KVC_ERELEASED -7	/* the segment was released by every holder */
#define KVC_EEXPIRED -8		/* the segment expired or was evicted */
#define KVC_EPERM -9		/* this peer is not allowed */
#define KVC_EQUOTA -10		/* a per-user limit was reached */
#define KVC_ECONTEXT -11	/* the segment would exceed its context */
#define KVC_ENOSPC -12		/* the KV arena is full */
#define KVC_EDIM -13		/* prompt width differs from the model's */
#define KVC_EVERSION -14	/* protocol versions do not match */
#define KVC_ETOOBIG -15		/* a message exceeds the size limit */
#define KVC_ETIMEDOUT -16	/* the daemon did not answer in time */
#define KVC_ECANCELED -17	/* the token callback stopped generation */

/* Returns a short description of @code; never NULL. */
const char *kvc_strerror(int code);

/* A connection to kvchaind. */
typedef struct kvc_conn kvc_conn;

/*
 * Connects to the daemon's socket at @path, or when @path is NULL to
 * $KVCHAIN_SOCKET, else $XDG_RUNTIME_DIR/kvchain/kvchaind.sock for a user
 * other than root, else /run/kvchain/kvchaind.sock. Says Hello and maps
 * the shared rings. @client_name appears in the daemon's log (may be NULL).
 * Setting KVCHAIN_TRANSPORT=socket sends every request of the connection
 * over the socket instead of the rings (the daemon replies the same way);
 * it exists for benchmarks. Any value but "socket", "rings"
 * or empty fails with KVC_EINVAL.
 */
int kvc_connect(const char *path, const char *client_name, kvc_conn **out);

/* Closes the connection; the daemon releases every segment it attached. */
void kvc_disconnect(kvc_conn *conn);

/* Returns the message of the last failed call on @conn ("" if none). */
const char *kvc_last_error(const kvc_conn *conn);

/* The model and limits the daemon serves, from its Hello reply. */
struct kvc_server_info {
	uint32_t struct_size;	/* sizeof(struct kvc_server_info) */
	uint32_t protocol_version;
	uint32_t d_model;
	uint32_t n_vocab;
	uint32_t n_ctx;
	char model_name[64];
};

int kvc_server_info(const kvc_conn *conn, struct kvc_server_info *info);

/* ---- Prompts and chains --------------------------------------------- */

/* Registers a soft prompt of @n rows of @d_model floats. */
int kvc_prompt_soft(kvc_conn *conn, const float *embeddings, uint32_t n,
		    uint32_t d_model, uint64_t *prompt_id);

/* Registers a hard prompt: text the daemon tokenizes. */
int kvc_prompt_text(kvc_conn *conn, const char *text, uint64_t *prompt_id);

/*
 * Reads the PEFT prompt-tuning adapter in folder @dir and registers its
 * prompts: one, or k for an adapter holding k stages. Stores at most @cap
 * ids in @prompt_ids and their count in *n.
 */
int kvc_prompt_peft(kvc_conn *conn, const char *dir, uint64_t *prompt_ids,
		    uint32_t cap, uint32_t *n);

/* Creates a chain of @n prompts in stage order; computes their KV once. */
int kvc_chain_create(kvc_conn *conn, const uint64_t *prompt_ids, uint32_t n,
		     uint64_t *chain_id);

/* ---- Segments --------------------------------------------------------- */

/* A segment's handle: a 128-bit capability. Anyone allowed to connect and
 * holding it may attach. */
typedef struct kvc_handle {
	uint8_t bytes[16];
} kvc_handle;

#define KVC_HANDLE_STRLEN 32	/* hex digits, without the NUL */

/* Writes the handle as 32 lowercase hex digits and a NUL into @out. */
void kvc_handle_format(const kvc_handle *handle,
		       char out[KVC_HANDLE_STRLEN + 1]);

/* Parses 32 hex digits. Returns 0 or KVC_EINVAL. */
int kvc_handle_parse(const char *text, kvc_handle *handle);

/* Creates a segment of @chain_id; this connection holds it. */
int kvc_segment_create(kvc_conn *conn, uint64_t chain_id, kvc_handle *out);

/* Holds an existing segment, so it outlives its creator's connection. */
int kvc_attach(kvc_conn *conn, const kvc_handle *handle);

/* Drops this connection's hold. A segment that no connection holds
 * expires after the daemon's TTL. */
int kvc_release(kvc_conn *conn, const kvc_handle *handle);

/* Creates a segment sharing every span of @handle; this connection holds
 * the fork. */
int kvc_fork(kvc_conn *conn, const kvc_handle *handle, kvc_handle *out);

enum kvc_span_kind {
	KVC_SHARED_INPUT = 2,	/* seen by every stage, no prompt */
	KVC_STAGE_INPUT = 3,	/* input of one stage */
};

/*
 * Appends @len bytes of text (framed as text + "\n") as a span of @kind
 * for @stage. @view lists the span ids the new span may read, or is NULL
 * for the cascade mask's default. Stores the new span's id in *span_id
 * (may be NULL).
 */
int kvc_append_text(kvc_conn *conn, const kvc_handle *handle, int kind,
		    uint32_t stage, const char *text, size_t len,
		    const uint32_t *view, uint32_t n_view, uint32_t *span_id);

/* Appends token ids instead of text. */
int kvc_append_tokens(kvc_conn *conn, const kvc_handle *handle, int kind,
		      uint32_t stage, const int32_t *ids, uint32_t n,
		      const uint32_t *view, uint32_t n_view,
		      uint32_t *span_id);

struct kvc_gen_params {
	uint32_t struct_size;	/* sizeof(struct kvc_gen_params) */
	float temperature;	/* 0: greedy */
	uint32_t top_k;		/* 0: all */
	float top_p;		/* 1: all */
	float min_p;		/* 0: all */
	uint64_t seed;
	uint32_t max_tokens;
	int ignore_eos;
	const char *const *stop;	/* (n_stop) stop strings */
	uint32_t n_stop;
	const int32_t *stop_tokens;	/* (n_stop_tokens) */
	uint32_t n_stop_tokens;
	const uint32_t *view;	/* NULL: the cascade mask's default */
	uint32_t n_view;
};

/* Fills @params with greedy sampling, 128 tokens and no stops. */
void kvc_gen_params_init(struct kvc_gen_params *params);

enum kvc_stop_reason {
	KVC_STOP_MAX_TOKENS = 0,
	KVC_STOP_EOS = 1,
	KVC_STOP_TOKEN = 2,
	KVC_STOP_STRING = 3,
	KVC_STOP_CANCELED = 4,
	KVC_STOP_CONTEXT = 5,
};

struct kvc_gen_result {
	uint32_t struct_size;	/* sizeof(struct kvc_gen_result) */
	uint32_t span_id;	/* the output span */
	uint32_t n_generated;
	uint32_t stop_reason;	/* enum kvc_stop_reason */
	double prefill_seconds;
	double decode_seconds;
};

/* Receives each generated token and the text that became final with it;
 * nonzero stops generation (the call then returns KVC_ECANCELED). */
typedef int (*kvc_token_fn)(void *arg, int32_t id, const char *text,
			    size_t len);

/* Generates as @stage, streaming tokens to @on_token (may be NULL). */
int kvc_generate(kvc_conn *conn, const kvc_handle *handle, uint32_t stage,
		 const struct kvc_gen_params *params, kvc_token_fn on_token,
		 void *arg, struct kvc_gen_result *result);

/* Generates and returns the whole text in *text (free with kvc_free). */
int kvc_generate_text(kvc_conn *conn, const kvc_handle *handle,
		      uint32_t stage, const struct kvc_gen_params *params,
		      char **text, size_t *len, struct kvc_gen_result *result);

/* Drops span @span_id of the segment; its KV is freed once unshared. */
int kvc_drop_span(kvc_conn *conn, const kvc_handle *handle,
		  uint32_t span_id);

struct kvc_stats {
	uint32_t struct_size;	/* sizeof(struct kvc_stats) */
	uint32_t blocks_total;
	uint32_t blocks_free;
	uint64_t block_bytes;
	uint32_t segments;
	uint32_t chains;
	uint32_t prompts;
	uint32_t connections;
	uint64_t tokens_generated;
};

int kvc_stats(kvc_conn *conn, struct kvc_stats *stats);

/* Frees memory the library returned. */
void kvc_free(void *p);

#ifdef __cplusplus
}
#endif

#endif /* KVCHAIN_H */
