/* SPDX-License-Identifier: MIT */
/*
 * stress-client - the load generator and checker of tests/daemon-stress.sh.
 *
 * It first runs every chain of its small table of cases in this process
 * over the engine API, which gives the expected greedy outputs. It then
 * registers the stage prompts and chains with kvchaind, notes the daemon's
 * statistics, and forks the client processes. Each client runs whole
 * chains until its time is up: create a segment, append the shared and
 * stage inputs, generate as stage A, drop I_A, generate as stage B; some
 * chains also fork and generate on the fork, run stage B from a second
 * connection that attaches by handle, or leave their holds to the
 * disconnect. Every output must match the expected token ids and text.
 * After the clients exit, the daemon must return to the noted statistics
 * once its TTL has expired the released segments, and still serve a chain.
 * Exits 0 when everything matched, 1 otherwise, 2 for bad usage.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvchain.h"
#include "kvstore.h"
#include "model.h"
#include "prompt.h"
#include "random-prompt.h"
#include "segment.h"

#define N_PROMPT_TOKENS 8	/* virtual tokens of each stage prompt */
#define N_CHAINS 2		/* chains (prompt pairs) the cases use */
#define MAX_TOKENS_A 16		/* O_A */
#define MAX_TOKENS_B 16		/* O_B */
#define MAX_TOKENS_FORK 8	/* stage A again, on a fork after O_A */
#define MAX_CLIENTS 256
#define LOGGED_FAILURES 3	/* failure messages printed per client */

static const char *const shared_inputs[] = {
	"What colour is the sky on a clear day?",
	"Which river runs through the old town, and how wide is it?",
};
static const char *const stage_inputs[] = {
	"Passage: the sky looks blue because air scatters blue light most.",
	"Passage: the river is forty metres wide where the stone bridge "
	"crosses it, and it floods every spring.",
};
#define N_SHARED (sizeof(shared_inputs) / sizeof(shared_inputs[0]))
#define N_STAGE (sizeof(stage_inputs) / sizeof(stage_inputs[0]))
#define N_CASES (N_CHAINS * N_SHARED * N_STAGE)

/* A generated output: token ids (the final id -1 included) and text. */
struct output {
	int32_t *ids;
	uint32_t n_ids;
	uint32_t cap_ids;
	char *text;
	size_t len;
	size_t cap_text;
	bool out_of_memory;
};

/* The expected outputs of one case. */
struct expected {
	struct output o_a;	/* stage A */
	struct output o_b;	/* stage B, I_A dropped */
	struct output o_fork;	/* stage A on a fork taken after the drop */
};

/* A case: one chain, one shared input, one stage input. */
struct chain_case {
	uint32_t chain;
	const char *i_all;
	const char *i_a;
};

/* What one client process did; lives in memory shared with the driver. */
struct client_counts {
	uint64_t chains;
	uint64_t failed_chains;
	uint64_t forks;
	uint64_t attaches;
	uint64_t reconnects;
	double slowest_chain;	/* seconds */
};

struct options {
	const char *socket;
	const char *model;
	const char *label;
	uint32_t clients;
	uint32_t seconds;
	uint32_t settle_seconds;	/* longest wait for the TTL to expire */
	uint32_t max_chain_seconds;	/* a slower chain counts as starved */
};

static struct expected expect[N_CASES];

static struct chain_case case_of(uint32_t index)
{
	struct chain_case c = {
		.chain = index % N_CHAINS,
		.i_all = shared_inputs[(index / N_CHAINS) % N_SHARED],
		.i_a = stage_inputs[(index / (N_CHAINS * N_SHARED)) % N_STAGE],
	};

	return c;
}

static double now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ==== Outputs ========================================================= */

