/* SPDX-License-Identifier: MIT */
/*
 * train-f64.c - the training pass in double precision, for the gradient
 * checks: the same source as train-f32.c with every value a double. Its
 * operations are public (tune/ops.h) so tests can check each on its own.
 */
#define TUNE_REAL_F64 1
#include "train-impl.h"
