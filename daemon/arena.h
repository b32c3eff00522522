/* SPDX-License-Identifier: MIT */
/*
 * arena.h - the KV arena: one shared-memory region (memfd) the KV store
 * hands out blocks from, pinned in RAM, on huge pages where the system has
 * them, on the NUMA node of the worker threads. Arenas are never mapped
 * into clients, because KV reveals the text it encodes.
 */
#ifndef KVD_ARENA_H
#define KVD_ARENA_H

#include <stdbool.h>
#include <stddef.h>

struct kvd_arena {
	void *base;		/* (size) bytes, 64-byte aligned */
	size_t size;
	int fd;			/* the memfd */
	bool hugetlb;		/* MFD_HUGETLB pages, else THP advised */
	bool pinned;		/* mlock succeeded */
	int numa_node;		/* -1 when not bound */
};

/*
 * Chooses the NUMA node: @node, or for -1 the node of the CPU this thread
 * runs on, and keeps the process's threads on it. Returns the node, or -1
 * (with an info line logged) when the system has no NUMA support.
 */
int kvd_numa_setup(int node);

/*
 * Creates an arena of @size bytes bound to @numa_node (-1: not bound).
 * A failed mlock is logged as a warning and the arena stays unpinned.
 * Returns 0 or a negative errno with a message in @err.
 */
int kvd_arena_create(struct kvd_arena *arena, size_t size, int numa_node,
		     char *err, size_t errlen);
void kvd_arena_destroy(struct kvd_arena *arena);

#endif /* KVD_ARENA_H */
