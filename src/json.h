/*
 * json.h: JSON behind a small C API. lua-cjson decodes; a decoded document
 * lives on a Lua stack and C reads it with the field helpers below.
 * Outbound JSON is written by a walk over a Lua value (json.c), so an empty
 * array needs no marker in the text. Each owner keeps its own state (no
 * globals). Depends on Lua 5.4 and lua-cjson.
 */
#ifndef DCM_JSON_H
#define DCM_JSON_H

#include <lua.h>
#include <stddef.h>

/* A fresh state with cjson loaded (no other libraries). NULL on OOM. */
lua_State *dcm__json_new(void);

/* Pushes the decoded value; on error pushes nothing and returns -1. */
int dcm__json_decode(lua_State *L, const char *s, size_t n);

/*
 * Encodes the value at idx: tables whose keys are exactly 1..n as arrays,
 * other tables (string keys only) as objects, an empty table as {}; nil and
 * JSON null as null. Strings are escaped (control bytes, 0x7f) and invalid
 * UTF-8 becomes U+FFFD, so the text is always valid JSON. Returns a pointer
 * to the text, which stays valid while the string pushed on the stack
 * stays; NULL on error (nothing pushed): a non-finite number, a key that is
 * not a string, nesting past 64 levels, another type, out of memory.
 */
const char *dcm__json_encode(lua_State *L, int idx, size_t *len);

/* Pushes a value dcm__json_encode writes as [] (an empty table is {}). */
void dcm__json_push_empty_array(lua_State *L);

/* Pushes an array of integers, [] when n == 0. */
void dcm__json_push_int_array(lua_State *L, const int *v, size_t n);

/* Pushes t[key], with JSON null turned into nil; returns the Lua type. */
int dcm__json_field(lua_State *L, int idx, const char *key);

/* 1 if the value at idx is a number holding an exact integer. */
int dcm__json_tointeger(lua_State *L, int idx, long long *out);

/* 1 if the value at idx is a table whose keys are exactly 1..n. */
int dcm__json_isarray(lua_State *L, int idx, size_t *n);

/* 1 if the value at idx is a table with no integer keys (a JSON object). */
int dcm__json_isobject(lua_State *L, int idx);

/* 1 if s holds no control character (below 0x20, or 0x7f): fit for a log
 * line or /status as it is. */
int dcm__json_plain_text(const char *s, size_t len);

#endif
