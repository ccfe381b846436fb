/*
 * aws.c: the mechanism under the aws module (preloaded as "aws.core"): AWS Signature
 * Version 4 and the hashing, encoding and file walking that S3 needs, on OpenSSL's libcrypto.
 *
 *   core.sign{ method, path, query, headers, payload_hash, service, region, date,
 *              access_key, secret_key, s3 } -> { authorization, signature, ... }
 *   core.digest(algo, data [, encoding])           "md5" | "sha256"; "hex" (default),
 *                                                   "base64" or "raw"
 *   core.hmac_sha256(key, data [, encoding])       "raw" (default) or "hex"
 *   core.file_digest(path, algo [, encoding [, offset [, length]]]) -> digest, bytes
 *                                                   or nil, message
 *   core.uri_encode(text [, keep_slash])           RFC 3986: all but A-Z a-z 0-9 - _ . ~
 *   core.uri_decode(text)
 *   core.base64_encode(data), core.base64_decode(text) -> data or nil
 *   core.walk(dir) -> { { path = "a/b.css", size = n, mtime = t }, ... } or nil, message
 *   core.fnmatch(pattern, text) -> boolean          shell globs; "*" also matches "/"
 *
 * libcurl's CURLOPT_AWS_SIGV4 is not used: the libcurl here neither sorts nor encodes the
 * query string when it signs and leaves x-amz-content-sha256 to the caller, so the canonical
 * request is built here, the same way botocore builds it (the spec compares the two).
 * aws.lua and aws/client.lua decide what is signed (which headers, which payload hash); this
 * file only computes.
 */
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "tug.h"

#define AWS_READ_SIZE (64 * 1024)
/* Directories nested deeper than this (a symlink loop, most likely) stop a walk. */
#define AWS_WALK_DEPTH 64

/* ---- encodings ---- */

static int is_unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.' || c == '~';
}

/* Percent-encodes every byte but the unreserved ones (and '/' when keep_slash), with
   upper-case hex digits as SigV4 wants. */
static void add_encoded(luaL_Buffer *b, const char *s, size_t len, int keep_slash) {
  static const char hex[] = "0123456789ABCDEF";
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (is_unreserved(c) || (keep_slash && c == '/')) {
      luaL_addchar(b, (char)c);
    } else {
      luaL_addchar(b, '%');
      luaL_addchar(b, hex[c >> 4]);
      luaL_addchar(b, hex[c & 15]);
    }
  }
}

static void push_encoded(lua_State *L, const char *s, size_t len, int keep_slash) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  add_encoded(&b, s, len, keep_slash);
  luaL_pushresult(&b);
}

static void add_hex(luaL_Buffer *b, const unsigned char *d, size_t n) {
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    luaL_addchar(b, hex[d[i] >> 4]);
    luaL_addchar(b, hex[d[i] & 15]);
  }
}

static void push_hex(lua_State *L, const unsigned char *d, size_t n) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  add_hex(&b, d, n);
  luaL_pushresult(&b);
}

static void push_base64(lua_State *L, const unsigned char *d, size_t n) {
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, 4 * ((n + 2) / 3) + 1);
  int len = EVP_EncodeBlock((unsigned char *)out, d, (int)n);
  luaL_pushresultsize(&b, (size_t)len);
}

enum { ENC_HEX, ENC_BASE64, ENC_RAW };

static int check_encoding(lua_State *L, int arg, const char *def) {
  static const char *const names[] = {"hex", "base64", "raw", NULL};
  return luaL_checkoption(L, arg, def, names);
}

static void push_digest(lua_State *L, const unsigned char *d, size_t n, int encoding) {
  if (encoding == ENC_HEX)
    push_hex(L, d, n);
  else if (encoding == ENC_BASE64)
    push_base64(L, d, n);
  else
    lua_pushlstring(L, (const char *)d, n);
}

static const EVP_MD *check_algo(lua_State *L, int arg) {
  static const char *const names[] = {"md5", "sha256", NULL};
  return luaL_checkoption(L, arg, NULL, names) == 0 ? EVP_md5() : EVP_sha256();
}

