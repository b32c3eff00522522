/* SPDX-License-Identifier: MIT */
/*
 * conn.c - the control socket and the connection life cycle. It listens,
 * checks peer credentials at accept, and provides the loop thread's
 * handlers that post items to the scheduler. It answers Hello with two
 * memfds (SCM_RIGHTS) and sends replies the way their request came, with
 * a bounded backlog for a client that reads too slowly.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon.h"
#include "log.h"
#include "loop.h"
#include "model.h"

/* ==== Listening ======================================================= */

/* Creates the socket's folder (0750) when it does not exist. */
static int make_socket_dir(const char *path, char *err, size_t errlen)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char *slash;
	int rc;

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return 0;
	*slash = '\0';
	if (mkdir(dir, 0750) && errno != EEXIST) {
		rc = -errno;
		snprintf(err, errlen, "cannot create the socket folder %s: %s",
			 dir, strerror(-rc));
		return rc;
	}
	return 0;
}

/* Removes a socket file left by a daemon that died; refuses a live one. */
static int clear_stale_socket(const struct sockaddr_un *addr, char *err,
			      size_t errlen)
{
	struct stat st;
	int fd, rc;

	if (lstat(addr->sun_path, &st))
		return 0;
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(err, errlen, "%s exists and is not a socket",
			 addr->sun_path);
		return -EEXIST;
	}
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	rc = connect(fd, (const struct sockaddr *)addr, sizeof(*addr));
	close(fd);
	if (rc == 0) {
		snprintf(err, errlen, "another kvchaind is serving %s",
			 addr->sun_path);
		return -EADDRINUSE;
	}
	unlink(addr->sun_path);
	return 0;
}

int kvd_listen(struct kvd_daemon *d, char *err, size_t errlen)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int fd, rc;

	if (strlen(d->socket_path) >= sizeof(addr.sun_path)) {
		snprintf(err, errlen, "socket path %s is longer than %zu bytes",
			 d->socket_path, sizeof(addr.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	strcpy(addr.sun_path, d->socket_path);
	rc = make_socket_dir(d->socket_path, err, errlen);
	if (rc)
		return rc;
	rc = clear_stale_socket(&addr, err, errlen);
	if (rc)
		return rc;
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		rc = -errno;
		snprintf(err, errlen, "socket failed: %s", strerror(-rc));
		return rc;
	}
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr))) {
		rc = -errno;
		snprintf(err, errlen, "cannot bind %s: %s", d->socket_path,
			 strerror(-rc));
		goto out_close;
	}
	if (chmod(d->socket_path, 0660) || listen(fd, SOMAXCONN)) {
		rc = -errno;
		snprintf(err, errlen, "cannot listen on %s: %s", d->socket_path,
			 strerror(-rc));
		unlink(d->socket_path);
		goto out_close;
	}
	d->listen_fd = fd;
	return 0;

out_close:
	close(fd);
	return rc;
}

/* ==== Loop-thread handlers ============================================ */

static struct kvd_item *item_new(enum kvd_item_kind kind, struct kvd_conn *c,
				 size_t len)
{
	struct kvd_item *it = malloc(sizeof(*it) + len);

	if (!it)
		return NULL;
	memset(it, 0, sizeof(*it));
	it->kind = kind;
	it->conn = c;
	it->len = len;
	return it;
}

