/* SPDX-License-Identifier: MIT */
/*
 * daemon-conf.c - unit tests of kvchaind's settings: the kvchain.conf
 * parser, its error messages, flag values, and the peer allow lists.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cunit-main.h"
#include "conf.h"

/* Writes @text to a temporary file and loads it into @cfg. */
static int load_text(struct kvd_config *cfg, const char *text, char *err,
		     size_t errlen, char path[64])
{
	FILE *fp;
	int fd, rc;

	strcpy(path, "/tmp/daemon-conf-XXXXXX");
	fd = mkstemp(path);
	CU_ASSERT_FATAL(fd >= 0);
	fp = fdopen(fd, "w");
	CU_ASSERT_FATAL(fp != NULL);
	fputs(text, fp);
	fclose(fp);
	kvd_config_defaults(cfg);
	rc = kvd_config_load(cfg, path, err, errlen);
	unlink(path);
	return rc;
}

static void test_conf_valid(void)
{
	struct kvd_config cfg;
	char err[512] = "", path[64];
	int rc;

	rc = load_text(&cfg,
		       "# a comment\n"
		       "\n"
		       "model = /models/a.gguf   # trailing comment\n"
		       "arena_mib=64\n"
		       "  kv_type = q8_0\n"
		       "event_loop = epoll\n"
		       "allow_uids = 1000, 1001\n"
		       "allow_gids =\n"
		       "numa_node = -1\n"
		       "segment_ttl_seconds = 0\n",
		       err, sizeof(err), path);
	CU_ASSERT_EQUAL(rc, 0);
	CU_ASSERT_STRING_EQUAL(cfg.model, "/models/a.gguf");
	CU_ASSERT_EQUAL(cfg.arena_mib, 64);
	CU_ASSERT_EQUAL(cfg.kv_type, KERN_TYPE_Q8_0);
	CU_ASSERT_EQUAL(cfg.event_loop, KVD_LOOP_EPOLL);
	CU_ASSERT_EQUAL(cfg.n_allow_uids, 2);
	CU_ASSERT_EQUAL(cfg.allow_uids[1], 1001);
	CU_ASSERT_EQUAL(cfg.n_allow_gids, 0);
	CU_ASSERT_EQUAL(cfg.numa_node, -1);
	CU_ASSERT_EQUAL(cfg.segment_ttl_seconds, 0);
	kvd_config_free(&cfg);
}

static void test_conf_bad_value(void)
{
	struct kvd_config cfg;
	char err[512] = "", path[64], want[128];
	int rc;

	rc = load_text(&cfg, "threads = 2\n\nthreads = many\n", err,
		       sizeof(err), path);
	CU_ASSERT_EQUAL(rc, -EINVAL);
	snprintf(want, sizeof(want), "%s:3: key 'threads': invalid value 'many' (expected ",
		 path);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, want));
	kvd_config_free(&cfg);
}

static void test_conf_unknown_key(void)
{
	struct kvd_config cfg;
	char err[512] = "", path[64];
	int rc;

	rc = load_text(&cfg, "colour = blue\n", err, sizeof(err), path);
	CU_ASSERT_EQUAL(rc, -ENOENT);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, ":1: unknown key 'colour'"));
	kvd_config_free(&cfg);
}

static void test_conf_malformed(void)
{
	struct kvd_config cfg;
	char err[512] = "", path[64];
	int rc;

	rc = load_text(&cfg, "arena_mib 64\n", err, sizeof(err), path);
	CU_ASSERT_EQUAL(rc, -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, ":1: malformed line"));
	kvd_config_free(&cfg);
}