static void sha256_hex(lua_State *L, const char *s, size_t len) {
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(s, len, d, &n, EVP_sha256(), NULL);
  push_hex(L, d, n);
}

static void hmac(const void *key, size_t key_len, const char *data, size_t len,
                 unsigned char out[EVP_MAX_MD_SIZE], unsigned int *out_len) {
  HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)data, len, out, out_len);
}

/* ---- signing ---- */

typedef struct sign_pair {
  const char *k, *v;
  size_t klen, vlen;
} sign_pair;

static int compare_bytes(const char *a, size_t alen, const char *b, size_t blen) {
  int c = memcmp(a, b, alen < blen ? alen : blen);
  if (c != 0)
    return c;
  return alen < blen ? -1 : alen > blen;
}

/* Sorts by key, then by value: SigV4 sorts query parameters as (name, value) pairs, which is
   not the order of the joined "name=value" strings ('=' sorts after '-', '.' and digits). */
static int compare_pairs(const void *pa, const void *pb) {
  const sign_pair *a = pa, *b = pb;
  int c = compare_bytes(a->k, a->klen, b->k, b->klen);
  return c != 0 ? c : compare_bytes(a->v, a->vlen, b->v, b->vlen);
}

static const char *field_string(lua_State *L, int t, const char *name, size_t *len) {
  lua_getfield(L, t, name);
  if (lua_type(L, -1) != LUA_TSTRING)
    luaL_error(L, "aws.core.sign: %s must be a string (got %s)", name, luaL_typename(L, -1));
  const char *s = lua_tolstring(L, -1, len);
  lua_pop(L, 1); /* still anchored in the table */
  return s;
}

/* Pushes the value with leading and trailing whitespace removed and inner runs of
   whitespace collapsed to one space (botocore's ' '.join(value.split())). */
static void push_trimmed(lua_State *L, const char *s, size_t len) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  int pending_space = 0, any = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f') {
      pending_space = any;
      continue;
    }
    if (pending_space)
      luaL_addchar(&b, ' ');
    pending_space = 0;
    any = 1;
    luaL_addchar(&b, (char)c);
  }
  luaL_pushresult(&b);
}

static void push_lower(lua_State *L, const char *s, size_t len) {
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, len);
  for (size_t i = 0; i < len; i++)
    p[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] + 32) : s[i];
  luaL_pushresultsize(&b, len);
}

/* RFC 3986 section 5.2.4, plus what AWS services want: empty segments dropped. The result
   keeps a leading and a trailing slash when the input had them (botocore's
   remove_dot_segments). */
