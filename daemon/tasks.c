/* SPDX-License-Identifier: MIT */
/*
 * tasks.c - appends and generations as engine jobs: opening them with
 * their quota checks, advancing all of them together with engine_step()
 * so decode steps of different segments share one forward pass, streaming
 * generated tokens, and replying when each job closes. A job whose client
 * left is closed without committing, so no half span stays behind.
 *
 * Runs on the scheduler thread only.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "log.h"
#include "model.h"
#include "segment.h"
#include "service.h"

static struct kvd_task *task_new(struct kvd_daemon *d, struct kvd_conn *c,
				 enum kvd_path path, Kvchain__Request *req,
				 struct kvd_segment *s)
{
	struct kvd_task *t = calloc(1, sizeof(*t));

	if (!t) {
		kvd_reply_error(d, c, path, req->id, KVC_ENOMEM,
				"out of memory starting the job");
		return NULL;
	}
	t->d = d;
	t->conn = c;
	t->path = path;
	t->req = req;
	t->seg = s;
	t->uid = c->uid;
	return t;
}

/* Makes @t the running job of its segment. */
static void task_link(struct kvd_daemon *d, struct kvd_task *t)
{
	t->seg->task = t;
	t->next = d->tasks;
	if (d->tasks)
		d->tasks->prev = t;
	d->tasks = t;
	d->n_tasks++;
}

static void task_free(struct kvd_daemon *d, struct kvd_task *t)
{
	if (t->prev)
		t->prev->next = t->next;
	else if (d->tasks == t)
		d->tasks = t->next;
	if (t->next)
		t->next->prev = t->prev;
	if (t->seg->task == t)
		t->seg->task = NULL;
	d->n_tasks--;
	kvchain__request__free_unpacked(t->req, NULL);
	free(t);
}

/*
 * Checks that every span a view names exists and was not dropped, so the
 * error can name the span. Fills @out from @v (NULL: the default view).
 */
static bool check_view(struct kvd_daemon *d, struct kvd_conn *c,
		       enum kvd_path path, uint64_t id,
		       const struct kvd_segment *s, const Kvchain__View *v,
		       struct span_view *out, const struct span_view **view)
{
	uint32_t n_spans = segment_n_spans(s->seg);
	struct span_info info;
	char prefix[9];
	size_t i;

	*view = NULL;
	if (!v)
		return true;
	kvd_handle_prefix(s->handle, prefix);
	for (i = 0; i < v->n_span_ids; i++) {
		uint32_t span = v->span_ids[i];

		if (span >= n_spans) {
			kvd_reply_error(d, c, path, id, KVC_ENOENT,
					"the view names span %" PRIu32 ", but segment %s... has %" PRIu32 " spans",
					span, prefix, n_spans);
			return false;
		}
		if (!segment_span_info(s->seg, span, &info) && info.dropped) {
			kvd_reply_error(d, c, path, id, KVC_ENOENT,
					"the view names span %" PRIu32 " of segment %s..., which was dropped",
					span, prefix);
			return false;
		}
	}
	out->spans = v->span_ids;
	out->n = (uint32_t)v->n_span_ids;
	*view = out;
	return true;
}

static bool check_stage(struct kvd_daemon *d, struct kvd_conn *c,
			enum kvd_path path, uint64_t id,
			const struct kvd_segment *s, uint32_t stage)
{
	if (stage < s->n_stages)
		return true;
	kvd_reply_error(d, c, path, id, KVC_EINVAL,
			"stage %" PRIu32 " does not exist: the segment's chain has %" PRIu32 " stages",
			stage, s->n_stages);
	return false;
}

static void reply_job_error(struct kvd_daemon *d, struct kvd_conn *c,
			    enum kvd_path path, uint64_t id,
			    const struct kvd_segment *s, const char *what,
			    int rc)
{
	char prefix[9];

	kvd_handle_prefix(s->handle, prefix);
	kvd_reply_error(d, c, path, id, kvd_engine_code(rc),
			"%s on segment %s... failed: %s", what, prefix,
			rc == -E2BIG ? "it would exceed the context (n_ctx)" :
			rc == -ENOSPC ? "the KV arena is out of blocks" :
			strerror(-rc));
}

