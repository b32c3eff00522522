/* SPDX-License-Identifier: MIT */
/*
 * daemon-client.c - a kvchaind test client that speaks the wire protocol
 * directly (protobuf-c on the socket, proto/ring.h rings), without
 * libkvchain. tests/daemon-basic.sh runs one scenario per call.
 *
 *   daemon-client SOCKET basic      every request, over socket and rings
 *   daemon-client SOCKET malformed  hostile messages keep the link working
 *   daemon-client SOCKET ring       a corrupted ring closes only its link
 *   daemon-client SOCKET kill       SIGKILL of a client mid-generation
 *   daemon-client SOCKET quota      max_segments_per_uid (8 in the test)
 *                                   and max_tokens_per_uid (4000)
 *   daemon-client SOCKET evict      LRU eviction, TTL expiry, full arena
 *   daemon-client SOCKET batch      concurrent generations, request order
 *   daemon-client SOCKET refused    expects KVC_EPERM (run as another uid)
 *
 * Exits 0 when every check passed, 1 otherwise.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvchain.h"
#include "kvchain.pb-c.h"
#include "ring.h"

#define TIMEOUT_MS 10000

static int failures;

#define CHECK(cond) check((cond), #cond, __FILE__, __LINE__)

static bool check(bool ok, const char *what, const char *file, int line)
{
	if (!ok) {
		fprintf(stderr, "%s:%d: check failed: %s\n", file, line, what);
		failures++;
	}
	return ok;
}

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "daemon-client: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

/* ==== Transport ======================================================= */

struct client {
	int fd;
	void *shm;
	size_t shm_size;
	struct kvc_ring req, cpl;
	struct kvc_doorbell *doorbell;
	uint32_t max_message;
	uint32_t d_model;
	uint8_t *buf;
	uint64_t next_id;
};

static int connect_to(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	if (fd < 0)
		die("socket: %s", strerror(errno));
	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path);
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)))
		die("connect %s: %s", path, strerror(errno));
	return fd;
}

static void send_raw(int fd, const void *data, size_t len)
{
	if (send(fd, data, len, MSG_NOSIGNAL) != (ssize_t)len)
		die("send: %s", strerror(errno));
}

static void send_socket(struct client *cl, Kvchain__Request *req)
{
	size_t len = kvchain__request__get_packed_size(req);
	uint8_t *buf = malloc(len + 1);

	kvchain__request__pack(req, buf);
	send_raw(cl->fd, buf, len);
	free(buf);
}

static void send_ring(struct client *cl, Kvchain__Request *req)
{
	size_t len = kvchain__request__get_packed_size(req);
	uint8_t *buf = malloc(len + 1);
	int rc;

	kvchain__request__pack(req, buf);
	while ((rc = kvc_ring_write(&cl->req, buf, (uint32_t)len)) == -EAGAIN)
		usleep(1000);
	if (rc)
		die("ring write: %s", strerror(-rc));
	if (kvc_ring_consumer_sleeping(&cl->req)) {
		atomic_fetch_add(&cl->doorbell->counter, 1);
		kvc_futex_wake(&cl->doorbell->counter);
	}
	free(buf);
}

/* Receives one packet; returns its length, 0 at EOF, -ETIMEDOUT. */
static ssize_t recv_packet(int fd, void *buf, size_t cap, int *fds, int nfds)
{
	union {
		struct cmsghdr align;
		char bytes[CMSG_SPACE(4 * sizeof(int))];
	} control;
	struct iovec iov = { .iov_base = buf, .iov_len = cap };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = control.bytes,
		.msg_controllen = sizeof(control.bytes),
	};
	struct pollfd p = { .fd = fd, .events = POLLIN };
	struct cmsghdr *cm;
	ssize_t n;

	if (poll(&p, 1, TIMEOUT_MS) == 0)
		return -ETIMEDOUT;
	n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
	if (n < 0)
		return -errno;
	for (cm = CMSG_FIRSTHDR(&msg); cm && fds; cm = CMSG_NXTHDR(&msg, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
			memcpy(fds, CMSG_DATA(cm), (size_t)nfds * sizeof(int));
	return n;
}

static Kvchain__Reply *recv_socket(struct client *cl)
{
	ssize_t n = recv_packet(cl->fd, cl->buf, 1 << 20, NULL, 0);
	Kvchain__Reply *r;

	if (n <= 0)
		die("no reply on the socket (%zd)", n);
	r = kvchain__reply__unpack(NULL, (size_t)n, cl->buf);
	if (!r)
		die("the daemon sent a reply that does not unpack");
	return r;
}

static Kvchain__Reply *recv_ring(struct client *cl)
{
	Kvchain__Reply *r;
	int n, waited = 0;

	while ((n = kvc_ring_read(&cl->cpl, cl->buf)) == 0) {
		if (waited++ > TIMEOUT_MS / 100)
			die("no reply on the completion ring");
		kvc_ring_wait(&cl->cpl, 100);
	}
	if (n < 0)
		die("completion ring corrupted");
	r = kvchain__reply__unpack(NULL, (size_t)n, cl->buf);
	if (!r)
		die("the daemon sent a ring reply that does not unpack");
	return r;
}

/* Sends @req one way and returns the first reply that comes back. */
static Kvchain__Reply *call(struct client *cl, Kvchain__Request *req,
			    bool ring)
{
	req->id = cl->next_id++;
	if (ring)
		send_ring(cl, req);
	else
		send_socket(cl, req);
	return ring ? recv_ring(cl) : recv_socket(cl);
}

static struct client *client_open(const char *path, bool say_hello)
{
	struct client *cl = calloc(1, sizeof(*cl));
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__Hello hello = KVCHAIN__HELLO__INIT;
	Kvchain__Reply *r;
	int fds[2] = { -1, -1 };
	ssize_t n;

	cl->fd = connect_to(path);
	cl->buf = malloc(1 << 20);
	cl->next_id = 1;
	if (!say_hello)
		return cl;
	hello.version = KVC_PROTOCOL_VERSION;
	hello.client_name = "daemon-client";
	req.id = cl->next_id++;
	req.body_case = KVCHAIN__REQUEST__BODY_HELLO;
	req.hello = &hello;
	send_socket(cl, &req);
	n = recv_packet(cl->fd, cl->buf, 1 << 20, fds, 2);
	if (n <= 0)
		die("no Hello reply (%zd)", n);
	r = kvchain__reply__unpack(NULL, (size_t)n, cl->buf);
	if (!r || r->error || r->body_case != KVCHAIN__REPLY__BODY_HELLO ||
	    fds[0] < 0 || fds[1] < 0)
		die("Hello failed: %s", r && r->message ? r->message : "?");
	cl->max_message = r->hello->max_message;
	cl->d_model = r->hello->d_model;
	cl->shm_size = kvc_shm_size(r->hello->ring_bytes);
	cl->shm = mmap(NULL, cl->shm_size, PROT_READ | PROT_WRITE,
		       MAP_SHARED, fds[0], 0);
	cl->doorbell = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED,
			    fds[1], 0);
	if (cl->shm == MAP_FAILED || cl->doorbell == MAP_FAILED)
		die("cannot map the rings: %s", strerror(errno));
	if (kvc_shm_attach(cl->shm, cl->shm_size, &cl->req, &cl->cpl))
		die("the ring header does not check out");
	close(fds[0]);
	close(fds[1]);
	kvchain__reply__free_unpacked(r, NULL);
	return cl;
}