static int collect(void *arg, int32_t id, const char *text, size_t len)
{
	struct output *o = arg;
	void *p;

	if (o->n_ids == o->cap_ids) {
		o->cap_ids = o->cap_ids ? 2 * o->cap_ids : 32;
		p = realloc(o->ids, o->cap_ids * sizeof(*o->ids));
		if (!p) {
			o->out_of_memory = true;
			return 1;
		}
		o->ids = p;
	}
	o->ids[o->n_ids++] = id;
	if (o->len + len + 1 > o->cap_text) {
		o->cap_text = 2 * (o->len + len + 1);
		p = realloc(o->text, o->cap_text);
		if (!p) {
			o->out_of_memory = true;
			return 1;
		}
		o->text = p;
	}
	memcpy(o->text + o->len, text, len);
	o->len += len;
	o->text[o->len] = '\0';
	return 0;
}

static void output_free(struct output *o)
{
	free(o->ids);
	free(o->text);
	memset(o, 0, sizeof(*o));
}

/* Returns NULL if @got equals @want, else what differs. */
static const char *output_diff(const struct output *got,
			       const struct output *want)
{
	if (got->out_of_memory)
		return "out of memory collecting the output";
	if (got->n_ids != want->n_ids)
		return "the number of tokens differs";
	if (memcmp(got->ids, want->ids, want->n_ids * sizeof(*want->ids)))
		return "a token id differs";
	if (got->len != want->len || memcmp(got->text, want->text, want->len))
		return "the text differs";
	return NULL;
}

/* ==== Expected outputs: the cases run in this process ================= */

static struct stage_prompt *inproc_prompt(const struct model *m,
					  uint64_t seed)
{
	size_t count = (size_t)N_PROMPT_TOKENS * m->cfg.d_model;
	struct stage_prompt *p = NULL;
	float *embd = malloc(count * sizeof(float));
	char err[256];

	if (!embd)
		return NULL;
	random_prompt_fill(embd, count, seed);
	if (stage_prompt_soft(m, embd, N_PROMPT_TOKENS, m->cfg.d_model, &p,
			      err, sizeof(err)) < 0) {
		fprintf(stderr, "stress-client: %s\n", err);
		p = NULL;
	}
	free(embd);
	return p;
}

static void greedy(struct gen_params *p, uint32_t max_tokens)
{
	memset(p, 0, sizeof(*p));
	sampler_params_default(&p->sampling);
	p->max_tokens = max_tokens;
	p->ignore_eos = true;
}

/* Runs case @c the way a client does, filling @e. */
static int inproc_case(struct chain *chain, const struct chain_case *c,
		       struct expected *e)
{
	struct segment *seg = NULL, *fork = NULL;
	struct gen_params gp;
	struct gen_stats st;
	uint32_t i_a;
	int rc;

	rc = segment_create(chain, &seg);
	if (rc < 0)
		return rc;
	rc = segment_append_text(seg, SPAN_SHARED_INPUT, 0, c->i_all,
				 strlen(c->i_all), NULL, NULL, NULL);
	if (rc == 0)
		rc = segment_append_text(seg, SPAN_STAGE_INPUT, 0, c->i_a,
					 strlen(c->i_a), NULL, &i_a, NULL);
	greedy(&gp, MAX_TOKENS_A);
	if (rc == 0)
		rc = segment_generate(seg, 0, &gp, NULL, collect, &e->o_a,
				      NULL, &st);
	if (rc == 0)
		rc = segment_drop(seg, i_a);
	if (rc == 0)
		rc = segment_fork(seg, &fork);
	greedy(&gp, MAX_TOKENS_B);
	if (rc == 0)
		rc = segment_generate(seg, 1, &gp, NULL, collect, &e->o_b,
				      NULL, &st);
	greedy(&gp, MAX_TOKENS_FORK);
	if (rc == 0)
		rc = segment_generate(fork, 0, &gp, NULL, collect, &e->o_fork,
				      NULL, &st);
	if (fork)
		segment_release(fork);
	segment_release(seg);
	return rc;
}

/*
 * Computes every case's outputs with the daemon's default engine settings
 * (F16 KV, 16-token blocks, 2 threads, 64-token batches), which
 * daemon-stress.sh also gives kvchaind. Joins its threads before
 * returning, so the caller may fork.
 */