/* Returns the token ids of an Append (malloc'd) and their count, or -1. */
static int append_tokens(struct kvd_daemon *d, const Kvchain__Append *a,
			 int32_t **ids)
{
	size_t i;

	switch (a->content_case) {
	case KVCHAIN__APPEND__CONTENT_TEXT:
		return engine_encode_input(d->eng, a->text, strlen(a->text),
					   ids);
	case KVCHAIN__APPEND__CONTENT_TOKENS:
		if (a->tokens->n_ids == 0 || a->tokens->n_ids > UINT32_MAX / 4)
			return -EINVAL;
		*ids = malloc(a->tokens->n_ids * sizeof(int32_t));
		if (!*ids)
			return -ENOMEM;
		for (i = 0; i < a->tokens->n_ids; i++)
			(*ids)[i] = a->tokens->ids[i];
		return (int)a->tokens->n_ids;
	default:
		return -EINVAL;
	}
}

bool kvd_task_append(struct kvd_daemon *d, struct kvd_conn *c,
		     enum kvd_path path, Kvchain__Request *req,
		     struct kvd_segment *s)
{
	const Kvchain__Append *a = req->append;
	const struct span_view *view;
	struct span_view view_buf;
	enum span_kind kind;
	struct kvd_task *t;
	int32_t *ids = NULL;
	int n, rc;

	if (a->kind == KVCHAIN__SPAN_KIND__SPAN_KIND_SHARED_INPUT) {
		kind = SPAN_SHARED_INPUT;
	} else if (a->kind == KVCHAIN__SPAN_KIND__SPAN_KIND_STAGE_INPUT) {
		kind = SPAN_STAGE_INPUT;
		if (!check_stage(d, c, path, req->id, s, a->stage))
			return false;
	} else {
		kvd_reply_error(d, c, path, req->id, KVC_EINVAL,
				"an Append's kind must be SHARED_INPUT or STAGE_INPUT, not %d",
				(int)a->kind);
		return false;
	}
	if (!check_view(d, c, path, req->id, s, a->view, &view_buf, &view))
		return false;
	n = append_tokens(d, a, &ids);
	if (n <= 0) {
		kvd_reply_error(d, c, path, req->id, kvd_engine_code(n ? n : -EINVAL),
				"the Append has no content to add (%s)",
				a->content_case == KVCHAIN__APPEND__CONTENT__NOT_SET ?
				"neither text nor tokens" :
				n ? strerror(-n) : "it encodes to no tokens");
		return false;
	}
	if (!kvd_tokens_allowed(d, c, path, req->id, s, (uint64_t)n))
		goto out_free_ids;
	t = task_new(d, c, path, req, s);
	if (!t)
		goto out_free_ids;
	rc = job_append_start(s->seg, kind, a->stage, ids, (uint32_t)n, view,
			      &t->job);
	if (rc == -ENOSPC && kvd_evict_one(d))
		rc = job_append_start(s->seg, kind, a->stage, ids, (uint32_t)n,
				      view, &t->job);
	free(ids);
	if (rc) {
		if (rc == -EINVAL && a->content_case ==
				     KVCHAIN__APPEND__CONTENT_TOKENS)
			kvd_reply_error(d, c, path, req->id, KVC_EINVAL,
					"a token id is outside the vocabulary of %" PRIu32,
					d->model->cfg.n_vocab);
		else
			reply_job_error(d, c, path, req->id, s, "Append", rc);
		t->req = NULL;
		free(t);
		return false;
	}
	t->charged = (uint32_t)n;
	kvd_charge_tokens(d, s, n);
	task_link(d, t);
	return true;

out_free_ids:
	free(ids);
	return false;
}

/* Streams one generated token to the client that asked. */
static int on_token(void *arg, int32_t id, const char *text, size_t len)
{
	struct kvd_task *t = arg;
	Kvchain__Token tok = KVCHAIN__TOKEN__INIT;
	Kvchain__Reply reply = KVCHAIN__REPLY__INIT;

	if (!t->conn || t->conn->dead)
		return 1;	/* nobody is listening: stop generating */
	tok.id = id;
	tok.text.data = (uint8_t *)text;
	tok.text.len = len;
	reply.id = t->req->id;
	reply.body_case = KVCHAIN__REPLY__BODY_TOKEN;
	reply.token = &tok;
	kvd_reply(t->d, t->conn, t->path, &reply);
	return t->conn->dead;
}

static bool generations_allowed(struct kvd_daemon *d, struct kvd_conn *c,
				enum kvd_path path, uint64_t id)
{
	struct kvd_usage *u = kvd_usage_of(d, c->uid);

