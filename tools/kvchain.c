/* SPDX-License-Identifier: MIT */
/*
 * kvchain - the command-line client of kvchaind, over libkvchain, so each
 * step of a chain can be one shell line: register prompts, create a chain
 * and a segment, append inputs, generate, drop spans, fork, and print
 * the daemon's statistics.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvchain.h"
#include "random-prompt.h"

#define MAX_STOPS 16
#define MAX_VIEW 256
#define MAX_PROMPTS 16

static const char *socket_arg;	/* --socket, or NULL for the default */

static void usage(FILE *out)
{
	fprintf(out,
"usage: kvchain [--socket PATH] COMMAND [ARGS]\n"
"Talks to kvchaind: each command connects, does one thing and exits.\n"
"\n"
"Commands:\n"
"  prompt-text TEXT          register a hard prompt; prints its id\n"
"  prompt-peft DIR           register the PEFT prompt-tuning adapter in DIR;\n"
"                            prints one id per stage it holds, one a line\n"
"  prompt-random N [--seed S]\n"
"                            register a soft prompt of N virtual tokens with\n"
"                            seeded random values (default seed 1), for trying\n"
"                            chains without trained adapters; prints its id\n"
"  chain PROMPT_ID...        create a chain of these prompts in stage order;\n"
"                            prints its id\n"
"  create CHAIN_ID           create a segment of the chain; prints its handle\n"
"  append HANDLE (--shared | --stage N) [--view IDS] TEXT|-\n"
"                            append TEXT (or standard input for -) as shared\n"
"                            input or as input of stage N; prints the span id\n"
"  generate HANDLE --stage N [options]\n"
"                            generate as stage N, streaming the text to\n"
"                            standard output and a newline at the end; the\n"
"                            span id and timings go to standard error\n"
"  drop HANDLE SPAN_ID       drop a span (its KV is freed once unshared)\n"
"  fork HANDLE               create a segment sharing every span; prints the\n"
"                            new handle\n"
"  release HANDLE            check the handle and restart its idle timer\n"
"  stats                     print the daemon's statistics\n"
"\n"
"Generate options:\n"
"  --max-tokens N    tokens to generate at most (default 128)\n"
"  --temp F          sampling temperature; 0 is greedy (default 0)\n"
"  --top-k N         keep the N most likely tokens; 0 keeps all\n"
"  --top-p F         keep the smallest set with probability >= F (default 1)\n"
"  --min-p F         drop tokens below F times the best probability\n"
"  --seed N          sampling seed (default 0)\n"
"  --stop TEXT       stop before TEXT (repeatable, up to %d)\n"
"  --ignore-eos      keep generating past the end-of-sequence token\n"
"  --view IDS        comma-separated span ids the new span may read, instead\n"
"                    of the cascade mask's default; '' reads none\n"
"\n"
"Segment lifetime: a segment lives while some connection holds it, and\n"
"for the daemon's TTL (segment_ttl_seconds, 300 by default) after the\n"
"last holder lets go. Each kvchain command holds the segment only while\n"
"it runs, so `create` prints the handle and exits, and the next command\n"
"must use the handle within the TTL. A program that keeps a connection\n"
"open (see libkvchain) can hold a segment as long as it likes.\n"
"\n"
"Ids are printed in decimal and handles as 32 hex digits.\n"
"\n"
"Environment:\n"
"  KVCHAIN_SOCKET      socket path when --socket is not given; otherwise\n"
"                      $XDG_RUNTIME_DIR/kvchain/kvchaind.sock for users other\n"
"                      than root, else /run/kvchain/kvchaind.sock\n"
"  KVCHAIN_TIMEOUT_MS  milliseconds to wait for each reply (default 60000)\n"
"\n"
"Exit status: 0 on success, 1 when a request fails, 2 for usage errors.\n",
		MAX_STOPS);
}

/* ---- Errors and parsing ------------------------------------------------ */

static void usage_error(const char *fmt, ...)
	__attribute__((format(printf, 1, 2), noreturn));

static void usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("kvchain: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs(" (see kvchain --help)\n", stderr);
	exit(2);
}

/* Prints "kvchain: WHAT: <code name>: <message>" and exits 1. */
static void fail(kvc_conn *conn, int rc, const char *what)
	__attribute__((noreturn));

static void fail(kvc_conn *conn, int rc, const char *what)
{
	fprintf(stderr, "kvchain: %s: %s: %s\n", what, kvc_strerror(rc),
		kvc_last_error(conn));
	kvc_disconnect(conn);
	exit(1);
}