static int compute_expected(const char *model_path)
{
	struct stage_prompt *prompts[2 * N_CHAINS] = { NULL };
	const struct stage_prompt *pair[2];
	struct chain *chains[N_CHAINS] = { NULL };
	struct kv_store *store = NULL;
	struct kern_pool *pool = NULL;
	struct engine *eng = NULL;
	struct model *m = NULL;
	struct chain_case c;
	void *mem = NULL;
	size_t bytes;
	char err[512];
	uint32_t i;
	int rc = -ENOMEM;

	kern_init();
	rc = model_load(model_path, &m, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "stress-client: %s\n", err);
		return rc;
	}
	bytes = kv_store_block_bytes(m, KERN_TYPE_F16, 16) * 256;
	mem = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
	pool = kern_pool_create(2);
	rc = -ENOMEM;
	if (!mem || !pool ||
	    kv_store_create(mem, bytes, m, KERN_TYPE_F16, 16, &store) < 0)
		goto out;
	eng = engine_create(m, store, pool, 64, m->cfg.n_ctx_train);
	if (!eng)
		goto out;
	for (i = 0; i < 2 * N_CHAINS; i++) {
		prompts[i] = inproc_prompt(m, i + 1);
		if (!prompts[i])
			goto out;
	}
	for (i = 0; i < N_CHAINS; i++) {
		pair[0] = prompts[2 * i];
		pair[1] = prompts[2 * i + 1];
		rc = chain_create(eng, pair, 2, &chains[i], err, sizeof(err));
		if (rc < 0) {
			fprintf(stderr, "stress-client: %s\n", err);
			goto out;
		}
	}
	for (i = 0; i < N_CASES; i++) {
		c = case_of(i);
		rc = inproc_case(chains[c.chain], &c, &expect[i]);
		if (rc < 0)
			goto out;
	}
	rc = 0;
out:
	for (i = 0; i < N_CHAINS; i++)
		if (chains[i])
			chain_release(chains[i]);
	for (i = 0; i < 2 * N_CHAINS; i++)
		stage_prompt_free(prompts[i]);
	if (eng)
		engine_destroy(eng);
	if (store)
		kv_store_destroy(store);
	if (pool)
		kern_pool_destroy(pool);
	free(mem);
	model_free(m);
	return rc;
}

/* ==== Setting up the daemon =========================================== */

/* Registers the stage prompts and creates the chains of the cases. */
static int setup_daemon(kvc_conn *conn, uint64_t chain_ids[N_CHAINS])
{
	struct kvc_server_info info = { .struct_size = sizeof(info) };
	uint64_t prompt_ids[2 * N_CHAINS];
	size_t count;
	float *embd;
	uint32_t i;
	int rc;

	rc = kvc_server_info(conn, &info);
	if (rc < 0)
		return rc;
	count = (size_t)N_PROMPT_TOKENS * info.d_model;
	embd = malloc(count * sizeof(float));
	if (!embd)
		return KVC_ENOMEM;
	for (i = 0; i < 2 * N_CHAINS && rc == 0; i++) {
		random_prompt_fill(embd, count, i + 1);
		rc = kvc_prompt_soft(conn, embd, N_PROMPT_TOKENS,
				     info.d_model, &prompt_ids[i]);
	}
	free(embd);
	for (i = 0; i < N_CHAINS && rc == 0; i++)
		rc = kvc_chain_create(conn, &prompt_ids[2 * i], 2,
				      &chain_ids[i]);
	return rc;
}

/* ==== One client ====================================================== */

struct client {
	uint32_t index;
	const char *socket;
	const uint64_t *chain_ids;
	kvc_conn *conn;
	struct client_counts *counts;
	uint32_t n_logged;
	bool failed;		/* the current chain failed */
};

