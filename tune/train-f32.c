/* SPDX-License-Identifier: MIT */
/*
 * train-f32.c - the training pass in single precision, the one kvchain-tune
 * trains with: activations are floats and matrix products run through
 * kern_matmul.
 */
#define TUNE_REAL_F32 1
#include "train-impl.h"
