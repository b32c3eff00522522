/* SPDX-License-Identifier: MIT */
/*
 * notify.h - kvchaind and its service manager (systemd): readiness and
 * status messages (sd_notify), a listening socket passed at start (socket
 * activation), and the supervisor thread that reloads settings on SIGHUP
 * and paces watchdog keep-alives through the event loop.
 *
 * Every call here does nothing, successfully, when no service manager
 * started the daemon (NOTIFY_SOCKET, LISTEN_FDS and WATCHDOG_USEC unset).
 */
#ifndef KVD_NOTIFY_H
#define KVD_NOTIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"

struct kvd_daemon;

/*
 * Sends newline-separated VAR=value assignments (READY=1, STATUS=...) to
 * $NOTIFY_SOCKET. Returns 1 when sent, 0 when no manager listens, or a
 * negative errno.
 */
int kvd_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Takes the socket a service manager passed in LISTEN_FDS for this
 * process and unsets LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES. Stores the
 * descriptor in *fd, or -1 when none was passed, and returns 0. Returns
 * -EINVAL with a message in @err when more than one descriptor came or
 * the one that came is not a listening AF_UNIX SOCK_SEQPACKET socket.
 */
int kvd_take_listen_fd(int *fd, char *err, size_t errlen);

/*
 * Stores in *usec the watchdog interval the manager set for this process
 * (WATCHDOG_USEC, WATCHDOG_PID) and returns 1; returns 0 when it set none.
 */
int kvd_watchdog_usec(uint64_t *usec);

/*
 * Re-reads the settings for a reload into @cfg, which holds the defaults:
 * the file, then the command-line flags over it. Returns 0, or a negative
 * errno after logging why.
 */
typedef int (*kvd_reload_fn)(struct kvd_config *cfg, void *arg);

struct kvd_supervisor;

/*
 * Starts the supervisor thread. SIGHUP must already be blocked in every
 * thread. It reloads the settings that can change while the daemon runs
 * (log_level, segment_ttl_seconds and the per-uid limits) and logs every
 * other changed key as needing a restart. When the manager set a watchdog
 * it writes a tick to tick_fd() every half interval. The event loop
 * watches that descriptor, and kvd_supervisor_is_tick() tells its message
 * handler to send WATCHDOG=1, so keep-alives stop when the loop stalls.
 */
int kvd_supervisor_start(struct kvd_daemon *d, kvd_reload_fn reload,
			 void *reload_arg, struct kvd_supervisor **out);

/* The descriptor of the loop's side of the tick channel. */
int kvd_supervisor_tick_fd(const struct kvd_supervisor *sup);

/* Returns true if @tag is the tick channel's; then sends WATCHDOG=1. */
bool kvd_supervisor_is_tick(struct kvd_supervisor *sup, const void *tag);

/* Stops the thread and closes its descriptors; @sup may be NULL. */
void kvd_supervisor_stop(struct kvd_supervisor *sup);

#endif /* KVD_NOTIFY_H */
