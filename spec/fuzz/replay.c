/*
 * replay.c: a main() for the fuzz harnesses without libFuzzer. Runs every
 * file named on the command line, or found directly in a named directory
 * (in name order), through LLVMFuzzerTestOneInput once, so the checked-in
 * corpora run as ordinary ctest tests in any build (plain, ASan). Fails
 * when an argument names nothing or a directory holds no file; a crash or
 * sanitizer report fails the process itself.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

#define REPLAY_FILE_MAX (1u << 20) /* larger than any corpus entry */

static int run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    perror(path);
    return -1;
  }
  uint8_t *buf = malloc(REPLAY_FILE_MAX);
  size_t n = buf ? fread(buf, 1, REPLAY_FILE_MAX, f) : 0;
  int bad = buf == NULL || ferror(f) || !feof(f);
  fclose(f);
  if (bad) {
    fprintf(stderr, "%s: cannot read (or over %u bytes)\n", path, REPLAY_FILE_MAX);
    free(buf);
    return -1;
  }
  /* an exact-size copy, so ASan sees reads past the input's end */
  uint8_t *in = malloc(n ? n : 1);
  if (in == NULL) {
    free(buf);
    return -1;
  }
  memcpy(in, buf, n);
  free(buf);
  LLVMFuzzerTestOneInput(in, n);
  free(in);
  return 0;
}

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The regular files directly in dir, in name order; -1 on error. */
static long run_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (d == NULL) {
    perror(dir);
    return -1;
  }
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    if (n == cap) {
      cap = cap ? 2 * cap : 64;
      char **p = realloc(names, cap * sizeof *p);
      if (p == NULL) break;
      names = p;
    }
    size_t len = strlen(dir) + strlen(e->d_name) + 2;
    if ((names[n] = malloc(len)) == NULL) break;
    snprintf(names[n++], len, "%s/%s", dir, e->d_name);
  }
  closedir(d);
  if (n) qsort(names, n, sizeof *names, by_name);
  long ran = 0;
  for (size_t i = 0; i < n; i++) {
    struct stat st;
    if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
      if (run_file(names[i]) != 0) ran = -1;
      else if (ran >= 0) ran++;
    }
    free(names[i]);
  }
  free(names);
  return ran;
}

int main(int argc, char **argv) {
  int failed = 0;
  if (argc < 2) {
    fprintf(stderr, "usage: %s CORPUS_DIR|FILE...\n", argv[0]);
    return 2;
  }
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st) != 0) {
      perror(argv[i]);
      failed = 1;
    } else if (S_ISDIR(st.st_mode)) {
      long ran = run_dir(argv[i]);
      if (ran <= 0) {
        fprintf(stderr, "%s: %s\n", argv[i], ran == 0 ? "no input files" : "read error");
        failed = 1;
      } else {
        printf("%s: replayed %ld inputs\n", argv[i], ran);
      }
    } else if (run_file(argv[i]) != 0) {
      failed = 1;
    } else {
      printf("%s: replayed\n", argv[i]);
    }
  }
  return failed;
}