static uint64_t parse_range(const char *what, const char *s, uint64_t min,
			    uint64_t max)
{
	unsigned long long v;
	char *end;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || end == s || *end || s[0] == '-' || v < min || v > max)
		usage_error("invalid %s '%s' (expected an integer from %" PRIu64 " to %" PRIu64 ")",
			    what, s, min, max);
	return v;
}

static uint64_t parse_u64(const char *what, const char *s, uint64_t max)
{
	return parse_range(what, s, 0, max);
}

static float parse_float(const char *what, const char *s)
{
	char *end;
	float v;

	errno = 0;
	v = strtof(s, &end);
	if (errno || end == s || *end)
		usage_error("invalid %s '%s' (expected a number)", what, s);
	return v;
}

static void parse_handle(const char *s, kvc_handle *h)
{
	if (kvc_handle_parse(s, h) < 0)
		usage_error("invalid handle '%s' (expected 32 hex digits)", s);
}

/* Parses "ID,ID,..." (or "" for no span) into @view. */
static uint32_t parse_view(const char *s, uint32_t *view)
{
	uint32_t n = 0;
	char buf[16];
	const char *p = s;
	size_t len;

	while (*p) {
		len = strcspn(p, ",");
		if (len == 0 || len >= sizeof(buf))
			usage_error("invalid --view '%s' (expected span ids separated by commas)",
				    s);
		if (n == MAX_VIEW)
			usage_error("--view lists more than %d spans", MAX_VIEW);
		memcpy(buf, p, len);
		buf[len] = '\0';
		view[n++] = (uint32_t)parse_u64("span id in --view", buf,
						 UINT32_MAX);
		p += len;
		if (*p == ',' && *++p == '\0')
			usage_error("invalid --view '%s' (trailing comma)", s);
	}
	return n;
}

/* ---- Connecting -------------------------------------------------------- */

/* The path kvc_connect will use, for messages. */
static void describe_socket(char *out, size_t len)
{
	const char *env = getenv("KVCHAIN_SOCKET");
	const char *xdg = getenv("XDG_RUNTIME_DIR");

	if (socket_arg)
		snprintf(out, len, "%s", socket_arg);
	else if (env && *env)
		snprintf(out, len, "%s", env);
	else if (geteuid() != 0 && xdg && *xdg)
		snprintf(out, len, "%s/kvchain/kvchaind.sock", xdg);
	else
		snprintf(out, len, "/run/kvchain/kvchaind.sock");
}

static kvc_conn *connect_or_exit(void)
{
	kvc_conn *conn;
	char path[4096];
	int rc;

	rc = kvc_connect(socket_arg, "kvchain", &conn);
	if (rc < 0) {
		/* no connection is left to hold a message; errno has the cause */
		int err = errno;

		describe_socket(path, sizeof(path));
		fprintf(stderr, "kvchain: cannot connect to %s: %s: %s\n",
			path, kvc_strerror(rc), strerror(err));
		exit(1);
	}
	return conn;
}

/* Holds @h for this connection, so the segment stays while we work. */
static void attach_or_exit(kvc_conn *conn, const kvc_handle *h)
{
	int rc = kvc_attach(conn, h);

	if (rc < 0)
		fail(conn, rc, "attach");
}

static void print_handle(const kvc_handle *h)
{
	char text[KVC_HANDLE_STRLEN + 1];

	kvc_handle_format(h, text);
	printf("%s\n", text);
}

/* ---- Commands ---------------------------------------------------------- */

static int cmd_prompt_text(int argc, char **argv)
{
	kvc_conn *conn;
	uint64_t id;
	int rc;

	if (argc != 2)
		usage_error("prompt-text takes one TEXT argument");
	conn = connect_or_exit();
	rc = kvc_prompt_text(conn, argv[1], &id);
	if (rc < 0)
		fail(conn, rc, "register the text prompt");
	printf("%" PRIu64 "\n", id);
	kvc_disconnect(conn);
	return 0;
}

static int cmd_prompt_peft(int argc, char **argv)
{
	uint64_t ids[MAX_PROMPTS];
	kvc_conn *conn;
	uint32_t n, i;
	int rc;

	if (argc != 2)
		usage_error("prompt-peft takes one DIR argument");
	conn = connect_or_exit();
	rc = kvc_prompt_peft(conn, argv[1], ids, MAX_PROMPTS, &n);
	if (rc < 0)
		fail(conn, rc, "register the PEFT adapter");
	for (i = 0; i < n; i++)
		printf("%" PRIu64 "\n", ids[i]);
	kvc_disconnect(conn);
	return 0;
}

