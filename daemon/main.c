/* SPDX-License-Identifier: MIT */
/*
 * main.c - kvchaind start-up and shutdown. It reads the settings file and
 * flags, then builds the model, KV arena and store, thread pool, engine,
 * control socket and scheduler thread. The event loop runs on this thread
 * until SIGTERM or SIGINT, and then everything stops cleanly (exit 0).
 * Under systemd it takes a passed socket, reports readiness, and reloads
 * on SIGHUP (see notify.h).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon.h"
#include "kvstore.h"
#include "log.h"
#include "loop.h"
#include "model.h"
#include "notify.h"
#include "segment.h"

static void usage(FILE *fp)
{
	fprintf(fp,
		"Usage: kvchaind [options]\n"
		"Serves KV-cache segments of one model to chain stages (see kvchaind(8)).\n"
		"Runs in the foreground and logs to stderr; stops on SIGTERM or SIGINT,\n"
		"reloads log_level, segment_ttl_seconds and the per-uid limits on SIGHUP.\n"
		"\n"
		"  -c, --config FILE       settings file (default " KVD_DEFAULT_CONFIG
		" if it exists)\n"
		"  --model FILE            GGUF model to serve\n"
		"  --socket PATH           control socket (default /run/kvchain/kvchaind.sock\n"
		"                          for root, else $XDG_RUNTIME_DIR/kvchain/kvchaind.sock)\n"
		"  --arena-mib N           KV arena size in MiB\n"
		"  --threads N             forward-pass threads\n"
		"  --kv-type TYPE          KV element type: f16, f32 or q8_0\n"
		"  --event-loop NAME       auto, io_uring or epoll (epoll forces the fallback)\n"
		"  --log-level LEVEL       error, warn, info or debug\n"
		"  --foreground            accepted for compatibility; always the mode\n"
		"  -h, --help              show this help\n"
		"Flags override the settings file.\n");
}

#define MAX_FLAGS 64		/* setting flags on one command line */

/* A flag and the configuration key it sets. */
struct flag_setting {
	const char *flag;
	const char *key;
	const char *value;
};

