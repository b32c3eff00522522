/* SPDX-License-Identifier: MIT */
/*
 * bench-daemon - what going through kvchaind costs. It starts its own
 * kvchaind on a socket in a temporary folder and measures:
 *   1. the round trip of the cheapest request (Stats) over the shared
 *      rings and over the socket (KVCHAIN_TRANSPORT=socket): median and
 *      99th percentile;
 *   2. decode speed through the daemon against the engine run in this
 *      process on the same model file, thread count and engine settings:
 *      one stage with a short input, 128 tokens, EOS ignored, best of 3.
 * Tokens per second are timed where the tokens arrive (the client's
 * callback), from the first token to the last, so both sides pay for
 * delivering them. Without --model it makes a Q8_0 model of about 136M
 * parameters with tests/mkmodel. Prints a table; not part of `make check`.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench-args.h"
#include "kvchain.h"
#include "kvstore.h"
#include "model.h"
#include "prompt.h"
#include "random-prompt.h"
#include "segment.h"

#define PROMPT_TOKENS 8		/* virtual tokens of the stage prompt */
#define WARMUP_REQUESTS 200
#define WARMUP_TOKENS 16
#define BLOCK_TOKENS 16		/* the daemon's default block_tokens */
#define MAX_BATCH 64		/* the daemon's default max_batch */
#define DAEMON_START_SECONDS 120

static const char input_text[] = "Once upon a time, in a small town by the sea,";

struct options {
	const char *daemon;
	const char *mkmodel;
	const char *model;
	unsigned long threads;
	unsigned long requests;
	unsigned long tokens;
	unsigned long runs;
};

static double now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ==== Finding programs and running them =============================== */

/*
 * Writes into @out the path of @rel relative to the build tree this
 * program runs from: its folder's parent, skipping a libtool .libs folder.
 */
static int beside_build(const char *rel, char *out, size_t outlen)
{
	char self[PATH_MAX];
	ssize_t n;
	char *slash;

	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return -errno;
	self[n] = '\0';
	slash = strrchr(self, '/');
	if (!slash)
		return -ENOENT;
	*slash = '\0';			/* the program's folder */
	slash = strrchr(self, '/');
	if (slash && !strcmp(slash + 1, ".libs")) {
		*slash = '\0';
		slash = strrchr(self, '/');
	}
	if (!slash)
		return -ENOENT;
	*slash = '\0';			/* the build tree */
	if (snprintf(out, outlen, "%s/%s", self, rel) >= (int)outlen)
		return -ENAMETOOLONG;
	return access(out, X_OK) ? -errno : 0;
}

/* Runs @argv with stdout and stderr sent to @log_path; returns its pid. */
static pid_t spawn(char *const argv[], const char *log_path)
{
	pid_t pid = fork();
	int fd;

	if (pid != 0)
		return pid;
	fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd >= 0) {
		dup2(fd, STDOUT_FILENO);
		dup2(fd, STDERR_FILENO);
	}
	execv(argv[0], argv);
	_exit(127);
}

