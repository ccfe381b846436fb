/*
 * redact.c: the secret registry. A value registered as secret (a token, a password from
 * an environment file) is replaced by "***" in everything tug prints: logs, errors,
 * print and io.write to the terminal, JSON events. Secrets are few and outputs short, so
 * a plain scan per secret is fast enough and obviously correct.
 */
#include <stdlib.h>
#include <string.h>

#include "tug.h"

#define MASK "***"

static struct {
  char **items; /* longest first, so a secret that contains another is masked whole */
  size_t *lens;
  size_t count, cap;
} secrets;

void tug_secret_add(const char *s, size_t len) {
  if (len == 0)
    return;
  for (size_t i = 0; i < secrets.count; i++)
    if (secrets.lens[i] == len && memcmp(secrets.items[i], s, len) == 0)
      return;
  if (secrets.count == secrets.cap) {
    size_t cap = secrets.cap ? secrets.cap * 2 : 8;
    char **items = realloc(secrets.items, cap * sizeof *items);
    size_t *lens = items ? realloc(secrets.lens, cap * sizeof *lens) : NULL;
    if (items)
      secrets.items = items;
    if (lens == NULL)
      abort(); /* losing a secret silently would leak it; there is no safe way on */
    secrets.lens = lens;
    secrets.cap = cap;
  }
  char *copy = malloc(len);
  if (copy == NULL)
    abort();
  memcpy(copy, s, len);
  size_t at = secrets.count;
  while (at > 0 && secrets.lens[at - 1] < len) {
    secrets.items[at] = secrets.items[at - 1];
    secrets.lens[at] = secrets.lens[at - 1];
    at--;
  }
  secrets.items[at] = copy;
  secrets.lens[at] = len;
  secrets.count++;
}

/* Length of the secret that starts at s (at most n bytes), or 0. */
static size_t secret_at(const char *s, size_t n) {
  for (size_t i = 0; i < secrets.count; i++)
    if (secrets.lens[i] <= n && memcmp(s, secrets.items[i], secrets.lens[i]) == 0)
      return secrets.lens[i];
  return 0;
}

const char *tug_redact_push(lua_State *L, const char *s, size_t len, size_t *out_len) {
  if (secrets.count == 0) {
    return lua_pushlstring(L, s, len), lua_tolstring(L, -1, out_len);
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  size_t i = 0, start = 0;
  while (i < len) {
    size_t m = secret_at(s + i, len - i);
    if (m) {
      luaL_addlstring(&b, s + start, i - start);
      luaL_addstring(&b, MASK);
      i += m;
      start = i;
    } else {
      i++;
    }
  }
  luaL_addlstring(&b, s + start, len - start);
  luaL_pushresult(&b);
  return lua_tolstring(L, -1, out_len);
}

void tug_redact_write(FILE *f, const char *s, size_t len) {
  size_t i = 0, start = 0;
  while (secrets.count && i < len) {
    size_t m = secret_at(s + i, len - i);
    if (m) {
      fwrite(s + start, 1, i - start, f);
      fputs(MASK, f);
      i += m;
      start = i;
    } else {
      i++;
    }
  }
  fwrite(s + start, 1, len - start, f);
}

void tug_secrets_free(void) {
  for (size_t i = 0; i < secrets.count; i++)
    free(secrets.items[i]);
  free(secrets.items);
  free(secrets.lens);
  memset(&secrets, 0, sizeof secrets);
}