	if (!u) {
		kvd_reply_error(d, c, path, id, KVC_ENOMEM,
				"out of memory for the quota of uid %u",
				(unsigned)c->uid);
		return false;
	}
	if (u->n_generations >= d->cfg.max_generations_per_uid) {
		kvd_reply_error(d, c, path, id, KVC_EQUOTA,
				"uid %u already runs %" PRIu32 " generations (max_generations_per_uid)",
				(unsigned)c->uid, u->n_generations);
		return false;
	}
	return true;
}

static void fill_params(struct gen_params *p, const Kvchain__Generate *g)
{
	memset(p, 0, sizeof(*p));
	sampler_params_default(&p->sampling);
	if (g->sampling) {
		p->sampling.temperature = g->sampling->temperature;
		p->sampling.top_k = g->sampling->top_k;
		p->sampling.top_p = g->sampling->top_p == 0.0f ?
				    1.0f : g->sampling->top_p;
		p->sampling.min_p = g->sampling->min_p;
		p->sampling.seed = g->sampling->seed;
	}
	p->max_tokens = g->max_tokens;
	p->ignore_eos = g->ignore_eos;
	p->stop_tokens = g->stop_tokens;
	p->n_stop_tokens = g->n_stop_tokens;
	p->stop_strings = (const char *const *)g->stop;
	p->n_stop_strings = g->n_stop;
}

bool kvd_task_generate(struct kvd_daemon *d, struct kvd_conn *c,
		       enum kvd_path path, Kvchain__Request *req,
		       struct kvd_segment *s)
{
	const Kvchain__Generate *g = req->generate;
	uint32_t used = segment_n_positions(s->seg), charge;
	const struct span_view *view;
	struct span_view view_buf;
	struct kvd_usage *u;
	struct kvd_task *t;
	int rc;

	if (!check_stage(d, c, path, req->id, s, g->stage) ||
	    !check_view(d, c, path, req->id, s, g->view, &view_buf, &view) ||
	    !generations_allowed(d, c, path, req->id))
		return false;
	if (g->max_tokens == 0) {
		kvd_reply_error(d, c, path, req->id, KVC_EINVAL,
				"max_tokens must be at least 1");
		return false;
	}
	if (g->sampling && (!isfinite(g->sampling->temperature) ||
			    !(g->sampling->top_p >= 0.0f &&
			      g->sampling->top_p <= 1.0f) ||
			    !(g->sampling->min_p >= 0.0f &&
			      g->sampling->min_p <= 1.0f))) {
		kvd_reply_error(d, c, path, req->id, KVC_EINVAL,
				"invalid sampling: temperature must be finite, top_p and min_p within [0, 1]");
		return false;
	}
	/* BOS and every generated token, as far as the context allows */
	charge = used < d->n_ctx ? d->n_ctx - used : 0;
	if ((uint64_t)g->max_tokens + 1 < charge)
		charge = g->max_tokens + 1;
	if (!kvd_tokens_allowed(d, c, path, req->id, s, charge))
		return false;
	t = task_new(d, c, path, req, s);
	if (!t)
		return false;
	t->generate = true;
	fill_params(&t->params, g);
	rc = job_generate_start(s->seg, g->stage, &t->params, view, on_token,
				t, &t->job);
	if (rc == -ENOSPC && kvd_evict_one(d))
		rc = job_generate_start(s->seg, g->stage, &t->params, view,
					on_token, t, &t->job);
	if (rc) {
		reply_job_error(d, c, path, req->id, s, "Generate", rc);
		t->req = NULL;
		free(t);
		return false;
	}
	t->charged = charge;
	kvd_charge_tokens(d, s, charge);
	u = kvd_usage_of(d, c->uid);
	u->n_generations++;
	c->n_generations++;
	task_link(d, t);
	return true;
}

/* Gives back what @t charged; @kept tokens stay with its segment. */
static void settle(struct kvd_daemon *d, struct kvd_task *t, uint32_t kept)
{
	struct kvd_usage *u;

	kvd_charge_tokens(d, t->seg, (int64_t)kept - (int64_t)t->charged);
	t->charged = kept;
	if (!t->generate)
		return;
	u = kvd_usage_of(d, t->uid);
	if (u)
		u->n_generations--;
	if (t->conn)
		t->conn->n_generations--;
}