static void client_close(struct client *cl)
{
	if (cl->shm)
		munmap(cl->shm, cl->shm_size);
	if (cl->doorbell)
		munmap(cl->doorbell, 4096);
	close(cl->fd);
	free(cl->buf);
	free(cl);
}

/* ==== Requests ======================================================== */

/* Sends @req and checks that the reply carries @error; frees it. */
static int expect_error(struct client *cl, Kvchain__Request *req, bool ring,
			int error)
{
	Kvchain__Reply *r = call(cl, req, ring);
	int got = r->error;

	if (!CHECK(got == error))
		fprintf(stderr, "  expected error %d, got %d (%s)\n", error,
			got, r->message ? r->message : "");
	if (error && CHECK(r->message != NULL))
		CHECK(*r->message != '\0');
	kvchain__reply__free_unpacked(r, NULL);
	return got;
}

static uint64_t register_text(struct client *cl, const char *text)
{
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__RegisterPrompt rp = KVCHAIN__REGISTER_PROMPT__INIT;
	Kvchain__Reply *r;
	uint64_t id = 0;

	rp.source_case = KVCHAIN__REGISTER_PROMPT__SOURCE_TEXT;
	rp.text = (char *)text;
	req.body_case = KVCHAIN__REQUEST__BODY_REGISTER_PROMPT;
	req.register_prompt = &rp;
	r = call(cl, &req, false);
	if (CHECK(r->error == 0) &&
	    CHECK(r->body_case == KVCHAIN__REPLY__BODY_PROMPT) &&
	    CHECK(r->prompt->n_prompt_ids == 1))
		id = r->prompt->prompt_ids[0];
	kvchain__reply__free_unpacked(r, NULL);
	return id;
}

/* Registers @n rows of @width floats; returns the reply's error. */
static int register_soft(struct client *cl, uint32_t n, uint32_t width,
			 uint64_t *id)
{
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__RegisterPrompt rp = KVCHAIN__REGISTER_PROMPT__INIT;
	float *rows = calloc((size_t)n * width, sizeof(float));
	Kvchain__Reply *r;
	int err;

	for (size_t i = 0; i < (size_t)n * width; i++)
		rows[i] = 0.01f * (float)(i % 17);
	rp.source_case = KVCHAIN__REGISTER_PROMPT__SOURCE_EMBEDDINGS;
	rp.embeddings.data = (uint8_t *)rows;
	rp.embeddings.len = (size_t)n * width * sizeof(float);
	rp.n_virtual = n;
	req.body_case = KVCHAIN__REQUEST__BODY_REGISTER_PROMPT;
	req.register_prompt = &rp;
	r = call(cl, &req, false);
	err = r->error;
	if (!err && CHECK(r->body_case == KVCHAIN__REPLY__BODY_PROMPT) &&
	    CHECK(r->prompt->n_prompt_ids == 1))
		*id = r->prompt->prompt_ids[0];
	kvchain__reply__free_unpacked(r, NULL);
	free(rows);
	return err;
}

/*
 * Registers a PEFT adapter of @stages prompts, one row each, built in
 * memory; @config is adapter_config.json. Returns the error and stores
 * how many prompt ids came back.
 */