/* Tells a refused peer why, then closes it. */
static void reject_peer(int fd, const struct ucred *cred)
{
	Kvchain__Reply reply = KVCHAIN__REPLY__INIT;
	uint8_t buf[256];
	size_t len;

	reply.error = KVC_EPERM;
	reply.message = "this user is not allowed by the daemon's allow_uids and allow_gids";
	len = kvchain__reply__get_packed_size(&reply);
	if (len <= sizeof(buf)) {
		kvchain__reply__pack(&reply, buf);
		if (send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
			kvd_log(KVD_LOG_DEBUG, "cannot tell refused pid %d why: %m",
				(int)cred->pid);
	}
	close(fd);
}

void kvd_on_accept(void *arg, int fd)
{
	struct kvd_daemon *d = arg;
	struct ucred cred;
	socklen_t len = sizeof(cred);
	struct kvd_conn *c;
	struct kvd_item *it;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len)) {
		kvd_log(KVD_LOG_WARN, "SO_PEERCRED failed, closing the connection: %m");
		close(fd);
		return;
	}
	if (!kvd_config_allows(&d->cfg, d->self_uid, cred.uid, cred.gid)) {
		kvd_log(KVD_LOG_WARN, "connection refused: uid %u gid %u pid %d is not allowed",
			(unsigned)cred.uid, (unsigned)cred.gid, (int)cred.pid);
		reject_peer(fd, &cred);
		return;
	}
	c = calloc(1, sizeof(*c));
	it = item_new(KVD_ITEM_ACCEPT, c, 0);
	if (!c || !it) {
		kvd_log(KVD_LOG_ERROR, "out of memory accepting pid %d",
			(int)cred.pid);
		free(c);
		free(it);
		close(fd);
		return;
	}
	c->fd = fd;
	c->id = atomic_fetch_add(&d->next_conn_id, 1);
	c->pid = cred.pid;
	c->uid = cred.uid;
	c->gid = cred.gid;
	kvd_log(KVD_LOG_INFO, "connection %" PRIu64 " accepted: uid %u pid %d",
		c->id, (unsigned)c->uid, (int)c->pid);
	/* ACCEPT goes first, so the scheduler has c before any message. */
	kvd_sched_post(d, it);
	if (kvd_loop_watch(d->loop, fd, c)) {
		kvd_log(KVD_LOG_ERROR, "cannot watch connection %" PRIu64,
			c->id);
		kvd_on_hangup(d, c, -ENOMEM);
	}
}

void kvd_on_message(void *arg, void *tag, const void *msg, size_t len,
		    size_t full_len)
{
	struct kvd_daemon *d = arg;
	struct kvd_conn *c = tag;
	struct kvd_item *it;

	if (atomic_load(&c->queued) >= KVD_QUEUED_MAX) {
		/* NOTE: dropping the connection is blunt; pausing its
		 * receives until the scheduler catches up would be kinder. */
		kvd_log(KVD_LOG_WARN, "connection %" PRIu64 " sent more than %d requests ahead of the scheduler; closing it",
			c->id, KVD_QUEUED_MAX);
		shutdown(c->fd, SHUT_RDWR);
		return;
	}
	it = item_new(KVD_ITEM_MESSAGE, c, len);
	if (!it) {
		kvd_log(KVD_LOG_ERROR, "out of memory queueing a request of connection %" PRIu64,
			c->id);
		shutdown(c->fd, SHUT_RDWR);
		return;
	}
	memcpy(it->data, msg, len);
	it->full_len = full_len;
	atomic_fetch_add(&c->queued, 1);
	kvd_sched_post(d, it);
}

void kvd_on_hangup(void *arg, void *tag, int err)
{
	struct kvd_daemon *d = arg;
	struct kvd_conn *c = tag;
	struct kvd_item *it;

	if (err)
		kvd_log(KVD_LOG_DEBUG, "connection %" PRIu64 " failed: %s",
			c->id, strerror(-err));
	/* NOTE: if even this small allocation fails, the connection's
	 * segments stay held until the daemon stops. */
	it = item_new(KVD_ITEM_CLOSE, c, 0);
	if (!it) {
		kvd_log(KVD_LOG_ERROR, "out of memory closing connection %" PRIu64,
			c->id);
		return;
	}
	kvd_sched_post(d, it);
}

/* ==== Hello =========================================================== */

/* Creates the connection's ring region; returns its memfd or -errno. */
static int make_rings(struct kvd_daemon *d, struct kvd_conn *c)
{
	uint32_t ring_bytes = d->cfg.ring_kib * 1024;
	size_t size = kvc_shm_size(ring_bytes);
	int fd, rc;

	fd = memfd_create("kvchain-rings", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	/* the seals keep a client from shrinking it under our mapping */
	if (ftruncate(fd, (off_t)size) ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) {
		rc = -errno;
		goto out_close;
	}
	c->shm = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (c->shm == MAP_FAILED) {
		rc = -errno;
		c->shm = NULL;
		goto out_close;
	}
	c->shm_size = size;
	kvc_shm_init(c->shm, ring_bytes, (uint32_t)kvd_max_message(d));
	/* Our views come from our own layout, before the client can touch
	 * the header. */
	if (kvc_shm_attach(c->shm, size, &c->req, &c->cpl)) {
		rc = -EPROTO;
		goto out_unmap;
	}
	return fd;

out_unmap:
	munmap(c->shm, size);
	c->shm = NULL;
out_close:
	close(fd);
	return rc;
}

static int send_with_fds(int sock, const void *buf, size_t len, int fd0,
			 int fd1)
{
	union {
		struct cmsghdr align;
		char bytes[CMSG_SPACE(2 * sizeof(int))];
	} control;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = control.bytes,
		.msg_controllen = sizeof(control.bytes),
	};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	int fds[2] = { fd0, fd1 };

	memset(&control, 0, sizeof(control));
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(cm), fds, sizeof(fds));
	if (sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		return -errno;
	return 0;
}