static int cmd_prompt_random(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "seed", required_argument, NULL, 's' },
		{ NULL, 0, NULL, 0 },
	};
	struct kvc_server_info info = { .struct_size = sizeof(info) };
	uint64_t seed = 1, id;
	uint32_t n;
	kvc_conn *conn;
	float *embd;
	int c, rc;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c != 's')
			usage_error("unknown option for prompt-random");
		seed = parse_u64("--seed", optarg, UINT64_MAX);
	}
	if (argc - optind != 1)
		usage_error("prompt-random takes one N argument");
	n = (uint32_t)parse_u64("number of virtual tokens", argv[optind],
				65536);
	if (n == 0)
		usage_error("prompt-random needs at least 1 virtual token");
	conn = connect_or_exit();
	kvc_server_info(conn, &info);
	embd = malloc((size_t)n * info.d_model * sizeof(float));
	if (!embd) {
		fprintf(stderr, "kvchain: out of memory for %u x %u embeddings\n",
			n, info.d_model);
		kvc_disconnect(conn);
		return 1;
	}
	random_prompt_fill(embd, (size_t)n * info.d_model, seed);
	rc = kvc_prompt_soft(conn, embd, n, info.d_model, &id);
	free(embd);
	if (rc < 0)
		fail(conn, rc, "register the random prompt");
	printf("%" PRIu64 "\n", id);
	kvc_disconnect(conn);
	return 0;
}

static int cmd_chain(int argc, char **argv)
{
	uint64_t ids[MAX_PROMPTS], chain_id;
	kvc_conn *conn;
	int i, rc;

	if (argc < 2 || argc - 1 > MAX_PROMPTS)
		usage_error("chain takes 1 to %d PROMPT_ID arguments",
			    MAX_PROMPTS);
	for (i = 1; i < argc; i++)
		ids[i - 1] = parse_u64("prompt id", argv[i], UINT64_MAX);
	conn = connect_or_exit();
	rc = kvc_chain_create(conn, ids, (uint32_t)(argc - 1), &chain_id);
	if (rc < 0)
		fail(conn, rc, "create the chain");
	printf("%" PRIu64 "\n", chain_id);
	kvc_disconnect(conn);
	return 0;
}

static int cmd_create(int argc, char **argv)
{
	uint64_t chain_id;
	kvc_conn *conn;
	kvc_handle h;
	int rc;

	if (argc != 2)
		usage_error("create takes one CHAIN_ID argument");
	chain_id = parse_u64("chain id", argv[1], UINT64_MAX);
	conn = connect_or_exit();
	rc = kvc_segment_create(conn, chain_id, &h);
	if (rc < 0)
		fail(conn, rc, "create the segment");
	print_handle(&h);
	kvc_disconnect(conn);
	return 0;
}

/* Reads standard input whole. */
static char *read_stdin(size_t *len)
{
	size_t cap = 4096, n;
	char *buf = malloc(cap), *p;

	*len = 0;
	while (buf) {
		n = fread(buf + *len, 1, cap - *len, stdin);
		*len += n;
		if (n == 0)
			break;
		if (*len == cap) {
			cap *= 2;
			p = realloc(buf, cap);
			if (!p)
				free(buf);
			buf = p;
		}
	}
	if (buf && ferror(stdin)) {
		free(buf);
		buf = NULL;
	}
	return buf;
}

static int cmd_append(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "shared", no_argument, NULL, 'S' },
		{ "stage", required_argument, NULL, 's' },
		{ "view", required_argument, NULL, 'v' },
		{ NULL, 0, NULL, 0 },
	};
	uint32_t view[MAX_VIEW], n_view = 0, stage = 0, span;
	bool has_view = false, shared = false, staged = false;
	char *input = NULL;
	const char *text;
	kvc_conn *conn;
	kvc_handle h;
	size_t len;
	int c, rc;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'S':
			shared = true;
			break;
		case 's':
			staged = true;
			stage = (uint32_t)parse_u64("--stage", optarg, UINT32_MAX);
			break;
		case 'v':
			has_view = true;
			n_view = parse_view(optarg, view);
			break;
		default:
			usage_error("unknown option for append");
		}
	}
	if (shared == staged)
		usage_error("append needs exactly one of --shared and --stage N");
	if (argc - optind != 2)
		usage_error("append takes HANDLE and TEXT (or - for standard input)");
	parse_handle(argv[optind], &h);
	text = argv[optind + 1];
	len = strlen(text);
	if (!strcmp(text, "-")) {
		input = read_stdin(&len);
		if (!input) {
			fprintf(stderr, "kvchain: reading standard input failed\n");
			return 1;
		}
		text = input;
	}
	conn = connect_or_exit();
	attach_or_exit(conn, &h);
	rc = kvc_append_text(conn, &h, shared ? KVC_SHARED_INPUT :
			     KVC_STAGE_INPUT, stage, text, len,
			     has_view ? view : NULL, n_view, &span);
	free(input);
	if (rc < 0)
		fail(conn, rc, "append");
	printf("%" PRIu32 "\n", span);
	kvc_disconnect(conn);
	return 0;
}