static int register_peft(struct client *cl, uint32_t stages,
			 const char *config, size_t *n_ids)
{
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__RegisterPrompt rp = KVCHAIN__REGISTER_PROMPT__INIT;
	Kvchain__PeftAdapter peft = KVCHAIN__PEFT_ADAPTER__INIT;
	size_t data_bytes = (size_t)stages * cl->d_model * sizeof(float);
	char header[256];
	uint64_t header_len;
	uint8_t *file;
	Kvchain__Reply *r;
	int n, err;

	/* safetensors: a little-endian u64 header length, JSON, then data */
	n = snprintf(header, sizeof(header),
		     "{\"prompt_embeddings\":{\"dtype\":\"F32\",\"shape\":[%u,%u],\"data_offsets\":[0,%zu]}}",
		     stages, cl->d_model, data_bytes);
	header_len = (uint64_t)n;
	file = calloc(1, 8 + (size_t)n + data_bytes);
	memcpy(file, &header_len, 8);
	memcpy(file + 8, header, (size_t)n);
	peft.safetensors.data = file;
	peft.safetensors.len = 8 + (size_t)n + data_bytes;
	peft.config.data = (uint8_t *)config;
	peft.config.len = strlen(config);
	rp.source_case = KVCHAIN__REGISTER_PROMPT__SOURCE_PEFT;
	rp.peft = &peft;
	req.body_case = KVCHAIN__REQUEST__BODY_REGISTER_PROMPT;
	req.register_prompt = &rp;
	r = call(cl, &req, true);
	err = r->error;
	*n_ids = err ? 0 : r->prompt->n_prompt_ids;
	kvchain__reply__free_unpacked(r, NULL);
	free(file);
	return err;
}

static uint64_t create_chain(struct client *cl, uint64_t *ids, size_t n)
{
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__CreateChain cc = KVCHAIN__CREATE_CHAIN__INIT;
	Kvchain__Reply *r;
	uint64_t id = 0;

	cc.prompt_ids = ids;
	cc.n_prompt_ids = n;
	req.body_case = KVCHAIN__REQUEST__BODY_CREATE_CHAIN;
	req.create_chain = &cc;
	r = call(cl, &req, false);
	if (CHECK(r->error == 0) &&
	    CHECK(r->body_case == KVCHAIN__REPLY__BODY_CHAIN) &&
	    CHECK(r->chain->n_stages == n))
		id = r->chain->chain_id;
	kvchain__reply__free_unpacked(r, NULL);
	return id;
}

struct seg_info {
	uint8_t handle[16];
	uint32_t n_spans;
	uint32_t n_positions;
};

/* Runs a request whose reply is a SegmentReply; returns its error. */
static int segment_call(struct client *cl, Kvchain__Request *req, bool ring,
			struct seg_info *out)
{
	Kvchain__Reply *r = call(cl, req, ring);
	int err = r->error;

	if (!err && CHECK(r->body_case == KVCHAIN__REPLY__BODY_SEGMENT) &&
	    CHECK(r->segment->handle.len == 16)) {
		memcpy(out->handle, r->segment->handle.data, 16);
		out->n_spans = r->segment->n_spans;
		out->n_positions = r->segment->n_positions;
	}
	kvchain__reply__free_unpacked(r, NULL);
	return err;
}

static int create_segment(struct client *cl, uint64_t chain,
			  struct seg_info *out)
{
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__CreateSegment cs = KVCHAIN__CREATE_SEGMENT__INIT;

	cs.chain_id = chain;
	req.body_case = KVCHAIN__REQUEST__BODY_CREATE_SEGMENT;
	req.create_segment = &cs;
	return segment_call(cl, &req, false, out);
}

static int handle_call(struct client *cl, int body, const uint8_t *handle,
		       bool ring, struct seg_info *out)
{
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__Attach at = KVCHAIN__ATTACH__INIT;
	Kvchain__Release rel = KVCHAIN__RELEASE__INIT;
	Kvchain__Fork fk = KVCHAIN__FORK__INIT;
	ProtobufCBinaryData h = { .len = 16, .data = (uint8_t *)handle };

	req.body_case = body;
	if (body == KVCHAIN__REQUEST__BODY_ATTACH) {
		at.handle = h;
		req.attach = &at;
	} else if (body == KVCHAIN__REQUEST__BODY_RELEASE) {
		rel.handle = h;
		req.release = &rel;
	} else {
		fk.handle = h;
		req.fork = &fk;
	}
	return segment_call(cl, &req, ring, out);
}

/* Appends text (or tokens when @text is NULL); returns the error. */
static int append(struct client *cl, const uint8_t *handle, bool ring,
		  int kind, uint32_t stage, const char *text,
		  const int32_t *ids, size_t n_ids, uint32_t *span_id)
{
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__Append ap = KVCHAIN__APPEND__INIT;
	Kvchain__TokenList tl = KVCHAIN__TOKEN_LIST__INIT;
	Kvchain__Reply *r;
	int err;

	ap.handle.data = (uint8_t *)handle;
	ap.handle.len = 16;
	ap.kind = kind;
	ap.stage = stage;
	if (text) {
		ap.content_case = KVCHAIN__APPEND__CONTENT_TEXT;
		ap.text = (char *)text;
	} else {
		tl.ids = (int32_t *)ids;
		tl.n_ids = n_ids;
		ap.content_case = KVCHAIN__APPEND__CONTENT_TOKENS;
		ap.tokens = &tl;
	}
	req.body_case = KVCHAIN__REQUEST__BODY_APPEND;
	req.append = &ap;
	r = call(cl, &req, ring);
	err = r->error;
	if (!err && CHECK(r->body_case == KVCHAIN__REPLY__BODY_SPAN)) {
		CHECK(r->span->n_tokens > 0);
		if (span_id)
			*span_id = r->span->span_id;
	}
	kvchain__reply__free_unpacked(r, NULL);
	return err;
}