static int parse_args(int argc, char **argv, const char **config_path,
		      struct flag_setting *flags, int *n_flags)
{
	static const struct option options[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "model", required_argument, NULL, 'm' },
		{ "socket", required_argument, NULL, 's' },
		{ "arena-mib", required_argument, NULL, 'a' },
		{ "threads", required_argument, NULL, 't' },
		{ "kv-type", required_argument, NULL, 'k' },
		{ "event-loop", required_argument, NULL, 'e' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *key;
	int opt, index = -1;

	while ((opt = getopt_long(argc, argv, "c:h", options, &index)) != -1) {
		switch (opt) {
		case 'c':
			*config_path = optarg;
			continue;
		case 'f':
			continue;
		case 'h':
			usage(stdout);
			exit(0);
		case 'm': key = "model"; break;
		case 's': key = "socket"; break;
		case 'a': key = "arena_mib"; break;
		case 't': key = "threads"; break;
		case 'k': key = "kv_type"; break;
		case 'e': key = "event_loop"; break;
		case 'l': key = "log_level"; break;
		default:
			usage(stderr);
			return -EINVAL;
		}
		if (*n_flags == MAX_FLAGS) {
			fprintf(stderr, "kvchaind: more than %d setting flags\n",
				MAX_FLAGS);
			return -E2BIG;
		}
		flags[*n_flags].flag = options[index].name;
		flags[*n_flags].key = key;
		flags[*n_flags].value = optarg;
		(*n_flags)++;
	}
	if (optind < argc) {
		fprintf(stderr, "kvchaind: unexpected argument '%s'\n",
			argv[optind]);
		return -EINVAL;
	}
	return 0;
}

/* Loads the file, then applies the flags over it. */
static int load_settings(struct kvd_config *cfg, int argc, char **argv)
{
	struct flag_setting flags[MAX_FLAGS];
	const char *path = NULL, *expected;
	int i, n_flags = 0, rc;
	char err[512];

	rc = parse_args(argc, argv, &path, flags, &n_flags);
	if (rc)
		return rc;
	if (!path && access(KVD_DEFAULT_CONFIG, F_OK) == 0)
		path = KVD_DEFAULT_CONFIG;
	if (path) {
		rc = kvd_config_load(cfg, path, err, sizeof(err));
		if (rc) {
			kvd_log(KVD_LOG_ERROR, "%s", err);
			return rc;
		}
	}
	for (i = 0; i < n_flags; i++) {
		rc = kvd_config_set(cfg, flags[i].key, flags[i].value,
				    &expected);
		if (rc) {
			kvd_log(KVD_LOG_ERROR, "--%s: invalid value '%s' (expected %s)",
				flags[i].flag, flags[i].value, expected);
			return rc;
		}
	}
	rc = kvd_config_check(cfg, err, sizeof(err));
	if (rc)
		kvd_log(KVD_LOG_ERROR, "%s%s%s", path ? path : "",
			path ? ": " : "", err);
	return rc;
}

/* Chooses the socket path when the settings name none. */
static int default_socket(struct kvd_daemon *d, char **owned)
{
	const char *runtime = getenv("XDG_RUNTIME_DIR");

	*owned = NULL;
	if (d->cfg.socket) {
		d->socket_path = d->cfg.socket;
		return 0;
	}
	if (d->self_uid == 0) {
		d->socket_path = "/run/kvchain/kvchaind.sock";
		return 0;
	}
	if (!runtime || !*runtime) {
		kvd_log(KVD_LOG_ERROR, "XDG_RUNTIME_DIR is not set: pass --socket PATH");
		return -EINVAL;
	}
	if (asprintf(owned, "%s/kvchain/kvchaind.sock", runtime) < 0)
		return -ENOMEM;
	d->socket_path = *owned;
	return 0;
}

/*
 * Creates the doorbell page every client maps. Its size is sealed, so no
 * client can shrink it under the daemon's mapping.
 */
static int make_doorbell(struct kvd_daemon *d)
{
	d->doorbell_fd = memfd_create("kvchain-doorbell",
				      MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (d->doorbell_fd < 0)
		return -errno;
	if (ftruncate(d->doorbell_fd, 4096) ||
	    fcntl(d->doorbell_fd, F_ADD_SEALS,
		  F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL))
		return -errno;
	d->doorbell = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED,
			   d->doorbell_fd, 0);
	if (d->doorbell == MAP_FAILED) {
		d->doorbell = NULL;
		return -errno;
	}
	return 0;
}

static void free_doorbell(struct kvd_daemon *d)
{
	if (d->doorbell)
		munmap(d->doorbell, 4096);
	if (d->doorbell_fd >= 0)
		close(d->doorbell_fd);
}

/* Loads the model and builds the arena, store, pool and engine. */
static int start_engine(struct kvd_daemon *d)
{
	const char *base;
	char err[512];
	int node, rc;

	node = kvd_numa_setup(d->cfg.numa_node);
	rc = model_load(d->cfg.model, &d->model, err, sizeof(err));
	if (rc) {
		kvd_log(KVD_LOG_ERROR, "cannot load the model: %s", err);
		return rc;
	}
	base = strrchr(d->cfg.model, '/');
	snprintf(d->model_name, sizeof(d->model_name), "%s",
		 base ? base + 1 : d->cfg.model);
	d->n_ctx = d->cfg.n_ctx ? d->cfg.n_ctx : d->model->cfg.n_ctx_train;
	if (d->n_ctx > d->model->cfg.n_ctx_train) {
		kvd_log(KVD_LOG_ERROR, "n_ctx %" PRIu32 " exceeds the model's context length %" PRIu32,
			d->n_ctx, d->model->cfg.n_ctx_train);
		return -EINVAL;
	}
	rc = kvd_arena_create(&d->arena, (size_t)d->cfg.arena_mib << 20, node,
			      err, sizeof(err));
	if (rc) {
		kvd_log(KVD_LOG_ERROR, "%s", err);
		return rc;
	}
	rc = kv_store_create(d->arena.base, d->arena.size, d->model,
			     d->cfg.kv_type, d->cfg.block_tokens, &d->store);
	if (rc) {
		kvd_log(KVD_LOG_ERROR, "cannot create the KV store (kv_type, block_tokens %" PRIu32 ", arena_mib %" PRIu32 "): %s",
			d->cfg.block_tokens, d->cfg.arena_mib, strerror(-rc));
		return rc;
	}
	d->pool = kern_pool_create((int)d->cfg.threads);
	if (!d->pool) {
		kvd_log(KVD_LOG_ERROR, "cannot start %" PRIu32 " threads",
			d->cfg.threads);
		return -ENOMEM;
	}
	d->eng = engine_create(d->model, d->store, d->pool, d->cfg.max_batch,
			       d->n_ctx);
	if (!d->eng) {
		kvd_log(KVD_LOG_ERROR, "cannot create the engine (max_batch %" PRIu32 ", n_ctx %" PRIu32 ")",
			d->cfg.max_batch, d->n_ctx);
		return -ENOMEM;
	}
	return 0;
}

static void stop_engine(struct kvd_daemon *d)
{
	if (d->eng)
		engine_destroy(d->eng);
	if (d->pool)
		kern_pool_destroy(d->pool);
	if (d->store)
		kv_store_destroy(d->store);
	kvd_arena_destroy(&d->arena);
	if (d->model)
		model_free(d->model);
}

/*
 * Blocks the stop signals and SIGHUP in every thread and returns a signalfd
 * of the stop signals; the supervisor thread reads SIGHUP from its own.
 */
static int stop_signals(void)
{
	sigset_t set, blocked;

	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	blocked = set;
	sigaddset(&blocked, SIGHUP);
	if (pthread_sigmask(SIG_BLOCK, &blocked, NULL))
		return -EINVAL;
	return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

/* What the loop handlers and a reload need besides the daemon. */
struct run_state {
	struct kvd_daemon *d;
	struct kvd_supervisor *sup;
	bool socket_passed;	/* the service manager owns the socket's path */
	int argc;
	char **argv;
};

static void on_accept(void *arg, int fd)
{
	struct run_state *rs = arg;

	kvd_on_accept(rs->d, fd);
}

static void on_message(void *arg, void *tag, const void *msg, size_t len,
		       size_t full_len)
{
	struct run_state *rs = arg;

	if (kvd_supervisor_is_tick(rs->sup, tag))
		return;
	kvd_on_message(rs->d, tag, msg, len, full_len);
}

static void on_hangup(void *arg, void *tag, int err)
{
	struct run_state *rs = arg;

	if (rs->sup && tag == rs->sup) {
		kvd_log(KVD_LOG_ERROR, "the watchdog tick channel closed (%s); no more keep-alives",
			strerror(-err));
		return;
	}
	kvd_on_hangup(rs->d, tag, err);
}

/* Reads the file and the flags again, for the supervisor's SIGHUP. */
static int reload_settings(struct kvd_config *cfg, void *arg)
{
	struct run_state *rs = arg;

	optind = 0;	/* GNU getopt: start a new scan */
	return load_settings(cfg, rs->argc, rs->argv);
}

/*
 * Takes the listening socket a service manager passed (socket
 * activation), if any, in place of binding one.
 */
static int take_passed_socket(struct kvd_daemon *d, char **owned,
			      bool *passed)
{
	struct sockaddr_un addr;
	socklen_t len = sizeof(addr);
	size_t name_len = 0;
	char err[256], *path;
	int fd, flags, rc;

	*passed = false;
	rc = kvd_take_listen_fd(&fd, err, sizeof(err));
	if (rc) {
		kvd_log(KVD_LOG_ERROR, "%s", err);
		return rc;
	}
	if (fd < 0)
		return 0;
	flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK)) {
		rc = -errno;
		kvd_log(KVD_LOG_ERROR, "cannot make the passed socket non-blocking: %m");
		close(fd);
		return rc;
	}
	memset(&addr, 0, sizeof(addr));
	if (!getsockname(fd, (struct sockaddr *)&addr, &len) &&
	    len > offsetof(struct sockaddr_un, sun_path))
		name_len = strnlen(addr.sun_path,
				   len - offsetof(struct sockaddr_un, sun_path));
	path = name_len ? strndup(addr.sun_path, name_len) :
			  strdup("(an unnamed passed socket)");
	if (!path) {
		close(fd);
		return -ENOMEM;
	}
	if (d->cfg.socket && strcmp(d->cfg.socket, path))
		kvd_log(KVD_LOG_INFO, "serving on the socket the service manager passed, %s; the socket setting %s is not used",
			path, d->cfg.socket);
	free(*owned);
	*owned = path;
	d->socket_path = path;
	d->listen_fd = fd;
	*passed = true;
	return 0;
}

