/* SPDX-License-Identifier: MIT */
/*
 * service.c - the objects clients work with and the requests on them:
 * prompts, chains, segments and their 128-bit handles, holds, per-uid
 * quotas, TTL expiry and LRU eviction, stats. Appends and generations
 * open engine jobs here; tasks.c runs them to their replies.
 *
 * Runs on the scheduler thread only, which owns the engine.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "daemon.h"
#include "kvstore.h"
#include "log.h"
#include "model.h"
#include "prompt.h"
#include "segment.h"
#include "service.h"

int kvd_service_init(struct kvd_daemon *d)
{
	d->next_object_id = 1;
	return 0;
}

/* ==== Errors ========================================================== */

int kvd_engine_code(int rc)
{
	switch (rc) {
	case -E2BIG:
		return KVC_ECONTEXT;
	case -ENOSPC:
		return KVC_ENOSPC;
	case -ENOENT:
		return KVC_ENOENT;
	case -ENOMEM:
		return KVC_ENOMEM;
	case -ECANCELED:
		return KVC_ECANCELED;
	default:
		return KVC_EINVAL;
	}
}

/* ==== Quotas ========================================================== */

struct kvd_usage *kvd_usage_of(struct kvd_daemon *d, uid_t uid)
{
	struct kvd_usage *u;

	for (u = d->usage; u; u = u->next)
		if (u->uid == uid)
			return u;
	u = calloc(1, sizeof(*u));
	if (!u)
		return NULL;
	u->uid = uid;
	u->next = d->usage;
	d->usage = u;
	return u;
}

/* Charges @n tokens to @s's owner (negative @n gives them back). */
void kvd_charge_tokens(struct kvd_daemon *d, struct kvd_segment *s,
		       int64_t n)
{
	struct kvd_usage *u = kvd_usage_of(d, s->owner);

	s->n_tokens = (uint32_t)((int64_t)s->n_tokens + n);
	if (u)
		u->n_tokens = (uint64_t)((int64_t)u->n_tokens + n);
}

/* Returns true if @s's owner may hold @n more tokens; else replies. */
bool kvd_tokens_allowed(struct kvd_daemon *d, struct kvd_conn *c,
			enum kvd_path path, uint64_t id,
			struct kvd_segment *s, uint64_t n)
{
	struct kvd_usage *u = kvd_usage_of(d, s->owner);

	if (!u) {
		kvd_reply_error(d, c, path, id, KVC_ENOMEM,
				"out of memory for the quota of uid %u",
				(unsigned)s->owner);
		return false;
	}
	if (u->n_tokens + n > d->cfg.max_tokens_per_uid) {
		kvd_reply_error(d, c, path, id, KVC_EQUOTA,
				"uid %u holds %" PRIu64 " tokens; %" PRIu64 " more would exceed max_tokens_per_uid (%" PRIu32 ")",
				(unsigned)s->owner, u->n_tokens, n,
				d->cfg.max_tokens_per_uid);
		return false;
	}
	return true;
}

/* ==== Handles and segments ============================================ */

static void retire(struct kvd_daemon *d, const uint8_t *handle,
		   enum kvd_retired_why why)
{
	struct kvd_retired *r = &d->retired[d->n_retired % KVD_RETIRED_MAX];

	memcpy(r->handle, handle, KVD_HANDLE_BYTES);
	r->why = why;
	d->n_retired++;
}

static const struct kvd_retired *find_retired(const struct kvd_daemon *d,
					      const uint8_t *handle)
{
	uint32_t i, n = d->n_retired < KVD_RETIRED_MAX ? d->n_retired :
							  KVD_RETIRED_MAX;

	for (i = 0; i < n; i++)
		if (!memcmp(d->retired[i].handle, handle, KVD_HANDLE_BYTES))
			return &d->retired[i];
	return NULL;
}

/* Prefix of a handle a client sent, for messages (at most 8 hex digits). */
static void client_prefix(const ProtobufCBinaryData *h, char out[9])
{
	uint8_t bytes[KVD_HANDLE_BYTES] = { 0 };

	memcpy(bytes, h->data, h->len < 4 ? h->len : 4);
	kvd_handle_prefix(bytes, out);
	out[h->len < 4 ? 2 * h->len : 8] = '\0';
}

