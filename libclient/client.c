/* SPDX-License-Identifier: MIT */
/* Placeholder: being written. */
typedef int kvc_placeholder_client;
