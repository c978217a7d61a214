/*
 * rebalance_cli.c: `discluster-master rebalance [--master URL]`, the CLI
 * form of POST /rebalance: asks a running MASTER to rebalance, with the
 * secret from DISCLUSTER_AUTH (never printed), over https:// when MASTER
 * serves TLS (verified against the system store or --ca-file). Depends on libcurl (easy
 * interface: a one-shot command, no loop) and options.h for the URL check.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "options.h"
#include "rebalance_cli.h"

static size_t print_body(char *p, size_t size, size_t n, void *arg) {
  (void)arg;
  fwrite(p, size, n, stdout);
  return size * n;
}

int dcm__rebalance_main(int argc, char **argv) {
  const char *base = "http://127.0.0.1:8642", *ca_file = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--master") == 0 && i + 1 < argc) {
      base = argv[++i];
    } else if (strncmp(argv[i], "--master=", 9) == 0) {
      base = argv[i] + 9;
    } else if (strcmp(argv[i], "--ca-file") == 0 && i + 1 < argc) {
      ca_file = argv[++i];
    } else if (strncmp(argv[i], "--ca-file=", 10) == 0) {
      ca_file = argv[i] + 10;
    } else {
      fprintf(stderr, "usage: discluster-master rebalance [--master https://HOST:PORT] "
                      "[--ca-file FILE]\n"
                      "  asks a running MASTER to move shards to what its allocation policy\n"
                      "  gives for the current fleet (POST /rebalance); the shared secret\n"
                      "  comes from DISCLUSTER_AUTH; with https:// MASTER's certificate is\n"
                      "  checked against the system store or the CAs in FILE\n");
      return 2;
    }
  }
  if (!dcm__url_ok(base, 0) || strlen(base) > 1000) {
    fprintf(stderr, "discluster-master rebalance: --master must be https://HOST:PORT or "
                    "http://HOST:PORT\n");
    return 2;
  }
  char url[1100], auth[4200];
  size_t blen = strlen(base);
  while (blen > 0 && base[blen - 1] == '/') blen--; /* http://h:p/ and http://h:p alike */
  snprintf(url, sizeof url, "%.*s/rebalance", (int)blen, base);
  const char *secret = getenv("DISCLUSTER_AUTH");
  if (secret && strlen(secret) > 4096) {
    fprintf(stderr, "discluster-master rebalance: DISCLUSTER_AUTH is longer than 4096 bytes\n");
    return 2;
  }
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) return 1;
  CURL *h = curl_easy_init();
  struct curl_slist *hdrs = NULL;
  if (secret && *secret) {
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", secret);
    hdrs = curl_slist_append(NULL, auth);
    memset(auth, 0, sizeof auth);
  }
  long code = 0;
  CURLcode r = CURLE_OUT_OF_MEMORY;
  if (h) {
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    if (ca_file) curl_easy_setopt(h, CURLOPT_CAINFO, ca_file);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, print_body);
    r = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(h);
  }
  curl_slist_free_all(hdrs);
  curl_global_cleanup();
  if (r != CURLE_OK) {
    fprintf(stderr, "discluster-master rebalance: %s: %s\n", url, curl_easy_strerror(r));
    return 1;
  }
  if (code != 202) {
    fprintf(stderr, "discluster-master rebalance: MASTER answered HTTP %ld\n", code);
    return 1;
  }
  return 0;
}
