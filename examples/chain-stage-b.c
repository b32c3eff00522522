/* SPDX-License-Identifier: MIT */
/*
 * chain-stage-b - stage B of the two-stage chain chain-stage-a started.
 * It attaches to the segment by the handle given on the command line and
 * generates O_B as stage 1, reading the KV of I_ALL and O_A as stage A
 * left it, with nothing re-encoded. Then it prints O_B on stdout and
 * releases the segment.
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvchain.h"

static void usage(FILE *out)
{
	fprintf(out,
"usage: chain-stage-b [options] HANDLE\n"
"Runs stage B on the segment HANDLE and prints its output.\n"
"  --socket PATH        kvchaind's socket (default: as libkvchain chooses)\n"
"  --max-tokens N       tokens of O_B at most (default 32)\n"
"  --ignore-eos         generate past the end-of-sequence token\n"
"  --timings            print the time to the first token and in all on\n"
"                       stderr\n");
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* O_B as it streams in, and when its first token came. */
struct output {
	char *text;
	size_t len;
	double first;
};

static int on_token(void *arg, int32_t id, const char *text, size_t len)
{
	struct output *out = arg;
	char *p;

	(void)id;
	if (out->first == 0.0)
		out->first = now_ms();
	p = realloc(out->text, out->len + len + 1);
	if (!p)
		return 1;	/* stops the generation */
	memcpy(p + out->len, text, len);
	out->text = p;
	out->len += len;
	out->text[out->len] = '\0';
	return 0;
}

static int report(kvc_conn *conn, int rc, const char *what)
{
	fprintf(stderr, "chain-stage-b: %s: %s: %s\n", what, kvc_strerror(rc),
		conn ? kvc_last_error(conn) : "");
	return 1;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "max-tokens", required_argument, NULL, 'n' },
		{ "ignore-eos", no_argument, NULL, 'e' },
		{ "timings", no_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct kvc_gen_params params;
	const char *socket = NULL;
	struct output out = { .len = 0 };
	kvc_conn *conn;
	kvc_handle h;
	int c, rc, timings = 0;
	double start;

	kvc_gen_params_init(&params);
	params.max_tokens = 32;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 's': socket = optarg; break;
		case 'n': params.max_tokens = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'e': params.ignore_eos = 1; break;
		case 't': timings = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (argc - optind != 1 || kvc_handle_parse(argv[optind], &h) < 0 ||
	    params.max_tokens == 0) {
		usage(stderr);
		return 2;
	}
	rc = kvc_connect(socket, "chain-stage-b", &conn);
	if (rc < 0)
		return report(NULL, rc, "connect");
	start = now_ms();
	rc = kvc_attach(conn, &h);
	if (rc < 0) {
		report(conn, rc, "attach");
		goto out_disconnect;
	}
	rc = kvc_generate(conn, &h, 1, &params, on_token, &out, NULL);
	if (rc < 0) {
		report(conn, rc, "generate O_B");
		goto out_disconnect;
	}
	if (timings)
		fprintf(stderr, "stage B: first token %.2f ms after attaching, O_B in %.2f ms\n",
			(out.first > 0.0 ? out.first : now_ms()) - start,
			now_ms() - start);
	printf("%s\n", out.text ? out.text : "");
	rc = kvc_release(conn, &h);
	if (rc < 0)
		report(conn, rc, "release");

out_disconnect:
	free(out.text);
	kvc_disconnect(conn);
	return rc < 0 ? 1 : 0;
}