struct gen_result {
	int error;
	uint32_t n_token_msgs;	/* Token replies with an id >= 0 */
	uint32_t n_generated;
	uint32_t span_id;
	uint32_t stop_reason;
};

/*
 * Generates as @stage and collects the stream. When @notify_fd is not
 * -1, writes a byte to it after the first token and then stops reading.
 */
static void generate(struct client *cl, const uint8_t *handle, bool ring,
		     uint32_t stage, uint32_t max_tokens, bool ignore_eos,
		     int notify_fd, struct gen_result *res)
{
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__Generate g = KVCHAIN__GENERATE__INIT;
	Kvchain__Reply *r;

	memset(res, 0, sizeof(*res));
	g.handle.data = (uint8_t *)handle;
	g.handle.len = 16;
	g.stage = stage;
	g.max_tokens = max_tokens;
	g.ignore_eos = ignore_eos;
	req.body_case = KVCHAIN__REQUEST__BODY_GENERATE;
	req.generate = &g;
	req.id = cl->next_id++;
	if (ring)
		send_ring(cl, &req);
	else
		send_socket(cl, &req);
	for (;;) {
		r = ring ? recv_ring(cl) : recv_socket(cl);
		CHECK(r->id == req.id);
		if (r->error) {
			res->error = r->error;
			kvchain__reply__free_unpacked(r, NULL);
			return;
		}
		if (r->body_case == KVCHAIN__REPLY__BODY_TOKEN) {
			if (r->token->id >= 0)
				res->n_token_msgs++;
			kvchain__reply__free_unpacked(r, NULL);
			if (notify_fd >= 0) {
				if (write(notify_fd, "t", 1) != 1)
					_exit(2);
				for (;;)
					pause();
			}
			continue;
		}
		CHECK(r->body_case == KVCHAIN__REPLY__BODY_GENERATE_DONE);
		if (r->body_case == KVCHAIN__REPLY__BODY_GENERATE_DONE) {
			res->n_generated = r->generate_done->n_generated;
			res->span_id = r->generate_done->span_id;
			res->stop_reason = r->generate_done->stop_reason;
		}
		kvchain__reply__free_unpacked(r, NULL);
		return;
	}
}

static int drop_span(struct client *cl, const uint8_t *handle,
		     uint32_t span_id)
{
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__DropSpan ds = KVCHAIN__DROP_SPAN__INIT;

	ds.handle.data = (uint8_t *)handle;
	ds.handle.len = 16;
	ds.span_id = span_id;
	req.body_case = KVCHAIN__REQUEST__BODY_DROP_SPAN;
	req.drop_span = &ds;
	return expect_error(cl, &req, false, 0) ? -1 : 0;
}

static void get_stats(struct client *cl, bool ring, Kvchain__StatsReply *out)
{
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__Stats st = KVCHAIN__STATS__INIT;
	Kvchain__Reply *r;

	req.body_case = KVCHAIN__REQUEST__BODY_STATS;
	req.stats = &st;
	r = call(cl, &req, ring);
	memset(out, 0, sizeof(*out));
	if (CHECK(r->error == 0) &&
	    CHECK(r->body_case == KVCHAIN__REPLY__BODY_STATS))
		*out = *r->stats;
	kvchain__reply__free_unpacked(r, NULL);
}

/* A prompt, a one-stage chain and a segment with one shared input. */
static uint64_t setup_chain(struct client *cl)
{
	uint64_t prompt = register_text(cl, "You answer briefly.");

	return create_chain(cl, &prompt, 1);
}

/* ==== Scenarios ======================================================= */