static int print_token(void *arg, int32_t id, const char *text, size_t len)
{
	(void)arg;
	(void)id;
	fwrite(text, 1, len, stdout);
	fflush(stdout);
	return 0;
}

static const char *stop_name(uint32_t reason)
{
	static const char *const names[] = {
		"max tokens", "eos", "stop token", "stop string", "canceled",
		"context full",
	};

	return reason < sizeof(names) / sizeof(names[0]) ? names[reason] :
							    "unknown";
}

static int cmd_generate(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "stage", required_argument, NULL, 's' },
		{ "max-tokens", required_argument, NULL, 'n' },
		{ "temp", required_argument, NULL, 't' },
		{ "top-k", required_argument, NULL, 'k' },
		{ "top-p", required_argument, NULL, 'p' },
		{ "min-p", required_argument, NULL, 'm' },
		{ "seed", required_argument, NULL, 'S' },
		{ "stop", required_argument, NULL, 'x' },
		{ "view", required_argument, NULL, 'v' },
		{ "ignore-eos", no_argument, NULL, 'e' },
		{ NULL, 0, NULL, 0 },
	};
	struct kvc_gen_result res = { .struct_size = sizeof(res) };
	struct kvc_gen_params p;
	const char *stops[MAX_STOPS];
	uint32_t view[MAX_VIEW], stage = 0;
	bool staged = false;
	kvc_conn *conn;
	kvc_handle h;
	int c, rc;

	kvc_gen_params_init(&p);
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			staged = true;
			stage = (uint32_t)parse_u64("--stage", optarg, UINT32_MAX);
			break;
		case 'n':
			p.max_tokens = (uint32_t)parse_range("--max-tokens", optarg,
							     1, UINT32_MAX);
			break;
		case 't': p.temperature = parse_float("--temp", optarg); break;
		case 'k':
			p.top_k = (uint32_t)parse_u64("--top-k", optarg,
						      UINT32_MAX);
			break;
		case 'p': p.top_p = parse_float("--top-p", optarg); break;
		case 'm': p.min_p = parse_float("--min-p", optarg); break;
		case 'S': p.seed = parse_u64("--seed", optarg, UINT64_MAX); break;
		case 'x':
			if (p.n_stop == MAX_STOPS)
				usage_error("more than %d --stop strings", MAX_STOPS);
			if (!*optarg)
				usage_error("--stop needs a non-empty string");
			stops[p.n_stop++] = optarg;
			break;
		case 'v':
			p.n_view = parse_view(optarg, view);
			p.view = view;
			break;
		case 'e': p.ignore_eos = 1; break;
		default:
			usage_error("unknown option for generate");
		}
	}
	if (!staged)
		usage_error("generate needs --stage N");
	if (p.max_tokens == 0)
		usage_error("--max-tokens must be at least 1");
	if (argc - optind != 1)
		usage_error("generate takes one HANDLE argument");
	parse_handle(argv[optind], &h);
	p.stop = p.n_stop ? stops : NULL;

	conn = connect_or_exit();
	attach_or_exit(conn, &h);
	rc = kvc_generate(conn, &h, stage, &p, print_token, NULL, &res);
	if (rc < 0) {
		fflush(stdout);
		fail(conn, rc, "generate");
	}
	putchar('\n');
	fflush(stdout);
	fprintf(stderr, "span %" PRIu32 ": %" PRIu32 " tokens, stopped by %s, prefill %.3f s, decode %.3f s\n",
		res.span_id, res.n_generated, stop_name(res.stop_reason),
		res.prefill_seconds, res.decode_seconds);
	kvc_disconnect(conn);
	return 0;
}

