/*
 * check.h: the assertions of the C tests in native/test/ (run by
 * test/native/c.test.ts). A failed check prints the file, line, expression and
 * the two values, and exits 1; a test program that reaches its end prints "ok N"
 * with the number of checks made.
 */
#ifndef VMDI_CHECK_H
#define VMDI_CHECK_H

#include <stdio.h>
#include <stdlib.h>

static unsigned long checks_made = 0;

#define CHECK(cond) do { \
  checks_made++; \
  if (!(cond)) { \
    fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
    exit(1); \
  } \
} while (0)

/* Expected value first, as "expected X, saw Y". */
#define CHECK_EQ(want, got) do { \
  long long w_ = (long long) (want), g_ = (long long) (got); \
  checks_made++; \
  if (w_ != g_) { \
    fprintf(stderr, "%s:%d: %s: expected %lld, saw %lld\n", __FILE__, __LINE__, #got, w_, g_); \
    exit(1); \
  } \
} while (0)

#define CHECKS_DONE() do { printf("ok %lu\n", checks_made); return 0; } while (0)

#endif