static void push_normalized_path(lua_State *L, const char *path, size_t len) {
  lua_newtable(L); /* the kept segments */
  int segments = lua_gettop(L);
  lua_Integer n = 0;
  size_t i = 0;
  while (i <= len) {
    size_t j = i;
    while (j < len && path[j] != '/')
      j++;
    size_t seglen = j - i;
    const char *seg = path + i;
    if (seglen == 0 || (seglen == 1 && seg[0] == '.')) {
      /* dropped */
    } else if (seglen == 2 && seg[0] == '.' && seg[1] == '.') {
      if (n > 0) {
        lua_pushnil(L);
        lua_rawseti(L, segments, n--);
      }
    } else {
      lua_pushlstring(L, seg, seglen);
      lua_rawseti(L, segments, ++n);
    }
    i = j + 1;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (len > 0 && path[0] == '/')
    luaL_addchar(&b, '/');
  for (lua_Integer k = 1; k <= n; k++) {
    if (k > 1)
      luaL_addchar(&b, '/');
    lua_rawgeti(L, segments, k);
    luaL_addvalue(&b);
  }
  if (len > 0 && path[len - 1] == '/' && n > 0)
    luaL_addchar(&b, '/');
  luaL_pushresult(&b);
  lua_remove(L, segments);
}

/* The canonical URI: for S3 the path exactly as it goes on the wire (encoded once by the
   caller); for every other service the path with dot segments removed and encoded a second
   time. An empty path is "/", which is what an HTTP client sends. */
static void push_canonical_uri(lua_State *L, const char *path, size_t len, int s3) {
  if (len == 0) {
    lua_pushliteral(L, "/");
  } else if (s3) {
    lua_pushlstring(L, path, len);
  } else {
    push_normalized_path(L, path, len);
    size_t nlen;
    const char *normalized = lua_tolstring(L, -1, &nlen);
    if (nlen == 0) {
      lua_pop(L, 1);
      lua_pushliteral(L, "/");
    } else {
      push_encoded(L, normalized, nlen, 1);
      lua_remove(L, -2);
    }
  }
}

/* Pushes the canonical query string from opts.query, an array of { name, value } pairs
   (decoded). */
static void push_canonical_query(lua_State *L, int opts) {
  int type = lua_getfield(L, opts, "query");
  if (type == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushliteral(L, "");
    return;
  }
  if (type != LUA_TTABLE)
    luaL_error(L, "aws.core.sign: query must be an array of pairs (got %s)", luaL_typename(L, -1));
  int query = lua_gettop(L);
  lua_Integer n = luaL_len(L, query);
  lua_createtable(L, (int)(2 * n), 0); /* anchors the encoded strings */
  int anchor = lua_gettop(L);
  sign_pair *pairs = lua_newuserdatauv(L, sizeof(sign_pair) * (size_t)(n > 0 ? n : 1), 0);
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_rawgeti(L, query, i) != LUA_TTABLE)
      luaL_error(L, "aws.core.sign: query[%d] must be a { name, value } pair", (int)i);
    size_t klen, vlen;
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    const char *k = lua_tolstring(L, -2, &klen);
    const char *v = lua_tolstring(L, -1, &vlen);
    if (!k || !v)
      luaL_error(L, "aws.core.sign: query[%d] must hold two strings", (int)i);
    push_encoded(L, k, klen, 0);
    pairs[i - 1].k = lua_tolstring(L, -1, &pairs[i - 1].klen);
    lua_rawseti(L, anchor, 2 * i - 1);
    push_encoded(L, v, vlen, 0);
    pairs[i - 1].v = lua_tolstring(L, -1, &pairs[i - 1].vlen);
    lua_rawseti(L, anchor, 2 * i);
    lua_pop(L, 3);
  }
  qsort(pairs, (size_t)n, sizeof(sign_pair), compare_pairs);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (lua_Integer i = 0; i < n; i++) {
    if (i > 0)
      luaL_addchar(&b, '&');
    luaL_addlstring(&b, pairs[i].k, pairs[i].klen);
    luaL_addchar(&b, '=');
    luaL_addlstring(&b, pairs[i].v, pairs[i].vlen);
  }
  luaL_pushresult(&b);
  lua_replace(L, query); /* the result takes the place of opts.query */
  lua_settop(L, query);
}

/* Pushes the canonical headers block (each "name:value\n") and the signed headers list from
   opts.headers, a table name -> value. Names are lower-cased and sorted; a name given twice
   in different cases gets its values joined with ','. */