static int cmd_drop(int argc, char **argv)
{
	kvc_conn *conn;
	kvc_handle h;
	uint32_t span;
	int rc;

	if (argc != 3)
		usage_error("drop takes HANDLE and SPAN_ID");
	parse_handle(argv[1], &h);
	span = (uint32_t)parse_u64("span id", argv[2], UINT32_MAX);
	conn = connect_or_exit();
	attach_or_exit(conn, &h);
	rc = kvc_drop_span(conn, &h, span);
	if (rc < 0)
		fail(conn, rc, "drop the span");
	kvc_disconnect(conn);
	return 0;
}

static int cmd_fork(int argc, char **argv)
{
	kvc_conn *conn;
	kvc_handle h, out;
	int rc;

	if (argc != 2)
		usage_error("fork takes one HANDLE argument");
	parse_handle(argv[1], &h);
	conn = connect_or_exit();
	attach_or_exit(conn, &h);
	rc = kvc_fork(conn, &h, &out);
	if (rc < 0)
		fail(conn, rc, "fork");
	print_handle(&out);
	kvc_disconnect(conn);
	return 0;
}

/*
 * A command holds nothing after it exits, so release can only take a hold
 * and drop it: that checks the handle and restarts the segment's TTL.
 */
static int cmd_release(int argc, char **argv)
{
	kvc_conn *conn;
	kvc_handle h;
	int rc;

	if (argc != 2)
		usage_error("release takes one HANDLE argument");
	parse_handle(argv[1], &h);
	conn = connect_or_exit();
	attach_or_exit(conn, &h);
	rc = kvc_release(conn, &h);
	if (rc < 0)
		fail(conn, rc, "release");
	kvc_disconnect(conn);
	return 0;
}

static int cmd_stats(int argc, char **argv)
{
	struct kvc_server_info info = { .struct_size = sizeof(info) };
	struct kvc_stats st = { .struct_size = sizeof(st) };
	kvc_conn *conn;
	int rc;

	(void)argv;
	if (argc != 1)
		usage_error("stats takes no arguments");
	conn = connect_or_exit();
	kvc_server_info(conn, &info);
	rc = kvc_stats(conn, &st);
	if (rc < 0)
		fail(conn, rc, "stats");
	printf("%-18s %s\n", "model", info.model_name);
	printf("%-18s %" PRIu32 "\n", "d_model", info.d_model);
	printf("%-18s %" PRIu32 "\n", "n_ctx", info.n_ctx);
	printf("%-18s %" PRIu32 " of %" PRIu32 " free (%" PRIu64 " bytes each)\n",
	       "KV blocks", st.blocks_free, st.blocks_total, st.block_bytes);
	printf("%-18s %" PRIu32 "\n", "segments", st.segments);
	printf("%-18s %" PRIu32 "\n", "chains", st.chains);
	printf("%-18s %" PRIu32 "\n", "prompts", st.prompts);
	printf("%-18s %" PRIu32 "\n", "connections", st.connections);
	printf("%-18s %" PRIu64 "\n", "tokens generated", st.tokens_generated);
	kvc_disconnect(conn);
	return 0;
}

static const struct {
	const char *name;
	int (*run)(int argc, char **argv);
} commands[] = {
	{ "prompt-text", cmd_prompt_text },
	{ "prompt-peft", cmd_prompt_peft },
	{ "prompt-random", cmd_prompt_random },
	{ "chain", cmd_chain },
	{ "create", cmd_create },
	{ "append", cmd_append },
	{ "generate", cmd_generate },
	{ "drop", cmd_drop },
	{ "fork", cmd_fork },
	{ "release", cmd_release },
	{ "stats", cmd_stats },
};

int main(int argc, char **argv)
{
	int i = 1;
	size_t k;

	while (i < argc && argv[i][0] == '-') {
		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			usage(stdout);
			return 0;
		}
		if (!strcmp(argv[i], "--socket") && i + 1 < argc) {
			socket_arg = argv[i + 1];
			i += 2;
		} else if (!strncmp(argv[i], "--socket=", 9)) {
			socket_arg = argv[i] + 9;
			i++;
		} else {
			usage_error("unknown option '%s'", argv[i]);
		}
	}
	if (i == argc)
		usage_error("no command given");
	for (k = 0; k < sizeof(commands) / sizeof(commands[0]); k++) {
		if (!strcmp(argv[i], commands[k].name)) {
			/* each command parses its own options from argv[i] on */
			optind = 1;
			return commands[k].run(argc - i, argv + i);
		}
	}
	usage_error("unknown command '%s'", argv[i]);
}
