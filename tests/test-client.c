/* SPDX-License-Identifier: MIT */
/*
 * test-client.c - unit tests of libkvchain that need no kvchaind: handle
 * text, error names, parameter defaults, connection failures, and the
 * transport against a small fake daemon thread in this process, which
 * answers Hello with real rings and serves scripted replies over the
 * rings and the socket.
 */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "kvchain.h"
#include "kvchain.pb-c.h"
#include "ring.h"
#include "cunit-main.h"

/* ---- Handles ----------------------------------------------------------- */

static void test_handle_round_trip(void)
{
	char text[KVC_HANDLE_STRLEN + 1];
	kvc_handle h, back;
	int i, k;

	for (k = 0; k < 4; k++) {
		for (i = 0; i < 16; i++)
			h.bytes[i] = (uint8_t)(k * 67 + i * 29 + (k == 3 ? 255 : 0));
		kvc_handle_format(&h, text);
		CU_ASSERT_EQUAL(strlen(text), KVC_HANDLE_STRLEN);
		CU_ASSERT_EQUAL(strspn(text, "0123456789abcdef"),
				KVC_HANDLE_STRLEN);
		memset(&back, 0, sizeof(back));
		CU_ASSERT_EQUAL(kvc_handle_parse(text, &back), 0);
		CU_ASSERT_EQUAL(memcmp(h.bytes, back.bytes, 16), 0);
	}
}

static void test_handle_format_digits(void)
{
	char text[KVC_HANDLE_STRLEN + 1];
	kvc_handle h;
	int i;

	for (i = 0; i < 16; i++)
		h.bytes[i] = (uint8_t)(i * 17);	/* 00 11 22 ... ff */
	kvc_handle_format(&h, text);
	CU_ASSERT_STRING_EQUAL(text, "00112233445566778899aabbccddeeff");
}

static void test_handle_uppercase(void)
{
	kvc_handle a, b;

	CU_ASSERT_EQUAL(kvc_handle_parse("00112233445566778899AABBCCDDEEFF", &a), 0);
	CU_ASSERT_EQUAL(kvc_handle_parse("00112233445566778899aabbccddeeff", &b), 0);
	CU_ASSERT_EQUAL(memcmp(a.bytes, b.bytes, 16), 0);
}

static void test_handle_bad_input(void)
{
	static const char *const bad[] = {
		"",
		"0011223344556677",				/* 16 digits */
		"00112233445566778899aabbccddeef",		/* 31 */
		"00112233445566778899aabbccddeeff0",		/* 33 */
		"00112233445566778899aabbccddeefg",		/* not hex */
		" 00112233445566778899aabbccddeef",		/* leading space */
		"00112233445566778899aabbccddeeff\n",		/* trailing newline */
		"0x112233445566778899aabbccddeeff",		/* prefix */
		"-0112233445566778899aabbccddeeff",
	};
	kvc_handle h, before;
	size_t i;

	memset(&h, 0x5a, sizeof(h));
	before = h;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CU_ASSERT_EQUAL(kvc_handle_parse(bad[i], &h), KVC_EINVAL);
		/* a failed parse leaves the handle alone */
		CU_ASSERT_EQUAL(memcmp(h.bytes, before.bytes, 16), 0);
	}
	CU_ASSERT_EQUAL(kvc_handle_parse(NULL, &h), KVC_EINVAL);
	CU_ASSERT_EQUAL(kvc_handle_parse("00112233445566778899aabbccddeeff",
					 NULL), KVC_EINVAL);
}

/* ---- Error names and defaults ------------------------------------------ */

static void test_strerror_every_code(void)
{
	const char *names[18];
	int code, other;

	for (code = 0; code >= KVC_ECANCELED; code--) {
		const char *s = kvc_strerror(code);

		CU_ASSERT_PTR_NOT_NULL_FATAL(s);
		CU_ASSERT(strlen(s) > 0);
		CU_ASSERT_STRING_NOT_EQUAL(s, kvc_strerror(-1000));
		names[-code] = s;
		for (other = 0; other > code; other--)
			CU_ASSERT_STRING_NOT_EQUAL(s, names[-other]);
	}
}

static void test_strerror_unknown(void)
{
	CU_ASSERT_PTR_NOT_NULL(kvc_strerror(KVC_ECANCELED - 1));
	CU_ASSERT_PTR_NOT_NULL(kvc_strerror(1));
	CU_ASSERT_STRING_EQUAL(kvc_strerror(1), kvc_strerror(KVC_ECANCELED - 1));
	CU_ASSERT_STRING_EQUAL(kvc_strerror(-2147483647 - 1),
			       kvc_strerror(KVC_ECANCELED - 1));
}