static void scenario_basic(const char *path)
{
	struct client *a = client_open(path, true);
	struct client *b = client_open(path, true);
	uint64_t prompts[2], soft, chain;
	struct seg_info seg, seg_b, fork;
	Kvchain__StatsReply st, st2;
	struct gen_result gen;
	int32_t ids[3] = { 5, 6, 7 };
	uint32_t span, span2;
	uint8_t forged[16];
	size_t n_peft;

	/* prompts: text, soft of the right width, soft of a wrong width */
	prompts[0] = register_text(a, "Summarise the passage.");
	CHECK(register_soft(a, 4, a->d_model, &soft) == 0);
	CHECK(register_soft(a, 4, a->d_model + 1, &prompts[1]) == KVC_EDIM);
	prompts[1] = soft;
	chain = create_chain(a, prompts, 2);

	/* a PEFT adapter of two stages, and two broken configurations */
	CHECK(register_peft(a, 2, "{\"peft_type\":\"PROMPT_TUNING\",\"num_virtual_tokens\":1}",
			    &n_peft) == 0);
	CHECK(n_peft == 2);
	CHECK(register_peft(a, 2, "{\"num_virtual_tokens\":", &n_peft) ==
	      KVC_EINVAL);
	CHECK(register_peft(a, 2, "{\"peft_type\":\"LORA\",\"num_virtual_tokens\":1}",
			    &n_peft) == KVC_EINVAL);

	/* a segment, appended over the socket and the rings */
	CHECK(create_segment(a, chain, &seg) == 0);
	CHECK(seg.n_spans == 2);
	CHECK(append(a, seg.handle, false, KVCHAIN__SPAN_KIND__SPAN_KIND_SHARED_INPUT,
		     0, "The sky is blue today.", NULL, 0, &span) == 0);
	CHECK(span == 2);
	CHECK(append(a, seg.handle, true, KVCHAIN__SPAN_KIND__SPAN_KIND_STAGE_INPUT,
		     0, NULL, ids, 3, &span2) == 0);
	CHECK(span2 == 3);
	CHECK(append(a, seg.handle, true, KVCHAIN__SPAN_KIND__SPAN_KIND_STAGE_INPUT,
		     2, "no such stage", NULL, 0, NULL) == KVC_EINVAL);
	ids[0] = 1 << 30;
	CHECK(append(a, seg.handle, false, KVCHAIN__SPAN_KIND__SPAN_KIND_SHARED_INPUT,
		     0, NULL, ids, 3, NULL) == KVC_EINVAL);

	/* generate with streamed tokens, over the rings and the socket */
	generate(a, seg.handle, true, 0, 8, true, -1, &gen);
	CHECK(gen.error == 0);
	CHECK(gen.n_generated == 8);
	CHECK(gen.n_token_msgs > 0);
	CHECK(gen.n_token_msgs <= 8);
	CHECK(gen.span_id == 4);
	generate(a, seg.handle, false, 1, 4, true, -1, &gen);
	CHECK(gen.error == 0);
	CHECK(gen.n_generated == 4);
	generate(a, seg.handle, true, 0, 0, true, -1, &gen);
	CHECK(gen.error == KVC_EINVAL);
	{
		Kvchain__Request req = KVCHAIN__REQUEST__INIT;
		Kvchain__Generate g = KVCHAIN__GENERATE__INIT;
		Kvchain__Sampling sp = KVCHAIN__SAMPLING__INIT;

		g.handle.data = seg.handle;
		g.handle.len = 16;
		g.max_tokens = 4;
		sp.top_p = 1.5f;
		g.sampling = &sp;
		req.body_case = KVCHAIN__REQUEST__BODY_GENERATE;
		req.generate = &g;
		expect_error(a, &req, true, KVC_EINVAL);
	}

	/* a second connection attaches, generates and drops a span */
	CHECK(handle_call(b, KVCHAIN__REQUEST__BODY_ATTACH, seg.handle, true,
			  &seg_b) == 0);
	CHECK(seg_b.n_spans == 6);
	generate(b, seg.handle, true, 1, 3, true, -1, &gen);
	CHECK(gen.error == 0);
	CHECK(gen.span_id == 6);
	CHECK(drop_span(b, seg.handle, 3) == 0);

	/* a fork shares the spans and grows on its own */
	CHECK(handle_call(b, KVCHAIN__REQUEST__BODY_FORK, seg.handle, false,
			  &fork) == 0);
	CHECK(fork.n_spans == 7);
	CHECK(memcmp(fork.handle, seg.handle, 16) != 0);
	CHECK(append(b, fork.handle, true, KVCHAIN__SPAN_KIND__SPAN_KIND_SHARED_INPUT,
		     0, "Only in the fork.", NULL, 0, &span) == 0);
	CHECK(span == 7);
	CHECK(handle_call(a, KVCHAIN__REQUEST__BODY_ATTACH, seg.handle, false,
			  &seg_b) == 0);
	CHECK(seg_b.n_spans == 7);

	/* stats see both segments and both connections */
	get_stats(a, true, &st);
	CHECK(st.segments == 2);
	CHECK(st.connections >= 2);
	CHECK(st.chains >= 1);
	CHECK(st.prompts >= 4);
	CHECK(st.tokens_generated >= 15);
	CHECK(st.blocks_free < st.blocks_total);

	/* forged handle, dropped span, wrong release */
	memcpy(forged, seg.handle, 16);
	forged[15] ^= 0x5a;
	CHECK(handle_call(a, KVCHAIN__REQUEST__BODY_ATTACH, forged, false,
			  &seg_b) == KVC_EUNKNOWN_HANDLE);
	CHECK(handle_call(a, KVCHAIN__REQUEST__BODY_FORK, forged, true,
			  &seg_b) == KVC_EUNKNOWN_HANDLE);
	{
		Kvchain__Request req = KVCHAIN__REQUEST__INIT;
		Kvchain__DropSpan ds = KVCHAIN__DROP_SPAN__INIT;

		ds.handle.data = seg.handle;
		ds.handle.len = 16;
		ds.span_id = 3;
		req.body_case = KVCHAIN__REQUEST__BODY_DROP_SPAN;
		req.drop_span = &ds;
		expect_error(a, &req, false, KVC_ENOENT);
		ds.span_id = 0;
		expect_error(a, &req, true, KVC_EINVAL);
	}
	CHECK(handle_call(a, KVCHAIN__REQUEST__BODY_RELEASE, fork.handle,
			  false, &seg_b) == KVC_ENOENT);

	/* releasing the fork (TTL 0 in the test) frees it */
	CHECK(handle_call(b, KVCHAIN__REQUEST__BODY_RELEASE, fork.handle,
			  false, &seg_b) == 0);
	usleep(300 * 1000);
	CHECK(handle_call(a, KVCHAIN__REQUEST__BODY_ATTACH, fork.handle, true,
			  &seg_b) == KVC_ERELEASED);
	get_stats(b, false, &st2);
	CHECK(st2.segments == 1);
	CHECK(st2.blocks_free > st.blocks_free);

	client_close(b);
	client_close(a);
}

