/*
 * check.h: the C unit tests' assertions (libuv test/task.h style): a
 * failed CHECK prints file:line and the expression, then aborts.
 */
#ifndef DCM_CHECK_H
#define DCM_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(expr)                                                         \
  do {                                                                      \
    if (!(expr)) {                                                          \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #expr); \
      abort();                                                              \
    }                                                                       \
  } while (0)

#define CHECK_EQ(a, b) CHECK((a) == (b))
#define CHECK_STR(a, b) CHECK(strcmp((a), (b)) == 0)

#define RUN(test)                         \
  do {                                    \
    test();                               \
    printf("ok - %s\n", #test);           \
  } while (0)

#endif