void kvd_conn_hello(struct kvd_daemon *d, struct kvd_conn *c,
		    const Kvchain__Request *req)
{
	const Kvchain__Hello *hello = req->hello;
	Kvchain__HelloReply hr = KVCHAIN__HELLO_REPLY__INIT;
	Kvchain__Reply reply = KVCHAIN__REPLY__INIT;
	uint8_t buf[512];
	size_t len;
	int fd, rc;

	if (c->hello_done) {
		kvd_reply_error(d, c, KVD_PATH_SOCKET, req->id, KVC_EPROTO,
				"Hello was already received on this connection");
		return;
	}
	if (hello->version != KVC_PROTOCOL_VERSION) {
		kvd_reply_error(d, c, KVD_PATH_SOCKET, req->id, KVC_EVERSION,
				"client speaks protocol version %u, the daemon speaks %d",
				hello->version, KVC_PROTOCOL_VERSION);
		return;
	}
	snprintf(c->name, sizeof(c->name), "%s",
		 hello->client_name ? hello->client_name : "");
	fd = make_rings(d, c);
	if (fd < 0) {
		kvd_log(KVD_LOG_ERROR, "cannot create the rings of connection %" PRIu64 ": %s",
			c->id, strerror(-fd));
		kvd_reply_error(d, c, KVD_PATH_SOCKET, req->id, KVC_ENOMEM,
				"cannot create the shared rings: %s",
				strerror(-fd));
		return;
	}

	hr.version = KVC_PROTOCOL_VERSION;
	hr.model_name = d->model_name;
	hr.d_model = d->model->cfg.d_model;
	hr.n_vocab = d->model->cfg.n_vocab;
	hr.n_ctx = d->n_ctx;
	hr.max_message = (uint32_t)kvd_max_message(d);
	hr.ring_bytes = d->cfg.ring_kib * 1024;
	reply.id = req->id;
	reply.body_case = KVCHAIN__REPLY__BODY_HELLO;
	reply.hello = &hr;
	len = kvchain__reply__get_packed_size(&reply);
	if (len > sizeof(buf)) {
		rc = -EMSGSIZE;
	} else {
		kvchain__reply__pack(&reply, buf);
		rc = send_with_fds(c->fd, buf, len, fd, d->doorbell_fd);
	}
	close(fd);
	if (rc) {
		kvd_conn_kill(d, c, "cannot send the Hello reply");
		return;
	}
	c->hello_done = true;
	kvd_log(KVD_LOG_INFO, "connection %" PRIu64 " said Hello as '%s' (uid %u pid %d)",
		c->id, c->name, (unsigned)c->uid, (int)c->pid);
}

/* ==== Replies ========================================================= */