static void push_canonical_headers(lua_State *L, int opts) {
  if (lua_getfield(L, opts, "headers") != LUA_TTABLE)
    luaL_error(L, "aws.core.sign: headers must be a table (got %s)", luaL_typename(L, -1));
  int headers = lua_gettop(L);
  lua_Integer n = 0;
  lua_pushnil(L);
  while (lua_next(L, headers)) {
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "aws.core.sign: headers must map names to strings");
    n++;
    lua_pop(L, 1);
  }
  lua_createtable(L, (int)(2 * n), 0);
  int anchor = lua_gettop(L);
  sign_pair *pairs = lua_newuserdatauv(L, sizeof(sign_pair) * (size_t)(n > 0 ? n : 1), 0);
  lua_Integer i = 0;
  lua_pushnil(L);
  while (lua_next(L, headers)) {
    size_t klen, vlen;
    const char *k = lua_tolstring(L, -2, &klen);
    const char *v = lua_tolstring(L, -1, &vlen);
    push_lower(L, k, klen);
    pairs[i].k = lua_tolstring(L, -1, &pairs[i].klen);
    lua_rawseti(L, anchor, 2 * i + 1);
    push_trimmed(L, v, vlen);
    pairs[i].v = lua_tolstring(L, -1, &pairs[i].vlen);
    lua_rawseti(L, anchor, 2 * i + 2);
    lua_pop(L, 1);
    i++;
  }
  qsort(pairs, (size_t)n, sizeof(sign_pair), compare_pairs);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (i = 0; i < n; i++) {
    int same =
        i > 0 && compare_bytes(pairs[i].k, pairs[i].klen, pairs[i - 1].k, pairs[i - 1].klen) == 0;
    if (same) {
      luaL_addchar(&b, ',');
    } else {
      if (i > 0)
        luaL_addchar(&b, '\n');
      luaL_addlstring(&b, pairs[i].k, pairs[i].klen);
      luaL_addchar(&b, ':');
    }
    luaL_addlstring(&b, pairs[i].v, pairs[i].vlen);
  }
  if (n > 0)
    luaL_addchar(&b, '\n');
  luaL_pushresult(&b);
  luaL_buffinit(L, &b);
  for (i = 0; i < n; i++) {
    if (i > 0 && compare_bytes(pairs[i].k, pairs[i].klen, pairs[i - 1].k, pairs[i - 1].klen) == 0)
      continue;
    if (i > 0)
      luaL_addchar(&b, ';');
    luaL_addlstring(&b, pairs[i].k, pairs[i].klen);
  }
  luaL_pushresult(&b);
  /* headers table, anchor, pairs, canonical, signed -> canonical, signed */
  lua_replace(L, headers + 1);
  lua_replace(L, headers);
  lua_settop(L, headers + 1);
}

static void set_string(lua_State *L, int t, const char *name, const char *s, size_t len) {
  lua_pushlstring(L, s, len);
  lua_setfield(L, t, name);
}