/*
 * NOTE: a linear search; a hash table keyed by the handle would keep
 * lookups flat once thousands of segments are live.
 */
struct kvd_segment *kvd_find_segment(struct kvd_daemon *d,
				     struct kvd_conn *c, enum kvd_path path,
				     uint64_t id, const ProtobufCBinaryData *h)
{
	const struct kvd_retired *r;
	struct kvd_segment *s;
	char prefix[9];

	if (h->len != KVD_HANDLE_BYTES) {
		kvd_reply_error(d, c, path, id, KVC_EINVAL,
				"a handle is %d bytes, not %zu",
				KVD_HANDLE_BYTES, h->len);
		return NULL;
	}
	for (s = d->segments; s; s = s->next) {
		if (!memcmp(s->handle, h->data, KVD_HANDLE_BYTES)) {
			s->last_used_ms = kvd_now_ms();
			return s;
		}
	}
	client_prefix(h, prefix);
	r = find_retired(d, h->data);
	if (r && r->why == KVD_RETIRED_RELEASED)
		kvd_reply_error(d, c, path, id, KVC_ERELEASED,
				"segment %s... was released by every holder",
				prefix);
	else if (r)
		kvd_reply_error(d, c, path, id, KVC_EEXPIRED,
				"segment %s... %s", prefix,
				r->why == KVD_RETIRED_EXPIRED ?
				"expired after segment_ttl_seconds unheld" :
				"was evicted to free KV blocks");
	else
		kvd_reply_error(d, c, path, id, KVC_EUNKNOWN_HANDLE,
				"no segment has handle %s...", prefix);
	return NULL;
}

static void destroy_segment(struct kvd_daemon *d, struct kvd_segment *s,
			    enum kvd_retired_why why)
{
	struct kvd_usage *u = kvd_usage_of(d, s->owner);
	char prefix[9];

	kvd_handle_prefix(s->handle, prefix);
	kvd_log(KVD_LOG_DEBUG, "segment %s... of uid %u %s", prefix,
		(unsigned)s->owner,
		why == KVD_RETIRED_RELEASED ? "released" :
		why == KVD_RETIRED_EXPIRED ? "expired" : "evicted");
	kvd_charge_tokens(d, s, -(int64_t)s->n_tokens);
	if (u)
		u->n_segments--;
	segment_release(s->seg);
	retire(d, s->handle, why);
	if (s->prev)
		s->prev->next = s->next;
	else
		d->segments = s->next;
	if (s->next)
		s->next->prev = s->prev;
	d->n_segments--;
	free(s);
}

static bool evictable(const struct kvd_segment *s)
{
	return s->n_holders == 0 && !s->task && !s->pending;
}

bool kvd_evict_one(struct kvd_daemon *d)
{
	struct kvd_segment *s, *lru = NULL;
	char prefix[9];

	for (s = d->segments; s; s = s->next)
		if (evictable(s) && (!lru || s->last_used_ms < lru->last_used_ms))
			lru = s;
	if (!lru)
		return false;
	kvd_handle_prefix(lru->handle, prefix);
	kvd_log(KVD_LOG_INFO, "KV arena full: evicting unheld segment %s... of uid %u",
		prefix, (unsigned)lru->owner);
	destroy_segment(d, lru, KVD_RETIRED_EVICTED);
	return true;
}

void kvd_service_housekeeping(struct kvd_daemon *d)
{
	uint64_t now = kvd_now_ms(), ttl = d->cfg.segment_ttl_seconds * 1000ull;
	struct kvd_segment *s, *next;

	for (s = d->segments; s; s = next) {
		next = s->next;
		if (evictable(s) && now - s->idle_since_ms >= ttl)
			destroy_segment(d, s, ttl ? KVD_RETIRED_EXPIRED :
						    KVD_RETIRED_RELEASED);
	}
}

