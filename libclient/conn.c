/* SPDX-License-Identifier: MIT */
/*
 * conn.c - libkvchain's transport: finds and connects to kvchaind's
 * control socket, says Hello, maps the two memfds it returns (the
 * connection's rings and the daemon's doorbell), then moves Requests and
 * Replies through the rings, falling back to the socket for messages too
 * big for a ring. See proto/ring.h for the rings and their wake-ups.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "client-internal.h"

#define DOORBELL_BYTES 4096
#define HELLO_REPLY_MAX 65536
#define MAX_PASSED_FDS 8	/* received at most; only the first two are kept */
#define RING_WAIT_SLICE_MS 50	/* between looks at the socket for hang-ups */
#define SOCKET_WAIT_SLICE_MS 1000
#define CLIENT_SPIN_NS 20000	/* spin on the completion ring before sleeping */

/* The daemon's message limit is a configured value; larger is hostile. */
#define SOCK_MAX_LIMIT (1u << 30)

int kvc__fail(struct kvc_conn *conn, int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(conn->err, sizeof(conn->err), fmt, ap);
	va_end(ap);
	return code;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- Finding the socket and reading the environment ------------------ */

/*
 * Chooses the socket path as kvchain.h describes. Returns 0, or
 * -ENAMETOOLONG when it does not fit sun_path.
 */
static int socket_path(const char *path, char *out, size_t outlen)
{
	const char *env = getenv("KVCHAIN_SOCKET");
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	int n;

	if (path)
		n = snprintf(out, outlen, "%s", path);
	else if (env && *env)
		n = snprintf(out, outlen, "%s", env);
	else if (geteuid() != 0 && xdg && *xdg)
		n = snprintf(out, outlen, "%s/kvchain/kvchaind.sock", xdg);
	else
		n = snprintf(out, outlen, "/run/kvchain/kvchaind.sock");
	if (n < 0 || (size_t)n >= outlen)
		return -ENAMETOOLONG;
	return 0;
}

/* Reads KVCHAIN_TIMEOUT_MS: milliseconds, at least 1. */
static int timeout_from_env(int *timeout_ms)
{
	const char *s = getenv("KVCHAIN_TIMEOUT_MS");
	char *end;
	long v;

	*timeout_ms = KVC_DEFAULT_TIMEOUT_MS;
	if (!s || !*s)
		return 0;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < 1 || v > INT_MAX)
		return -EINVAL;
	*timeout_ms = (int)v;
	return 0;
}

/*
 * Reads KVCHAIN_TRANSPORT: unset, empty or "rings" for the default, or
 * "socket" to send every request over the socket, which benchmarks use
 * to compare the two paths.
 */
static int transport_from_env(bool *socket_only)
{
	const char *s = getenv("KVCHAIN_TRANSPORT");

	*socket_only = false;
	if (!s || !*s || !strcmp(s, "rings"))
		return 0;
	if (!strcmp(s, "socket")) {
		*socket_only = true;
		return 0;
	}
	return -EINVAL;
}

/* Maps the errno of a failed socket() or connect() to a KVC_E* code. */
static int connect_error(int err)
{
	switch (err) {
	case EACCES:
	case EPERM:
		return KVC_EPERM;
	case ENOMEM:
	case ENOBUFS:
		return KVC_ENOMEM;
	case ENAMETOOLONG:
		return KVC_EINVAL;
	default:
		return KVC_EIO;
	}
}

/* ---- Hello: the socket reply and the passed descriptors -------------- */

static void close_fds(int *fds, int n)
{
	int i;

	for (i = 0; i < n; i++)
		close(fds[i]);
}

/*
 * Receives one message on the socket with up to MAX_PASSED_FDS
 * descriptors, waiting at most @timeout_ms. Returns its length, with the
 * descriptors in @fds and their count in *n_fds, or a KVC_E* code.
 */