static void test_gen_params_defaults(void)
{
	struct kvc_gen_params p;

	memset(&p, 0xa5, sizeof(p));
	kvc_gen_params_init(&p);
	CU_ASSERT_EQUAL(p.struct_size, sizeof(p));
	CU_ASSERT_EQUAL(p.temperature, 0.0f);
	CU_ASSERT_EQUAL(p.top_k, 0);
	CU_ASSERT_EQUAL(p.top_p, 1.0f);
	CU_ASSERT_EQUAL(p.min_p, 0.0f);
	CU_ASSERT_EQUAL(p.seed, 0);
	CU_ASSERT_EQUAL(p.max_tokens, 128);
	CU_ASSERT_EQUAL(p.ignore_eos, 0);
	CU_ASSERT_PTR_NULL(p.stop);
	CU_ASSERT_EQUAL(p.n_stop, 0);
	CU_ASSERT_PTR_NULL(p.stop_tokens);
	CU_ASSERT_EQUAL(p.n_stop_tokens, 0);
	CU_ASSERT_PTR_NULL(p.view);
	CU_ASSERT_EQUAL(p.n_view, 0);
}

static void test_null_arguments(void)
{
	struct kvc_stats st = { .struct_size = sizeof(st) };
	kvc_handle h = { { 0 } };
	uint64_t id;
	char *text;

	CU_ASSERT_EQUAL(kvc_connect("/nonexistent", NULL, NULL), KVC_EINVAL);
	CU_ASSERT_EQUAL(kvc_stats(NULL, &st), KVC_EINVAL);
	CU_ASSERT_EQUAL(kvc_prompt_text(NULL, "x", &id), KVC_EINVAL);
	CU_ASSERT_EQUAL(kvc_attach(NULL, &h), KVC_EINVAL);
	CU_ASSERT_EQUAL(kvc_generate_text(NULL, &h, 0, NULL, &text, NULL, NULL),
			KVC_EINVAL);
	CU_ASSERT_STRING_EQUAL(kvc_last_error(NULL), "");
	kvc_disconnect(NULL);
	kvc_free(NULL);
}

/* ---- Connection failures ----------------------------------------------- */

static char tmpdir[] = "/tmp/test-client-XXXXXX";

static void socket_in_tmpdir(char *out, size_t len, const char *name)
{
	snprintf(out, len, "%s/%s", tmpdir, name);
}

static void test_connect_missing_socket(void)
{
	kvc_conn *conn = (kvc_conn *)&conn;	/* must become NULL */
	char path[256];

	socket_in_tmpdir(path, sizeof(path), "none.sock");
	errno = 0;
	CU_ASSERT_EQUAL(kvc_connect(path, "test", &conn), KVC_EIO);
	CU_ASSERT_EQUAL(errno, ENOENT);
	CU_ASSERT_PTR_NULL(conn);
}

static void test_connect_env_socket(void)
{
	kvc_conn *conn = NULL;
	char path[256];

	socket_in_tmpdir(path, sizeof(path), "env.sock");
	setenv("KVCHAIN_SOCKET", path, 1);
	errno = 0;
	CU_ASSERT_EQUAL(kvc_connect(NULL, NULL, &conn), KVC_EIO);
	CU_ASSERT_EQUAL(errno, ENOENT);
	CU_ASSERT_PTR_NULL(conn);
	unsetenv("KVCHAIN_SOCKET");
}

static void test_connect_long_path(void)
{
	char path[200];
	kvc_conn *conn = NULL;

	memset(path, 'a', sizeof(path) - 1);
	path[0] = '/';
	path[sizeof(path) - 1] = '\0';
	CU_ASSERT_EQUAL(kvc_connect(path, NULL, &conn), KVC_EINVAL);
	CU_ASSERT_PTR_NULL(conn);
}

static void test_connect_bad_timeout(void)
{
	kvc_conn *conn = NULL;
	char path[256];

	socket_in_tmpdir(path, sizeof(path), "none.sock");
	setenv("KVCHAIN_TIMEOUT_MS", "soon", 1);
	CU_ASSERT_EQUAL(kvc_connect(path, NULL, &conn), KVC_EINVAL);
	CU_ASSERT_PTR_NULL(conn);
	setenv("KVCHAIN_TIMEOUT_MS", "0", 1);
	CU_ASSERT_EQUAL(kvc_connect(path, NULL, &conn), KVC_EINVAL);
	unsetenv("KVCHAIN_TIMEOUT_MS");
}

/* ---- A fake daemon ------------------------------------------------------ */

