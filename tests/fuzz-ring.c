/* SPDX-License-Identifier: MIT */
/*
 * fuzz-ring.c - libFuzzer target for the shared-memory rings: whatever a
 * peer writes into a ring's control words and data, or into a region's
 * header page, kvc_ring_read and kvc_shm_attach must reject it or return a
 * message inside the ring, never read outside it.
 *
 * Input layout: 4 bytes head, 4 bytes tail, then the ring's data (the
 * first 4096 bytes are used; a shorter input leaves the rest zero). The
 * whole input is also tried as a connection region's header.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ring.h"

#define RING_BYTES 4096u
#define MAX_MESSAGE 1024u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kvc_ring_ctl *ctl;
	struct kvc_ring ring, req, cpl;
	uint8_t *ring_data, *buf, *region;
	uint32_t head = 0, tail = 0;
	int i, n;

	/* a region header written by a hostile peer */
	region = malloc(size ? size : 1);
	if (!region)
		return 0;
	memcpy(region, data, size);
	if (kvc_shm_attach(region, size, &req, &cpl) == 0) {
		/* only a header that describes exactly this size is taken */
		if (kvc_shm_size(req.size) != size)
			abort();
	}
	free(region);

	/* a ring whose control words and bytes a hostile peer chose */
	ctl = calloc(1, sizeof(*ctl));
	ring_data = calloc(1, RING_BYTES);
	buf = malloc(MAX_MESSAGE);
	if (!ctl || !ring_data || !buf)
		goto out;
	if (size >= 8) {
		memcpy(&head, data, 4);
		memcpy(&tail, data + 4, 4);
		memcpy(ring_data, data + 8,
		       size - 8 < RING_BYTES ? size - 8 : RING_BYTES);
	}
	atomic_store(&ctl->head, head);
	atomic_store(&ctl->tail, tail);
	ring = (struct kvc_ring){ .ctl = ctl, .data = ring_data,
				  .size = RING_BYTES,
				  .max_message = MAX_MESSAGE };
	for (i = 0; i < 64; i++) {
		n = kvc_ring_read(&ring, buf);
		if (n <= 0)
			break;
		if ((uint32_t)n > MAX_MESSAGE)
			abort();
	}
out:
	free(buf);
	free(ring_data);
	free(ctl);
	return 0;
}