static int recv_with_fds(struct kvc_conn *conn, void *buf, size_t cap,
			 int fds[MAX_PASSED_FDS], int *n_fds, int timeout_ms)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * MAX_PASSED_FDS)];
		struct cmsghdr align;
	} control;
	struct iovec iov = { .iov_base = buf, .iov_len = cap };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = control.buf, .msg_controllen = sizeof(control.buf),
	};
	struct pollfd pfd = { .fd = conn->fd, .events = POLLIN };
	struct cmsghdr *cm;
	ssize_t n;
	int rc;

	*n_fds = 0;
	rc = poll(&pfd, 1, timeout_ms);
	if (rc == 0)
		return kvc__fail(conn, KVC_ETIMEDOUT,
				 "no Hello reply within %d ms (KVCHAIN_TIMEOUT_MS)",
				 timeout_ms);
	if (rc < 0)
		return kvc__fail(conn, KVC_EIO, "poll on the socket failed: %s",
				 strerror(errno));
	n = recvmsg(conn->fd, &msg, MSG_CMSG_CLOEXEC);
	if (n < 0)
		return kvc__fail(conn, KVC_EIO, "receiving the Hello reply failed: %s",
				 strerror(errno));
	for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		size_t bytes;
		int k, count;

		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		bytes = cm->cmsg_len - CMSG_LEN(0);
		count = (int)(bytes / sizeof(int));
		for (k = 0; k < count && *n_fds < MAX_PASSED_FDS; k++)
			memcpy(&fds[(*n_fds)++],
			       CMSG_DATA(cm) + (size_t)k * sizeof(int),
			       sizeof(int));
	}
	if (n == 0) {
		close_fds(fds, *n_fds);
		*n_fds = 0;
		return kvc__fail(conn, KVC_EIO,
				 "the daemon closed the connection during Hello");
	}
	if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
		close_fds(fds, *n_fds);
		*n_fds = 0;
		return kvc__fail(conn, KVC_EPROTO,
				 "the Hello reply or its descriptors did not fit the receive buffer");
	}
	return (int)n;
}

/* Maps the connection region and the doorbell page the daemon passed. */
static int map_rings(struct kvc_conn *conn, int region_fd, int doorbell_fd)
{
	struct stat st;
	void *p;

	if (fstat(region_fd, &st) < 0)
		return kvc__fail(conn, KVC_EIO, "fstat on the ring region failed: %s",
				 strerror(errno));
	if (st.st_size <= 0 || (uint64_t)st.st_size > SIZE_MAX)
		return kvc__fail(conn, KVC_EPROTO, "the ring region has size %lld",
				 (long long)st.st_size);
	p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED,
		 region_fd, 0);
	if (p == MAP_FAILED)
		return kvc__fail(conn, KVC_EIO, "mapping the ring region failed: %s",
				 strerror(errno));
	conn->shm = p;
	conn->shm_size = (size_t)st.st_size;
	if (kvc_shm_attach(conn->shm, conn->shm_size, &conn->req,
			   &conn->cpl) < 0)
		return kvc__fail(conn, KVC_EPROTO,
				 "the ring region's header is not valid");

	if (fstat(doorbell_fd, &st) < 0)
		return kvc__fail(conn, KVC_EIO, "fstat on the doorbell failed: %s",
				 strerror(errno));
	if (st.st_size < DOORBELL_BYTES)
		return kvc__fail(conn, KVC_EPROTO,
				 "the doorbell has %lld bytes, expected %d",
				 (long long)st.st_size, DOORBELL_BYTES);
	p = mmap(NULL, DOORBELL_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED,
		 doorbell_fd, 0);
	if (p == MAP_FAILED)
		return kvc__fail(conn, KVC_EIO, "mapping the doorbell failed: %s",
				 strerror(errno));
	conn->doorbell = p;
	return 0;
}

/* Keeps what the daemon serves and sizes the receive buffer. */
static int take_hello(struct kvc_conn *conn, const Kvchain__HelloReply *h)
{
	size_t size;

	if (h->max_message == 0 || h->max_message > SOCK_MAX_LIMIT)
		return kvc__fail(conn, KVC_EPROTO,
				 "the daemon's max_message %u is not valid",
				 h->max_message);
	conn->sock_max = h->max_message;
	conn->info.struct_size = sizeof(conn->info);
	conn->info.protocol_version = h->version;
	conn->info.d_model = h->d_model;
	conn->info.n_vocab = h->n_vocab;
	conn->info.n_ctx = h->n_ctx;
	snprintf(conn->info.model_name, sizeof(conn->info.model_name), "%s",
		 h->model_name ? h->model_name : "");
	size = conn->sock_max;
	if (conn->cpl.max_message > size)
		size = conn->cpl.max_message;
	conn->rbuf = malloc(size);
	if (!conn->rbuf)
		return kvc__fail(conn, KVC_ENOMEM,
				 "cannot allocate a %zu-byte receive buffer", size);
	conn->rbuf_size = size;
	return 0;
}

