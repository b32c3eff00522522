/* SPDX-License-Identifier: MIT */
/*
 * loop.c - the one place that chooses the event-loop backend.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "loop.h"

int kvd_loop_create(enum kvd_event_loop which,
		    const struct kvd_loop_params *params,
		    struct kvd_loop **out, char *err, size_t errlen)
{
	int rc;

	if (which != KVD_LOOP_EPOLL) {
		rc = kvd_loop_uring_ops.create(params, out);
		if (!rc)
			return 0;
		if (which == KVD_LOOP_URING) {
			snprintf(err, errlen,
				 "cannot set up io_uring: %s (use --event-loop epoll or auto)",
				 strerror(-rc));
			return rc;
		}
		kvd_log(KVD_LOG_INFO, "io_uring is not available (%s); falling back to epoll",
			strerror(-rc));
	}
	rc = kvd_loop_epoll_ops.create(params, out);
	if (rc)
		snprintf(err, errlen, "cannot set up epoll: %s", strerror(-rc));
	return rc;
}