static int serve(struct run_state *rs, int stop_fd)
{
	struct kvd_daemon *d = rs->d;
	struct kvd_loop_params params = {
		.listen_fd = d->listen_fd,
		.stop_fd = stop_fd,
		.max_message = kvd_max_message(d),
		.handler = {
			.accept = on_accept,
			.message = on_message,
			.hangup = on_hangup,
			.arg = rs,
		},
	};
	struct signalfd_siginfo si;
	char err[256];
	int rc;

	rc = kvd_loop_create(d->cfg.event_loop, &params, &d->loop, err,
			     sizeof(err));
	if (rc) {
		kvd_log(KVD_LOG_ERROR, "%s", err);
		return rc;
	}
	rc = kvd_supervisor_start(d, reload_settings, rs, &rs->sup);
	if (!rc)
		rc = kvd_loop_watch(d->loop, kvd_supervisor_tick_fd(rs->sup),
				    rs->sup);
	if (rc) {
		kvd_log(KVD_LOG_ERROR, "cannot start the supervisor thread: %s",
			strerror(-rc));
		goto out_destroy_loop;
	}
	rc = kvd_sched_start(d);
	if (rc) {
		kvd_log(KVD_LOG_ERROR, "cannot start the scheduler: %s",
			strerror(-rc));
		goto out_destroy_loop;
	}
	kvd_log(KVD_LOG_INFO, "started: model %s, socket %s%s, %s event loop, n_ctx %" PRIu32 ", %" PRIu32 " threads",
		d->model_name, d->socket_path,
		rs->socket_passed ? " (passed by the service manager)" : "",
		d->loop->ops->name, d->n_ctx, d->cfg.threads);
	/* The socket listens and the loop is armed: clients can be served. */
	kvd_notify("READY=1\nSTATUS=serving model %s on %s", d->model_name,
		   d->socket_path);
	rc = kvd_loop_run(d->loop);
	if (rc)
		kvd_log(KVD_LOG_ERROR, "event loop failed: %s", strerror(-rc));
	if (read(stop_fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		kvd_log(KVD_LOG_INFO, "stopping on signal %u", si.ssi_signo);
	kvd_notify("STOPPING=1\nSTATUS=stopping");

	/* stop accepting, then let the scheduler cancel what runs */
	close(d->listen_fd);
	d->listen_fd = -1;
	if (!rs->socket_passed)
		unlink(d->socket_path);
	kvd_loop_destroy(d->loop);
	d->loop = NULL;
	kvd_sched_stop(d);
	kvd_supervisor_stop(rs->sup);
	rs->sup = NULL;
	return rc;

out_destroy_loop:
	kvd_loop_destroy(d->loop);
	d->loop = NULL;
	kvd_supervisor_stop(rs->sup);
	rs->sup = NULL;
	return rc;
}

int main(int argc, char **argv)
{
	struct kvd_daemon d;
	struct run_state rs = { .d = &d, .argc = argc, .argv = argv };
	char *socket_owned = NULL, err[256];
	int stop_fd, rc;

	memset(&d, 0, sizeof(d));
	d.listen_fd = -1;
	d.doorbell_fd = -1;
	d.arena.fd = -1;
	d.self_uid = getuid();
	d.next_conn_id = 1;
	pthread_mutex_init(&d.queue_lock, NULL);
	kvd_config_defaults(&d.cfg);

	rc = load_settings(&d.cfg, argc, argv);
	if (rc)
		goto out_free_config;
	kvd_log_set_level(d.cfg.log_level);
	rc = default_socket(&d, &socket_owned);
	if (!rc)
		rc = take_passed_socket(&d, &socket_owned, &rs.socket_passed);
	if (rc)
		goto out_free_config;
	stop_fd = stop_signals();
	if (stop_fd < 0) {
		rc = -errno;
		kvd_log(KVD_LOG_ERROR, "cannot set up signal handling: %m");
		goto out_free_config;
	}
	kvd_service_init(&d);
	kvd_notify("STATUS=loading model %s", d.cfg.model);
	rc = start_engine(&d);
	if (rc)
		goto out_stop_engine;
	rc = make_doorbell(&d);
	if (rc) {
		kvd_log(KVD_LOG_ERROR, "cannot create the doorbell memfd: %s",
			strerror(-rc));
		goto out_free_doorbell;
	}
	if (!rs.socket_passed) {
		rc = kvd_listen(&d, err, sizeof(err));
		if (rc) {
			kvd_log(KVD_LOG_ERROR, "%s", err);
			goto out_free_doorbell;
		}
	}
	rc = serve(&rs, stop_fd);
	if (d.listen_fd >= 0) {
		close(d.listen_fd);
		d.listen_fd = -1;
		if (!rs.socket_passed)
			unlink(d.socket_path);
	}

out_free_doorbell:
	free_doorbell(&d);
out_stop_engine:
	stop_engine(&d);
	close(stop_fd);
out_free_config:
	if (d.listen_fd >= 0 && rs.socket_passed)
		close(d.listen_fd);
	free(socket_owned);
	kvd_config_free(&d.cfg);
	if (!rc)
		kvd_log(KVD_LOG_INFO, "stopped");
	return rc ? 1 : 0;
}