/* Sends Hello over the socket and sets up the rings from the reply. */
static int hello(struct kvc_conn *conn, const char *client_name)
{
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__Hello body = KVCHAIN__HELLO__INIT;
	Kvchain__Reply *reply = NULL;
	int fds[MAX_PASSED_FDS];
	int n_fds = 0, rc, n;
	uint8_t *buf;
	size_t len;

	body.version = KVC_PROTOCOL_VERSION;
	body.client_name = (char *)(client_name ? client_name : "");
	req.id = conn->next_id++;
	req.body_case = KVCHAIN__REQUEST__BODY_HELLO;
	req.hello = &body;
	len = kvchain__request__get_packed_size(&req);
	buf = malloc(len > HELLO_REPLY_MAX ? len : HELLO_REPLY_MAX);
	if (!buf)
		return kvc__fail(conn, KVC_ENOMEM, "out of memory for Hello");
	kvchain__request__pack(&req, buf);
	if (send(conn->fd, buf, len, MSG_NOSIGNAL) != (ssize_t)len) {
		int err = errno;

		/*
		 * A daemon that rejects this peer sends its reason and closes
		 * at once, often before our Hello arrives: read the reason.
		 * Linux reports the reset on the first receive and the queued
		 * reply on the next, so try twice.
		 */
		n = recv_with_fds(conn, buf, HELLO_REPLY_MAX, fds, &n_fds, 100);
		if (n < 0)
			n = recv_with_fds(conn, buf, HELLO_REPLY_MAX, fds,
					  &n_fds, 100);
		reply = n > 0 ? kvchain__reply__unpack(NULL, (size_t)n, buf) : NULL;
		if (reply && reply->error < 0) {
			rc = kvc__reply_error(conn, reply);
			goto out_free_reply;
		}
		rc = kvc__fail(conn, KVC_EIO, "sending Hello failed: %s",
			       strerror(err));
		goto out_free_reply;
	}

	n = recv_with_fds(conn, buf, HELLO_REPLY_MAX, fds, &n_fds,
			  conn->timeout_ms);
	if (n == KVC_EIO)	/* a reset may come before a queued reply */
		n = recv_with_fds(conn, buf, HELLO_REPLY_MAX, fds, &n_fds, 100);
	if (n < 0) {
		rc = n;
		goto out_free_buf;
	}
	reply = kvchain__reply__unpack(NULL, (size_t)n, buf);
	if (!reply) {
		rc = kvc__fail(conn, KVC_EPROTO, "the Hello reply does not decode");
		goto out_close_fds;
	}
	rc = kvc__reply_error(conn, reply);
	if (rc < 0)
		goto out_free_reply;
	if (reply->id != req.id || reply->body_case != KVCHAIN__REPLY__BODY_HELLO) {
		rc = kvc__fail(conn, KVC_EPROTO,
			       "the daemon answered Hello with another message");
		goto out_free_reply;
	}
	if (reply->hello->version != KVC_PROTOCOL_VERSION) {
		rc = kvc__fail(conn, KVC_EVERSION,
			       "the daemon speaks protocol %u, this library %d",
			       reply->hello->version, KVC_PROTOCOL_VERSION);
		goto out_free_reply;
	}
	if (n_fds < 2) {
		rc = kvc__fail(conn, KVC_EPROTO,
			       "the Hello reply passed %d descriptors, expected 2",
			       n_fds);
		goto out_free_reply;
	}
	rc = map_rings(conn, fds[0], fds[1]);
	if (rc == 0)
		rc = take_hello(conn, reply->hello);

out_free_reply:
	kvchain__reply__free_unpacked(reply, NULL);
out_close_fds:
	/* the mappings keep the memfds alive; extra descriptors are unwanted */
	close_fds(fds, n_fds);
out_free_buf:
	free(buf);
	return rc;
}

/* ---- Connection lifetime ---------------------------------------------- */

static void conn_free(struct kvc_conn *conn)
{
	if (conn->doorbell)
		munmap(conn->doorbell, DOORBELL_BYTES);
	if (conn->shm)
		munmap(conn->shm, conn->shm_size);
	if (conn->fd >= 0)
		close(conn->fd);
	free(conn->rbuf);
	pthread_mutex_destroy(&conn->lock);
	free(conn);
}