static void scenario_malformed(const char *path)
{
	struct client *pre = client_open(path, false);
	struct client *cl;
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__Hello hello = KVCHAIN__HELLO__INIT;
	Kvchain__Stats st = KVCHAIN__STATS__INIT;
	Kvchain__StatsReply stats;
	Kvchain__Reply *r;
	uint8_t junk[512], *big;
	size_t len;
	unsigned i;

	/* before Hello: a request, then the wrong version */
	req.body_case = KVCHAIN__REQUEST__BODY_STATS;
	req.stats = &st;
	expect_error(pre, &req, false, KVC_EPROTO);
	hello.version = KVC_PROTOCOL_VERSION + 7;
	req.body_case = KVCHAIN__REQUEST__BODY_HELLO;
	req.hello = &hello;
	expect_error(pre, &req, false, KVC_EVERSION);
	client_close(pre);

	cl = client_open(path, true);
	/* random bytes, seeded so a failure repeats */
	srand(7);
	for (i = 0; i < sizeof(junk); i++)
		junk[i] = (uint8_t)rand();
	send_raw(cl->fd, junk, sizeof(junk));
	r = recv_socket(cl);
	CHECK(r->error == KVC_EPROTO);
	kvchain__reply__free_unpacked(r, NULL);

	/* a truncated Request: a valid one cut in the middle */
	req.body_case = KVCHAIN__REQUEST__BODY_STATS;
	req.stats = &st;
	req.id = 99;
	len = kvchain__request__get_packed_size(&req);
	kvchain__request__pack(&req, junk);
	send_raw(cl->fd, junk, len - 1);
	r = recv_socket(cl);
	CHECK(r->error == KVC_EPROTO);
	kvchain__reply__free_unpacked(r, NULL);

	/* a field of the wrong wire type: id (field 1) as a length */
	junk[0] = 0x0a;
	junk[1] = 0x02;
	junk[2] = 0x01;
	junk[3] = 0x02;
	send_raw(cl->fd, junk, 4);
	r = recv_socket(cl);
	CHECK(r->error == KVC_EPROTO);
	kvchain__reply__free_unpacked(r, NULL);

	/* a Request with no body */
	memset(&req, 0, sizeof(req));
	kvchain__request__init(&req);
	expect_error(cl, &req, false, KVC_EPROTO);
	expect_error(cl, &req, true, KVC_EPROTO);

	/* a message above the limit, on the socket */
	big = calloc(1, (size_t)cl->max_message + 64);
	send_raw(cl->fd, big, (size_t)cl->max_message + 64);
	r = recv_socket(cl);
	CHECK(r->error == KVC_ETOOBIG);
	kvchain__reply__free_unpacked(r, NULL);
	free(big);

	/* a second Hello, and a handle of the wrong size */
	hello.version = KVC_PROTOCOL_VERSION;
	req.body_case = KVCHAIN__REQUEST__BODY_HELLO;
	req.hello = &hello;
	expect_error(cl, &req, false, KVC_EPROTO);
	{
		Kvchain__Attach at = KVCHAIN__ATTACH__INIT;

		at.handle.data = junk;
		at.handle.len = 5;
		req.body_case = KVCHAIN__REQUEST__BODY_ATTACH;
		req.attach = &at;
		expect_error(cl, &req, true, KVC_EINVAL);
	}

	/* the connection still works after all of it */
	get_stats(cl, false, &stats);
	get_stats(cl, true, &stats);
	CHECK(stats.connections >= 1);
	client_close(cl);
}

static void scenario_ring(const char *path)
{
	struct client *bad = client_open(path, true);
	struct client *good = client_open(path, true);
	Kvchain__StatsReply st;
	char byte;
	ssize_t n;

	/* a head far ahead of the tail cannot be valid */
	atomic_store(&bad->req.ctl->head,
		     atomic_load(&bad->req.ctl->tail) + 3 * bad->req.size);
	atomic_fetch_add(&bad->doorbell->counter, 1);
	kvc_futex_wake(&bad->doorbell->counter);
	n = recv_packet(bad->fd, &byte, 1, NULL, 0);
	CHECK(n == 0);
	get_stats(good, true, &st);
	CHECK(st.blocks_total > 0);

	/* a length word above max_message */
	client_close(bad);
	bad = client_open(path, true);
	{
		uint32_t len = bad->max_message + 8;

		memcpy(bad->req.data, &len, 4);
		atomic_store(&bad->req.ctl->head, 64);
		atomic_fetch_add(&bad->doorbell->counter, 1);
		kvc_futex_wake(&bad->doorbell->counter);
	}
	n = recv_packet(bad->fd, &byte, 1, NULL, 0);
	CHECK(n == 0);
	get_stats(good, false, &st);
	CHECK(st.blocks_total > 0);
	client_close(bad);
	client_close(good);
}

