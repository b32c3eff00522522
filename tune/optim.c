/* SPDX-License-Identifier: MIT */
/*
 * optim.c - AdamW, the learning-rate schedule, clipping, the random
 * generator and checkpoint files of kvchain-tune.
 *
 * A checkpoint file is little-endian host order (it is not meant to move
 * between machines): the magic "KVCTCKP1", then the fixed fields, then the
 * prompt rows (float), the first and second moments (double), and an FNV-1a
 * hash of everything before it.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "optim.h"

static const char ck_magic[8] = "KVCTCKP1";

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

double tune_lr_at(double lr, uint64_t step, uint64_t total, uint64_t warmup)
{
	if (step < warmup)
		return lr * (double)(step + 1) / (double)warmup;
	if (total <= warmup || step >= total)
		return 0.0;
	return lr * (double)(total - step) / (double)(total - warmup);
}

double tune_clip_grad(double *g, size_t n, double max_norm)
{
	double sum = 0.0, norm, scale;
	size_t i;

	for (i = 0; i < n; i++)
		sum += g[i] * g[i];
	norm = sqrt(sum);
	if (max_norm > 0.0 && norm > max_norm) {
		scale = max_norm / (norm + 1e-12);
		for (i = 0; i < n; i++)
			g[i] *= scale;
	}
	return norm;
}

void tune_adamw_step(const struct tune_adamw *opt, float *w, double *m,
		     double *v, const double *g, size_t n, uint64_t t,
		     double lr)
{
	double c1 = 1.0 - pow(opt->beta1, (double)t);
	double c2 = 1.0 - pow(opt->beta2, (double)t);
	size_t i;

	for (i = 0; i < n; i++) {
		double x = w[i];

		m[i] = opt->beta1 * m[i] + (1.0 - opt->beta1) * g[i];
		v[i] = opt->beta2 * v[i] + (1.0 - opt->beta2) * g[i] * g[i];
		x -= lr * opt->weight_decay * x;
		x -= lr * (m[i] / c1) / (sqrt(v[i] / c2) + opt->eps);
		w[i] = (float)x;
	}
}

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

void tune_rng_seed(struct tune_rng *rng, uint64_t seed)
{
	int i;

	for (i = 0; i < 4; i++)
		rng->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

uint64_t tune_rng_next(struct tune_rng *rng)
{
	uint64_t *s = rng->s;
	uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return r;
}

uint64_t tune_rng_below(struct tune_rng *rng, uint64_t n)
{
	/* rejection keeps every value equally likely */
	uint64_t limit = UINT64_MAX - UINT64_MAX % n, x;

	do
		x = tune_rng_next(rng);
	while (x >= limit);
	return x % n;
}

