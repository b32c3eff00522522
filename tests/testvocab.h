/* SPDX-License-Identifier: MIT */
/*
 * testvocab.h - the made-up vocabularies of the test models, one per
 * tokenizer kind, built in memory so tests need no downloaded tokenizer.
 */
#ifndef KVCHAIN_TESTVOCAB_H
#define KVCHAIN_TESTVOCAB_H

#include "tokenizer.h"

/*
 * Returns the vocabulary of @kind as a tokenizer spec that stays valid for
 * the life of the program. For TOK_KIND_BPE the spec's pre field is @pre;
 * for SPM @pre is ignored.
 */
const struct tok_spec *testvocab_get(enum tok_kind kind, enum tok_pre pre);

#endif /* KVCHAIN_TESTVOCAB_H */