static int aws_sign(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  size_t method_len, path_len, hash_len, service_len, region_len, date_len, ak_len, sk_len;
  const char *method = field_string(L, 1, "method", &method_len);
  const char *path = field_string(L, 1, "path", &path_len);
  const char *payload_hash = field_string(L, 1, "payload_hash", &hash_len);
  const char *service = field_string(L, 1, "service", &service_len);
  const char *region = field_string(L, 1, "region", &region_len);
  const char *date = field_string(L, 1, "date", &date_len);
  const char *access_key = field_string(L, 1, "access_key", &ak_len);
  const char *secret_key = field_string(L, 1, "secret_key", &sk_len);
  if (date_len != 16 || date[8] != 'T' || date[15] != 'Z')
    return luaL_error(L, "aws.core.sign: date must look like 20150830T123600Z (got '%s')", date);
  lua_getfield(L, 1, "s3");
  int s3 = lua_toboolean(L, -1);
  lua_pop(L, 1);

  push_canonical_uri(L, path, path_len, s3); /* 2 */
  push_canonical_query(L, 1);                /* 3 */
  push_canonical_headers(L, 1);              /* 4 canonical headers, 5 signed headers */
  size_t signed_len;
  const char *signed_headers = lua_tolstring(L, 5, &signed_len);

  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, method, method_len);
  luaL_addchar(&b, '\n');
  lua_pushvalue(L, 2);
  luaL_addvalue(&b);
  luaL_addchar(&b, '\n');
  lua_pushvalue(L, 3);
  luaL_addvalue(&b);
  luaL_addchar(&b, '\n');
  lua_pushvalue(L, 4);
  luaL_addvalue(&b);
  luaL_addchar(&b, '\n');
  luaL_addlstring(&b, signed_headers, signed_len);
  luaL_addchar(&b, '\n');
  luaL_addlstring(&b, payload_hash, hash_len);
  luaL_pushresult(&b); /* 6 canonical request */
  size_t creq_len;
  const char *creq = lua_tolstring(L, 6, &creq_len);

  lua_pushfstring(L, "%s/%s/%s/aws4_request", lua_pushlstring(L, date, 8), region, service);
  lua_remove(L, -2); /* 7 scope */
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "AWS4-HMAC-SHA256\n");
  luaL_addlstring(&b, date, date_len);
  luaL_addchar(&b, '\n');
  lua_pushvalue(L, 7);
  luaL_addvalue(&b);
  luaL_addchar(&b, '\n');
  sha256_hex(L, creq, creq_len);
  luaL_addvalue(&b);
  luaL_pushresult(&b); /* 8 string to sign */
  size_t sts_len;
  const char *sts = lua_tolstring(L, 8, &sts_len);

  /* kSecret = "AWS4" + secret; kDate, kRegion, kService, kSigning; then the signature. */
  lua_pushliteral(L, "AWS4");
  lua_pushlstring(L, secret_key, sk_len);
  lua_concat(L, 2); /* 9 */
  size_t ksecret_len;
  const char *ksecret = lua_tolstring(L, 9, &ksecret_len);
  unsigned char key[EVP_MAX_MD_SIZE], next[EVP_MAX_MD_SIZE];
  unsigned int key_len = 0;
  hmac(ksecret, ksecret_len, date, 8, key, &key_len);
  hmac(key, key_len, region, region_len, next, &key_len);
  hmac(next, key_len, service, service_len, key, &key_len);
  hmac(key, key_len, "aws4_request", 12, next, &key_len);
  unsigned char sig[EVP_MAX_MD_SIZE];
  unsigned int sig_len = 0;
  hmac(next, key_len, sts, sts_len, sig, &sig_len);
  OPENSSL_cleanse(key, sizeof key);
  OPENSSL_cleanse(next, sizeof next);
  push_hex(L, sig, sig_len); /* 10 signature */

  lua_createtable(L, 0, 8);
  int result = lua_gettop(L);
  lua_pushvalue(L, 10);
  lua_setfield(L, result, "signature");
  lua_pushvalue(L, 5);
  lua_setfield(L, result, "signed_headers");
  lua_pushvalue(L, 6);
  lua_setfield(L, result, "canonical_request");
  lua_pushvalue(L, 8);
  lua_setfield(L, result, "string_to_sign");
  lua_pushvalue(L, 3);
  lua_setfield(L, result, "canonical_query");
  lua_pushvalue(L, 2);
  lua_setfield(L, result, "canonical_uri");
  lua_pushvalue(L, 7);
  lua_setfield(L, result, "scope");
  lua_pushfstring(L, "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s",
                  lua_pushlstring(L, access_key, ak_len), lua_tostring(L, 7), signed_headers,
                  lua_tostring(L, 10));
  lua_setfield(L, result, "authorization");
  lua_pop(L, 1);
  set_string(L, result, "credential", access_key, ak_len);
  return 1;
}

/* ---- hashing ---- */