/*
 * On failure *out is NULL and, since no connection is left to hold a
 * message, errno says what failed: the connect() error (ENOENT for a
 * missing socket, ECONNREFUSED when no daemon listens), EINVAL for a bad
 * KVCHAIN_TIMEOUT_MS or KVCHAIN_TRANSPORT, or EPROTO when Hello went wrong.
 * NOTE: the daemon's message for a rejected Hello is lost with the
 * connection; only its code comes back.
 */
KVC_API int kvc_connect(const char *path, const char *client_name,
			kvc_conn **out)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct kvc_conn *conn;
	struct timeval tv;
	int rc, err;

	if (!out) {
		errno = EINVAL;
		return KVC_EINVAL;
	}
	*out = NULL;
	conn = calloc(1, sizeof(*conn));
	if (!conn) {
		errno = ENOMEM;
		return KVC_ENOMEM;
	}
	conn->fd = -1;
	conn->next_id = 1;
	if (pthread_mutex_init(&conn->lock, NULL) != 0) {
		free(conn);
		errno = ENOMEM;
		return KVC_ENOMEM;
	}
	if (timeout_from_env(&conn->timeout_ms) < 0 ||
	    transport_from_env(&conn->socket_only) < 0) {
		err = EINVAL;
		rc = KVC_EINVAL;
		goto out_free;
	}
	if (socket_path(path, addr.sun_path, sizeof(addr.sun_path)) < 0) {
		err = ENAMETOOLONG;
		rc = KVC_EINVAL;
		goto out_free;
	}
	conn->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (conn->fd < 0 ||
	    connect(conn->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		err = errno;
		rc = connect_error(err);
		goto out_free;
	}
	/* a daemon that stops reading must not block a send forever */
	tv.tv_sec = conn->timeout_ms / 1000;
	tv.tv_usec = (conn->timeout_ms % 1000) * 1000;
	setsockopt(conn->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));

	rc = hello(conn, client_name);
	if (rc < 0) {
		err = rc == KVC_ENOMEM ? ENOMEM : rc == KVC_ETIMEDOUT ?
			ETIMEDOUT : rc == KVC_EPERM ? EPERM :
			rc == KVC_EIO ? ECONNRESET : EPROTO;
		goto out_free;
	}
	*out = conn;
	return 0;

out_free:
	conn_free(conn);
	errno = err;
	return rc;
}

KVC_API void kvc_disconnect(kvc_conn *conn)
{
	if (conn)
		conn_free(conn);
}

/* NOTE: not under the lock, so a call on another thread may overwrite the
 * message while the caller reads it. */
KVC_API const char *kvc_last_error(const kvc_conn *conn)
{
	return conn ? conn->err : "";
}

KVC_API int kvc_server_info(const kvc_conn *conn, struct kvc_server_info *info)
{
	size_t size;

	if (!conn || !info || info->struct_size < 2 * sizeof(uint32_t))
		return KVC_EINVAL;
	/* fixed after Hello, so no lock is needed */
	size = info->struct_size < sizeof(*info) ? info->struct_size :
						   sizeof(*info);
	memcpy((uint8_t *)info + sizeof(uint32_t),
	       (const uint8_t *)&conn->info + sizeof(uint32_t),
	       size - sizeof(uint32_t));
	return 0;
}

/* ---- Sending ----------------------------------------------------------- */

/* Wakes the daemon if it sleeps on the doorbell. */
static void ring_doorbell(struct kvc_conn *conn)
{
	/* kvc_ring_consumer_sleeping fences, so our published head is
	 * visible before we read the flag. */
	if (!kvc_ring_consumer_sleeping(&conn->req))
		return;
	/* The counter changes before the wake, so a daemon about to wait on
	 * its old value returns at once. */
	atomic_fetch_add_explicit(&conn->doorbell->counter, 1,
				  memory_order_release);
	kvc_futex_wake(&conn->doorbell->counter);
}

/*
 * Looks at the socket without blocking. Returns 0 when nothing is there,
 * the length of a message now in conn->rbuf, or KVC_EIO / KVC_EPROTO.
 */