/* Records a failure of the current chain; prints the first few. */
static void fail(struct client *cl, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void fail(struct client *cl, const char *fmt, ...)
{
	va_list ap;

	cl->failed = true;
	if (cl->n_logged >= LOGGED_FAILURES)
		return;
	cl->n_logged++;
	fprintf(stderr, "FAIL: client %" PRIu32 ": ", cl->index);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* Records a failed call on @conn; returns true if @rc is an error. */
static bool call_failed(struct client *cl, kvc_conn *conn, int rc,
			const char *what)
{
	if (rc == 0)
		return false;
	fail(cl, "%s: %s: %s", what, kvc_strerror(rc), kvc_last_error(conn));
	return true;
}

/* Generates as @stage on @h and compares the output with @want. */
static bool generate_checked(struct client *cl, kvc_conn *conn,
			     const kvc_handle *h, uint32_t stage,
			     uint32_t max_tokens, const struct output *want,
			     const char *what)
{
	struct kvc_gen_result result = { .struct_size = sizeof(result) };
	struct kvc_gen_params params;
	struct output got = { 0 };
	const char *diff;
	int rc;

	kvc_gen_params_init(&params);
	params.max_tokens = max_tokens;
	params.ignore_eos = 1;
	rc = kvc_generate(conn, h, stage, &params, collect, &got, &result);
	if (call_failed(cl, conn, rc, what)) {
		output_free(&got);
		return false;
	}
	diff = output_diff(&got, want);
	if (diff)
		fail(cl, "%s: %s from the in-process engine's output", what,
		     diff);
	if (result.n_generated != max_tokens)
		fail(cl, "%s: %" PRIu32 " tokens generated, expected %" PRIu32,
		     what, result.n_generated, max_tokens);
	if (result.stop_reason != KVC_STOP_MAX_TOKENS)
		fail(cl, "%s: stop reason %" PRIu32 ", expected max_tokens",
		     what, result.stop_reason);
	output_free(&got);
	return diff == NULL;
}

/* Runs stage B from a second connection that attaches by handle. */
static void stage_b_attached(struct client *cl, const kvc_handle *h,
			     const struct expected *e)
{
	kvc_conn *second;
	int rc;

	rc = kvc_connect(cl->socket, "stress-client-b", &second);
	if (rc < 0) {
		fail(cl, "second connect: %s (%s)", kvc_strerror(rc),
		     strerror(errno));
		return;
	}
	cl->counts->attaches++;
	rc = kvc_attach(second, h);
	if (!call_failed(cl, second, rc, "attach")) {
		generate_checked(cl, second, h, 1, MAX_TOKENS_B, &e->o_b,
				 "O_B on the attached connection");
		rc = kvc_release(second, h);
		call_failed(cl, second, rc, "release on the attached connection");
	}
	kvc_disconnect(second);
}

/*
 * Runs one chain of case @case_index. Which extras it does follows from
 * @iteration, so every client mixes them: a fork on every third chain,
 * stage B on a second connection on every fourth, and on every tenth the
 * holds are left for the disconnect to release.
 */
static void run_chain(struct client *cl, uint32_t case_index,
		      uint64_t iteration)
{
	const struct expected *e = &expect[case_index];
	struct chain_case c = case_of(case_index);
	bool do_fork = iteration % 3 == 0;
	bool do_attach = iteration % 4 == 1;
	bool do_reconnect = iteration % 10 == 9;
	kvc_conn *conn = cl->conn;
	kvc_handle h, f;
	uint32_t i_a;
	int rc;

	rc = kvc_segment_create(conn, cl->chain_ids[c.chain], &h);
	if (call_failed(cl, conn, rc, "segment create"))
		return;
	rc = kvc_append_text(conn, &h, KVC_SHARED_INPUT, 0, c.i_all,
			     strlen(c.i_all), NULL, 0, NULL);
	if (call_failed(cl, conn, rc, "append I_ALL"))
		goto out_release;
	rc = kvc_append_text(conn, &h, KVC_STAGE_INPUT, 0, c.i_a,
			     strlen(c.i_a), NULL, 0, &i_a);
	if (call_failed(cl, conn, rc, "append I_A"))
		goto out_release;
	if (!generate_checked(cl, conn, &h, 0, MAX_TOKENS_A, &e->o_a, "O_A"))
		goto out_release;
	rc = kvc_drop_span(conn, &h, i_a);
	if (call_failed(cl, conn, rc, "drop I_A"))
		goto out_release;
	rc = kvc_drop_span(conn, &h, i_a);
	if (rc != KVC_ENOENT)
		fail(cl, "dropping I_A twice returned %s, expected %s",
		     kvc_strerror(rc), kvc_strerror(KVC_ENOENT));

	if (do_fork) {
		rc = kvc_fork(conn, &h, &f);
		if (call_failed(cl, conn, rc, "fork"))
			do_fork = false;
		else
			cl->counts->forks++;
	}
	if (do_attach)
		stage_b_attached(cl, &h, e);
	else
		generate_checked(cl, conn, &h, 1, MAX_TOKENS_B, &e->o_b, "O_B");
	if (do_fork) {
		generate_checked(cl, conn, &f, 0, MAX_TOKENS_FORK, &e->o_fork,
				 "stage A on the fork");
		if (!do_reconnect) {
			rc = kvc_release(conn, &f);
			call_failed(cl, conn, rc, "release of the fork");
		}
	}
	if (do_reconnect)
		return;		/* the caller disconnects, which releases */
out_release:
	rc = kvc_release(conn, &h);
	call_failed(cl, conn, rc, "release");
}

static int client_connect(struct client *cl)
{
	int rc;

	rc = kvc_connect(cl->socket, "stress-client", &cl->conn);
	if (rc < 0)
		fail(cl, "connect: %s (%s)", kvc_strerror(rc), strerror(errno));
	return rc;
}

/* The body of one client process; returns its exit status. */
static int client_main(struct client *cl, double deadline)
{
	uint64_t iteration = 0;
	uint32_t case_index;
	double t0, seconds;

	if (client_connect(cl) < 0)
		return 1;
	while (now_seconds() < deadline) {
		case_index = (uint32_t)((cl->index * 7 + iteration) % N_CASES);
		cl->failed = false;
		t0 = now_seconds();
		run_chain(cl, case_index, iteration);
		seconds = now_seconds() - t0;
		if (seconds > cl->counts->slowest_chain)
			cl->counts->slowest_chain = seconds;
		cl->counts->chains++;
		if (cl->failed)
			cl->counts->failed_chains++;
		/* a failed call may have broken the connection: start over */
		if (cl->failed || iteration % 10 == 9) {
			kvc_disconnect(cl->conn);
			cl->conn = NULL;
			cl->counts->reconnects++;
			if (client_connect(cl) < 0)
				return 1;
		}
		iteration++;
	}
	kvc_disconnect(cl->conn);
	return 0;
}

/* ==== The driver ====================================================== */

static void print_stats(const char *what, const struct kvc_stats *s)
{
	printf("%s: blocks_free %" PRIu32 "/%" PRIu32 ", segments %" PRIu32
	       ", chains %" PRIu32 ", prompts %" PRIu32 ", connections %" PRIu32,
	       what, s->blocks_free, s->blocks_total, s->segments, s->chains,
	       s->prompts, s->connections);
}

static bool stats_equal(const struct kvc_stats *a, const struct kvc_stats *b)
{
	return a->blocks_free == b->blocks_free &&
	       a->segments == b->segments && a->chains == b->chains &&
	       a->prompts == b->prompts && a->connections == b->connections;
}

/*
 * Polls the daemon's statistics until they equal @before or
 * @settle_seconds pass. Returns true if they came back.
 */
static bool wait_for_stats(kvc_conn *conn, const struct kvc_stats *before,
			   struct kvc_stats *after, uint32_t settle_seconds)
{
	double deadline = now_seconds() + settle_seconds;
	struct timespec pause = { .tv_nsec = 100 * 1000 * 1000 };
	int rc;

	for (;;) {
		after->struct_size = sizeof(*after);
		rc = kvc_stats(conn, after);
		if (rc < 0) {
			fprintf(stderr, "FAIL: stats: %s: %s\n",
				kvc_strerror(rc), kvc_last_error(conn));
			return false;
		}
		if (stats_equal(before, after))
			return true;
		if (now_seconds() >= deadline)
			return false;
		nanosleep(&pause, NULL);
	}
}

/* Forks the clients and waits for them; returns how many failed. */
static uint32_t run_clients(const struct options *o,
			    const uint64_t *chain_ids,
			    struct client_counts *counts)
{
	double deadline = now_seconds() + o->seconds;
	pid_t pids[MAX_CLIENTS];
	uint32_t i, bad = 0;
	int status;

	fflush(NULL);
	for (i = 0; i < o->clients; i++) {
		pids[i] = fork();
		if (pids[i] == 0) {
			struct client cl = {
				.index = i,
				.socket = o->socket,
				.chain_ids = chain_ids,
				.counts = &counts[i],
			};

			exit(client_main(&cl, deadline));
		}
		if (pids[i] < 0) {
			fprintf(stderr, "FAIL: fork of client %" PRIu32 ": %s\n",
				i, strerror(errno));
			bad++;
		}
	}
	for (i = 0; i < o->clients; i++) {
		if (pids[i] <= 0)
			continue;
		if (waitpid(pids[i], &status, 0) < 0 || !WIFEXITED(status) ||
		    WEXITSTATUS(status) != 0) {
			fprintf(stderr, "FAIL: client %" PRIu32 " (pid %d) ended with status 0x%x\n",
				i, (int)pids[i], status);
			bad++;
		}
	}
	return bad;
}

static void usage(FILE *out)
{
	fprintf(out,
"usage: stress-client --socket PATH --model FILE [options]\n"
"Runs chains from many client processes against kvchaind serving FILE and\n"
"checks every output against the same chains run in this process.\n"
"  --clients N          client processes (default 32, at most 256)\n"
"  --seconds N          how long each client starts new chains (default 30)\n"
"  --settle-seconds N   longest wait for the daemon's statistics to return\n"
"                       to their starting values (default 20)\n"
"  --max-chain-seconds N  fail if any one chain took longer, which means\n"
"                       the daemon starved a request (default 10)\n"
"  --label TEXT         name printed in the summary line (default daemon)\n");
}

static int parse_args(int argc, char **argv, struct options *o)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "model", required_argument, NULL, 'm' },
		{ "clients", required_argument, NULL, 'c' },
		{ "seconds", required_argument, NULL, 't' },
		{ "settle-seconds", required_argument, NULL, 'w' },
		{ "max-chain-seconds", required_argument, NULL, 'x' },
		{ "label", required_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 's': o->socket = optarg; break;
		case 'm': o->model = optarg; break;
		case 'c': o->clients = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 't': o->seconds = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'w': o->settle_seconds = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'x': o->max_chain_seconds = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'l': o->label = optarg; break;
		case 'h': usage(stdout); exit(0);
		default: return -1;
		}
	}
	if (optind != argc || !o->socket || !o->model || o->clients == 0 ||
	    o->clients > MAX_CLIENTS || o->seconds == 0)
		return -1;
	return 0;
}

