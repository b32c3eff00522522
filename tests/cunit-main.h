/* SPDX-License-Identifier: MIT */
/*
 * cunit-main.h - the main() every CUnit test program shares.
 *
 * Include this header twice: once near the top, which declares struct
 * test_case and struct test_suite, and once at the end, after the file has
 * defined `static const struct test_suite suites[]`, which defines main().
 * A file that needs work before and after all tests defines TEST_SETUP and
 * TEST_TEARDOWN, before the second include, as the names of its functions
 * `int f(void)` (nonzero fails the run) and `void g(void)`. The program
 * exits 0 when every test passed and 1 otherwise.
 */
#ifndef KVCHAIN_CUNIT_TYPES
#define KVCHAIN_CUNIT_TYPES

#include <CUnit/Basic.h>
#include <stdio.h>

struct test_case {
	const char *name;
	void (*fn)(void);
};

struct test_suite {
	const char *name;
	const struct test_case *cases; /* ends with a { NULL, NULL } entry */
};

#elif !defined(KVCHAIN_CUNIT_MAIN)
#define KVCHAIN_CUNIT_MAIN

int main(void)
{
	unsigned failures;
	size_t i;
	const struct test_case *tc;

#ifdef TEST_SETUP
	if (TEST_SETUP() != 0)
		return 1;
#endif
	if (CU_initialize_registry() != CUE_SUCCESS)
		return 1;
	for (i = 0; i < sizeof(suites) / sizeof(suites[0]); i++) {
		CU_pSuite suite = CU_add_suite(suites[i].name, NULL, NULL);

		if (!suite)
			goto out_registry;
		for (tc = suites[i].cases; tc->name; tc++)
			if (!CU_add_test(suite, tc->name, tc->fn))
				goto out_registry;
	}
	CU_basic_set_mode(CU_BRM_VERBOSE);
	CU_basic_run_tests();
	failures = CU_get_number_of_failures();
	CU_cleanup_registry();
#ifdef TEST_TEARDOWN
	TEST_TEARDOWN();
#endif
	return failures ? 1 : 0;

out_registry:
	fprintf(stderr, "CUnit setup failed: %s\n", CU_get_error_msg());
	CU_cleanup_registry();
	return 1;
}

#endif /* KVCHAIN_CUNIT_MAIN */
