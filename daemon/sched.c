/* SPDX-License-Identifier: MIT */
/*
 * sched.c - the scheduler thread, the only one that touches the engine.
 * Each round drains the queue the loop thread fills (accepts, socket
 * messages, hang-ups) and every connection's request ring. It then runs one
 * engine step over all open jobs, flushes reply backlogs and expires idle
 * segments. With nothing to do it sleeps on the doorbell futex.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon.h"
#include "log.h"
#include "service.h"

#define SCHED_IDLE_WAIT_MS 100	/* longest sleep, for TTL housekeeping */
#define SCHED_RING_BATCH 64	/* ring messages taken per connection per round */
#define HOUSEKEEPING_MS 100
#define SCHED_SPIN_NS 20000	/* spin before sleeping when idle */

uint64_t kvd_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void kvd_sched_post(struct kvd_daemon *d, struct kvd_item *item)
{
	item->next = NULL;
	pthread_mutex_lock(&d->queue_lock);
	if (d->queue_tail)
		d->queue_tail->next = item;
	else
		d->queue = item;
	d->queue_tail = item;
	pthread_mutex_unlock(&d->queue_lock);
	/* The scheduler reads the counter before it looks for work, so this
	 * bump either shows in its look or makes its futex wait return. */
	atomic_fetch_add(&d->doorbell->counter, 1);
	kvc_futex_wake(&d->doorbell->counter);
}

static struct kvd_item *take_queue(struct kvd_daemon *d)
{
	struct kvd_item *items;

	pthread_mutex_lock(&d->queue_lock);
	items = d->queue;
	d->queue = d->queue_tail = NULL;
	pthread_mutex_unlock(&d->queue_lock);
	return items;
}

/* Unpacks and handles one message from @c; @data may be the scratch. */
static void handle_message(struct kvd_daemon *d, struct kvd_conn *c,
			   enum kvd_path path, const uint8_t *data,
			   size_t len)
{
	Kvchain__Request *req;

	req = kvchain__request__unpack(NULL, len, data);
	if (!req) {
		/* the first few, then one line per 1000, so a peer cannot
		 * flood the log */
		c->n_invalid++;
		if (c->n_invalid <= 3 || c->n_invalid % 1000 == 0)
			kvd_log(KVD_LOG_WARN, "connection %" PRIu64 " sent a message that is not a valid Request (%zu bytes; %" PRIu32 " so far)",
				c->id, len, c->n_invalid);
		kvd_reply_error(d, c, path, 0, KVC_EPROTO,
				"the message is not a valid Request");
		return;
	}
	if (req->body_case == KVCHAIN__REQUEST__BODY_HELLO &&
	    path == KVD_PATH_SOCKET) {
		kvd_conn_hello(d, c, req);
		kvchain__request__free_unpacked(req, NULL);
		return;
	}
	if (!c->hello_done) {
		c->n_invalid++;
		if (c->n_invalid <= 3 || c->n_invalid % 1000 == 0)
			kvd_log(KVD_LOG_WARN, "connection %" PRIu64 " sent a request before Hello (%" PRIu32 " invalid messages so far)",
				c->id, c->n_invalid);
		kvd_reply_error(d, c, path, req->id, KVC_EPROTO,
				"Hello must come first");
		kvchain__request__free_unpacked(req, NULL);
		return;
	}
	kvd_service_request(d, c, path, req);
}

static void add_conn(struct kvd_daemon *d, struct kvd_conn *c)
{
	c->next = d->conns;
	if (d->conns)
		d->conns->prev = c;
	d->conns = c;
	atomic_fetch_add(&d->n_conns, 1);
}

static void remove_conn(struct kvd_daemon *d, struct kvd_conn *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		d->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	atomic_fetch_sub(&d->n_conns, 1);
	kvd_conn_free(d, c);
}

static void handle_item(struct kvd_daemon *d, struct kvd_item *it)
{
	struct kvd_conn *c = it->conn;

	switch (it->kind) {
	case KVD_ITEM_ACCEPT:
		add_conn(d, c);
		break;
	case KVD_ITEM_MESSAGE:
		atomic_fetch_sub(&c->queued, 1);
		if (c->dead)
			break;
		if (it->full_len > it->len) {
			kvd_log(KVD_LOG_WARN, "connection %" PRIu64 " sent %zu bytes, above the limit of %zu",
				c->id, it->full_len, kvd_max_message(d));
			kvd_reply_error(d, c, KVD_PATH_SOCKET, 0, KVC_ETOOBIG,
					"a message of %zu bytes exceeds the limit of %zu (max_message_kib)",
					it->full_len, kvd_max_message(d));
			break;
		}
		handle_message(d, c, KVD_PATH_SOCKET, it->data, it->len);
		break;
	case KVD_ITEM_CLOSE:
		remove_conn(d, c);
		break;
	}
}