#define FAKE_RING_BYTES 65536
#define FAKE_RING_MAX 16384		/* messages larger go over the socket */
#define FAKE_SOCK_MAX (1u << 20)
#define FAKE_D_MODEL 8

enum fake_mode {
	FAKE_SERVE,		/* Hello with rings, then scripted replies */
	FAKE_CLOSE_AT_HELLO,	/* reads Hello and hangs up */
	FAKE_BAD_VERSION,	/* answers Hello with protocol 99 */
};

struct fake {
	enum fake_mode mode;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int listen_fd;
	pthread_t thread;
	_Atomic int last_via_socket;	/* the way the last request came */
	_Atomic uint64_t last_hash;	/* FNV-1a of the last embeddings */
	_Atomic int n_requests;
};

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	size_t i;

	for (i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

/* Packs @r and sends it over the socket with @fds (n_fds may be 0). */
static int fake_send_socket(int fd, Kvchain__Reply *r, const int *fds,
			    int n_fds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * 2)];
		struct cmsghdr align;
	} control;
	uint8_t buf[4096];
	size_t len = kvchain__reply__get_packed_size(r);
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *cm;

	if (len > sizeof(buf))
		return -1;
	kvchain__reply__pack(r, buf);
	if (n_fds) {
		msg.msg_control = control.buf;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n_fds);
		cm = CMSG_FIRSTHDR(&msg);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n_fds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)n_fds);
	}
	return sendmsg(fd, &msg, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -1;
}

struct fake_conn {
	int fd;
	struct kvc_ring req, cpl;
	struct kvc_doorbell *bell;
};

static void fake_reply(struct fake_conn *fc, bool via_socket,
		       Kvchain__Reply *r)
{
	uint8_t buf[4096];
	size_t len = kvchain__reply__get_packed_size(r);

	if (via_socket) {
		fake_send_socket(fc->fd, r, NULL, 0);
		return;
	}
	kvchain__reply__pack(r, buf);
	while (kvc_ring_write(&fc->cpl, buf, (uint32_t)len) == -EAGAIN)
		usleep(100);
	kvc_ring_wake(&fc->cpl);
}

static void fake_token(struct fake_conn *fc, bool via_socket, uint64_t id,
		       int32_t tok, const char *text)
{
	Kvchain__Reply r = KVCHAIN__REPLY__INIT;
	Kvchain__Token t = KVCHAIN__TOKEN__INIT;

	t.id = tok;
	t.text.data = (uint8_t *)text;
	t.text.len = strlen(text);
	r.id = id;
	r.body_case = KVCHAIN__REPLY__BODY_TOKEN;
	r.token = &t;
	fake_reply(fc, via_socket, &r);
}

/*
 * Serves one request: Stats, RegisterPrompt and Generate get answers,
 * CreateSegment an error, Fork a malformed handle; Attach is never
 * answered and Release hangs up. Returns false to stop serving.
 */
static bool fake_handle(struct fake *f, struct fake_conn *fc,
			bool via_socket, const Kvchain__Request *req)
{
	Kvchain__Reply r = KVCHAIN__REPLY__INIT;
	Kvchain__StatsReply st = KVCHAIN__STATS_REPLY__INIT;
	Kvchain__PromptReply pr = KVCHAIN__PROMPT_REPLY__INIT;
	Kvchain__SegmentReply sr = KVCHAIN__SEGMENT_REPLY__INIT;
	Kvchain__GenerateDone done = KVCHAIN__GENERATE_DONE__INIT;
	uint64_t ids[2];

	atomic_store(&f->last_via_socket, via_socket);
	atomic_fetch_add(&f->n_requests, 1);
	r.id = req->id;
	switch (req->body_case) {
	case KVCHAIN__REQUEST__BODY_STATS:
		st.blocks_total = 100;
		st.blocks_free = 40;
		st.block_bytes = 4096;
		st.segments = 3;
		st.chains = 2;
		st.prompts = 5;
		st.connections = 1;
		st.tokens_generated = 77;
		r.body_case = KVCHAIN__REPLY__BODY_STATS;
		r.stats = &st;
		break;
	case KVCHAIN__REQUEST__BODY_REGISTER_PROMPT: {
		const Kvchain__RegisterPrompt *rp = req->register_prompt;

		atomic_store(&f->last_hash, fnv1a(rp->embeddings.data,
						  rp->embeddings.len));
		/* the id tells the test what arrived: rows and floats */
		ids[0] = (uint64_t)rp->n_virtual << 32 |
			 (rp->embeddings.len / sizeof(float));
		pr.n_prompt_ids = 1;
		pr.prompt_ids = ids;
		r.body_case = KVCHAIN__REPLY__BODY_PROMPT;
		r.prompt = &pr;
		break;
	}
	case KVCHAIN__REQUEST__BODY_CREATE_SEGMENT:
		r.error = KVC_ENOSPC;
		r.message = (char *)"the KV arena is full (fake)";
		break;
	case KVCHAIN__REQUEST__BODY_FORK:
		sr.handle.data = (uint8_t *)"short";
		sr.handle.len = 5;
		r.body_case = KVCHAIN__REPLY__BODY_SEGMENT;
		r.segment = &sr;
		break;
	case KVCHAIN__REQUEST__BODY_GENERATE:
		/* a late token of an older request must be skipped */
		fake_token(fc, via_socket, req->id - 1, 99, "stale");
		fake_token(fc, via_socket, req->id, 10, "ab");
		fake_token(fc, via_socket, req->id, 11, "c");
		fake_token(fc, via_socket, req->id, -1, "d");
		done.span_id = 7;
		done.n_generated = 3;
		done.stop_reason = KVC_STOP_EOS;
		done.prefill_seconds = 0.5;
		done.decode_seconds = 0.25;
		r.body_case = KVCHAIN__REPLY__BODY_GENERATE_DONE;
		r.generate_done = &done;
		break;
	case KVCHAIN__REQUEST__BODY_ATTACH:
		return true;
	case KVCHAIN__REQUEST__BODY_RELEASE:
		return false;
	default:
		r.error = KVC_EINVAL;
		r.message = (char *)"not served by the fake";
		break;
	}
	fake_reply(fc, via_socket, &r);
	return true;
}