static void scenario_kill(const char *path)
{
	struct client *a = client_open(path, true);
	Kvchain__StatsReply before, after;
	struct seg_info seg, mid, again;
	struct gen_result gen;
	uint64_t chain = setup_chain(a);
	int notify[2], status, i;
	pid_t child;
	char byte;

	CHECK(create_segment(a, chain, &seg) == 0);
	CHECK(append(a, seg.handle, true, KVCHAIN__SPAN_KIND__SPAN_KIND_SHARED_INPUT,
		     0, "A long story begins here.", NULL, 0, NULL) == 0);
	CHECK(handle_call(a, KVCHAIN__REQUEST__BODY_ATTACH, seg.handle, false,
			  &mid) == 0);
	/* segments of earlier scenarios go at the next housekeeping round */
	for (i = 0; i < 100; i++) {
		get_stats(a, true, &before);
		if (before.segments == 1)
			break;
		usleep(20 * 1000);
	}
	CHECK(before.segments == 1);
	if (pipe(notify))
		die("pipe: %s", strerror(errno));

	child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		struct client *b = client_open(path, true);

		close(notify[0]);
		handle_call(b, KVCHAIN__REQUEST__BODY_ATTACH, seg.handle, true,
			    &again);
		generate(b, seg.handle, true, 0, 100000, true, notify[1], &gen);
		_exit(3);	/* generate() never returns here */
	}
	close(notify[1]);
	CHECK(read(notify[0], &byte, 1) == 1);
	kill(child, SIGKILL);
	CHECK(waitpid(child, &status, 0) == child);
	CHECK(WIFSIGNALED(status));
	close(notify[0]);

	/* the daemon closes the job without a span and frees its blocks */
	for (i = 0; i < 100; i++) {
		get_stats(a, false, &after);
		if (after.connections == 1 &&
		    after.blocks_free == before.blocks_free)
			break;
		usleep(50 * 1000);
	}
	CHECK(after.connections == 1);
	CHECK(after.blocks_free == before.blocks_free);
	CHECK(handle_call(a, KVCHAIN__REQUEST__BODY_ATTACH, seg.handle, false,
			  &again) == 0);
	CHECK(again.n_spans == mid.n_spans);
	CHECK(again.n_positions == mid.n_positions);

	/* and keeps serving the segment */
	generate(a, seg.handle, true, 0, 4, true, -1, &gen);
	CHECK(gen.error == 0);
	CHECK(gen.span_id == mid.n_spans);
	client_close(a);
}

static void scenario_quota(const char *path)
{
	struct client *cl = client_open(path, true);
	uint64_t chain = setup_chain(cl);
	const int shared = KVCHAIN__SPAN_KIND__SPAN_KIND_SHARED_INPUT;
	Kvchain__StatsReply st;
	struct seg_info seg, first;
	int32_t ids[1900];
	int i, err = 0;

	/* segments of earlier scenarios go at the next housekeeping round */
	for (i = 0; i < 100; i++) {
		get_stats(cl, false, &st);
		if (st.segments == 0)
			break;
		usleep(20 * 1000);
	}
	CHECK(st.segments == 0);
	err = create_segment(cl, chain, &first);
	for (i = 1; i < 8 && !err; i++)
		err = create_segment(cl, chain, &seg);
	CHECK(err == 0);
	CHECK(create_segment(cl, chain, &seg) == KVC_EQUOTA);
	CHECK(handle_call(cl, KVCHAIN__REQUEST__BODY_FORK, seg.handle, false,
			  &seg) == KVC_EQUOTA);

	/* tokens: earlier scenarios gave back every token they held */
	for (i = 0; i < 1900; i++)
		ids[i] = (int32_t)(5 + i % 400);
	CHECK(append(cl, seg.handle, true, shared, 0, NULL, ids, 1900,
		     NULL) == 0);
	CHECK(append(cl, first.handle, false, shared, 0, NULL, ids, 1900,
		     NULL) == 0);
	CHECK(append(cl, first.handle, true, shared, 0, NULL, ids, 300,
		     NULL) == KVC_EQUOTA);
	CHECK(drop_span(cl, seg.handle, 1) == 0);
	CHECK(append(cl, first.handle, true, shared, 0, NULL, ids, 100,
		     NULL) == 0);
	client_close(cl);
}

/*
 * Needs a daemon with a small arena (fewer than 3 * 119 blocks of 16
 * tokens) and segment_ttl_seconds = 3, long enough that A is evicted
 * before it would expire.
 */
static void scenario_evict(const char *path)
{
	struct client *cl = client_open(path, true);
	uint64_t chain = setup_chain(cl);
	struct seg_info a, b, c, e, tmp;
	Kvchain__StatsReply st;
	int32_t ids[1900];
	const int shared = KVCHAIN__SPAN_KIND__SPAN_KIND_SHARED_INPUT;
	size_t i;

	for (i = 0; i < 1900; i++)
		ids[i] = (int32_t)(5 + i % 400);
	get_stats(cl, false, &st);
	CHECK(st.blocks_total < 3 * 119);

	/* A is released, so C may evict it; B stays held */
	CHECK(create_segment(cl, chain, &a) == 0);
	CHECK(append(cl, a.handle, false, shared, 0, NULL, ids, 1900, NULL) == 0);
	CHECK(handle_call(cl, KVCHAIN__REQUEST__BODY_RELEASE, a.handle, false,
			  &tmp) == 0);
	CHECK(create_segment(cl, chain, &b) == 0);
	CHECK(append(cl, b.handle, true, shared, 0, NULL, ids, 1900, NULL) == 0);
	CHECK(create_segment(cl, chain, &c) == 0);
	CHECK(append(cl, c.handle, false, shared, 0, NULL, ids, 1900, NULL) == 0);
	CHECK(handle_call(cl, KVCHAIN__REQUEST__BODY_ATTACH, a.handle, false,
			  &tmp) == KVC_EEXPIRED);

	/* held segments are never evicted: the arena is full */
	CHECK(create_segment(cl, chain, &e) == 0);
	CHECK(append(cl, e.handle, true, shared, 0, NULL, ids, 1900, NULL) ==
	      KVC_ENOSPC);
	CHECK(handle_call(cl, KVCHAIN__REQUEST__BODY_ATTACH, b.handle, true,
			  &tmp) == 0);

	/* the context ends at n_ctx (2048 in the test) */
	CHECK(append(cl, c.handle, true, shared, 0, NULL, ids, 1900, NULL) ==
	      KVC_ECONTEXT);

	/* an unheld segment expires after the TTL */
	CHECK(handle_call(cl, KVCHAIN__REQUEST__BODY_RELEASE, b.handle, false,
			  &tmp) == 0);
	usleep(3500 * 1000);
	CHECK(handle_call(cl, KVCHAIN__REQUEST__BODY_ATTACH, b.handle, false,
			  &tmp) == KVC_EEXPIRED);
	CHECK(append(cl, e.handle, true, shared, 0, NULL, ids, 1900, NULL) == 0);
	client_close(cl);
}