static int aws_digest(lua_State *L) {
  const EVP_MD *md = check_algo(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  int encoding = check_encoding(L, 3, "hex");
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (!EVP_Digest(data, len, d, &n, md, NULL))
    return luaL_error(L, "aws: digest failed");
  push_digest(L, d, n, encoding);
  return 1;
}

static int aws_hmac_sha256(lua_State *L) {
  size_t key_len, len;
  const char *key = luaL_checklstring(L, 1, &key_len);
  const char *data = luaL_checklstring(L, 2, &len);
  static const char *const names[] = {"raw", "hex", NULL};
  int hex = luaL_checkoption(L, 3, "raw", names) == 1;
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  hmac(key, key_len, data, len, out, &n);
  if (hex)
    push_hex(L, out, n);
  else
    lua_pushlstring(L, (const char *)out, n);
  return 1;
}

/* Hashes length bytes of the file from offset (to the end when length is absent) without
   holding them in memory. A file that cannot be read is a value, not an error. */
static int aws_file_digest(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  const EVP_MD *md = check_algo(L, 2);
  int encoding = check_encoding(L, 3, "hex");
  lua_Integer offset = luaL_optinteger(L, 4, 0);
  lua_Integer length = luaL_optinteger(L, 5, -1);
  luaL_argcheck(L, offset >= 0, 4, "must not be negative");
  FILE *f = fopen(path, "rb");
  if (!f)
    return luaL_fileresult(L, 0, path);
  if (offset > 0 && fseeko(f, (off_t)offset, SEEK_SET) != 0) {
    int saved = errno;
    fclose(f);
    errno = saved;
    return luaL_fileresult(L, 0, path);
  }
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (!ctx || !EVP_DigestInit_ex(ctx, md, NULL)) {
    EVP_MD_CTX_free(ctx);
    fclose(f);
    return luaL_error(L, "aws: cannot start a digest");
  }
  char *buf = malloc(AWS_READ_SIZE);
  lua_Integer total = 0;
  int failed = buf == NULL;
  while (!failed && (length < 0 || total < length)) {
    size_t want = AWS_READ_SIZE;
    if (length >= 0 && (lua_Integer)want > length - total)
      want = (size_t)(length - total);
    size_t got = fread(buf, 1, want, f);
    if (got > 0) {
      EVP_DigestUpdate(ctx, buf, got);
      total += (lua_Integer)got;
    }
    if (got < want) {
      failed = ferror(f);
      break;
    }
  }
  int saved = errno;
  free(buf);
  fclose(f);
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx, d, &n);
  EVP_MD_CTX_free(ctx);
  if (failed) {
    errno = saved ? saved : EIO;
    return luaL_fileresult(L, 0, path);
  }
  push_digest(L, d, n, encoding);
  lua_pushinteger(L, total);
  return 2;
}

/* ---- text ---- */

static int aws_uri_encode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  push_encoded(L, s, len, lua_toboolean(L, 2));
  return 1;
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* %XX sequences become bytes; anything else, '+' included, stays as it is. */
static int aws_uri_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (size_t i = 0; i < len; i++) {
    int hi, lo;
    if (s[i] == '%' && i + 2 < len && (hi = hex_value(s[i + 1])) >= 0 &&
        (lo = hex_value(s[i + 2])) >= 0) {
      luaL_addchar(&b, (char)(hi * 16 + lo));
      i += 2;
    } else {
      luaL_addchar(&b, s[i]);
    }
  }
  luaL_pushresult(&b);
  return 1;
}

static int aws_base64_encode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  push_base64(L, (const unsigned char *)s, len);
  return 1;
}

/* Returns the decoded bytes, or nil when the text is not base64. */
static int aws_base64_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  luaL_Buffer b;
  /* strip whitespace first: AWS wraps nothing, but a human-written value may */
  char *clean = luaL_buffinitsize(L, &b, len + 1);
  size_t n = 0;
  for (size_t i = 0; i < len; i++)
    if (s[i] != '\n' && s[i] != '\r' && s[i] != ' ' && s[i] != '\t')
      clean[n++] = s[i];
  luaL_pushresultsize(&b, n);
  const char *text = lua_tostring(L, -1);
  if (n % 4 != 0) {
    luaL_pushfail(L);
    return 1;
  }
  size_t pad = (n >= 1 && text[n - 1] == '=') + (n >= 2 && text[n - 2] == '=');
  char *out = luaL_buffinitsize(L, &b, n / 4 * 3 + 1);
  int got = n ? EVP_DecodeBlock((unsigned char *)out, (const unsigned char *)text, (int)n) : 0;
  if (got < 0) {
    luaL_pushfail(L);
    return 1;
  }
  luaL_pushresultsize(&b, (size_t)got - pad);
  return 1;
}