static bool holds(const struct kvd_conn *c, const struct kvd_segment *s)
{
	const struct kvd_hold *h;

	for (h = c->holds; h; h = h->next)
		if (h->seg == s)
			return true;
	return false;
}

static int hold(struct kvd_conn *c, struct kvd_segment *s)
{
	struct kvd_hold *h;

	if (holds(c, s))
		return 0;
	h = malloc(sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->seg = s;
	h->next = c->holds;
	c->holds = h;
	s->n_holders++;
	return 0;
}

static bool unhold(struct kvd_conn *c, struct kvd_segment *s)
{
	struct kvd_hold **p, *h;

	for (p = &c->holds; (h = *p); p = &h->next) {
		if (h->seg != s)
			continue;
		*p = h->next;
		free(h);
		if (--s->n_holders == 0)
			s->idle_since_ms = kvd_now_ms();
		return true;
	}
	return false;
}

/* Wraps a new engine segment, held by @c and owned by its uid. */
static struct kvd_segment *add_segment(struct kvd_daemon *d,
				       struct kvd_conn *c,
				       struct segment *seg, uint64_t chain_id,
				       uint32_t n_stages)
{
	struct kvd_usage *u = kvd_usage_of(d, c->uid);
	struct kvd_segment *s;

	s = calloc(1, sizeof(*s));
	if (!s || !u)
		goto out_free;
	if (getrandom(s->handle, sizeof(s->handle), 0) !=
	    (ssize_t)sizeof(s->handle))
		goto out_free;
	s->seg = seg;
	s->chain_id = chain_id;
	s->n_stages = n_stages;
	s->owner = c->uid;
	s->last_used_ms = s->idle_since_ms = kvd_now_ms();
	if (hold(c, s))
		goto out_free;
	u->n_segments++;
	s->next = d->segments;
	if (d->segments)
		d->segments->prev = s;
	d->segments = s;
	d->n_segments++;
	return s;

out_free:
	free(s);
	return NULL;
}

static bool segments_allowed(struct kvd_daemon *d, struct kvd_conn *c,
			     enum kvd_path path, uint64_t id)
{
	struct kvd_usage *u = kvd_usage_of(d, c->uid);

	if (u && u->n_segments >= d->cfg.max_segments_per_uid) {
		kvd_reply_error(d, c, path, id, KVC_EQUOTA,
				"uid %u already holds %" PRIu32 " segments (max_segments_per_uid)",
				(unsigned)c->uid, u->n_segments);
		return false;
	}
	return true;
}

static void reply_segment(struct kvd_daemon *d, struct kvd_conn *c,
			  enum kvd_path path, uint64_t id,
			  const struct kvd_segment *s)
{
	Kvchain__SegmentReply sr = KVCHAIN__SEGMENT_REPLY__INIT;
	Kvchain__Reply reply = KVCHAIN__REPLY__INIT;

	sr.handle.data = (uint8_t *)s->handle;
	sr.handle.len = KVD_HANDLE_BYTES;
	sr.chain_id = s->chain_id;
	sr.n_stages = s->n_stages;
	sr.n_spans = segment_n_spans(s->seg);
	sr.n_positions = segment_n_positions(s->seg);
	reply.id = id;
	reply.body_case = KVCHAIN__REPLY__BODY_SEGMENT;
	reply.segment = &sr;
	kvd_reply(d, c, path, &reply);
}

/* ==== Prompts and chains ============================================== */

static struct kvd_prompt *find_prompt(struct kvd_daemon *d, uint64_t id)
{
	struct kvd_prompt *p;

	for (p = d->prompts; p; p = p->next)
		if (p->id == id)
			return p;
	return NULL;
}

static struct kvd_chain *find_chain(struct kvd_daemon *d, uint64_t id)
{
	struct kvd_chain *ch;

	for (ch = d->chains; ch; ch = ch->next)
		if (ch->id == id)
			return ch;
	return NULL;
}

/* Makes soft prompts from raw little-endian float32 rows. */
static int prompt_from_embeddings(struct kvd_daemon *d,
				  const Kvchain__RegisterPrompt *rp,
				  struct stage_prompt **out, int *code,
				  char *err, size_t errlen)
{
	uint32_t d_model = d->model->cfg.d_model;
	size_t len = rp->embeddings.len;
	uint32_t width;
	float *rows;
	int rc;

	*code = KVC_EINVAL;
	if (rp->n_virtual == 0 || len == 0 || len % 4 ||
	    (len / 4) % rp->n_virtual) {
		snprintf(err, errlen,
			 "%zu bytes of embeddings do not make %" PRIu32 " rows of float32",
			 len, rp->n_virtual);
		return -EINVAL;
	}
	width = (uint32_t)(len / 4 / rp->n_virtual);
	if (width != d_model) {
		*code = KVC_EDIM;
		snprintf(err, errlen,
			 "prompt rows are %" PRIu32 " wide, the model's d_model is %" PRIu32,
			 width, d_model);
		return -EINVAL;
	}
	/* copied: the bytes inside the message need not be aligned */
	rows = malloc(len);
	if (!rows) {
		*code = KVC_ENOMEM;
		snprintf(err, errlen, "out of memory for %zu bytes", len);
		return -ENOMEM;
	}
	memcpy(rows, rp->embeddings.data, len);
	rc = stage_prompt_soft(d->model, rows, rp->n_virtual, width, out, err,
			       errlen);
	free(rows);
	return rc;
}

static int prompts_from_peft(struct kvd_daemon *d,
			     const Kvchain__PeftAdapter *peft,
			     struct stage_prompt *out[PROMPT_MAX_STAGES],
			     uint32_t *n_out, char *err, size_t errlen)
{
	uint32_t d_model = d->model->cfg.d_model, n_virtual;
	int rc;

	rc = stage_prompt_parse_config(peft->config.data, peft->config.len,
				       "adapter_config.json", d_model,
				       &n_virtual, err, errlen);
	if (rc)
		return rc;
	return stage_prompt_parse_safetensors(peft->safetensors.data,
					      peft->safetensors.len,
					      "adapter_model.safetensors",
					      d_model, n_virtual, out, n_out,
					      err, errlen);
}

static void register_prompt(struct kvd_daemon *d, struct kvd_conn *c,
			    enum kvd_path path, const Kvchain__Request *req)
{
	const Kvchain__RegisterPrompt *rp = req->register_prompt;
	struct stage_prompt *made[PROMPT_MAX_STAGES] = { NULL };
	Kvchain__PromptReply pr = KVCHAIN__PROMPT_REPLY__INIT;
	Kvchain__Reply reply = KVCHAIN__REPLY__INIT;
	uint64_t ids[PROMPT_MAX_STAGES];
	uint32_t i, n = 0;
	int rc = -EINVAL, code = KVC_EINVAL;
	char err[200] = "";

	switch (rp->source_case) {
	case KVCHAIN__REGISTER_PROMPT__SOURCE_EMBEDDINGS:
		rc = prompt_from_embeddings(d, rp, &made[0], &code, err,
					    sizeof(err));
		n = rc ? 0 : 1;
		break;
	case KVCHAIN__REGISTER_PROMPT__SOURCE_TEXT:
		rc = stage_prompt_hard(d->model, rp->text, &made[0], err,
				       sizeof(err));
		n = rc ? 0 : 1;
		break;
	case KVCHAIN__REGISTER_PROMPT__SOURCE_PEFT:
		rc = prompts_from_peft(d, rp->peft, made, &n, err, sizeof(err));
		if (rc == -EINVAL && strstr(err, "d_model"))
			code = KVC_EDIM;
		break;
	default:
		snprintf(err, sizeof(err),
			 "RegisterPrompt names no source (embeddings, text or peft)");
		break;
	}
	if (rc) {
		if (rc == -ENOMEM)
			code = KVC_ENOMEM;
		kvd_reply_error(d, c, path, req->id, code, "%s", err);
		goto out_free;
	}
	if (d->n_prompts + n > KVD_PROMPTS_MAX) {
		kvd_reply_error(d, c, path, req->id, KVC_EQUOTA,
				"the daemon holds %" PRIu32 " prompts, its limit is %d",
				d->n_prompts, KVD_PROMPTS_MAX);
		goto out_free;
	}
	for (i = 0; i < n; i++) {
		struct kvd_prompt *p = calloc(1, sizeof(*p));

		if (!p) {
			kvd_reply_error(d, c, path, req->id, KVC_ENOMEM,
					"out of memory registering a prompt");
			goto out_free;
		}
		p->id = d->next_object_id++;
		p->owner = c->uid;
		p->prompt = made[i];
		made[i] = NULL;
		p->next = d->prompts;
		d->prompts = p;
		d->n_prompts++;
		ids[i] = p->id;
	}
	pr.n_prompt_ids = n;
	pr.prompt_ids = ids;
	pr.n = n ? d->prompts->prompt->n : 0;
	reply.id = req->id;
	reply.body_case = KVCHAIN__REPLY__BODY_PROMPT;
	reply.prompt = &pr;
	kvd_reply(d, c, path, &reply);

out_free:
	for (i = 0; i < PROMPT_MAX_STAGES; i++)
		stage_prompt_free(made[i]);
}

static void create_chain(struct kvd_daemon *d, struct kvd_conn *c,
			 enum kvd_path path, const Kvchain__Request *req)
{
	const Kvchain__CreateChain *cc = req->create_chain;
	const struct stage_prompt *prompts[CHAIN_MAX_STAGES];
	Kvchain__ChainReply cr = KVCHAIN__CHAIN_REPLY__INIT;
	Kvchain__Reply reply = KVCHAIN__REPLY__INIT;
	struct kvd_chain *ch;
	struct chain *chain;
	char err[200] = "";
	size_t i;
	int rc;

	if (cc->n_prompt_ids == 0 || cc->n_prompt_ids > CHAIN_MAX_STAGES) {
		kvd_reply_error(d, c, path, req->id, KVC_EINVAL,
				"a chain has 1 to %d stages, not %zu",
				CHAIN_MAX_STAGES, cc->n_prompt_ids);
		return;
	}
	if (d->n_chains >= KVD_PROMPTS_MAX) {
		kvd_reply_error(d, c, path, req->id, KVC_EQUOTA,
				"the daemon holds %" PRIu32 " chains, its limit is %d",
				d->n_chains, KVD_PROMPTS_MAX);
		return;
	}
	for (i = 0; i < cc->n_prompt_ids; i++) {
		struct kvd_prompt *p = find_prompt(d, cc->prompt_ids[i]);

		/* another user's prompt is reported as missing */
		if (!p || p->owner != c->uid) {
			kvd_reply_error(d, c, path, req->id, KVC_ENOENT,
					"stage %zu: no prompt has id %" PRIu64,
					i, cc->prompt_ids[i]);
			return;
		}
		prompts[i] = p->prompt;
	}
	rc = chain_create(d->eng, prompts, (uint32_t)cc->n_prompt_ids, &chain,
			  err, sizeof(err));
	if (rc == -ENOSPC && kvd_evict_one(d))
		rc = chain_create(d->eng, prompts, (uint32_t)cc->n_prompt_ids,
				  &chain, err, sizeof(err));
	if (rc) {
		kvd_reply_error(d, c, path, req->id, kvd_engine_code(rc),
				"cannot create the chain: %s",
				*err ? err : strerror(-rc));
		return;
	}
	ch = calloc(1, sizeof(*ch));
	if (!ch) {
		chain_release(chain);
		kvd_reply_error(d, c, path, req->id, KVC_ENOMEM,
				"out of memory creating a chain");
		return;
	}
	ch->id = d->next_object_id++;
	ch->owner = c->uid;
	ch->chain = chain;
	ch->next = d->chains;
	d->chains = ch;
	d->n_chains++;
	cr.chain_id = ch->id;
	cr.n_stages = chain_n_stages(chain);
	reply.id = req->id;
	reply.body_case = KVCHAIN__REPLY__BODY_CHAIN;
	reply.chain = &cr;
	kvd_reply(d, c, path, &reply);
}

/* ==== Segment requests ================================================ */

static void create_segment(struct kvd_daemon *d, struct kvd_conn *c,
			   enum kvd_path path, const Kvchain__Request *req)
{
	struct kvd_chain *ch = find_chain(d, req->create_segment->chain_id);
	struct kvd_segment *s;
	struct segment *seg;
	int rc;

	if (!ch || ch->owner != c->uid) {
		kvd_reply_error(d, c, path, req->id, KVC_ENOENT,
				"no chain has id %" PRIu64,
				req->create_segment->chain_id);
		return;
	}
	if (!segments_allowed(d, c, path, req->id))
		return;
	rc = segment_create(ch->chain, &seg);
	if (rc == -ENOSPC && kvd_evict_one(d))
		rc = segment_create(ch->chain, &seg);
	if (rc) {
		kvd_reply_error(d, c, path, req->id, kvd_engine_code(rc),
				"cannot create a segment of chain %" PRIu64 ": %s",
				ch->id, strerror(-rc));
		return;
	}
	s = add_segment(d, c, seg, ch->id, chain_n_stages(ch->chain));
	if (!s) {
		segment_release(seg);
		kvd_reply_error(d, c, path, req->id, KVC_ENOMEM,
				"out of memory (or no random bytes) for a segment");
		return;
	}
	reply_segment(d, c, path, req->id, s);
}

static void attach(struct kvd_daemon *d, struct kvd_conn *c,
		   enum kvd_path path, const Kvchain__Request *req)
{
	struct kvd_segment *s;

	s = kvd_find_segment(d, c, path, req->id, &req->attach->handle);
	if (!s)
		return;
	if (hold(c, s)) {
		kvd_reply_error(d, c, path, req->id, KVC_ENOMEM,
				"out of memory attaching");
		return;
	}
	reply_segment(d, c, path, req->id, s);
}

static void release(struct kvd_daemon *d, struct kvd_conn *c,
		    enum kvd_path path, const Kvchain__Request *req,
		    struct kvd_segment *s)
{
	char prefix[9];

	if (!unhold(c, s)) {
		kvd_handle_prefix(s->handle, prefix);
		kvd_reply_error(d, c, path, req->id, KVC_ENOENT,
				"this connection does not hold segment %s...",
				prefix);
		return;
	}
	reply_segment(d, c, path, req->id, s);
}

static void fork_segment(struct kvd_daemon *d, struct kvd_conn *c,
			 enum kvd_path path, const Kvchain__Request *req,
			 struct kvd_segment *s)
{
	struct kvd_segment *f;
	struct segment *seg;
	int rc;

	if (!segments_allowed(d, c, path, req->id))
		return;
	rc = segment_fork(s->seg, &seg);
	if (rc == -ENOSPC && kvd_evict_one(d))
		rc = segment_fork(s->seg, &seg);
	if (rc) {
		kvd_reply_error(d, c, path, req->id, kvd_engine_code(rc),
				"cannot fork: %s", strerror(-rc));
		return;
	}
	f = add_segment(d, c, seg, s->chain_id, s->n_stages);
	if (!f) {
		segment_release(seg);
		kvd_reply_error(d, c, path, req->id, KVC_ENOMEM,
				"out of memory (or no random bytes) for a fork");
		return;
	}
	/* The fork's tokens count for its owner even though their blocks
	 * are shared, because they stay after the original goes. */
	kvd_charge_tokens(d, f, s->n_tokens);
	reply_segment(d, c, path, req->id, f);
}

static void drop_span(struct kvd_daemon *d, struct kvd_conn *c,
		      enum kvd_path path, const Kvchain__Request *req,
		      struct kvd_segment *s)
{
	Kvchain__SpanReply sr = KVCHAIN__SPAN_REPLY__INIT;
	Kvchain__Reply reply = KVCHAIN__REPLY__INIT;
	uint32_t span_id = req->drop_span->span_id;
	struct span_info info;
	char prefix[9];
	int rc;

	kvd_handle_prefix(s->handle, prefix);
	rc = segment_span_info(s->seg, span_id, &info);
	if (!rc && info.dropped)
		rc = -ENOENT;
	if (!rc)
		rc = segment_drop(s->seg, span_id);
	if (rc) {
		kvd_reply_error(d, c, path, req->id, kvd_engine_code(rc),
				"cannot drop span %" PRIu32 " of segment %s...: %s",
				span_id, prefix,
				rc == -ENOENT ? "no such span, or already dropped" :
				rc == -EINVAL ? "it is a prompt slot" :
						strerror(-rc));
		return;
	}
	kvd_charge_tokens(d, s, -(int64_t)info.n);
	sr.span_id = span_id;
	sr.pos0 = info.pos0;
	sr.n_tokens = info.n;
	reply.id = req->id;
	reply.body_case = KVCHAIN__REPLY__BODY_SPAN;
	reply.span = &sr;
	kvd_reply(d, c, path, &reply);
}

static void stats(struct kvd_daemon *d, struct kvd_conn *c,
		  enum kvd_path path, const Kvchain__Request *req)
{
	Kvchain__StatsReply sr = KVCHAIN__STATS_REPLY__INIT;
	Kvchain__Reply reply = KVCHAIN__REPLY__INIT;
	struct kv_store_stats ks;

	kv_store_get_stats(d->store, &ks);
	sr.blocks_total = ks.n_blocks;
	sr.blocks_free = ks.n_free;
	sr.block_bytes = ks.block_bytes;
	sr.segments = d->n_segments;
	sr.chains = d->n_chains;
	sr.prompts = d->n_prompts;
	sr.connections = atomic_load(&d->n_conns);
	sr.tokens_generated = d->tokens_generated;
	reply.id = req->id;
	reply.body_case = KVCHAIN__REPLY__BODY_STATS;
	reply.stats = &sr;
	kvd_reply(d, c, path, &reply);
}

/* ==== Dispatch ======================================================== */

/* Returns the handle a segment request names, or NULL for other bodies. */
static const ProtobufCBinaryData *segment_handle(const Kvchain__Request *req)
{
	switch (req->body_case) {
	case KVCHAIN__REQUEST__BODY_RELEASE:
		return &req->release->handle;
	case KVCHAIN__REQUEST__BODY_FORK:
		return &req->fork->handle;
	case KVCHAIN__REQUEST__BODY_APPEND:
		return &req->append->handle;
	case KVCHAIN__REQUEST__BODY_GENERATE:
		return &req->generate->handle;
	case KVCHAIN__REQUEST__BODY_DROP_SPAN:
		return &req->drop_span->handle;
	default:
		return NULL;
	}
}

/*
 * Runs a request on segment @s, which has no open job. Returns true if
 * the request was taken by a task that now runs.
 */
static bool run_on_segment(struct kvd_daemon *d, struct kvd_conn *c,
			   enum kvd_path path, Kvchain__Request *req,
			   struct kvd_segment *s)
{
	switch (req->body_case) {
	case KVCHAIN__REQUEST__BODY_RELEASE:
		release(d, c, path, req, s);
		break;
	case KVCHAIN__REQUEST__BODY_FORK:
		fork_segment(d, c, path, req, s);
		break;
	case KVCHAIN__REQUEST__BODY_DROP_SPAN:
		drop_span(d, c, path, req, s);
		break;
	case KVCHAIN__REQUEST__BODY_APPEND:
		return kvd_task_append(d, c, path, req, s);
	case KVCHAIN__REQUEST__BODY_GENERATE:
		return kvd_task_generate(d, c, path, req, s);
	default:
		break;
	}
	return false;
}

void kvd_run_pending(struct kvd_daemon *d, struct kvd_segment *s)
{
	struct kvd_pending *p;

	while (!s->task && (p = s->pending)) {
		s->pending = p->next;
		if (!s->pending)
			s->pending_tail = NULL;
		if (!run_on_segment(d, p->conn, p->path, p->req, s))
			kvchain__request__free_unpacked(p->req, NULL);
		free(p);
	}
}

/* Queues @req behind the running job of @s, keeping per-segment order. */
static void defer(struct kvd_daemon *d, struct kvd_conn *c,
		  enum kvd_path path, Kvchain__Request *req,
		  struct kvd_segment *s)
{
	struct kvd_pending *p = malloc(sizeof(*p));

	if (!p) {
		kvd_reply_error(d, c, path, req->id, KVC_ENOMEM,
				"out of memory queueing the request");
		kvchain__request__free_unpacked(req, NULL);
		return;
	}
	p->next = NULL;
	p->conn = c;
	p->path = path;
	p->req = req;
	if (s->pending_tail)
		s->pending_tail->next = p;
	else
		s->pending = p;
	s->pending_tail = p;
}

void kvd_service_request(struct kvd_daemon *d, struct kvd_conn *c,
			 enum kvd_path path, Kvchain__Request *req)
{
	const ProtobufCBinaryData *handle = segment_handle(req);
	struct kvd_segment *s;

	if (handle) {
		s = kvd_find_segment(d, c, path, req->id, handle);
		if (!s)
			goto out_free;
		if (s->task || s->pending) {
			defer(d, c, path, req, s);
			return;
		}
		if (run_on_segment(d, c, path, req, s))
			return;
		goto out_free;
	}
	switch (req->body_case) {
	case KVCHAIN__REQUEST__BODY_HELLO:
		kvd_reply_error(d, c, path, req->id, KVC_EPROTO,
				"Hello was already received on this connection");
		break;
	case KVCHAIN__REQUEST__BODY_REGISTER_PROMPT:
		register_prompt(d, c, path, req);
		break;
	case KVCHAIN__REQUEST__BODY_CREATE_CHAIN:
		create_chain(d, c, path, req);
		break;
	case KVCHAIN__REQUEST__BODY_CREATE_SEGMENT:
		create_segment(d, c, path, req);
		break;
	case KVCHAIN__REQUEST__BODY_ATTACH:
		attach(d, c, path, req);
		break;
	case KVCHAIN__REQUEST__BODY_STATS:
		stats(d, c, path, req);
		break;
	default:
		kvd_reply_error(d, c, path, req->id, KVC_EPROTO,
				"the request has no body this daemon knows");
		break;
	}
out_free:
	kvchain__request__free_unpacked(req, NULL);
}

/* ==== Connection end and shutdown ===================================== */

/* Drops @c's requests still waiting behind other jobs. */
static void purge_pending(struct kvd_daemon *d, struct kvd_conn *c)
{
	struct kvd_segment *s;
	struct kvd_pending **pp, *p;

	for (s = d->segments; s; s = s->next) {
		s->pending_tail = NULL;
		for (pp = &s->pending; (p = *pp);) {
			if (p->conn == c) {
				*pp = p->next;
				kvchain__request__free_unpacked(p->req, NULL);
				free(p);
			} else {
				s->pending_tail = p;
				pp = &p->next;
			}
		}
	}
}

void kvd_service_disconnect(struct kvd_daemon *d, struct kvd_conn *c)
{
	purge_pending(d, c);
	kvd_cancel_tasks(d, c);
	while (c->holds)
		unhold(c, c->holds->seg);
}

void kvd_service_shutdown(struct kvd_daemon *d)
{
	struct kvd_prompt *p, *pn;
	struct kvd_chain *ch, *cn;
	struct kvd_usage *u, *un;
	struct kvd_conn *c;

	kvd_cancel_tasks(d, NULL);
	for (c = d->conns; c; c = c->next) {
		purge_pending(d, c);
		while (c->holds)
			unhold(c, c->holds->seg);
	}
	while (d->segments)
		destroy_segment(d, d->segments, KVD_RETIRED_RELEASED);
	for (ch = d->chains; ch; ch = cn) {
		cn = ch->next;
		chain_release(ch->chain);
		free(ch);
	}
	d->chains = NULL;
	for (p = d->prompts; p; p = pn) {
		pn = p->next;
		stage_prompt_free(p->prompt);
		free(p);
	}
	d->prompts = NULL;
	for (u = d->usage; u; u = un) {
		un = u->next;
		free(u);
	}
	d->usage = NULL;
}