/* Writes one packed reply now. Returns 0, -EAGAIN when full, or -errno. */
static int send_now(struct kvd_conn *c, enum kvd_path path,
		    const void *buf, size_t len)
{
	int rc;

	if (path == KVD_PATH_RING) {
		rc = kvc_ring_write(&c->cpl, buf, (uint32_t)len);
		if (rc == 0)
			kvc_ring_wake(&c->cpl);
		return rc;
	}
	if (send(c->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		return errno == EWOULDBLOCK ? -EAGAIN : -errno;
	return 0;
}

static void queue_reply(struct kvd_daemon *d, struct kvd_conn *c,
			enum kvd_path path, const void *buf, size_t len)
{
	struct kvd_outmsg *m;

	if (c->n_backlog >= KVD_BACKLOG_MAX) {
		kvd_conn_kill(d, c, "its reply backlog overflowed");
		return;
	}
	m = malloc(sizeof(*m) + len);
	if (!m) {
		kvd_conn_kill(d, c, "out of memory for its reply backlog");
		return;
	}
	m->next = NULL;
	m->path = path;
	m->len = len;
	memcpy(m->data, buf, len);
	if (c->backlog_tail)
		c->backlog_tail->next = m;
	else
		c->backlog = m;
	c->backlog_tail = m;
	c->n_backlog++;
}

void kvd_reply(struct kvd_daemon *d, struct kvd_conn *c, enum kvd_path path,
	       Kvchain__Reply *reply)
{
	uint8_t stack[1024], *buf = stack;
	size_t len;
	int rc;

	if (!c || c->dead)
		return;
	len = kvchain__reply__get_packed_size(reply);
	if (len > kvd_max_message(d)) {
		kvd_log(KVD_LOG_ERROR, "reply of %zu bytes to connection %" PRIu64 " exceeds max_message_kib; sending an error instead",
			len, c->id);
		kvd_reply_error(d, c, path, reply->id, KVC_ETOOBIG,
				"the reply would exceed the message size limit of %zu bytes",
				kvd_max_message(d));
		return;
	}
	if (len > sizeof(stack)) {
		buf = malloc(len);
		if (!buf) {
			kvd_conn_kill(d, c, "out of memory packing a reply");
			return;
		}
	}
	kvchain__reply__pack(reply, buf);
	/* Replies leave in order: behind a backlog, a reply waits too. */
	rc = c->backlog ? -EAGAIN : send_now(c, path, buf, len);
	if (rc == -EAGAIN)
		queue_reply(d, c, path, buf, len);
	else if (rc == -EPROTO)
		kvd_conn_kill(d, c, "its completion ring is corrupted");
	else if (rc)
		kvd_conn_kill(d, c, "a reply could not be sent");
	if (buf != stack)
		free(buf);
}

void kvd_reply_error(struct kvd_daemon *d, struct kvd_conn *c,
		     enum kvd_path path, uint64_t id, int code,
		     const char *fmt, ...)
{
	Kvchain__Reply reply = KVCHAIN__REPLY__INIT;
	char message[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	kvd_log(KVD_LOG_DEBUG, "connection %" PRIu64 " request %" PRIu64 ": error %d: %s",
		c ? c->id : 0, id, code, message);
	reply.id = id;
	reply.error = code;
	reply.message = message;
	kvd_reply(d, c, path, &reply);
}

bool kvd_flush_backlog(struct kvd_daemon *d, struct kvd_conn *c)
{
	struct kvd_outmsg *m;
	int rc;

	while ((m = c->backlog) && !c->dead) {
		rc = send_now(c, m->path, m->data, m->len);
		if (rc == -EAGAIN)
			return true;
		if (rc) {
			kvd_conn_kill(d, c, rc == -EPROTO ?
				      "its completion ring is corrupted" :
				      "a reply could not be sent");
			return false;
		}
		c->backlog = m->next;
		if (!c->backlog)
			c->backlog_tail = NULL;
		c->n_backlog--;
		free(m);
	}
	return false;
}

static void free_backlog(struct kvd_conn *c)
{
	struct kvd_outmsg *m, *next;

	for (m = c->backlog; m; m = next) {
		next = m->next;
		free(m);
	}
	c->backlog = c->backlog_tail = NULL;
	c->n_backlog = 0;
}

void kvd_conn_kill(struct kvd_daemon *d, struct kvd_conn *c, const char *why)
{
	if (c->dead)
		return;
	c->dead = true;
	kvd_log(KVD_LOG_WARN, "closing connection %" PRIu64 " (uid %u pid %d): %s",
		c->id, (unsigned)c->uid, (int)c->pid, why);
	free_backlog(c);
	/* The loop reads the end of the stream and posts CLOSE. */
	shutdown(c->fd, SHUT_RDWR);
}

void kvd_conn_free(struct kvd_daemon *d, struct kvd_conn *c)
{
	kvd_service_disconnect(d, c);
	free_backlog(c);
	if (c->shm)
		munmap(c->shm, c->shm_size);
	close(c->fd);
	kvd_log(KVD_LOG_INFO, "connection %" PRIu64 " closed (uid %u pid %d)",
		c->id, (unsigned)c->uid, (int)c->pid);
	free(c);
}