/* Handles the loop thread's items; returns true if there were any. */
static bool drain_queue(struct kvd_daemon *d)
{
	struct kvd_item *it, *next;

	it = take_queue(d);
	if (!it)
		return false;
	for (; it; it = next) {
		next = it->next;
		handle_item(d, it);
		free(it);
	}
	return true;
}

/* Reads up to a batch of requests from each connection's ring. */
static bool drain_rings(struct kvd_daemon *d)
{
	struct kvd_conn *c;
	bool any = false;
	int i, len;

	for (c = d->conns; c; c = c->next) {
		if (!c->hello_done || c->dead)
			continue;
		for (i = 0; i < SCHED_RING_BATCH; i++) {
			len = kvc_ring_read(&c->req, d->scratch);
			if (len == 0)
				break;
			any = true;
			if (len < 0) {
				kvd_conn_kill(d, c, "its request ring is corrupted");
				break;
			}
			handle_message(d, c, KVD_PATH_RING, d->scratch,
				       (size_t)len);
			if (c->dead)
				break;
		}
	}
	return any;
}

static bool flush_backlogs(struct kvd_daemon *d)
{
	struct kvd_conn *c;
	bool pending = false;

	for (c = d->conns; c; c = c->next)
		if (c->backlog && kvd_flush_backlog(d, c))
			pending = true;
	return pending;
}

static void set_sleeping(struct kvd_daemon *d, uint32_t value)
{
	struct kvd_conn *c;

	for (c = d->conns; c; c = c->next)
		if (c->hello_done && !c->dead)
			atomic_store_explicit(&c->req.ctl->sleeping, value,
					      memory_order_relaxed);
}

static bool rings_pending(const struct kvd_daemon *d)
{
	const struct kvd_conn *c;

	for (c = d->conns; c; c = c->next)
		if (c->hello_done && !c->dead && kvc_ring_pending(&c->req))
			return true;
	return false;
}

/*
 * Sleeps until a client or the loop thread rings the doorbell, or the
 * timeout passes. A client checks its ring's `sleeping` flag after it
 * publishes, so the flags go up before the last look for work.
 */
static void sleep_on_doorbell(struct kvd_daemon *d, int timeout_ms)
{
	uint32_t seen = atomic_load(&d->doorbell->counter);
	uint64_t start = kvc_now_ns();
	bool work;

	/*
	 * Spin a little first: a client that sends its next request within
	 * SCHED_SPIN_NS is served without the futex sleep and its wake-up,
	 * which cost more than the request itself.
	 */
	while (kvc_now_ns() - start < SCHED_SPIN_NS) {
		if (rings_pending(d) ||
		    atomic_load(&d->doorbell->counter) != seen)
			return;
		kvc_cpu_relax();
	}

	set_sleeping(d, 1);
	atomic_thread_fence(memory_order_seq_cst);
	pthread_mutex_lock(&d->queue_lock);
	work = d->queue != NULL;
	pthread_mutex_unlock(&d->queue_lock);
	if (!work && !rings_pending(d) && !atomic_load(&d->stopping))
		kvc_futex_wait(&d->doorbell->counter, seen, timeout_ms);
	set_sleeping(d, 0);
}

static void *sched_main(void *arg)
{
	struct kvd_daemon *d = arg;
	bool busy, backlog;
	uint64_t now;

	while (!atomic_load(&d->stopping)) {
		busy = drain_queue(d);
		busy |= drain_rings(d);
		busy |= kvd_step_tasks(d);
		backlog = flush_backlogs(d);
		now = kvd_now_ms();
		if (now - d->last_housekeeping_ms >= HOUSEKEEPING_MS) {
			kvd_service_housekeeping(d);
			d->last_housekeeping_ms = now;
		}
		/* NOTE: a client that stops reading its completion ring is
		 * polled every millisecond until its backlog overflows. A
		 * wake-up from the client after it reads would avoid that. */
		if (!busy)
			sleep_on_doorbell(d, backlog ? 1 : SCHED_IDLE_WAIT_MS);
	}
	/* Shutdown: the loop has stopped; handle what it had posted. */
	drain_queue(d);
	kvd_service_shutdown(d);
	while (d->conns)
		remove_conn(d, d->conns);
	return NULL;
}

int kvd_sched_start(struct kvd_daemon *d)
{
	d->scratch = malloc(kvd_max_message(d));
	if (!d->scratch)
		return -ENOMEM;
	return -pthread_create(&d->sched_thread, NULL, sched_main, d);
}

void kvd_sched_stop(struct kvd_daemon *d)
{
	atomic_store(&d->stopping, true);
	atomic_fetch_add(&d->doorbell->counter, 1);
	kvc_futex_wake(&d->doorbell->counter);
	pthread_join(d->sched_thread, NULL);
	free(d->scratch);
	d->scratch = NULL;
}
