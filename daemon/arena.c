/* SPDX-License-Identifier: MIT */
/*
 * arena.c - the KV arena: memfd_create (MFD_HUGETLB when huge pages are
 * reserved and the size fits them, else a plain memfd with transparent
 * huge pages advised), mmap MAP_SHARED, NUMA binding with libnuma, and
 * mlock.
 */
#include "config.h"

#include <errno.h>
#include <numa.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "arena.h"
#include "log.h"

/* Reads one unsigned number from a /proc file; 0 when unreadable. */
static unsigned long read_proc_number(const char *path)
{
	unsigned long v = 0;
	FILE *fp = fopen(path, "re");

	if (!fp)
		return 0;
	if (fscanf(fp, "%lu", &v) != 1)
		v = 0;
	fclose(fp);
	return v;
}

/* Returns the default huge page size from /proc/meminfo, or 0. */
static size_t huge_page_size(void)
{
	char line[256];
	unsigned long kib = 0;
	FILE *fp = fopen("/proc/meminfo", "re");

	if (!fp)
		return 0;
	while (fgets(line, sizeof(line), fp))
		if (sscanf(line, "Hugepagesize: %lu kB", &kib) == 1)
			break;
	fclose(fp);
	return (size_t)kib * 1024;
}

int kvd_numa_setup(int node)
{
	int cpu;

	if (numa_available() < 0) {
		kvd_log(KVD_LOG_INFO, "NUMA is not available; memory and threads stay unbound");
		return -1;
	}
	if (node < 0) {
		cpu = sched_getcpu();
		node = cpu < 0 ? 0 : numa_node_of_cpu(cpu);
		if (node < 0)
			node = 0;
	}
	if (node > numa_max_node()) {
		kvd_log(KVD_LOG_WARN, "numa_node %d does not exist (highest is %d); memory and threads stay unbound",
			node, numa_max_node());
		return -1;
	}
	if (numa_run_on_node(node))
		kvd_log(KVD_LOG_WARN, "cannot run threads on NUMA node %d: %s",
			node, strerror(errno));
	return node;
}

static int map_memfd(struct kvd_arena *a, unsigned flags, char *err,
		     size_t errlen)
{
	int rc;

	a->fd = memfd_create("kvchain-arena", MFD_CLOEXEC | flags);
	if (a->fd < 0) {
		rc = -errno;
		snprintf(err, errlen, "memfd_create of the KV arena failed: %s",
			 strerror(-rc));
		return rc;
	}
	if (ftruncate(a->fd, (off_t)a->size)) {
		rc = -errno;
		snprintf(err, errlen, "cannot size the KV arena to %zu bytes: %s",
			 a->size, strerror(-rc));
		goto out_close;
	}
	a->base = mmap(NULL, a->size, PROT_READ | PROT_WRITE, MAP_SHARED,
		       a->fd, 0);
	if (a->base == MAP_FAILED) {
		rc = -errno;
		a->base = NULL;
		snprintf(err, errlen, "cannot map the KV arena of %zu bytes: %s",
			 a->size, strerror(-rc));
		goto out_close;
	}
	return 0;

out_close:
	close(a->fd);
	a->fd = -1;
	return rc;
}

static void pin(struct kvd_arena *a)
{
	struct rlimit rl;

	if (!mlock(a->base, a->size)) {
		a->pinned = true;
		return;
	}
	if (getrlimit(RLIMIT_MEMLOCK, &rl))
		rl.rlim_cur = 0;
	kvd_log(KVD_LOG_WARN,
		"cannot pin the KV arena (%zu MiB) with mlock: %s; RLIMIT_MEMLOCK is %llu KiB; raise it (LimitMEMLOCK= in the systemd unit, or ulimit -l) to at least %zu KiB; running unpinned",
		a->size >> 20, strerror(errno),
		rl.rlim_cur == RLIM_INFINITY ? ~0ull :
					       (unsigned long long)rl.rlim_cur >> 10,
		a->size >> 10);
}

int kvd_arena_create(struct kvd_arena *a, size_t size, int numa_node,
		     char *err, size_t errlen)
{
	size_t huge = huge_page_size();
	int rc;

	memset(a, 0, sizeof(*a));
	a->fd = -1;
	a->size = size;
	a->numa_node = -1;

	rc = -1;
	if (huge && read_proc_number("/proc/sys/vm/nr_hugepages") > 0 &&
	    size % huge == 0) {
		rc = map_memfd(a, MFD_HUGETLB, err, errlen);
		if (rc)
			kvd_log(KVD_LOG_INFO, "huge pages reserved but not usable (%s); using normal pages",
				err);
		else
			a->hugetlb = true;
	}
	if (rc) {
		rc = map_memfd(a, 0, err, errlen);
		if (rc)
			return rc;
		/* Advice only: a kernel without THP keeps normal pages. */
		madvise(a->base, a->size, MADV_HUGEPAGE);
	}

	/* Bind before the first touch, so pages come from the node. */
	if (numa_node >= 0) {
		numa_tonode_memory(a->base, a->size, numa_node);
		a->numa_node = numa_node;
	}
	pin(a);
	kvd_log(KVD_LOG_INFO, "KV arena: %zu MiB, %s pages, %s, NUMA node %d",
		a->size >> 20, a->hugetlb ? "huge" : "normal (THP advised)",
		a->pinned ? "pinned" : "not pinned", a->numa_node);
	return 0;
}

void kvd_arena_destroy(struct kvd_arena *a)
{
	if (a->base) {
		if (a->pinned)
			munlock(a->base, a->size);
		munmap(a->base, a->size);
	}
	if (a->fd >= 0)
		close(a->fd);
	memset(a, 0, sizeof(*a));
	a->fd = -1;
}
