/*
 * allocount.c: an LD_PRELOAD library for scripts/bench-fleet that counts a
 * process's heap allocations (malloc, calloc, realloc, aligned forms) in a
 * shared file, so the script reads allocations per heartbeat from outside
 * without stopping the process. DCM_BENCH_ALLOC_FILE names the file (8
 * bytes, created by the script); without it nothing is counted. Each call
 * costs one relaxed atomic add on top of glibc's own allocator, which does
 * the work (__libc_* entry points: no dlsym, no recursion).
 * Depends on glibc only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t k, size_t n);
extern void *__libc_realloc(void *p, size_t n);
extern void *__libc_memalign(size_t align, size_t n);

static uint64_t *counter; /* the shared file's 8 bytes, or NULL */

__attribute__((constructor)) static void open_counter(void) {
  const char *path = getenv("DCM_BENCH_ALLOC_FILE");
  if (path == NULL) return;
  int fd = open(path, O_RDWR);
  if (fd < 0) return;
  void *p = mmap(NULL, sizeof *counter, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p != MAP_FAILED) counter = p;
}

static void count(void) {
  if (counter) __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
}

void *malloc(size_t n) {
  count();
  return __libc_malloc(n);
}

void *calloc(size_t k, size_t n) {
  count();
  return __libc_calloc(k, n);
}

void *realloc(void *p, size_t n) {
  count();
  return __libc_realloc(p, n);
}

void *memalign(size_t align, size_t n) {
  count();
  return __libc_memalign(align, n);
}

void *aligned_alloc(size_t align, size_t n) {
  count();
  return __libc_memalign(align, n);
}

int posix_memalign(void **out, size_t align, size_t n) {
  count();
  if (align < sizeof(void *) || (align & (align - 1)) != 0) return EINVAL;
  void *p = __libc_memalign(align, n);
  if (p == NULL) return ENOMEM;
  *out = p;
  return 0;
}