/* Sets up the rings for Hello @req and sends the reply with both fds. */
static int fake_hello(struct fake *f, struct fake_conn *fc, uint64_t id,
		      void **shm)
{
	Kvchain__Reply r = KVCHAIN__REPLY__INIT;
	Kvchain__HelloReply h = KVCHAIN__HELLO_REPLY__INIT;
	size_t size = kvc_shm_size(FAKE_RING_BYTES);
	int fds[2];

	h.version = f->mode == FAKE_BAD_VERSION ? 99 : KVC_PROTOCOL_VERSION;
	h.model_name = (char *)"fake";
	h.d_model = FAKE_D_MODEL;
	h.n_vocab = 32;
	h.n_ctx = 64;
	h.max_message = FAKE_SOCK_MAX;
	h.ring_bytes = FAKE_RING_BYTES;
	r.id = id;
	r.body_case = KVCHAIN__REPLY__BODY_HELLO;
	r.hello = &h;
	if (f->mode == FAKE_BAD_VERSION)
		return fake_send_socket(fc->fd, &r, NULL, 0);

	fds[0] = memfd_create("fake-rings", MFD_CLOEXEC);
	fds[1] = memfd_create("fake-doorbell", MFD_CLOEXEC);
	if (fds[0] < 0 || fds[1] < 0 || ftruncate(fds[0], (off_t)size) < 0 ||
	    ftruncate(fds[1], 4096) < 0)
		return -1;
	*shm = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
	fc->bell = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fds[1], 0);
	if (*shm == MAP_FAILED || fc->bell == MAP_FAILED)
		return -1;
	kvc_shm_init(*shm, FAKE_RING_BYTES, FAKE_RING_MAX);
	if (kvc_shm_attach(*shm, size, &fc->req, &fc->cpl) < 0)
		return -1;
	if (fake_send_socket(fc->fd, &r, fds, 2) < 0)
		return -1;
	close(fds[0]);
	close(fds[1]);
	return 0;
}

/* Reads one socket message into @buf; returns its length, 0 at EOF. */
static ssize_t fake_recv(int fd, uint8_t *buf, size_t cap, int timeout_ms)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };

	if (poll(&pfd, 1, timeout_ms) <= 0)
		return -1;
	return recv(fd, buf, cap, 0);
}

