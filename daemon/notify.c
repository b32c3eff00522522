/* SPDX-License-Identifier: MIT */
/*
 * notify.c - kvchaind and its service manager (see notify.h). With
 * libsystemd the three protocol calls are sd_notify, sd_listen_fds and
 * sd_watchdog_enabled. Without it, this file speaks the same protocols
 * itself: one datagram on the AF_UNIX socket $NOTIFY_SOCKET (a leading
 * '@' names an abstract address), and descriptors from 3 on, counted by
 * $LISTEN_FDS, when $LISTEN_PID is this process.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "daemon.h"
#include "log.h"
#include "notify.h"

#define LISTEN_FDS_START 3	/* the first passed descriptor */

/* ==== The protocols ================================================== */

#ifdef HAVE_LIBSYSTEMD

static int send_state(const char *state)
{
	return sd_notify(0, state);
}

static int passed_fds(void)
{
	return sd_listen_fds(1);
}

static bool is_seqpacket_listener(int fd)
{
	return sd_is_socket_unix(fd, SOCK_SEQPACKET, 1, NULL, 0) > 0;
}

int kvd_watchdog_usec(uint64_t *usec)
{
	return sd_watchdog_enabled(0, usec) > 0;
}

#else /* !HAVE_LIBSYSTEMD */

static int send_state(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	socklen_t addr_len;
	size_t len;
	ssize_t n;
	int fd;

	if (!path || !*path)
		return 0;
	len = strlen(path);
	if ((path[0] != '/' && path[0] != '@') || len >= sizeof(addr.sun_path))
		return -EINVAL;
	memcpy(addr.sun_path, path, len);
	if (path[0] == '@')
		addr.sun_path[0] = '\0';
	addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	n = sendto(fd, state, strlen(state), MSG_NOSIGNAL,
		   (struct sockaddr *)&addr, addr_len);
	close(fd);
	return n < 0 ? -errno : 1;
}

/* Parses a decimal environment value; returns false when unset or bad. */
static bool env_u64(const char *name, uint64_t *out)
{
	const char *s = getenv(name);
	unsigned long long v;
	char *end;

	if (!s || *s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end)
		return false;
	*out = v;
	return true;
}

static int passed_fds(void)
{
	uint64_t pid, n, i;
	int rc = 0;

	if (!env_u64("LISTEN_PID", &pid) || pid != (uint64_t)getpid())
		goto out_unset;
	if (!env_u64("LISTEN_FDS", &n) || n > 64) {
		rc = -EINVAL;
		goto out_unset;
	}
	for (i = 0; i < n; i++)
		if (fcntl(LISTEN_FDS_START + (int)i, F_SETFD, FD_CLOEXEC)) {
			rc = -errno;
			goto out_unset;
		}
	rc = (int)n;
out_unset:
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	return rc;
}

static bool is_seqpacket_listener(int fd)
{
	struct sockaddr_un addr;
	socklen_t len = sizeof(addr);
	int type, listening;
	socklen_t opt_len = sizeof(int);

	if (getsockname(fd, (struct sockaddr *)&addr, &len) ||
	    addr.sun_family != AF_UNIX)
		return false;
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &opt_len) ||
	    type != SOCK_SEQPACKET)
		return false;
	opt_len = sizeof(int);
	if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &opt_len))
		return false;
	return listening != 0;
}

int kvd_watchdog_usec(uint64_t *usec)
{
	uint64_t pid, value;

	if (!env_u64("WATCHDOG_USEC", &value) || value == 0)
		return 0;
	if (env_u64("WATCHDOG_PID", &pid) && pid != (uint64_t)getpid())
		return 0;
	*usec = value;
	return 1;
}

#endif /* HAVE_LIBSYSTEMD */

int kvd_notify(const char *fmt, ...)
{
	char state[512];
	va_list ap;
	int rc;

	va_start(ap, fmt);
	vsnprintf(state, sizeof(state), fmt, ap);
	va_end(ap);
	rc = send_state(state);
	if (rc < 0)
		kvd_log(KVD_LOG_WARN, "cannot notify the service manager (NOTIFY_SOCKET): %s",
			strerror(-rc));
	return rc;
}