static void test_conf_values(void)
{
	static const struct {
		const char *key, *value;
		int rc;
	} cases[] = {
		{ "arena_mib", "0", -EINVAL },
		{ "arena_mib", "-5", -EINVAL },
		{ "arena_mib", "12x", -EINVAL },
		{ "kv_type", "bf16", -EINVAL },
		{ "event_loop", "select", -EINVAL },
		{ "log_level", "loud", -EINVAL },
		{ "allow_uids", "1,,2", -EINVAL },
		{ "allow_uids", "1,", -EINVAL },
		{ "allow_uids", "root", -EINVAL },
		{ "numa_node", "-2", -EINVAL },
		{ "model", "", -EINVAL },
		{ "ring_kib", "64", 0 },
		{ "log_level", "debug", 0 },
	};
	struct kvd_config cfg;
	const char *expected;
	size_t i;

	kvd_config_defaults(&cfg);
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int rc = kvd_config_set(&cfg, cases[i].key, cases[i].value,
					&expected);

		CU_ASSERT_EQUAL(rc, cases[i].rc);
		if (rc)
			CU_ASSERT(expected[0] != '\0');
	}
	kvd_config_free(&cfg);
}

static void test_conf_check(void)
{
	struct kvd_config cfg;
	const char *expected;
	char err[256];

	kvd_config_defaults(&cfg);
	CU_ASSERT_EQUAL(kvd_config_check(&cfg, err, sizeof(err)), -EINVAL);
	CU_ASSERT_EQUAL(kvd_config_set(&cfg, "model", "m.gguf", &expected), 0);
	CU_ASSERT_EQUAL(kvd_config_check(&cfg, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(kvd_config_set(&cfg, "ring_kib", "96", &expected), 0);
	CU_ASSERT_EQUAL(kvd_config_check(&cfg, err, sizeof(err)), -EINVAL);
	CU_ASSERT_EQUAL(kvd_config_set(&cfg, "ring_kib", "64", &expected), 0);
	CU_ASSERT_EQUAL(kvd_config_set(&cfg, "max_message_kib", "33",
				       &expected), 0);
	CU_ASSERT_EQUAL(kvd_config_check(&cfg, err, sizeof(err)), -EINVAL);
	kvd_config_free(&cfg);
}

static void test_allow_lists(void)
{
	struct kvd_config cfg;
	const char *expected;

	kvd_config_defaults(&cfg);
	/* only the daemon's own uid by default */
	CU_ASSERT_TRUE(kvd_config_allows(&cfg, 0, 0, 0));
	CU_ASSERT_FALSE(kvd_config_allows(&cfg, 0, 1000, 1000));
	CU_ASSERT_EQUAL(kvd_config_set(&cfg, "allow_uids", "1000", &expected),
			0);
	CU_ASSERT_TRUE(kvd_config_allows(&cfg, 0, 1000, 1000));
	CU_ASSERT_FALSE(kvd_config_allows(&cfg, 0, 1001, 1001));
	CU_ASSERT_EQUAL(kvd_config_set(&cfg, "allow_gids", "50,1001",
				       &expected), 0);
	CU_ASSERT_TRUE(kvd_config_allows(&cfg, 0, 1001, 1001));
	CU_ASSERT_FALSE(kvd_config_allows(&cfg, 0, 1002, 1002));
	/* an empty list removes every entry */
	CU_ASSERT_EQUAL(kvd_config_set(&cfg, "allow_uids", "", &expected), 0);
	CU_ASSERT_FALSE(kvd_config_allows(&cfg, 0, 1000, 1000));
	CU_ASSERT_TRUE(kvd_config_allows(&cfg, 1000, 1000, 1000));
	kvd_config_free(&cfg);
}

static const struct test_case conf_cases[] = {
	{ "valid file", test_conf_valid },
	{ "bad value", test_conf_bad_value },
	{ "unknown key", test_conf_unknown_key },
	{ "malformed line", test_conf_malformed },
	{ "flag values", test_conf_values },
	{ "dependent settings", test_conf_check },
	{ "allow lists", test_allow_lists },
	{ NULL, NULL },
};

static const struct test_suite suites[] = {
	{ "conf", conf_cases },
};

#include "cunit-main.h"