static void *fake_main(void *arg)
{
	struct fake *f = arg;
	struct fake_conn fc = { .fd = -1 };
	Kvchain__Request *req;
	uint8_t *buf = malloc(FAKE_SOCK_MAX);
	void *shm = NULL;
	bool serving = true;
	uint32_t seen;
	ssize_t n;

	fc.fd = accept(f->listen_fd, NULL, NULL);
	if (fc.fd < 0 || !buf)
		goto out;
	n = fake_recv(fc.fd, buf, FAKE_SOCK_MAX, 5000);
	if (n <= 0 || f->mode == FAKE_CLOSE_AT_HELLO)
		goto out;
	req = kvchain__request__unpack(NULL, (size_t)n, buf);
	if (!req)
		goto out;
	n = fake_hello(f, &fc, req->id, &shm);
	kvchain__request__free_unpacked(req, NULL);
	if (n < 0 || f->mode != FAKE_SERVE)
		goto out_wait_close;

	while (serving) {
		n = kvc_ring_read(&fc.req, buf);
		if (n > 0) {
			req = kvchain__request__unpack(NULL, (size_t)n, buf);
			serving = req && fake_handle(f, &fc, false, req);
			kvchain__request__free_unpacked(req, NULL);
			continue;
		}
		n = fake_recv(fc.fd, buf, FAKE_SOCK_MAX, 0);
		if (n == 0)
			break;
		if (n > 0) {
			req = kvchain__request__unpack(NULL, (size_t)n, buf);
			serving = req && fake_handle(f, &fc, true, req);
			kvchain__request__free_unpacked(req, NULL);
			continue;
		}
		/* sleep on the doorbell as the daemon does */
		atomic_store(&fc.req.ctl->sleeping, 1);
		atomic_thread_fence(memory_order_seq_cst);
		seen = atomic_load(&fc.bell->counter);
		if (!kvc_ring_pending(&fc.req))
			kvc_futex_wait(&fc.bell->counter, seen, 20);
		atomic_store(&fc.req.ctl->sleeping, 0);
	}
	goto out;

out_wait_close:
	/* keep the socket open until the client has read the reply */
	while (fake_recv(fc.fd, buf, FAKE_SOCK_MAX, 5000) > 0)
		;
out:
	if (shm)
		munmap(shm, kvc_shm_size(FAKE_RING_BYTES));
	if (fc.bell && fc.bell != MAP_FAILED)
		munmap(fc.bell, 4096);
	if (fc.fd >= 0)
		close(fc.fd);
	free(buf);
	return NULL;
}

static struct fake *fake_start(enum fake_mode mode)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	static int n_started;
	struct fake *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	f->mode = mode;
	snprintf(f->path, sizeof(f->path), "%s/fake%d.sock", tmpdir,
		 n_started++);
	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", f->path);
	f->listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (f->listen_fd < 0 ||
	    bind(f->listen_fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
	    listen(f->listen_fd, 4) < 0 ||
	    pthread_create(&f->thread, NULL, fake_main, f) != 0) {
		free(f);
		return NULL;
	}
	return f;
}

static void fake_stop(struct fake *f)
{
	pthread_join(f->thread, NULL);
	close(f->listen_fd);
	unlink(f->path);
	free(f);
}

/* Starts a serving fake and connects to it. */
static kvc_conn *fake_connect(struct fake **f)
{
	kvc_conn *conn = NULL;

	*f = fake_start(FAKE_SERVE);
	if (!*f)
		return NULL;
	if (kvc_connect((*f)->path, "test", &conn) < 0) {
		fake_stop(*f);
		return NULL;
	}
	return conn;
}

/* ---- Transport against the fake ---------------------------------------- */

static void test_connect_hangup(void)
{
	struct fake *f = fake_start(FAKE_CLOSE_AT_HELLO);
	kvc_conn *conn = NULL;

	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	CU_ASSERT_EQUAL(kvc_connect(f->path, NULL, &conn), KVC_EIO);
	CU_ASSERT_PTR_NULL(conn);
	fake_stop(f);
}

static void test_connect_bad_version(void)
{
	struct fake *f = fake_start(FAKE_BAD_VERSION);
	kvc_conn *conn = NULL;

	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	CU_ASSERT_EQUAL(kvc_connect(f->path, NULL, &conn), KVC_EVERSION);
	CU_ASSERT_PTR_NULL(conn);
	fake_stop(f);
}

static void test_server_info(void)
{
	struct kvc_server_info info = { .struct_size = sizeof(info) };
	struct fake *f;
	kvc_conn *conn = fake_connect(&f);

	CU_ASSERT_PTR_NOT_NULL_FATAL(conn);
	CU_ASSERT_EQUAL(kvc_server_info(conn, &info), 0);
	CU_ASSERT_EQUAL(info.struct_size, sizeof(info));
	CU_ASSERT_EQUAL(info.protocol_version, KVC_PROTOCOL_VERSION);
	CU_ASSERT_EQUAL(info.d_model, FAKE_D_MODEL);
	CU_ASSERT_EQUAL(info.n_vocab, 32);
	CU_ASSERT_EQUAL(info.n_ctx, 64);
	CU_ASSERT_STRING_EQUAL(info.model_name, "fake");
	CU_ASSERT_STRING_EQUAL(kvc_last_error(conn), "");
	kvc_disconnect(conn);
	fake_stop(f);
}