/*
 * Two connections generate at once on two segments, so their decode steps
 * share engine steps; and requests sent back to back on one segment run
 * in order.
 */
static void scenario_batch(const char *path)
{
	struct client *a = client_open(path, true);
	struct client *b = client_open(path, true);
	Kvchain__Request req = KVCHAIN__REQUEST__INIT;
	Kvchain__Append ap = KVCHAIN__APPEND__INIT;
	Kvchain__Generate g = KVCHAIN__GENERATE__INIT;
	uint64_t chain = setup_chain(a);
	uint64_t chain_b = setup_chain(b);
	struct seg_info sa, sb;
	struct gen_result ra;
	Kvchain__Reply *r;
	uint32_t span = 0;
	bool done = false;
	int got_b = 0;

	CHECK(create_segment(a, chain, &sa) == 0);
	CHECK(create_segment(b, chain_b, &sb) == 0);

	/* b starts a long generation and does not wait for it */
	g.handle.data = sb.handle;
	g.handle.len = 16;
	g.max_tokens = 64;
	g.ignore_eos = true;
	req.body_case = KVCHAIN__REQUEST__BODY_GENERATE;
	req.generate = &g;
	req.id = 500;
	send_ring(b, &req);

	/* a sends an append and a generation back to back */
	ap.handle.data = sa.handle;
	ap.handle.len = 16;
	ap.kind = KVCHAIN__SPAN_KIND__SPAN_KIND_SHARED_INPUT;
	ap.content_case = KVCHAIN__APPEND__CONTENT_TEXT;
	ap.text = "First the input, then the output.";
	req.body_case = KVCHAIN__REQUEST__BODY_APPEND;
	req.append = &ap;
	req.id = 600;
	send_ring(a, &req);
	g.handle.data = sa.handle;
	g.max_tokens = 16;
	req.body_case = KVCHAIN__REQUEST__BODY_GENERATE;
	req.generate = &g;
	req.id = 601;
	send_ring(a, &req);

	/* the append's reply comes first, then the generation's stream */
	r = recv_ring(a);
	CHECK(r->id == 600);
	CHECK(r->error == 0);
	if (CHECK(r->body_case == KVCHAIN__REPLY__BODY_SPAN))
		CHECK(r->span->span_id == 1);
	kvchain__reply__free_unpacked(r, NULL);
	memset(&ra, 0, sizeof(ra));
	while (!done) {
		r = recv_ring(a);
		CHECK(r->id == 601);
		CHECK(r->error == 0);
		if (r->body_case == KVCHAIN__REPLY__BODY_GENERATE_DONE) {
			done = true;
			ra.n_generated = r->generate_done->n_generated;
			ra.span_id = r->generate_done->span_id;
		}
		if (r->error)
			done = true;
		kvchain__reply__free_unpacked(r, NULL);
	}
	CHECK(ra.n_generated == 16);
	CHECK(ra.span_id == 2);
	done = false;

	/* b's stream ends with its GenerateDone */
	while (!done) {
		r = recv_ring(b);
		CHECK(r->id == 500);
		CHECK(r->error == 0);
		if (r->body_case == KVCHAIN__REPLY__BODY_TOKEN)
			got_b++;
		if (r->body_case == KVCHAIN__REPLY__BODY_GENERATE_DONE) {
			done = true;
			span = r->generate_done->span_id;
			CHECK(r->generate_done->n_generated == 64);
		}
		if (r->error)
			done = true;
		kvchain__reply__free_unpacked(r, NULL);
	}
	CHECK(got_b > 0);
	CHECK(span == 1);
	client_close(b);
	client_close(a);
}

static void scenario_refused(const char *path)
{
	struct client *cl = client_open(path, false);
	Kvchain__Reply *r = recv_socket(cl);
	char byte;

	CHECK(r->error == KVC_EPERM);
	kvchain__reply__free_unpacked(r, NULL);
	CHECK(recv_packet(cl->fd, &byte, 1, NULL, 0) == 0);
	client_close(cl);
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		void (*run)(const char *path);
	} scenarios[] = {
		{ "basic", scenario_basic },
		{ "malformed", scenario_malformed },
		{ "ring", scenario_ring },
		{ "kill", scenario_kill },
		{ "quota", scenario_quota },
		{ "evict", scenario_evict },
		{ "batch", scenario_batch },
		{ "refused", scenario_refused },
	};
	size_t i;

	if (argc != 3) {
		fprintf(stderr, "Usage: daemon-client SOCKET SCENARIO\n");
		return 2;
	}
	for (i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++) {
		if (!strcmp(argv[2], scenarios[i].name)) {
			scenarios[i].run(argv[1]);
			if (failures)
				fprintf(stderr, "%s: %d checks failed\n",
					argv[2], failures);
			return failures ? 1 : 0;
		}
	}
	fprintf(stderr, "daemon-client: unknown scenario '%s'\n", argv[2]);
	return 2;
}