/* Runs one more chain from the driver: the daemon must still serve. */
static bool still_serving(const char *socket, const uint64_t *chain_ids)
{
	struct client_counts counts = { 0 };
	struct client cl = {
		.index = MAX_CLIENTS,
		.socket = socket,
		.chain_ids = chain_ids,
		.counts = &counts,
	};

	if (client_connect(&cl) < 0)
		return false;
	/* iteration 0 forks; 1 attaches from a second connection */
	run_chain(&cl, 0, 0);
	run_chain(&cl, 1, 1);
	kvc_disconnect(cl.conn);
	return !cl.failed;
}

int main(int argc, char **argv)
{
	struct options o = {
		.label = "daemon", .clients = 32, .seconds = 30,
		.settle_seconds = 20, .max_chain_seconds = 10,
	};
	struct kvc_stats before = { .struct_size = sizeof(before) };
	struct kvc_stats after = { .struct_size = sizeof(after) };
	struct client_counts *counts, total = { 0 };
	uint64_t generated, counted;
	uint64_t chain_ids[N_CHAINS];
	bool settled, serving;
	uint32_t i, bad;
	kvc_conn *conn;
	double start, elapsed;
	int rc, status = 1;

	if (parse_args(argc, argv, &o) < 0) {
		usage(stderr);
		return 2;
	}
	rc = compute_expected(o.model);
	if (rc < 0) {
		fprintf(stderr, "FAIL: the in-process chains failed: %s\n",
			strerror(-rc));
		goto out_free_expected;
	}
	rc = kvc_connect(o.socket, "stress-driver", &conn);
	if (rc < 0) {
		fprintf(stderr, "FAIL: connect to %s: %s (%s)\n", o.socket,
			kvc_strerror(rc), strerror(errno));
		goto out_free_expected;
	}
	rc = setup_daemon(conn, chain_ids);
	if (rc == 0)
		rc = kvc_stats(conn, &before);
	if (rc < 0) {
		fprintf(stderr, "FAIL: setting up prompts and chains: %s: %s\n",
			kvc_strerror(rc), kvc_last_error(conn));
		goto out_disconnect;
	}
	counts = mmap(NULL, MAX_CLIENTS * sizeof(*counts),
		      PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (counts == MAP_FAILED) {
		fprintf(stderr, "FAIL: mmap of the counters: %s\n",
			strerror(errno));
		goto out_disconnect;
	}

	start = now_seconds();
	bad = run_clients(&o, chain_ids, counts);
	for (i = 0; i < o.clients; i++) {
		total.chains += counts[i].chains;
		total.failed_chains += counts[i].failed_chains;
		total.forks += counts[i].forks;
		total.attaches += counts[i].attaches;
		total.reconnects += counts[i].reconnects;
		if (counts[i].slowest_chain > total.slowest_chain)
			total.slowest_chain = counts[i].slowest_chain;
	}
	elapsed = now_seconds() - start;
	printf("%s: %" PRIu32 " clients, %.1f s: %" PRIu64 " chains (%.1f/s, slowest %.2f s), %" PRIu64 " failed; %" PRIu64 " forks, %" PRIu64 " attaches from a second connection, %" PRIu64 " reconnects\n",
	       o.label, o.clients, elapsed, total.chains,
	       (double)total.chains / elapsed, total.slowest_chain,
	       total.failed_chains, total.forks, total.attaches,
	       total.reconnects);

	settled = wait_for_stats(conn, &before, &after, o.settle_seconds);
	printf("%s: ", o.label);
	print_stats("stats before", &before);
	print_stats("; after", &after);
	printf("; tokens generated %" PRIu64 "\n", after.tokens_generated);
	if (!settled)
		fprintf(stderr, "FAIL: the statistics did not return to their starting values within %" PRIu32 " s\n",
			o.settle_seconds);
	/* every chain generated O_A and O_B in full, every fork its output */
	generated = total.chains * (MAX_TOKENS_A + MAX_TOKENS_B) +
		    total.forks * MAX_TOKENS_FORK;
	counted = after.tokens_generated - before.tokens_generated;
	if (total.failed_chains == 0 && counted != generated)
		fprintf(stderr, "FAIL: the daemon counted %" PRIu64 " generated tokens, the clients received %" PRIu64 "\n",
			counted, generated);
	serving = still_serving(o.socket, chain_ids);
	if (!serving)
		fprintf(stderr, "FAIL: the daemon did not serve a chain after the clients left\n");
	if (total.slowest_chain > o.max_chain_seconds)
		fprintf(stderr, "FAIL: a chain took %.1f s, more than %" PRIu32 " s: a request waited too long\n",
			total.slowest_chain, o.max_chain_seconds);
	if (total.chains < o.clients)
		fprintf(stderr, "FAIL: only %" PRIu64 " chains ran, fewer than one per client\n",
			total.chains);
	if (bad == 0 && total.failed_chains == 0 && settled && serving &&
	    counted == generated &&
	    total.chains >= o.clients &&
	    total.slowest_chain <= o.max_chain_seconds)
		status = 0;
	munmap(counts, MAX_CLIENTS * sizeof(*counts));
out_disconnect:
	kvc_disconnect(conn);
out_free_expected:
	for (i = 0; i < N_CASES; i++) {
		output_free(&expect[i].o_a);
		output_free(&expect[i].o_b);
		output_free(&expect[i].o_fork);
	}
	return status;
}
