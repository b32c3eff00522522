/* SPDX-License-Identifier: MIT */
/*
 * refquant.h - a deliberately plain dequantiser for the GGUF tensor types,
 * written apart from the kernels so the reference forward pass in the tests
 * does not share their code. Doubles throughout; speed does not matter.
 */
#ifndef KVCHAIN_REFQUANT_H
#define KVCHAIN_REFQUANT_H

#include <stdint.h>

/* Returns the value of IEEE half-precision bits @h. */
double refquant_half(uint16_t h);

/*
 * Converts @n elements of GGUF type @type at @src to doubles. Returns 0, or
 * -1 for a type it does not know or an @n that is not a whole number of
 * blocks.
 */
int refquant_dequantize(uint32_t type, const void *src, double *dst,
			int64_t n);

#endif /* KVCHAIN_REFQUANT_H */