static int run_mkmodel(const char *mkmodel, const char *out,
		       const char *log_path)
{
	char *argv[] = {
		(char *)mkmodel, "-o", (char *)out, "--type", "Q8_0",
		"--dim", "1024", "--layers", "12", "--ff", "2816",
		"--heads", "16", "--kv-heads", "4", "--ctx", "2048", NULL,
	};
	pid_t pid = spawn(argv, log_path);
	int status;

	if (pid < 0 || waitpid(pid, &status, 0) < 0)
		return -errno;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

/* Starts kvchaind and waits until its socket exists. */
static pid_t start_daemon(const struct options *o, const char *dir,
			  const char *socket)
{
	char conf[PATH_MAX], log_path[PATH_MAX], threads[24];
	char *argv[] = {
		(char *)o->daemon, "-c", conf, "--model", (char *)o->model,
		"--socket", (char *)socket, "--threads", threads,
		"--arena-mib", "512", "--log-level", "warn", NULL,
	};
	double deadline = now_seconds() + DAEMON_START_SECONDS;
	struct timespec pause = { .tv_nsec = 50 * 1000 * 1000 };
	struct stat st;
	int status, fd;
	pid_t pid;

	/* an empty settings file, so no system-wide one is read */
	snprintf(conf, sizeof(conf), "%s/kvchain.conf", dir);
	snprintf(log_path, sizeof(log_path), "%s/daemon.log", dir);
	snprintf(threads, sizeof(threads), "%lu", o->threads);
	fd = open(conf, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		return -1;
	close(fd);
	pid = spawn(argv, log_path);
	if (pid < 0)
		return -1;
	while (stat(socket, &st) != 0) {
		if (waitpid(pid, &status, WNOHANG) == pid) {
			fprintf(stderr, "bench-daemon: kvchaind exited at start; see its log below\n");
			return -1;
		}
		if (now_seconds() > deadline) {
			fprintf(stderr, "bench-daemon: kvchaind did not create %s within %d s\n",
				socket, DAEMON_START_SECONDS);
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			return -1;
		}
		nanosleep(&pause, NULL);
	}
	return pid;
}

/* Stops kvchaind with SIGTERM; returns its exit status or -1. */
static int stop_daemon(pid_t pid)
{
	int status;

	kill(pid, SIGTERM);
	if (waitpid(pid, &status, 0) < 0)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void print_file(const char *path)
{
	char line[512];
	FILE *f = fopen(path, "r");

	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		fprintf(stderr, "  %s", line);
	fclose(f);
}

/* Adds @m's elements to *params and its bytes to *bytes. */
static void count_matrix(const struct model_matrix *m, uint64_t *params,
			 uint64_t *bytes)
{
	*params += (uint64_t)m->n_in * m->n_out;
	*bytes += (uint64_t)kern_row_bytes(m->type, m->n_in) * m->n_out;
}

/* Counts the matrices one decoded token reads: every layer's and the
 * output (the embedding table is read one row per token). */
static void count_weights(const struct model *m, uint64_t *params,
			  uint64_t *bytes)
{
	const struct model_layer *l;
	uint32_t i;

	*params = *bytes = 0;
	for (i = 0; i < m->cfg.n_layers; i++) {
		l = &m->layers[i];
		count_matrix(&l->wq, params, bytes);
		count_matrix(&l->wk, params, bytes);
		count_matrix(&l->wv, params, bytes);
		count_matrix(&l->wo, params, bytes);
		count_matrix(&l->w_gate, params, bytes);
		count_matrix(&l->w_up, params, bytes);
		count_matrix(&l->w_down, params, bytes);
	}
	count_matrix(&m->output, params, bytes);
}

/* ==== Round trips ===================================================== */

struct latency {
	double median_us;
	double p99_us;
	double mean_us;
};

static int compare_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Times @n Stats requests on a new connection over @transport. */
static int measure_round_trips(const char *socket, const char *transport,
			       unsigned long n, struct latency *out)
{
	struct kvc_stats st = { .struct_size = sizeof(st) };
	double *samples, t0, sum = 0;
	kvc_conn *conn;
	unsigned long i;
	int rc;

	samples = malloc(n * sizeof(*samples));
	if (!samples)
		return -ENOMEM;
	setenv("KVCHAIN_TRANSPORT", transport, 1);
	rc = kvc_connect(socket, "bench-daemon", &conn);
	unsetenv("KVCHAIN_TRANSPORT");
	if (rc < 0) {
		fprintf(stderr, "bench-daemon: connect over %s: %s\n",
			transport, kvc_strerror(rc));
		free(samples);
		return rc;
	}
	for (i = 0; i < WARMUP_REQUESTS && rc == 0; i++)
		rc = kvc_stats(conn, &st);
	for (i = 0; i < n && rc == 0; i++) {
		t0 = now_seconds();
		rc = kvc_stats(conn, &st);
		samples[i] = (now_seconds() - t0) * 1e6;
		sum += samples[i];
	}
	if (rc < 0) {
		fprintf(stderr, "bench-daemon: Stats over %s: %s: %s\n",
			transport, kvc_strerror(rc), kvc_last_error(conn));
	} else {
		qsort(samples, n, sizeof(*samples), compare_double);
		out->median_us = samples[n / 2];
		out->p99_us = samples[(size_t)((double)(n - 1) * 0.99)];
		out->mean_us = sum / (double)n;
	}
	kvc_disconnect(conn);
	free(samples);
	return rc;
}

/* ==== Decode speed ==================================================== */

/* Times the tokens where they arrive. */
struct token_clock {
	uint32_t n;		/* tokens seen (the final id -1 not counted) */
	double first;
	double last;
};

static int on_token(void *arg, int32_t id, const char *text, size_t len)
{
	struct token_clock *tc = arg;
	double t = now_seconds();

	(void)text;
	(void)len;
	if (id < 0)
		return 0;
	if (tc->n++ == 0)
		tc->first = t;
	tc->last = t;
	return 0;
}

static double tokens_per_second(const struct token_clock *tc)
{
	if (tc->n < 2 || tc->last <= tc->first)
		return 0;
	return (double)(tc->n - 1) / (tc->last - tc->first);
}

struct decode_result {
	double client_tps;	/* measured at the callback */
	double engine_tps;	/* the engine's own decode figure */
};

/* The engine in this process, set up as kvchaind sets up its own. */
struct inproc {
	struct model *model;
	void *mem;
	struct kv_store *store;
	struct kern_pool *pool;
	struct engine *eng;
	struct stage_prompt *prompt;
	struct chain *chain;
};

static void inproc_free(struct inproc *ip)
{
	if (ip->chain)
		chain_release(ip->chain);
	stage_prompt_free(ip->prompt);
	if (ip->eng)
		engine_destroy(ip->eng);
	if (ip->store)
		kv_store_destroy(ip->store);
	if (ip->pool)
		kern_pool_destroy(ip->pool);
	free(ip->mem);
	model_free(ip->model);
}

static int inproc_setup(struct inproc *ip, const char *model_path,
			int threads)
{
	const struct stage_prompt *prompts[1];
	uint32_t n_ctx;
	size_t count, bytes;
	float *embd;
	char err[512];
	int rc;

	memset(ip, 0, sizeof(*ip));
	rc = model_load(model_path, &ip->model, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "bench-daemon: %s\n", err);
		return rc;
	}
	n_ctx = ip->model->cfg.n_ctx_train;
	bytes = kv_store_block_bytes(ip->model, KERN_TYPE_F16, BLOCK_TOKENS) *
		(2 * (n_ctx / BLOCK_TOKENS) + 16);
	ip->mem = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
	ip->pool = kern_pool_create(threads);
	if (!ip->mem || !ip->pool ||
	    kv_store_create(ip->mem, bytes, ip->model, KERN_TYPE_F16,
			    BLOCK_TOKENS, &ip->store) < 0)
		return -ENOMEM;
	ip->eng = engine_create(ip->model, ip->store, ip->pool, MAX_BATCH,
				n_ctx);
	if (!ip->eng)
		return -ENOMEM;
	count = (size_t)PROMPT_TOKENS * ip->model->cfg.d_model;
	embd = malloc(count * sizeof(float));
	if (!embd)
		return -ENOMEM;
	random_prompt_fill(embd, count, 1);
	rc = stage_prompt_soft(ip->model, embd, PROMPT_TOKENS,
			       ip->model->cfg.d_model, &ip->prompt, err,
			       sizeof(err));
	free(embd);
	if (rc < 0) {
		fprintf(stderr, "bench-daemon: %s\n", err);
		return rc;
	}
	prompts[0] = ip->prompt;
	rc = chain_create(ip->eng, prompts, 1, &ip->chain, err, sizeof(err));
	if (rc < 0)
		fprintf(stderr, "bench-daemon: %s\n", err);
	return rc;
}

static int inproc_decode(struct inproc *ip, uint32_t tokens,
			 struct decode_result *out)
{
	struct token_clock tc = { 0 };
	struct gen_params gp;
	struct gen_stats st;
	struct segment *seg;
	int rc;

	rc = segment_create(ip->chain, &seg);
	if (rc < 0)
		return rc;
	rc = segment_append_text(seg, SPAN_SHARED_INPUT, 0, input_text,
				 strlen(input_text), NULL, NULL, NULL);
	memset(&gp, 0, sizeof(gp));
	sampler_params_default(&gp.sampling);
	gp.max_tokens = tokens;
	gp.ignore_eos = true;
	if (rc == 0)
		rc = segment_generate(seg, 0, &gp, NULL, on_token, &tc, NULL,
				      &st);
	segment_release(seg);
	if (rc < 0)
		return rc;
	out->client_tps = tokens_per_second(&tc);
	out->engine_tps = st.decode_seconds > 0 ?
			  (double)(st.n_generated - 1) / st.decode_seconds : 0;
	return 0;
}

/* The same stage through kvchaind. */
struct remote {
	kvc_conn *conn;
	uint64_t chain;
};

static int remote_setup(struct remote *r, const char *socket)
{
	struct kvc_server_info info = { .struct_size = sizeof(info) };
	uint64_t prompt;
	size_t count;
	float *embd;
	int rc;

	rc = kvc_connect(socket, "bench-daemon", &r->conn);
	if (rc < 0) {
		fprintf(stderr, "bench-daemon: connect: %s\n", kvc_strerror(rc));
		return rc;
	}
	kvc_server_info(r->conn, &info);
	count = (size_t)PROMPT_TOKENS * info.d_model;
	embd = malloc(count * sizeof(float));
	if (!embd)
		return KVC_ENOMEM;
	random_prompt_fill(embd, count, 1);
	rc = kvc_prompt_soft(r->conn, embd, PROMPT_TOKENS, info.d_model,
			     &prompt);
	free(embd);
	if (rc == 0)
		rc = kvc_chain_create(r->conn, &prompt, 1, &r->chain);
	if (rc < 0)
		fprintf(stderr, "bench-daemon: setting up the chain: %s: %s\n",
			kvc_strerror(rc), kvc_last_error(r->conn));
	return rc;
}

static int remote_decode(struct remote *r, uint32_t tokens,
			 struct decode_result *out)
{
	struct kvc_gen_result res = { .struct_size = sizeof(res) };
	struct token_clock tc = { 0 };
	struct kvc_gen_params params;
	kvc_handle h;
	int rc;

	rc = kvc_segment_create(r->conn, r->chain, &h);
	if (rc < 0)
		goto out_report;
	rc = kvc_append_text(r->conn, &h, KVC_SHARED_INPUT, 0, input_text,
			     strlen(input_text), NULL, 0, NULL);
	kvc_gen_params_init(&params);
	params.max_tokens = tokens;
	params.ignore_eos = 1;
	if (rc == 0)
		rc = kvc_generate(r->conn, &h, 0, &params, on_token, &tc, &res);
	kvc_release(r->conn, &h);
	if (rc < 0)
		goto out_report;
	out->client_tps = tokens_per_second(&tc);
	out->engine_tps = res.decode_seconds > 0 ?
			  (double)(res.n_generated - 1) / res.decode_seconds :
			  0;
	return 0;

out_report:
	fprintf(stderr, "bench-daemon: decode through kvchaind: %s: %s\n",
		kvc_strerror(rc), kvc_last_error(r->conn));
	return rc;
}

static void keep_best(struct decode_result *best,
		      const struct decode_result *run)
{
	if (run->client_tps > best->client_tps)
		*best = *run;
}

/* Runs both sides @runs times, alternating, and keeps each one's best. */
static int measure_decode(const struct options *o, struct inproc *ip,
			  struct remote *r, struct decode_result *best_ip,
			  struct decode_result *best_r)
{
	struct decode_result run;
	unsigned long i;
	int rc;

	/* warm caches and the daemon's first-use allocations */
	rc = inproc_decode(ip, WARMUP_TOKENS, &run);
	if (rc == 0)
		rc = remote_decode(r, WARMUP_TOKENS, &run);
	for (i = 0; i < o->runs && rc == 0; i++) {
		rc = inproc_decode(ip, (uint32_t)o->tokens, &run);
		if (rc < 0)
			break;
		keep_best(best_ip, &run);
		rc = remote_decode(r, (uint32_t)o->tokens, &run);
		if (rc < 0)
			break;
		keep_best(best_r, &run);
	}
	return rc;
}

/* ==== Main ============================================================ */

static void usage(FILE *out)
{
	fprintf(out,
"usage: bench-daemon [options]\n"
"Measures Stats round trips over kvchaind's rings and socket, and decode\n"
"speed through kvchaind against the engine in this process.\n"
"  --daemon PATH     kvchaind to start (default: daemon/kvchaind of this\n"
"                    build tree)\n"
"  --model FILE      GGUF model (default: a Q8_0 model of about 136M parameters\n"
"                    made with tests/mkmodel of this build tree)\n"
"  --mkmodel PATH    the tests/mkmodel to use\n"
"  --threads N       forward-pass threads on both sides (default 2)\n"
"  --requests N      timed Stats requests per transport (default 10000)\n"
"  --tokens N        generated tokens per run (default 128)\n"
"  --runs N          runs per side; the best counts (default 3)\n");
}

static int parse_args(int argc, char **argv, struct options *o)
{
	static const struct option opts[] = {
		{ "daemon", required_argument, NULL, 'd' },
		{ "model", required_argument, NULL, 'm' },
		{ "mkmodel", required_argument, NULL, 'k' },
		{ "threads", required_argument, NULL, 't' },
		{ "requests", required_argument, NULL, 'r' },
		{ "tokens", required_argument, NULL, 'n' },
		{ "runs", required_argument, NULL, 'R' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *prog = "bench-daemon";
	int c, rc = 0;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'd': o->daemon = optarg; break;
		case 'm': o->model = optarg; break;
		case 'k': o->mkmodel = optarg; break;
		case 't':
			rc = bench_parse_uint(prog, "--threads", optarg, 1,
					      1024, &o->threads);
			break;
		case 'r':
			rc = bench_parse_uint(prog, "--requests", optarg, 1,
					      10000000, &o->requests);
			break;
		case 'n':
			rc = bench_parse_uint(prog, "--tokens", optarg, 2,
					      1024, &o->tokens);
			break;
		case 'R':
			rc = bench_parse_uint(prog, "--runs", optarg, 1, 100,
					      &o->runs);
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			return -1;
		}
		if (rc < 0)
			return -1;
	}
	return optind == argc ? 0 : -1;
}

static void print_table(const struct options *o, const struct latency *ring,
			const struct latency *sock,
			const struct decode_result *ip,
			const struct decode_result *r)
{
	double ratio = ip->client_tps > 0 ? r->client_tps / ip->client_tps : 0;

	printf("\nStats round trip (%lu requests)   median us   p99 us   mean us\n",
	       o->requests);
	printf("  shared rings                     %9.1f %8.1f %9.1f\n",
	       ring->median_us, ring->p99_us, ring->mean_us);
	printf("  socket                           %9.1f %8.1f %9.1f\n",
	       sock->median_us, sock->p99_us, sock->mean_us);
	printf("\nDecode, %lu tokens, %lu threads, best of %lu   tokens/s at client   engine tokens/s\n",
	       o->tokens, o->threads, o->runs);
	printf("  in-process engine                   %18.2f %17.2f\n",
	       ip->client_tps, ip->engine_tps);
	printf("  through kvchaind                    %18.2f %17.2f\n",
	       r->client_tps, r->engine_tps);
	printf("  kvchaind / in-process               %18.3f   (target >= 0.95)\n",
	       ratio);
}

int main(int argc, char **argv)
{
	struct options o = {
		.threads = 2, .requests = 10000, .tokens = 128, .runs = 3,
	};
	char daemon_path[PATH_MAX], mkmodel_path[PATH_MAX];
	char dir[] = "/tmp/bench-daemon.XXXXXX";
	char socket[PATH_MAX], model[PATH_MAX], log_path[PATH_MAX];
	struct decode_result best_ip = { 0 }, best_r = { 0 };
	struct latency ring = { 0 }, sock = { 0 };
	struct remote r = { 0 };
	uint64_t params, bytes;
	struct inproc ip;
	int rc, status = 1;
	pid_t pid;

	if (parse_args(argc, argv, &o) < 0) {
		usage(stderr);
		return 2;
	}
	if (!o.daemon) {
		if (beside_build("daemon/kvchaind", daemon_path,
				 sizeof(daemon_path)) < 0) {
			fprintf(stderr, "bench-daemon: daemon/kvchaind not found in this build tree; pass --daemon PATH\n");
			return 1;
		}
		o.daemon = daemon_path;
	}
	if (!mkdtemp(dir)) {
		fprintf(stderr, "bench-daemon: mkdtemp %s: %s\n", dir,
			strerror(errno));
		return 1;
	}
	snprintf(socket, sizeof(socket), "%s/kvchaind.sock", dir);
	snprintf(log_path, sizeof(log_path), "%s/daemon.log", dir);
	snprintf(model, sizeof(model), "%s/model.gguf", dir);
	if (!o.model) {
		if (!o.mkmodel &&
		    beside_build("tests/mkmodel", mkmodel_path,
				 sizeof(mkmodel_path)) == 0)
			o.mkmodel = mkmodel_path;
		if (!o.mkmodel) {
			fprintf(stderr, "bench-daemon: tests/mkmodel not found in this build tree; pass --model FILE or --mkmodel PATH\n");
			goto out_remove_dir;
		}
		printf("making a Q8_0 model (dim 1024, 12 layers, ff 2816) in %s\n",
		       model);
		fflush(stdout);
		if (run_mkmodel(o.mkmodel, model, log_path) < 0) {
			fprintf(stderr, "bench-daemon: %s failed:\n", o.mkmodel);
			print_file(log_path);
			goto out_remove_dir;
		}
		o.model = model;
	}

	kern_init();
	rc = inproc_setup(&ip, o.model, (int)o.threads);
	if (rc < 0) {
		fprintf(stderr, "bench-daemon: cannot set up the engine: %s\n",
			strerror(-rc));
		goto out_free_inproc;
	}
	count_weights(ip.model, &params, &bytes);
	printf("model %s: %.1fM parameters in the matrices a token reads, %.1f MiB\n",
	       o.model, (double)params / 1e6, (double)bytes / (1 << 20));
	fflush(stdout);
	pid = start_daemon(&o, dir, socket);
	if (pid < 0) {
		print_file(log_path);
		goto out_free_inproc;
	}

	rc = measure_round_trips(socket, "rings", o.requests, &ring);
	if (rc == 0)
		rc = measure_round_trips(socket, "socket", o.requests, &sock);
	if (rc == 0)
		rc = remote_setup(&r, socket);
	if (rc == 0)
		rc = measure_decode(&o, &ip, &r, &best_ip, &best_r);
	if (r.conn)
		kvc_disconnect(r.conn);
	if (stop_daemon(pid) != 0) {
		fprintf(stderr, "bench-daemon: kvchaind did not exit 0 on SIGTERM; its log:\n");
		print_file(log_path);
		rc = -1;
	}
	if (rc == 0) {
		print_table(&o, &ring, &sock, &best_ip, &best_r);
		status = 0;
	}

out_free_inproc:
	inproc_free(&ip);
out_remove_dir:
	unlink(socket);
	unlink(log_path);
	unlink(model);
	snprintf(log_path, sizeof(log_path), "%s/kvchain.conf", dir);
	unlink(log_path);
	rmdir(dir);
	return status;
}