static void test_stats_over_ring(void)
{
	struct kvc_stats st = { .struct_size = sizeof(st) };
	struct fake *f;
	kvc_conn *conn = fake_connect(&f);
	int i;

	CU_ASSERT_PTR_NOT_NULL_FATAL(conn);
	/* enough round trips that some find the fake asleep on the doorbell */
	for (i = 0; i < 20; i++) {
		memset(&st, 0, sizeof(st));
		st.struct_size = sizeof(st);
		CU_ASSERT_EQUAL(kvc_stats(conn, &st), 0);
		CU_ASSERT_EQUAL(st.blocks_total, 100);
		CU_ASSERT_EQUAL(st.blocks_free, 40);
		CU_ASSERT_EQUAL(st.block_bytes, 4096);
		CU_ASSERT_EQUAL(st.segments, 3);
		CU_ASSERT_EQUAL(st.chains, 2);
		CU_ASSERT_EQUAL(st.prompts, 5);
		CU_ASSERT_EQUAL(st.connections, 1);
		CU_ASSERT_EQUAL(st.tokens_generated, 77);
		CU_ASSERT_EQUAL(atomic_load(&f->last_via_socket), 0);
		if (i % 5 == 4)
			usleep(30000);
	}
	kvc_disconnect(conn);
	fake_stop(f);
}

static void test_stats_short_struct(void)
{
	/* an older caller's struct ends after blocks_free */
	struct {
		uint32_t struct_size, blocks_total, blocks_free;
		uint32_t guard;
	} old = { .struct_size = 3 * sizeof(uint32_t), .guard = 0xdeadbeef };
	struct fake *f;
	kvc_conn *conn = fake_connect(&f);

	CU_ASSERT_PTR_NOT_NULL_FATAL(conn);
	CU_ASSERT_EQUAL(kvc_stats(conn, (struct kvc_stats *)&old), 0);
	CU_ASSERT_EQUAL(old.struct_size, 3 * sizeof(uint32_t));
	CU_ASSERT_EQUAL(old.blocks_total, 100);
	CU_ASSERT_EQUAL(old.blocks_free, 40);
	CU_ASSERT_EQUAL(old.guard, 0xdeadbeef);
	kvc_disconnect(conn);
	fake_stop(f);
}

static void test_error_reply(void)
{
	struct fake *f;
	kvc_conn *conn = fake_connect(&f);
	kvc_handle h;

	CU_ASSERT_PTR_NOT_NULL_FATAL(conn);
	CU_ASSERT_EQUAL(kvc_segment_create(conn, 1, &h), KVC_ENOSPC);
	CU_ASSERT_STRING_EQUAL(kvc_last_error(conn),
			       "the KV arena is full (fake)");
	/* the connection stays usable after an error reply */
	CU_ASSERT_EQUAL(kvc_fork(conn, &h, &h), KVC_EPROTO);
	kvc_disconnect(conn);
	fake_stop(f);
}

static void test_soft_prompt_ring_and_socket(void)
{
	static const uint32_t rows[] = { 4, 600 };	/* 128 B and 19200 B */
	struct fake *f;
	kvc_conn *conn = fake_connect(&f);
	uint64_t id;
	float *embd;
	size_t i, k, count;

	CU_ASSERT_PTR_NOT_NULL_FATAL(conn);
	for (k = 0; k < 2; k++) {
		count = (size_t)rows[k] * FAKE_D_MODEL;
		embd = malloc(count * sizeof(float));
		CU_ASSERT_PTR_NOT_NULL_FATAL(embd);
		for (i = 0; i < count; i++)
			embd[i] = (float)i * 0.25f - 3.0f;
		CU_ASSERT_EQUAL(kvc_prompt_soft(conn, embd, rows[k],
						FAKE_D_MODEL, &id), 0);
		CU_ASSERT_EQUAL(id >> 32, rows[k]);
		CU_ASSERT_EQUAL(id & 0xffffffffu, count);
		CU_ASSERT_EQUAL(atomic_load(&f->last_hash),
				fnv1a((const uint8_t *)embd,
				      count * sizeof(float)));
		/* the larger one exceeds the ring's message limit */
		CU_ASSERT_EQUAL(atomic_load(&f->last_via_socket), k == 1);
		free(embd);
	}
	kvc_disconnect(conn);
	fake_stop(f);
}

