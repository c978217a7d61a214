/* wskey.c: see wskey.h. */
#include "wskey.h"

#include <limits.h>
#include <openssl/evp.h>
#include <string.h>

size_t dcm__base64(const uint8_t *in, size_t len, char *out) {
  return (size_t)EVP_EncodeBlock((unsigned char *)out, in, (int)len);
}

long dcm__base64_decode(const char *in, size_t len, uint8_t *out) {
  if (len % 4 != 0 || len > INT_MAX) return -1;
  if (len == 0) return 0;
  for (size_t i = 0; i < len; i++) /* EVP_DecodeBlock would skip blanks */
    if (in[i] == ' ' || in[i] == '\t' || in[i] == '\r' || in[i] == '\n') return -1;
  int n = EVP_DecodeBlock(out, (const unsigned char *)in, (int)len);
  if (n < 0) return -1;
  /* It counts the padding as zero bytes. */
  if (in[len - 1] == '=') n--;
  if (in[len - 2] == '=') n--;
  return n;
}

void dcm__ws_accept(const char *key, size_t keylen, char out[DCM_WS_ACCEPT_LEN + 1]) {
  static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  char buf[128 + sizeof guid];
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int dlen = 0;
  if (keylen > 128) keylen = 128;
  memcpy(buf, key, keylen);
  memcpy(buf + keylen, guid, sizeof guid - 1);
  if (EVP_Digest(buf, keylen + sizeof guid - 1, digest, &dlen, EVP_sha1(), NULL) != 1 ||
      dlen != 20) {
    out[0] = '\0'; /* matches no peer's expectation: the handshake fails */
    return;
  }
  dcm__base64(digest, 20, out);
}

int dcm__ws_key_valid(const char *key, size_t keylen) {
  static const char b64[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  if (keylen != 24 || key[22] != '=' || key[23] != '=') return 0;
  for (size_t i = 0; i < 22; i++)
    if (key[i] == '\0' || strchr(b64, key[i]) == NULL) return 0;
  return 1;
}
