/* SPDX-License-Identifier: MIT */
/*
 * daemon.h - kvchaind's internal state shared by its files: the daemon,
 * its connections, the queue from the loop thread to the scheduler, and
 * the service objects (prompts, chains, segments, jobs).
 *
 * Threads: the loop thread (main.c, conn.c's loop handlers) accepts and
 * receives socket messages and posts them as items. The scheduler thread
 * (sched.c, service.c, tasks.c) owns everything else, the engine included.
 * It is the only one that touches a connection after its ACCEPT item.
 */
#ifndef KVD_DAEMON_H
#define KVD_DAEMON_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "arena.h"
#include "conf.h"
#include "kvchain.h"
#include "kvchain.pb-c.h"
#include "ring.h"
#include "segment.h"

struct model;
struct kv_store;
struct engine;
struct kern_pool;
struct job;
struct stage_prompt;
struct chain;
struct segment;

#define KVD_HANDLE_BYTES 16
#define KVD_RETIRED_MAX 4096	/* handles remembered after they are gone */
#define KVD_BACKLOG_MAX 4096	/* replies queued for a slow client */
#define KVD_QUEUED_MAX 256	/* socket requests waiting per connection */
#define KVD_PROMPTS_MAX 4096	/* prompts, and chains, in the whole daemon */

/* The transport a request came on; its replies go back the same way. */
enum kvd_path {
	KVD_PATH_SOCKET,
	KVD_PATH_RING,
};

/* A packed reply waiting for room in a socket buffer or completion ring. */
struct kvd_outmsg {
	struct kvd_outmsg *next;
	enum kvd_path path;
	size_t len;
	uint8_t data[];
};

struct kvd_hold;

struct kvd_conn {
	int fd;
	uint64_t id;			/* for logs */
	pid_t pid;
	uid_t uid;
	gid_t gid;
	char name[64];			/* Hello's client_name, for logs */
	_Atomic uint32_t queued;	/* socket items not yet handled */

	/* Everything below belongs to the scheduler thread. */
	bool hello_done;
	uint32_t n_invalid;		/* messages that broke the protocol */
	bool dead;			/* shut down; input is ignored */
	void *shm;			/* (shm_size) the rings' region */
	size_t shm_size;
	struct kvc_ring req, cpl;	/* our trusted views of its rings */
	struct kvd_outmsg *backlog, *backlog_tail;
	uint32_t n_backlog;
	struct kvd_hold *holds;		/* segments this connection holds */
	uint32_t n_generations;		/* running generations it started */
	struct kvd_conn *prev, *next;
};

/* Items the loop thread posts to the scheduler. */
enum kvd_item_kind {
	KVD_ITEM_ACCEPT,
	KVD_ITEM_MESSAGE,
	KVD_ITEM_CLOSE,
};

struct kvd_item {
	struct kvd_item *next;
	enum kvd_item_kind kind;
	struct kvd_conn *conn;
	size_t len;			/* bytes in data */
	size_t full_len;		/* > len: the message was cut */
	uint8_t data[];
};

struct kvd_prompt {
	uint64_t id;
	uid_t owner;
	struct stage_prompt *prompt;
	struct kvd_prompt *next;
};

struct kvd_loop;

struct kvd_chain {
	uint64_t id;
	uid_t owner;
	struct chain *chain;
	struct kvd_chain *next;
};

/* A request waiting because an earlier one on its segment is running. */
struct kvd_pending {
	struct kvd_pending *next;
	struct kvd_conn *conn;
	enum kvd_path path;
	Kvchain__Request *req;
};

struct kvd_task;

struct kvd_segment {
	uint8_t handle[KVD_HANDLE_BYTES];
	struct segment *seg;
	uint64_t chain_id;
	uint32_t n_stages;
	uid_t owner;			/* charged for its tokens */
	uint32_t n_holders;		/* connections holding it */
	uint32_t n_tokens;		/* positions charged to the owner */
	uint64_t idle_since_ms;		/* when n_holders last became 0 */
	uint64_t last_used_ms;		/* for LRU eviction */
	struct kvd_task *task;		/* the open job, or NULL */
	struct kvd_pending *pending, *pending_tail;
	struct kvd_segment *prev, *next;
};

struct kvd_hold {
	struct kvd_segment *seg;
	struct kvd_hold *next;
};

/* An append or generation in progress: one engine job. */
struct kvd_task {
	struct job *job;
	struct kvd_daemon *d;
	struct kvd_conn *conn;		/* NULL once the requester left */
	enum kvd_path path;
	Kvchain__Request *req;		/* kept alive: params point into it */
	struct kvd_segment *seg;
	bool generate;
	uid_t uid;			/* the requester's, for quotas */
	uint32_t charged;		/* tokens charged up front */
	struct gen_params params;	/* generations only */
	struct kvd_task *prev, *next;
};

/* The reason a handle stopped working, kept for clearer errors. */
enum kvd_retired_why {
	KVD_RETIRED_RELEASED,
	KVD_RETIRED_EXPIRED,
	KVD_RETIRED_EVICTED,
};