static void test_soft_prompt_limits(void)
{
	struct fake *f;
	kvc_conn *conn = fake_connect(&f);
	float embd[FAKE_D_MODEL + 1] = { 0 };
	uint64_t id;
	int before;

	CU_ASSERT_PTR_NOT_NULL_FATAL(conn);
	before = atomic_load(&f->n_requests);
	CU_ASSERT_EQUAL(kvc_prompt_soft(conn, embd, 1, FAKE_D_MODEL + 1, &id),
			KVC_EDIM);
	CU_ASSERT_EQUAL(kvc_prompt_soft(conn, embd, 0, FAKE_D_MODEL, &id),
			KVC_EINVAL);
	/* 40000 rows of 8 floats exceed the fake's 1 MiB limit */
	CU_ASSERT_EQUAL(kvc_prompt_soft(conn, embd, 40000, FAKE_D_MODEL, &id),
			KVC_ETOOBIG);
	CU_ASSERT_EQUAL(atomic_load(&f->n_requests), before);
	kvc_disconnect(conn);
	fake_stop(f);
}

struct collected {
	char text[64];
	int32_t ids[8];
	int n;
	int stop_after;		/* return nonzero after this many calls */
};

static int collect(void *arg, int32_t id, const char *text, size_t len)
{
	struct collected *c = arg;

	if (c->n < 8)
		c->ids[c->n] = id;
	c->n++;
	strncat(c->text, text, len);
	return c->stop_after && c->n >= c->stop_after;
}

static void test_generate_tokens(void)
{
	struct kvc_gen_result res = { .struct_size = sizeof(res) };
	struct collected c = { .stop_after = 0 };
	struct fake *f;
	kvc_conn *conn = fake_connect(&f);
	kvc_handle h = { { 1 } };

	CU_ASSERT_PTR_NOT_NULL_FATAL(conn);
	CU_ASSERT_EQUAL(kvc_generate(conn, &h, 1, NULL, collect, &c, &res), 0);
	CU_ASSERT_EQUAL(c.n, 3);
	CU_ASSERT_EQUAL(c.ids[0], 10);
	CU_ASSERT_EQUAL(c.ids[1], 11);
	CU_ASSERT_EQUAL(c.ids[2], -1);
	CU_ASSERT_STRING_EQUAL(c.text, "abcd");
	CU_ASSERT_EQUAL(res.span_id, 7);
	CU_ASSERT_EQUAL(res.n_generated, 3);
	CU_ASSERT_EQUAL(res.stop_reason, KVC_STOP_EOS);
	CU_ASSERT_EQUAL(res.prefill_seconds, 0.5);
	CU_ASSERT_EQUAL(res.decode_seconds, 0.25);
	kvc_disconnect(conn);
	fake_stop(f);
}