/* ---- files ---- */

/* Appends every regular file under path (a buffer of PATH_MAX bytes holding root/rel, whose
   relative part starts at rel_at) to the table at index t. Symbolic links are followed, as
   `aws s3 sync` does; AWS_WALK_DEPTH stops a loop. Returns 0, or -1 with errno set and path
   naming what failed. */
static int walk_dir(lua_State *L, int t, char *path, size_t len, size_t rel_at, int depth) {
  if (depth > AWS_WALK_DEPTH) {
    errno = ELOOP;
    return -1;
  }
  DIR *d = opendir(path);
  if (!d)
    return -1;
  struct dirent *e;
  int rc = 0;
  while ((errno = 0, e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    size_t name_len = strlen(e->d_name);
    if (len + 1 + name_len >= PATH_MAX) {
      errno = ENAMETOOLONG;
      rc = -1;
      break;
    }
    path[len] = '/';
    memcpy(path + len + 1, e->d_name, name_len + 1);
    size_t child_len = len + 1 + name_len;
    struct stat st;
    if (stat(path, &st) != 0) {
      if (errno == ENOENT) /* a dangling symlink, or gone meanwhile */
        continue;
      rc = -1;
      break;
    }
    if (S_ISDIR(st.st_mode)) {
      if ((rc = walk_dir(L, t, path, child_len, rel_at, depth + 1)) != 0)
        break;
    } else if (S_ISREG(st.st_mode)) {
      lua_createtable(L, 0, 3);
      lua_pushlstring(L, path + rel_at, child_len - rel_at);
      lua_setfield(L, -2, "path");
      lua_pushinteger(L, (lua_Integer)st.st_size);
      lua_setfield(L, -2, "size");
      lua_pushinteger(L, (lua_Integer)st.st_mtime);
      lua_setfield(L, -2, "mtime");
      lua_rawseti(L, t, (lua_Integer)lua_rawlen(L, t) + 1);
    }
  }
  if (rc == 0 && errno != 0) {
    path[len] = '\0'; /* readdir failed on this directory */
    rc = -1;
  }
  int saved = errno;
  closedir(d);
  errno = saved;
  if (rc == 0)
    path[len] = '\0';
  return rc;
}

static int aws_walk(lua_State *L) {
  size_t root_len;
  const char *root = luaL_checklstring(L, 1, &root_len);
  while (root_len > 1 && root[root_len - 1] == '/')
    root_len--;
  luaL_argcheck(L, root_len > 0 && root_len < PATH_MAX - 1, 1, "not a usable directory name");
  lua_newtable(L);
  int t = lua_gettop(L);
  luaL_Buffer b;
  char *path = luaL_buffinitsize(L, &b, PATH_MAX); /* scratch space, freed with the buffer */
  memcpy(path, root, root_len);
  path[root_len] = '\0';
  if (walk_dir(L, t, path, root_len, root_len + 1, 0) != 0) {
    int e = errno;
    lua_pushfstring(L, "%s: %s", path, strerror(e));
    luaL_pushfail(L);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushvalue(L, t);
  return 1;
}

static int aws_fnmatch(lua_State *L) {
  const char *pattern = luaL_checkstring(L, 1);
  const char *text = luaL_checkstring(L, 2);
  lua_pushboolean(L, fnmatch(pattern, text, 0) == 0);
  return 1;
}

static const luaL_Reg aws_funcs[] = {
    {"sign", aws_sign},
    {"digest", aws_digest},
    {"hmac_sha256", aws_hmac_sha256},
    {"file_digest", aws_file_digest},
    {"uri_encode", aws_uri_encode},
    {"uri_decode", aws_uri_decode},
    {"base64_encode", aws_base64_encode},
    {"base64_decode", aws_base64_decode},
    {"walk", aws_walk},
    {"fnmatch", aws_fnmatch},
    {NULL, NULL},
};

int luaopen_tug_aws(lua_State *L) {
  luaL_newlib(L, aws_funcs);
  return 1;
}