int kvd_take_listen_fd(int *fd, char *err, size_t errlen)
{
	int n = passed_fds();

	*fd = -1;
	if (n < 0) {
		snprintf(err, errlen, "invalid LISTEN_FDS from the service manager: %s",
			 strerror(-n));
		return -EINVAL;
	}
	if (n == 0)
		return 0;
	if (n > 1) {
		snprintf(err, errlen,
			 "the service manager passed %d sockets (expected one: set a single ListenSequentialPacket= in kvchaind.socket)",
			 n);
		return -EINVAL;
	}
	if (!is_seqpacket_listener(LISTEN_FDS_START)) {
		snprintf(err, errlen,
			 "the socket the service manager passed is not a listening AF_UNIX SOCK_SEQPACKET socket (use ListenSequentialPacket=)");
		return -EINVAL;
	}
	*fd = LISTEN_FDS_START;
	return 0;
}

/* ==== The supervisor thread ========================================== */

struct kvd_supervisor {
	struct kvd_daemon *d;
	kvd_reload_fn reload;
	void *reload_arg;
	uint64_t watchdog_usec;		/* 0: no watchdog */
	int hup_fd;			/* signalfd of SIGHUP */
	int quit_fd;			/* eventfd: stop the thread */
	int tick_fds[2];		/* [0] the thread writes, [1] the loop reads */
	pthread_t thread;
};

/*
 * Stores a setting the scheduler thread reads without a lock.
 * NOTE: the scheduler's plain loads race with this store in the C11 model.
 * The store is one aligned 32-bit atomic, so no reader sees a torn value.
 * Posting the new values to the scheduler as a queue item would remove
 * the race.
 */
static void store_live(uint32_t *field, uint32_t value)
{
	__atomic_store_n(field, value, __ATOMIC_RELAXED);
}

static void reload_u32(const char *key, uint32_t *running, uint32_t wanted)
{
	if (*running == wanted)
		return;
	kvd_log(KVD_LOG_INFO, "reload: %s is now %" PRIu32 " (was %" PRIu32 ")",
		key, wanted, *running);
	store_live(running, wanted);
}

static void needs_restart(const char *key)
{
	kvd_log(KVD_LOG_WARN, "reload: %s changed, but it takes effect only after a restart; the daemon keeps its running value",
		key);
}

static bool same_string(const char *a, const char *b)
{
	if (!a || !b)
		return a == b;
	return !strcmp(a, b);
}

static bool same_ids(const uint32_t *a, uint32_t na, const uint32_t *b,
		     uint32_t nb)
{
	return na == nb && !memcmp(a, b, na * sizeof(*a));
}

/* Applies what can change live and names every other changed key. */
static void apply_reload(struct kvd_daemon *d, const struct kvd_config *next)
{
	struct kvd_config *cur = &d->cfg;

	if (cur->log_level != next->log_level) {
		kvd_log_set_level(next->log_level);
		kvd_log(KVD_LOG_INFO, "reload: log_level changed");
		__atomic_store_n(&cur->log_level, next->log_level,
				 __ATOMIC_RELAXED);
	}
	reload_u32("segment_ttl_seconds", &cur->segment_ttl_seconds,
		   next->segment_ttl_seconds);
	reload_u32("max_segments_per_uid", &cur->max_segments_per_uid,
		   next->max_segments_per_uid);
	reload_u32("max_tokens_per_uid", &cur->max_tokens_per_uid,
		   next->max_tokens_per_uid);
	reload_u32("max_generations_per_uid", &cur->max_generations_per_uid,
		   next->max_generations_per_uid);

	if (!same_string(cur->model, next->model))
		needs_restart("model");
	if (!same_string(cur->socket, next->socket))
		needs_restart("socket");
	if (cur->arena_mib != next->arena_mib)
		needs_restart("arena_mib");
	if (cur->block_tokens != next->block_tokens)
		needs_restart("block_tokens");
	if (cur->kv_type != next->kv_type)
		needs_restart("kv_type");
	if (cur->threads != next->threads)
		needs_restart("threads");
	if (cur->max_batch != next->max_batch)
		needs_restart("max_batch");
	if (cur->n_ctx != next->n_ctx)
		needs_restart("n_ctx");
	if (cur->numa_node != next->numa_node)
		needs_restart("numa_node");
	if (cur->event_loop != next->event_loop)
		needs_restart("event_loop");
	if (cur->ring_kib != next->ring_kib)
		needs_restart("ring_kib");
	if (cur->max_message_kib != next->max_message_kib)
		needs_restart("max_message_kib");
	if (!same_ids(cur->allow_uids, cur->n_allow_uids, next->allow_uids,
		      next->n_allow_uids))
		needs_restart("allow_uids");
	if (!same_ids(cur->allow_gids, cur->n_allow_gids, next->allow_gids,
		      next->n_allow_gids))
		needs_restart("allow_gids");
}