static int poll_socket(struct kvc_conn *conn, int timeout_ms)
{
	struct pollfd pfd = { .fd = conn->fd, .events = POLLIN };
	ssize_t n;
	int rc;

	rc = poll(&pfd, 1, timeout_ms);
	if (rc < 0 && errno != EINTR)
		return kvc__fail(conn, KVC_EIO, "poll on the socket failed: %s",
				 strerror(errno));
	if (rc <= 0)
		return 0;
	n = recv(conn->fd, conn->rbuf, conn->rbuf_size,
		 MSG_DONTWAIT | MSG_TRUNC);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	if (n < 0)
		return kvc__fail(conn, KVC_EIO, "the connection failed: %s",
				 strerror(errno));
	if (n == 0)
		return kvc__fail(conn, KVC_EIO,
				 "the daemon closed the connection");
	if ((size_t)n > conn->rbuf_size)
		return kvc__fail(conn, KVC_EPROTO,
				 "a %zd-byte reply exceeds the daemon's own limit of %zu",
				 n, conn->rbuf_size);
	return (int)n;
}

/* Writes @len bytes into the request ring, waiting while it is full. */
static int send_ring(struct kvc_conn *conn, const uint8_t *buf, uint32_t len)
{
	uint64_t deadline = now_ms() + (uint64_t)conn->timeout_ms;
	struct timespec pause = { .tv_nsec = 100000 };
	int rc;

	for (;;) {
		rc = kvc_ring_write(&conn->req, buf, len);
		if (rc == 0) {
			ring_doorbell(conn);
			return 0;
		}
		if (rc == -EPROTO)
			return kvc__fail(conn, KVC_EPROTO,
					 "the daemon corrupted the request ring's tail");
		if (rc != -EAGAIN)
			return rc;
		/* full: make sure the daemon is draining it, then retry */
		ring_doorbell(conn);
		if (now_ms() >= deadline)
			return kvc__fail(conn, KVC_ETIMEDOUT,
					 "the request ring stayed full for %d ms (KVCHAIN_TIMEOUT_MS)",
					 conn->timeout_ms);
		rc = poll_socket(conn, 0);
		if (rc < 0)
			return rc;
		nanosleep(&pause, NULL);
	}
}

