/*
 * buf.c: tug_buf, the growable byte buffer native modules collect bytes in (output of a
 * child, a response body, a request being parsed, a response waiting for the socket).
 * Much of that happens inside libuv and libcurl callbacks, where nothing may raise or
 * abort, so every operation that needs memory reports failure with -1 and leaves the
 * bytes already there as they were; what failing means is each caller's decision.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tug.h"

#define BUF_FIRST_CAP 256

int tug_buf_reserve(tug_buf *b, size_t extra) {
  if (b->cap - b->len >= extra)
    return 0;
  size_t cap = b->cap ? b->cap : BUF_FIRST_CAP;
  while (cap - b->len < extra) {
    if (cap > SIZE_MAX / 2)
      return -1;
    cap *= 2;
  }
  char *data = realloc(b->data, cap);
  if (data == NULL)
    return -1;
  b->data = data;
  b->cap = cap;
  return 0;
}

int tug_buf_append(tug_buf *b, const void *s, size_t n) {
  if (n == 0)
    return 0;
  if (tug_buf_reserve(b, n) != 0)
    return -1;
  memcpy(b->data + b->len, s, n);
  b->len += n;
  return 0;
}

int tug_buf_appendf(tug_buf *b, const char *fmt, ...) {
  va_list ap, again;
  va_start(ap, fmt);
  va_copy(again, ap);
  /* Most text fits in the room left; only when it does not is it formatted twice. */
  size_t room = b->cap - b->len;
  int n = vsnprintf(room ? b->data + b->len : NULL, room, fmt, ap);
  va_end(ap);
  if (n >= 0 && (size_t)n >= room) {
    if (tug_buf_reserve(b, (size_t)n + 1) == 0)
      vsnprintf(b->data + b->len, (size_t)n + 1, fmt, again);
    else
      n = -1;
  }
  va_end(again);
  if (n < 0)
    return -1;
  b->len += (size_t)n;
  return 0;
}

void tug_buf_consume(tug_buf *b, size_t n) {
  if (n == 0)
    return;
  if (n >= b->len) {
    b->len = 0;
    return;
  }
  memmove(b->data, b->data + n, b->len - n);
  b->len -= n;
}

char *tug_buf_take(tug_buf *b) {
  char *data = b->data;
  b->data = NULL;
  b->len = b->cap = 0;
  return data;
}

void tug_buf_free(tug_buf *b) { free(tug_buf_take(b)); }
