/*
 * wskey.h: the RFC 6455 opening-handshake keys (SHA-1 and base64 from
 * OpenSSL's libcrypto) and the project's base64 both ways (etcd.c too).
 * Pure, no I/O. Shared by MASTER and the agent.
 */
#ifndef DCM_WSKEY_H
#define DCM_WSKEY_H

#include <stddef.h>
#include <stdint.h>

#define DCM_WS_ACCEPT_LEN 28 /* base64 of a 20-byte digest */

/* Writes base64 of in into out (4 * ceil(len / 3) bytes plus NUL). */
size_t dcm__base64(const uint8_t *in, size_t len, char *out);

/* Decodes padded base64 (len a multiple of 4) into out (3 * len / 4
 * bytes); the decoded length, or -1 when in is not base64. */
long dcm__base64_decode(const char *in, size_t len, uint8_t *out);

/* Sec-WebSocket-Accept for a client's Sec-WebSocket-Key; out gets 29 bytes. */
void dcm__ws_accept(const char *key, size_t keylen, char out[DCM_WS_ACCEPT_LEN + 1]);

/* 1 if key is base64 of exactly 16 bytes, as RFC 6455 4.1 requires. */
int dcm__ws_key_valid(const char *key, size_t keylen);

#endif