/* Sends @len bytes as one socket message. */
static int send_socket(struct kvc_conn *conn, const uint8_t *buf, size_t len)
{
	int size;
	ssize_t n;

	n = send(conn->fd, buf, len, MSG_NOSIGNAL);
	if (n < 0 && errno == EMSGSIZE && len < INT_MAX - 65536) {
		/* a datagram must fit the send buffer whole */
		size = (int)len + 65536;
		setsockopt(conn->fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
		n = send(conn->fd, buf, len, MSG_NOSIGNAL);
	}
	if (n == (ssize_t)len)
		return 0;
	if (n >= 0)
		return kvc__fail(conn, KVC_EIO, "the socket took %zd of %zu bytes",
				 n, len);
	if (errno == EMSGSIZE)
		return kvc__fail(conn, KVC_ETOOBIG,
				 "a %zu-byte message exceeds the socket's send buffer (raise net.core.wmem_max)",
				 len);
	if (errno == EAGAIN || errno == EWOULDBLOCK)
		return kvc__fail(conn, KVC_ETIMEDOUT,
				 "the daemon did not take a %zu-byte message within %d ms",
				 len, conn->timeout_ms);
	return kvc__fail(conn, KVC_EIO, "sending to the daemon failed: %s",
			 strerror(errno));
}

int kvc__send(struct kvc_conn *conn, Kvchain__Request *req, bool *via_socket)
{
	uint8_t *buf;
	size_t len;
	int rc;

	if (conn->broken)
		return kvc__fail(conn, KVC_EIO,
				 "the connection failed earlier; connect again");
	req->id = conn->next_id++;
	len = kvchain__request__get_packed_size(req);
	if (len > conn->sock_max && len > conn->req.max_message)
		return kvc__fail(conn, KVC_ETOOBIG,
				 "the request has %zu bytes, the daemon accepts at most %u",
				 len, conn->sock_max);
	buf = malloc(len ? len : 1);
	if (!buf)
		return kvc__fail(conn, KVC_ENOMEM,
				 "cannot allocate %zu bytes for a request", len);
	kvchain__request__pack(req, buf);
	*via_socket = false;
	rc = -EMSGSIZE;
	if (len <= conn->req.max_message && !conn->socket_only)
		rc = send_ring(conn, buf, (uint32_t)len);
	if (rc == -EMSGSIZE) {
		*via_socket = true;
		rc = send_socket(conn, buf, len);
	}
	free(buf);
	if (rc == KVC_EIO || rc == KVC_EPROTO)
		conn->broken = true;
	return rc;
}

/* ---- Receiving --------------------------------------------------------- */

/*
 * Takes the next message from the completion ring or the socket, waiting
 * up to @wait_ms. Returns its length in conn->rbuf, 0 when none came, or
 * a KVC_E* code.
 */
static int next_message(struct kvc_conn *conn, bool via_socket, int wait_ms)
{
	bool spun = false;
	int n;

again:
	n = kvc_ring_read(&conn->cpl, conn->rbuf);
	if (n < 0)
		return kvc__fail(conn, KVC_EPROTO,
				 "the daemon wrote an invalid length into the completion ring");
	if (n > 0)
		return n;
	/* a reply that is microseconds away needs no system call */
	if (!via_socket && !spun) {
		spun = true;
		if (kvc_ring_spin(&conn->cpl, CLIENT_SPIN_NS))
			goto again;
	}
	/* also notices a hang-up, so a dead daemon is not waited for */
	n = poll_socket(conn, 0);
	if (n != 0)
		return n;
	if (via_socket)
		return poll_socket(conn, wait_ms);
	kvc_ring_wait(&conn->cpl, wait_ms);
	return 0;
}

int kvc__receive(struct kvc_conn *conn, uint64_t id, bool via_socket,
		 Kvchain__Reply **out)
{
	uint64_t deadline = now_ms() + (uint64_t)conn->timeout_ms;
	Kvchain__Reply *reply;
	uint64_t now;
	int n, slice;

	*out = NULL;
	if (conn->broken)
		return kvc__fail(conn, KVC_EIO,
				 "the connection failed earlier; connect again");
	for (;;) {
		now = now_ms();
		if (now >= deadline)
			return kvc__fail(conn, KVC_ETIMEDOUT,
					 "no reply from the daemon within %d ms (KVCHAIN_TIMEOUT_MS)",
					 conn->timeout_ms);
		slice = via_socket ? SOCKET_WAIT_SLICE_MS : RING_WAIT_SLICE_MS;
		if (deadline - now < (uint64_t)slice)
			slice = (int)(deadline - now);
		n = next_message(conn, via_socket, slice);
		if (n < 0) {
			conn->broken = true;
			return n;
		}
		if (n == 0)
			continue;
		reply = kvchain__reply__unpack(NULL, (size_t)n, conn->rbuf);
		if (!reply) {
			conn->broken = true;
			return kvc__fail(conn, KVC_EPROTO,
					 "a %d-byte reply does not decode", n);
		}
		if (reply->id == id) {
			*out = reply;
			return 0;
		}
		/* a late answer to a call that timed out */
		kvchain__reply__free_unpacked(reply, NULL);
	}
}

int kvc__reply_error(struct kvc_conn *conn, const Kvchain__Reply *reply)
{
	const char *msg = reply->message ? reply->message : "";

	if (reply->error == 0)
		return 0;
	if (reply->error > 0)
		return kvc__fail(conn, KVC_EPROTO,
				 "the daemon sent the positive error code %d: %s",
				 (int)reply->error, msg);
	return kvc__fail(conn, reply->error, "%s",
			 *msg ? msg : kvc_strerror(reply->error));
}

int kvc__call(struct kvc_conn *conn, Kvchain__Request *req,
	      Kvchain__Reply__BodyCase expected, Kvchain__Reply **out)
{
	Kvchain__Reply *reply;
	bool via_socket;
	int rc;

	*out = NULL;
	rc = kvc__send(conn, req, &via_socket);
	if (rc < 0)
		return rc;
	rc = kvc__receive(conn, req->id, via_socket, &reply);
	if (rc < 0)
		return rc;
	rc = kvc__reply_error(conn, reply);
	if (rc == 0 && expected != KVCHAIN__REPLY__BODY__NOT_SET &&
	    reply->body_case != expected)
		rc = kvc__fail(conn, KVC_EPROTO,
			       "the daemon answered with body %d, expected %d",
			       (int)reply->body_case, (int)expected);
	if (rc < 0) {
		kvchain__reply__free_unpacked(reply, NULL);
		return rc;
	}
	*out = reply;
	return 0;
}