struct kvd_retired {
	uint8_t handle[KVD_HANDLE_BYTES];
	enum kvd_retired_why why;
};

/* Usage charged to one peer uid. */
struct kvd_usage {
	uid_t uid;
	uint32_t n_segments;
	uint64_t n_tokens;
	uint32_t n_generations;
	struct kvd_usage *next;
};

struct kvd_daemon {
	struct kvd_config cfg;
	uid_t self_uid;
	const char *socket_path;
	int listen_fd;
	struct kvd_loop *loop;
	_Atomic bool stopping;

	/* the engine and what it runs on */
	struct kvd_arena arena;
	struct model *model;
	struct kv_store *store;
	struct kern_pool *pool;
	struct engine *eng;
	char model_name[64];
	uint32_t n_ctx;			/* positions per segment */

	/* the doorbell the scheduler sleeps on */
	int doorbell_fd;
	struct kvc_doorbell *doorbell;

	/* the loop thread's queue to the scheduler */
	pthread_mutex_t queue_lock;
	struct kvd_item *queue, *queue_tail;
	pthread_t sched_thread;
	_Atomic uint64_t next_conn_id;
	_Atomic uint32_t n_conns;

	/* owned by the scheduler thread */
	struct kvd_conn *conns;
	uint8_t *scratch;		/* (max_message) ring reads, packing */
	struct kvd_prompt *prompts;
	uint32_t n_prompts;
	struct kvd_chain *chains;
	uint32_t n_chains;
	uint64_t next_object_id;
	struct kvd_segment *segments;
	uint32_t n_segments;
	struct kvd_task *tasks;
	uint32_t n_tasks;
	struct kvd_retired retired[KVD_RETIRED_MAX];
	uint32_t n_retired;		/* total ever; ring index modulo max */
	struct kvd_usage *usage;
	uint64_t tokens_generated;
	uint64_t last_housekeeping_ms;
};

static inline size_t kvd_max_message(const struct kvd_daemon *d)
{
	return (size_t)d->cfg.max_message_kib * 1024;
}

uint64_t kvd_now_ms(void);

/* ---- conn.c: the control socket and the replies ---------------------- */

/* Creates, binds and listens on the socket; returns 0 or -errno + @err. */
int kvd_listen(struct kvd_daemon *d, char *err, size_t errlen);

/* Loop-thread handlers (struct kvd_loop_handler). */
void kvd_on_accept(void *arg, int fd);
void kvd_on_message(void *arg, void *tag, const void *msg, size_t len,
		    size_t full_len);
void kvd_on_hangup(void *arg, void *tag, int err);

/* Scheduler thread: handles Hello on @c. */
void kvd_conn_hello(struct kvd_daemon *d, struct kvd_conn *c,
		    const Kvchain__Request *req);

/*
 * Sends @reply to @c the way @path names, or queues it when the socket or
 * ring is full; closes the connection when its backlog overflows.
 */
void kvd_reply(struct kvd_daemon *d, struct kvd_conn *c, enum kvd_path path,
	       Kvchain__Reply *reply);

/* Sends an error reply to request @id; @code is a KVC_E* code. */
void kvd_reply_error(struct kvd_daemon *d, struct kvd_conn *c,
		     enum kvd_path path, uint64_t id, int code,
		     const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* Retries queued replies; returns true if any remain. */
bool kvd_flush_backlog(struct kvd_daemon *d, struct kvd_conn *c);

/* Shuts the connection down; its CLOSE item follows from the loop. */
void kvd_conn_kill(struct kvd_daemon *d, struct kvd_conn *c,
		   const char *why);

/* Frees the connection after its CLOSE item (scheduler thread). */
void kvd_conn_free(struct kvd_daemon *d, struct kvd_conn *c);

/* ---- service.c: requests on prompts, chains and segments ------------- */

int kvd_service_init(struct kvd_daemon *d);

/* Handles one request that came after Hello. Takes @req. */
void kvd_service_request(struct kvd_daemon *d, struct kvd_conn *c,
			 enum kvd_path path, Kvchain__Request *req);

/* Releases what @c held and cancels its jobs and waiting requests. */
void kvd_service_disconnect(struct kvd_daemon *d, struct kvd_conn *c);

/* Closes every finished task and replies. */
void kvd_service_finish_tasks(struct kvd_daemon *d);

/* Expires segments that no connection held for the TTL. */
void kvd_service_housekeeping(struct kvd_daemon *d);

/* Cancels every task and frees every object (at shutdown). */
void kvd_service_shutdown(struct kvd_daemon *d);

/* ---- sched.c: the scheduler thread ----------------------------------- */

int kvd_sched_start(struct kvd_daemon *d);
void kvd_sched_stop(struct kvd_daemon *d);

/* Loop thread: queues @item and wakes the scheduler. */
void kvd_sched_post(struct kvd_daemon *d, struct kvd_item *item);

#endif /* KVD_DAEMON_H */