static void test_generate_text(void)
{
	struct kvc_gen_params p;
	struct fake *f;
	kvc_conn *conn = fake_connect(&f);
	kvc_handle h = { { 1 } };
	char *text = NULL;
	size_t len = 0;

	CU_ASSERT_PTR_NOT_NULL_FATAL(conn);
	kvc_gen_params_init(&p);
	CU_ASSERT_EQUAL(kvc_generate_text(conn, &h, 0, &p, &text, &len, NULL), 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(text);
	CU_ASSERT_STRING_EQUAL(text, "abcd");
	CU_ASSERT_EQUAL(len, 4);
	kvc_free(text);
	/* a bad parameter is caught before anything is sent */
	p.max_tokens = 0;
	CU_ASSERT_EQUAL(kvc_generate_text(conn, &h, 0, &p, &text, &len, NULL),
			KVC_EINVAL);
	CU_ASSERT_PTR_NULL(text);
	kvc_disconnect(conn);
	fake_stop(f);
}

static void test_generate_cancel(void)
{
	struct kvc_gen_result res = { .struct_size = sizeof(res) };
	struct collected c = { .stop_after = 1 };
	struct kvc_stats st = { .struct_size = sizeof(st) };
	struct fake *f;
	kvc_conn *conn = fake_connect(&f);
	kvc_handle h = { { 1 } };

	CU_ASSERT_PTR_NOT_NULL_FATAL(conn);
	CU_ASSERT_EQUAL(kvc_generate(conn, &h, 0, NULL, collect, &c, &res),
			KVC_ECANCELED);
	/* no call after the one that asked to stop */
	CU_ASSERT_EQUAL(c.n, 1);
	CU_ASSERT_STRING_EQUAL(c.text, "ab");
	CU_ASSERT_EQUAL(res.stop_reason, KVC_STOP_CANCELED);
	CU_ASSERT_EQUAL(res.span_id, 7);
	/* the rest of the stream was drained: the next call is in step */
	CU_ASSERT_EQUAL(kvc_stats(conn, &st), 0);
	CU_ASSERT_EQUAL(st.blocks_total, 100);
	kvc_disconnect(conn);
	fake_stop(f);
}

static void test_reply_timeout(void)
{
	struct kvc_stats st = { .struct_size = sizeof(st) };
	kvc_conn *conn;
	struct fake *f;
	kvc_handle h = { { 2 } };

	setenv("KVCHAIN_TIMEOUT_MS", "300", 1);
	conn = fake_connect(&f);
	unsetenv("KVCHAIN_TIMEOUT_MS");
	CU_ASSERT_PTR_NOT_NULL_FATAL(conn);
	CU_ASSERT_EQUAL(kvc_attach(conn, &h), KVC_ETIMEDOUT);
	CU_ASSERT_PTR_NOT_NULL(strstr(kvc_last_error(conn), "300 ms"));
	CU_ASSERT_EQUAL(kvc_stats(conn, &st), 0);
	kvc_disconnect(conn);
	fake_stop(f);
}

static void test_daemon_hangup(void)
{
	struct kvc_stats st = { .struct_size = sizeof(st) };
	struct fake *f;
	kvc_conn *conn = fake_connect(&f);
	kvc_handle h = { { 3 } };

	CU_ASSERT_PTR_NOT_NULL_FATAL(conn);
	/* the fake hangs up on Release without answering */
	CU_ASSERT_EQUAL(kvc_release(conn, &h), KVC_EIO);
	CU_ASSERT_PTR_NOT_NULL(strstr(kvc_last_error(conn), "closed"));
	CU_ASSERT_EQUAL(kvc_stats(conn, &st), KVC_EIO);
	kvc_disconnect(conn);
	fake_stop(f);
}

static void test_append_checks(void)
{
	struct fake *f;
	kvc_conn *conn = fake_connect(&f);
	kvc_handle h = { { 4 } };
	uint32_t view[1] = { 0 };
	int before;

	CU_ASSERT_PTR_NOT_NULL_FATAL(conn);
	before = atomic_load(&f->n_requests);
	CU_ASSERT_EQUAL(kvc_append_text(conn, &h, 4, 0, "x", 1, NULL, 0, NULL),
			KVC_EINVAL);
	CU_ASSERT_EQUAL(kvc_append_text(conn, &h, KVC_STAGE_INPUT, 0, "a\0b", 3,
					NULL, 0, NULL), KVC_EINVAL);
	CU_ASSERT_EQUAL(kvc_append_text(conn, &h, KVC_STAGE_INPUT, 0, "x", 1,
					NULL, 2, NULL), KVC_EINVAL);
	CU_ASSERT_EQUAL(kvc_append_tokens(conn, &h, KVC_SHARED_INPUT, 0, NULL, 0,
					  view, 1, NULL), KVC_EINVAL);
	CU_ASSERT_EQUAL(atomic_load(&f->n_requests), before);
	kvc_disconnect(conn);
	fake_stop(f);
}

static int setup(void)
{
	return mkdtemp(tmpdir) ? 0 : 1;
}

static void teardown(void)
{
	rmdir(tmpdir);
}

static const struct test_case handle_cases[] = {
	{ "round trip", test_handle_round_trip },
	{ "format digits", test_handle_format_digits },
	{ "uppercase", test_handle_uppercase },
	{ "bad input", test_handle_bad_input },
	{ NULL, NULL },
};

static const struct test_case api_cases[] = {
	{ "strerror every code", test_strerror_every_code },
	{ "strerror unknown", test_strerror_unknown },
	{ "gen params defaults", test_gen_params_defaults },
	{ "null arguments", test_null_arguments },
	{ NULL, NULL },
};

static const struct test_case connect_cases[] = {
	{ "missing socket", test_connect_missing_socket },
	{ "socket from env", test_connect_env_socket },
	{ "long path", test_connect_long_path },
	{ "bad timeout env", test_connect_bad_timeout },
	{ "hang-up at hello", test_connect_hangup },
	{ "bad version", test_connect_bad_version },
	{ "server info", test_server_info },
	{ NULL, NULL },
};

static const struct test_case transport_cases[] = {
	{ "stats over ring", test_stats_over_ring },
	{ "stats short struct", test_stats_short_struct },
	{ "error reply", test_error_reply },
	{ "soft prompt ring and socket", test_soft_prompt_ring_and_socket },
	{ "soft prompt limits", test_soft_prompt_limits },
	{ "generate tokens", test_generate_tokens },
	{ "generate text", test_generate_text },
	{ "generate cancel", test_generate_cancel },
	{ "reply timeout", test_reply_timeout },
	{ "daemon hang-up", test_daemon_hangup },
	{ "append checks", test_append_checks },
	{ NULL, NULL },
};

static const struct test_suite suites[] = {
	{ "handle", handle_cases },
	{ "api", api_cases },
	{ "connect", connect_cases },
	{ "transport", transport_cases },
};

#define TEST_SETUP setup
#define TEST_TEARDOWN teardown
#include "cunit-main.h"