static void reply_done(struct kvd_daemon *d, struct kvd_task *t,
		       uint32_t span_id, const struct span_info *info,
		       const struct gen_stats *gs)
{
	Kvchain__GenerateDone done = KVCHAIN__GENERATE_DONE__INIT;
	Kvchain__SpanReply sr = KVCHAIN__SPAN_REPLY__INIT;
	Kvchain__Reply reply = KVCHAIN__REPLY__INIT;

	reply.id = t->req->id;
	if (t->generate) {
		done.span_id = span_id;
		done.n_generated = gs->n_generated;
		/* enum gen_stop_reason numbers the reasons as the protocol */
		done.stop_reason = (uint32_t)gs->stop;
		done.prefill_seconds = gs->prefill_seconds;
		done.decode_seconds = gs->decode_seconds;
		reply.body_case = KVCHAIN__REPLY__BODY_GENERATE_DONE;
		reply.generate_done = &done;
	} else {
		sr.span_id = span_id;
		sr.pos0 = info->pos0;
		sr.n_tokens = info->n;
		reply.body_case = KVCHAIN__REPLY__BODY_SPAN;
		reply.span = &sr;
	}
	kvd_reply(d, t->conn, t->path, &reply);
}

/* Closes @t's job, commits it if its client is still there, replies. */
static void finish(struct kvd_daemon *d, struct kvd_task *t)
{
	struct kvd_segment *s = t->seg;
	bool commit = t->conn && !t->conn->dead;
	struct span_info info = { 0 };
	struct gen_stats gs = { 0 };
	uint32_t span_id = 0;
	int rc;

	rc = job_finish(t->job, commit, &span_id, &gs);
	if (rc == 0 && segment_span_info(s->seg, span_id, &info))
		rc = -EIO;
	settle(d, t, rc == 0 ? info.n : 0);
	if (rc == 0) {
		if (t->generate)
			d->tokens_generated += gs.n_generated;
		reply_done(d, t, span_id, &info, &gs);
	} else if (commit) {
		kvd_log(KVD_LOG_WARN, "%s of connection %" PRIu64 " failed: %s",
			t->generate ? "Generate" : "Append", t->conn->id,
			strerror(-rc));
		reply_job_error(d, t->conn, t->path, t->req->id, s,
				t->generate ? "Generate" : "Append", rc);
	}
	task_free(d, t);
	kvd_run_pending(d, s);
}

bool kvd_step_tasks(struct kvd_daemon *d)
{
	struct job **jobs;
	struct kvd_task *t;
	uint32_t i, n = 0;
	int rc;

	if (!d->tasks)
		return false;
	jobs = malloc(d->n_tasks * sizeof(*jobs));
	if (!jobs) {
		kvd_log(KVD_LOG_ERROR, "out of memory scheduling %" PRIu32 " jobs",
			d->n_tasks);
		return false;
	}
	/*
	 * Oldest first. engine_step gives rows in array order and d->tasks
	 * lists the newest first, so in list order a steady stream of new
	 * appends (or more generations than max_batch) could take every row
	 * and starve an older job indefinitely.
	 */
	for (t = d->tasks; t; t = t->next)
		if (!job_done(t->job))
			n++;
	i = n;
	for (t = d->tasks; t; t = t->next)
		if (!job_done(t->job))
			jobs[--i] = t->job;
	if (n) {
		rc = engine_step(d->eng, jobs, n, d->cfg.max_batch);
		if (rc < 0)
			kvd_log(KVD_LOG_ERROR, "engine step over %" PRIu32 " jobs failed: %s",
				n, strerror(-rc));
	}
	free(jobs);
	kvd_service_finish_tasks(d);
	return true;
}

void kvd_service_finish_tasks(struct kvd_daemon *d)
{
	struct kvd_task *t;

	/* finish() may start waiting requests, which changes the list */
restart:
	for (t = d->tasks; t; t = t->next) {
		if (job_done(t->job)) {
			finish(d, t);
			goto restart;
		}
	}
}

void kvd_cancel_tasks(struct kvd_daemon *d, struct kvd_conn *c)
{
	struct kvd_segment *s;
	struct kvd_task *t;

restart:
	for (t = d->tasks; t; t = t->next) {
		if (c && t->conn != c)
			continue;
		if (!c)
			kvd_reply_error(d, t->conn, t->path, t->req->id,
					KVC_ECANCELED, "the daemon is stopping");
		else
			kvd_log(KVD_LOG_INFO, "connection %" PRIu64 " left during its %s; the job is discarded",
				c->id, t->generate ? "Generate" : "Append");
		job_finish(t->job, false, NULL, NULL);
		settle(d, t, 0);
		s = t->seg;
		task_free(d, t);
		if (c)
			kvd_run_pending(d, s);
		goto restart;
	}
}
