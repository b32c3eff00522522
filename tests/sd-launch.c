/* SPDX-License-Identifier: MIT */
/*
 * sd-launch - starts a program the way systemd starts a Type=notify
 * service with socket activation, for tests/install-activation.sh. It
 * listens on a datagram socket named by NOTIFY_SOCKET, optionally passes a
 * listening socket as descriptor 3 with LISTEN_FDS=1 and LISTEN_PID, sets
 * WATCHDOG_USEC, and writes every notification it receives to a log, one
 * assignment a line, as "MS VAR=value" (milliseconds since start). The
 * first line is "0 MAINPID=PID". SIGTERM, SIGINT and SIGHUP are passed on
 * to the program. Exits with the program's exit status, or 128 plus the
 * signal that ended it.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct launch_options {
	const char *notify_path;
	const char *log_path;
	const char *listen_path;
	int listen_type;	/* SOCK_SEQPACKET, or SOCK_STREAM to test rejection */
	bool foreign_pid;	/* LISTEN_PID names another process */
	const char *watchdog_usec;
	char **argv;
};

static void usage(FILE *out)
{
	fprintf(out,
"usage: sd-launch --notify PATH --log FILE [options] -- PROGRAM [ARGS]\n"
"  --notify PATH         bind the notification socket here (NOTIFY_SOCKET);\n"
"                        a leading @ names an abstract address\n"
"  --log FILE            append each notification here, one VAR=value a line\n"
"  --listen PATH         pass a listening SOCK_SEQPACKET socket bound here\n"
"                        as descriptor 3 (LISTEN_FDS=1, LISTEN_PID)\n"
"  --listen-stream PATH  the same with a SOCK_STREAM socket\n"
"  --foreign-pid         set LISTEN_PID to a process other than PROGRAM\n"
"  --watchdog-usec N     set WATCHDOG_USEC=N and WATCHDOG_PID\n");
}

static long elapsed_ms(const struct timespec *t0)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - t0->tv_sec) * 1000 +
	       (now.tv_nsec - t0->tv_nsec) / 1000000;
}

static int bind_unix(int type, const char *path, bool listening)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	socklen_t len;
	int fd;

	if (strlen(path) >= sizeof(addr.sun_path)) {
		fprintf(stderr, "sd-launch: socket path %s is too long\n", path);
		return -1;
	}
	/* a leading '@' names an abstract address, as in NOTIFY_SOCKET */
	strcpy(addr.sun_path, path);
	if (path[0] == '@')
		addr.sun_path[0] = '\0';
	else
		unlink(path);
	len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
	fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&addr, len) ||
	    (listening && listen(fd, 16))) {
		fprintf(stderr, "sd-launch: cannot bind %s: %s\n", path,
			strerror(errno));
		return -1;
	}
	return fd;
}

static int parse_args(int argc, char **argv, struct launch_options *o)
{
	static const struct option options[] = {
		{ "notify", required_argument, NULL, 'n' },
		{ "log", required_argument, NULL, 'l' },
		{ "listen", required_argument, NULL, 's' },
		{ "listen-stream", required_argument, NULL, 'S' },
		{ "foreign-pid", no_argument, NULL, 'f' },
		{ "watchdog-usec", required_argument, NULL, 'w' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int opt;

	o->listen_type = SOCK_SEQPACKET;
	while ((opt = getopt_long(argc, argv, "+h", options, NULL)) != -1) {
		switch (opt) {
		case 'n': o->notify_path = optarg; break;
		case 'l': o->log_path = optarg; break;
		case 's': o->listen_path = optarg; break;
		case 'S':
			o->listen_path = optarg;
			o->listen_type = SOCK_STREAM;
			break;
		case 'f': o->foreign_pid = true; break;
		case 'w': o->watchdog_usec = optarg; break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -1;
		}
	}
	if (!o->notify_path || !o->log_path || optind == argc) {
		usage(stderr);
		return -1;
	}
	o->argv = argv + optind;
	return 0;
}

/* In the child: descriptor 3 and the environment, then exec. */
static void run_child(const struct launch_options *o, int listen_fd)
{
	char pid[32];

	snprintf(pid, sizeof(pid), "%ld", (long)getpid());
	setenv("NOTIFY_SOCKET", o->notify_path, 1);
	if (listen_fd >= 0) {
		/* dup2 clears close-on-exec, except on a descriptor already 3 */
		if (listen_fd == 3 ? fcntl(3, F_SETFD, 0) : dup2(listen_fd, 3) < 0) {
			perror("sd-launch: dup2");
			_exit(127);
		}
		setenv("LISTEN_FDS", "1", 1);
		setenv("LISTEN_PID", o->foreign_pid ? "1" : pid, 1);
	}
	if (o->watchdog_usec) {
		setenv("WATCHDOG_USEC", o->watchdog_usec, 1);
		setenv("WATCHDOG_PID", pid, 1);
	}
	execvp(o->argv[0], o->argv);
	fprintf(stderr, "sd-launch: cannot run %s: %s\n", o->argv[0],
		strerror(errno));
	_exit(127);
}

static volatile sig_atomic_t child_pid;

/* Passes SIGTERM, SIGINT and SIGHUP on, as the manager's kill would. */
static void forward_signal(int sig)
{
	if (child_pid > 0)
		kill((pid_t)child_pid, sig);
}

/* Writes each newline-separated assignment of @msg as its own line. */
static void log_message(FILE *log, long ms, char *msg)
{
	char *line, *save = NULL;

	for (line = strtok_r(msg, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save))
		fprintf(log, "%ld %s\n", ms, line);
	fflush(log);
}

int main(int argc, char **argv)
{
	struct launch_options o = { 0 };
	struct timespec t0;
	struct pollfd pfd;
	char msg[4096];
	int notify_fd, listen_fd = -1, status = 0;
	bool exited = false;
	FILE *log;
	pid_t child;
	ssize_t n;

	if (parse_args(argc, argv, &o))
		return 2;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	log = fopen(o.log_path, "a");
	if (!log) {
		fprintf(stderr, "sd-launch: cannot open %s: %s\n", o.log_path,
			strerror(errno));
		return 2;
	}
	notify_fd = bind_unix(SOCK_DGRAM, o.notify_path, false);
	if (notify_fd < 0)
		return 2;
	if (o.listen_path) {
		listen_fd = bind_unix(o.listen_type, o.listen_path, true);
		if (listen_fd < 0)
			return 2;
	}

	child = fork();
	if (child < 0) {
		perror("sd-launch: fork");
		return 2;
	}
	if (child == 0)
		run_child(&o, listen_fd);
	child_pid = child;
	signal(SIGTERM, forward_signal);
	signal(SIGINT, forward_signal);
	signal(SIGHUP, forward_signal);
	fprintf(log, "0 MAINPID=%ld\n", (long)child);
	fflush(log);

	/* Receive until the child exits, then take what is still queued. */
	pfd.fd = notify_fd;
	pfd.events = POLLIN;
	for (;;) {
		if (!exited && waitpid(child, &status, WNOHANG) == child)
			exited = true;
		if (poll(&pfd, 1, exited ? 0 : 50) <= 0) {
			if (exited)
				break;
			continue;
		}
		n = recv(notify_fd, msg, sizeof(msg) - 1, 0);
		if (n < 0)
			continue;
		msg[n] = '\0';
		log_message(log, elapsed_ms(&t0), msg);
	}
	fclose(log);
	if (o.notify_path[0] != '@')
		unlink(o.notify_path);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return WEXITSTATUS(status);
}