static void reload(struct kvd_supervisor *sup)
{
	struct kvd_config next;
	int rc;

	kvd_notify("RELOADING=1\nSTATUS=reloading the settings");
	kvd_log(KVD_LOG_INFO, "SIGHUP: reloading the settings");
	kvd_config_defaults(&next);
	rc = sup->reload(&next, sup->reload_arg);
	if (rc)
		kvd_log(KVD_LOG_ERROR, "reload failed; the daemon keeps its running settings");
	else
		apply_reload(sup->d, &next);
	kvd_config_free(&next);
	kvd_notify("READY=1\nSTATUS=serving model %s on %s",
		   sup->d->model_name, sup->d->socket_path);
}

static void send_tick(struct kvd_supervisor *sup)
{
	static const char tick = 't';

	/* A full channel means the loop has not read the last ticks, and
	 * one more would tell it nothing. */
	if (send(sup->tick_fds[0], &tick, 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 &&
	    errno != EAGAIN)
		kvd_log(KVD_LOG_WARN, "cannot send a watchdog tick: %m");
}

static void *supervise(void *arg)
{
	struct kvd_supervisor *sup = arg;
	struct pollfd fds[2] = {
		{ .fd = sup->hup_fd, .events = POLLIN },
		{ .fd = sup->quit_fd, .events = POLLIN },
	};
	struct signalfd_siginfo si;
	int timeout = -1, n;

	if (sup->watchdog_usec) {
		timeout = (int)(sup->watchdog_usec / 2000);
		if (timeout < 1)
			timeout = 1;
	}
	for (;;) {
		n = poll(fds, 2, timeout);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			kvd_log(KVD_LOG_ERROR, "supervisor poll failed: %m");
			return NULL;
		}
		if (fds[1].revents)
			return NULL;
		if (fds[0].revents &&
		    read(sup->hup_fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
			reload(sup);
		/* Ticks go out on time even while signals arrive. */
		if (sup->watchdog_usec)
			send_tick(sup);
	}
}

int kvd_supervisor_start(struct kvd_daemon *d, kvd_reload_fn reload_fn,
			 void *reload_arg, struct kvd_supervisor **out)
{
	struct kvd_supervisor *sup;
	sigset_t set;
	int rc;

	sup = calloc(1, sizeof(*sup));
	if (!sup)
		return -ENOMEM;
	sup->d = d;
	sup->reload = reload_fn;
	sup->reload_arg = reload_arg;
	sup->hup_fd = sup->quit_fd = sup->tick_fds[0] = sup->tick_fds[1] = -1;
	if (!kvd_watchdog_usec(&sup->watchdog_usec))
		sup->watchdog_usec = 0;

	sigemptyset(&set);
	sigaddset(&set, SIGHUP);
	sup->hup_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	sup->quit_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (sup->hup_fd < 0 || sup->quit_fd < 0 ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC,
		       0, sup->tick_fds)) {
		rc = -errno;
		goto out_close;
	}
	rc = -pthread_create(&sup->thread, NULL, supervise, sup);
	if (rc)
		goto out_close;
	if (sup->watchdog_usec)
		kvd_log(KVD_LOG_INFO, "watchdog: a keep-alive every %" PRIu64 " ms",
			sup->watchdog_usec / 2000);
	*out = sup;
	return 0;

out_close:
	if (sup->hup_fd >= 0)
		close(sup->hup_fd);
	if (sup->quit_fd >= 0)
		close(sup->quit_fd);
	if (sup->tick_fds[0] >= 0) {
		close(sup->tick_fds[0]);
		close(sup->tick_fds[1]);
	}
	free(sup);
	return rc;
}

int kvd_supervisor_tick_fd(const struct kvd_supervisor *sup)
{
	return sup->tick_fds[1];
}

bool kvd_supervisor_is_tick(struct kvd_supervisor *sup, const void *tag)
{
	if (!sup || tag != sup)
		return false;
	kvd_notify("WATCHDOG=1");
	return true;
}

void kvd_supervisor_stop(struct kvd_supervisor *sup)
{
	uint64_t one = 1;

	if (!sup)
		return;
	if (write(sup->quit_fd, &one, sizeof(one)) != (ssize_t)sizeof(one))
		kvd_log(KVD_LOG_ERROR, "cannot stop the supervisor thread: %m");
	else
		pthread_join(sup->thread, NULL);
	close(sup->hup_fd);
	close(sup->quit_fd);
	close(sup->tick_fds[0]);
	close(sup->tick_fds[1]);
	free(sup);
}