uint64_t tune_hash(uint64_t h, const void *data, size_t n)
{
	const unsigned char *p = data;
	size_t i;

	for (i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

/* The fixed fields, in file order after the magic. */
struct ck_header {
	uint64_t settings;
	uint64_t step;
	uint64_t total;
	uint64_t rng[4];
	uint64_t n;
	uint32_t stage;
	uint32_t reserved;
};

static int write_all(int fd, const void *p, size_t n, uint64_t *h)
{
	const char *c = p;

	*h = tune_hash(*h, p, n);
	while (n > 0) {
		ssize_t w = write(fd, c, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

/* fsyncs the folder holding @path, so the rename is durable. */
static int sync_parent(const char *path)
{
	char *copy = strdup(path);
	int fd, rc = 0;

	if (!copy)
		return -ENOMEM;
	fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
	if (fd < 0 || fsync(fd) < 0)
		rc = -errno;
	if (fd >= 0)
		close(fd);
	free(copy);
	return rc;
}

int tune_checkpoint_save(const char *path, const struct tune_checkpoint *ck,
			 char *err, size_t errlen)
{
	struct ck_header hd = {
		.settings = ck->settings, .step = ck->step, .total = ck->total,
		.n = ck->n, .stage = ck->stage,
	};
	uint64_t h = TUNE_HASH_INIT, sum;
	char tmp[4096];
	int fd, rc;

	memcpy(hd.rng, ck->rng.s, sizeof(hd.rng));
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)) {
		set_err(err, errlen, "%s: path too long", path);
		return -ENAMETOOLONG;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = -errno;
		set_err(err, errlen, "%s: %s", tmp, strerror(errno));
		return rc;
	}
	if ((rc = write_all(fd, ck_magic, sizeof(ck_magic), &h)) < 0 ||
	    (rc = write_all(fd, &hd, sizeof(hd), &h)) < 0 ||
	    (rc = write_all(fd, ck->w, ck->n * sizeof(float), &h)) < 0 ||
	    (rc = write_all(fd, ck->m, ck->n * sizeof(double), &h)) < 0 ||
	    (rc = write_all(fd, ck->v, ck->n * sizeof(double), &h)) < 0)
		goto out_close;
	sum = h;
	if ((rc = write_all(fd, &sum, sizeof(sum), &h)) < 0)
		goto out_close;
	if (fsync(fd) < 0)
		rc = -errno;
out_close:
	if (close(fd) < 0 && rc == 0)
		rc = -errno;
	if (rc == 0 && rename(tmp, path) < 0)
		rc = -errno;
	if (rc == 0)
		rc = sync_parent(path);
	if (rc < 0) {
		set_err(err, errlen, "%s: writing the checkpoint failed: %s",
			path, strerror(-rc));
		unlink(tmp);
	}
	return rc;
}

static int read_all(FILE *f, void *p, size_t n, uint64_t *h)
{
	if (fread(p, 1, n, f) != n)
		return -EINVAL;
	*h = tune_hash(*h, p, n);
	return 0;
}

int tune_checkpoint_load(const char *path, struct tune_checkpoint *ck,
			 char *err, size_t errlen)
{
	struct ck_header hd;
	char magic[8];
	uint64_t h = TUNE_HASH_INIT, sum, want;
	FILE *f;
	int rc;

	memset(ck, 0, sizeof(*ck));
	f = fopen(path, "rb");
	if (!f) {
		rc = -errno;
		if (rc != -ENOENT)
			set_err(err, errlen, "%s: %s", path, strerror(errno));
		return rc;
	}
	rc = -EINVAL;
	if (read_all(f, magic, sizeof(magic), &h) < 0 ||
	    memcmp(magic, ck_magic, sizeof(magic)) != 0) {
		set_err(err, errlen, "%s: not a kvchain-tune checkpoint", path);
		goto out_close;
	}
	if (read_all(f, &hd, sizeof(hd), &h) < 0 || hd.n == 0 ||
	    hd.n > ((size_t)1 << 32)) {
		set_err(err, errlen, "%s: header is short or invalid", path);
		goto out_close;
	}
	ck->n = (size_t)hd.n;
	ck->w = malloc(ck->n * sizeof(float));
	ck->m = malloc(ck->n * sizeof(double));
	ck->v = malloc(ck->n * sizeof(double));
	if (!ck->w || !ck->m || !ck->v) {
		rc = -ENOMEM;
		goto out_free;
	}
	if (read_all(f, ck->w, ck->n * sizeof(float), &h) < 0 ||
	    read_all(f, ck->m, ck->n * sizeof(double), &h) < 0 ||
	    read_all(f, ck->v, ck->n * sizeof(double), &h) < 0) {
		set_err(err, errlen, "%s: file is truncated", path);
		goto out_free;
	}
	want = h;
	if (read_all(f, &sum, sizeof(sum), &h) < 0 || sum != want) {
		set_err(err, errlen, "%s: checksum mismatch", path);
		goto out_free;
	}
	ck->settings = hd.settings;
	ck->stage = hd.stage;
	ck->step = hd.step;
	ck->total = hd.total;
	memcpy(ck->rng.s, hd.rng, sizeof(hd.rng));
	fclose(f);
	return 0;
out_free:
	tune_checkpoint_free(ck);
out_close:
	fclose(f);
	return rc;
}

void tune_checkpoint_free(struct tune_checkpoint *ck)
{
	free(ck->w);
	free(ck->m);
	free(ck->v);
	ck->w = NULL;
	ck->m = NULL;
	ck->v = NULL;
}
