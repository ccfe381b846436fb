/*
 * redact.c: the secret registry, and the masking of every byte tug writes out. A value
 * registered as secret (a token, a password from an environment file) is replaced by "***"
 * on the terminal, in the journal and in the reports, in whatever spelling it has taken on
 * its way out:
 *
 *   - as itself, and as the base64 of itself (starting at any of the three byte alignments,
 *     for secrets of BASE64_MIN bytes or more: an Authorization: Basic header, a Kubernetes
 *     Secret's data), in the standard and the URL-safe alphabet;
 *   - with any of its characters written as an escape: JSON and C/Lua backslash escapes
 *     (\" \\ \/ \n \uXXXX with surrogate pairs, \xHH, Lua's \ddd and \<newline>), XML and
 *     HTML entities (&quot; &amp; &lt; &gt; &apos; &#NN; &#xHH;), percent-encoding in either
 *     case and '+' for a space, the shell's '\'' and YAML's '' for a quote, in any mix;
 *   - with a backslash escape escaped again, as a JSON string inside a JSON string has it
 *     (\\\" for a quote, \\n for a newline). Deeper nesting is left to the callers that
 *     build it: the engine masks each string of an event before encoding it.
 *
 * Rather than listing every encoded form of every secret (an encoder may escape any
 * character, in upper or lower case hex, or not at all), the matcher reads the output one
 * spelled character at a time: at each place it takes either the byte itself or the escape
 * that starts there, and a secret matches when some path through those spells it. The
 * paths are followed breadth first over (output offset, secret offset) pairs, so a secret
 * full of backslashes costs polynomial, not exponential, time.
 *
 * Writes to stdout and stderr are a stream: a secret written in two pieces (io.write("to")
 * io.write("ken")) must still be masked, so a tail that may be the start of a secret is held
 * back until the next write shows what it is. tug_redact_flush writes held bytes out; tug
 * calls it before reading standard input (so a prompt shows), when the main chunk ends and
 * at exit (os.exit included), so nothing written is ever lost.
 *
 * Speed: a byte that can neither be a secret's first byte nor start an escape is skipped by
 * a table lookup, and a literal start must also match some pattern's first two bytes, so
 * ordinary output costs a few instructions a byte however many secrets there are.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "tug.h"

#define MASK "***"
#define BASE64_MIN 6 /* shorter secrets have too few base64 characters to tell apart */
#define UNIT_MAX 14  /* the longest escape for one character: \\uD83D\\uDE00 */
#define RING (UNIT_MAX + 1)

typedef struct {
  unsigned char *bytes;
  size_t len;
} pattern;

static struct {
  pattern *items; /* the secrets and their base64 forms, longest first */
  size_t count, cap;
  size_t *by_first;          /* indexes into items grouped by first byte, longest first */
  size_t first_at[257];      /* by_first[first_at[b] .. first_at[b + 1]) start with byte b */
  unsigned char starts[256]; /* 1: a spelling of some pattern may start with this byte */
  unsigned char pairs[8192]; /* bit (b0 << 8 | b1): some pattern starts with bytes b0 b1 */
  unsigned char single[256]; /* some pattern is this one byte */
  uint64_t *ring;            /* RING rows of ring_words: the matcher's live paths */
  size_t ring_words;
  int at_exit; /* the exit handler is registered */
} R;

static int is_escape_start(unsigned char c) {
  return c == '\\' || c == '&' || c == '%' || c == '+' || c == '\'';
}

/* ---- the registry ---- */

static void add_pattern(const unsigned char *s, size_t len) {
  for (size_t i = 0; i < R.count; i++)
    if (R.items[i].len == len && memcmp(R.items[i].bytes, s, len) == 0)
      return;
  if (R.count == R.cap) {
    size_t cap = R.cap ? R.cap * 2 : 16;
    pattern *items = realloc(R.items, cap * sizeof *items);
    if (items == NULL)
      abort(); /* losing a secret silently would leak it; there is no safe way on */
    R.items = items;
    R.cap = cap;
  }
  unsigned char *copy = malloc(len);
  if (copy == NULL)
    abort();
  memcpy(copy, s, len);
  size_t at = R.count;
  while (at > 0 && R.items[at - 1].len < len) {
    R.items[at] = R.items[at - 1];
    at--;
  }
  R.items[at] = (pattern){copy, len};
  R.count++;
}

/* The base64 characters that depend on the secret alone when it starts `shift` bytes into
   a group of three, in the standard and the URL-safe alphabet. */
static void add_base64(const unsigned char *s, size_t len, size_t shift) {
  static const char std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t total = shift + len, bits = 8 * total;
  unsigned char *in = calloc(total + 3, 1), *out = malloc(bits / 6 + 1),
                *url = malloc(bits / 6 + 1);
  if (!in || !out || !url)
    abort();
  memcpy(in + shift, s, len);
  size_t n = 0;
  for (size_t j = 0; 6 * j + 6 <= bits; j++) {
    if (6 * j < 8 * shift)
      continue; /* mixes in the bytes before the secret */
    size_t bit = 6 * j, byte = bit / 8;
    unsigned v = ((unsigned)in[byte] << 8 | in[byte + 1]) >> (10 - bit % 8) & 63;
    out[n] = (unsigned char)std[v];
    url[n] = out[n] == '+' ? '-' : out[n] == '/' ? '_' : out[n];
    n++;
  }
  add_pattern(out, n);
  add_pattern(url, n);
  free(in);
  free(out);
  free(url);
}

static void rebuild_index(void) {
  size_t *by_first = realloc(R.by_first, (R.count ? R.count : 1) * sizeof *by_first);
  if (by_first == NULL)
    abort();
  R.by_first = by_first;
  memset(R.first_at, 0, sizeof R.first_at);
  memset(R.starts, 0, sizeof R.starts);
  memset(R.pairs, 0, sizeof R.pairs);
  memset(R.single, 0, sizeof R.single);
  size_t longest = 0;
  for (size_t i = 0; i < R.count; i++) {
    const pattern *p = &R.items[i];
    R.first_at[p->bytes[0] + 1]++;
    R.starts[p->bytes[0]] = 1;
    if (p->len == 1)
      R.single[p->bytes[0]] = 1;
    else
      R.pairs[(p->bytes[0] << 5) | (p->bytes[1] >> 3)] |= (unsigned char)(1 << (p->bytes[1] & 7));
    if (p->len > longest)
      longest = p->len;
  }
  for (int c = 0; c < 256; c++)
    if (is_escape_start((unsigned char)c))
      R.starts[c] = 1;
  for (int b = 0; b < 256; b++)
    R.first_at[b + 1] += R.first_at[b];
  size_t fill[256];
  memcpy(fill, R.first_at, sizeof fill);
  for (size_t i = 0; i < R.count; i++) /* items are longest first, and so is each group */
    R.by_first[fill[R.items[i].bytes[0]]++] = i;
  size_t words = (longest + 1 + 63) / 64;
  if (words > R.ring_words) {
    free(R.ring);
    R.ring = calloc(RING * words, sizeof *R.ring);
    if (R.ring == NULL)
      abort();
    R.ring_words = words;
  }
}

static void flush_at_exit(void) { tug_redact_flush(); }

void tug_secret_add(const char *s, size_t len) {
  if (len == 0)
    return;
  const unsigned char *u = (const unsigned char *)s;
  add_pattern(u, len);
  if (len >= BASE64_MIN)
    for (size_t shift = 0; shift < 3; shift++)
      add_base64(u, len, shift);
  rebuild_index();
  if (!R.at_exit && atexit(flush_at_exit) == 0)
    R.at_exit = 1;
}

/* ---- spelled characters ---- */

/* One way the output spells bytes of a secret at a place: n bytes (a whole UTF-8
   character for \u and &#), taking `used` bytes of output. */
typedef struct {
  unsigned char bytes[4];
  unsigned char n, used;
} unit;

enum { ESCAPE_NONE, ESCAPE_FOUND, ESCAPE_CUT };

static int hex_digit(unsigned char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  c |= 0x20;
  return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Reads `digits` hex digits; -1 when one is not. */
static long hex_value(const unsigned char *s, size_t digits) {
  long v = 0;
  for (size_t i = 0; i < digits; i++) {
    int d = hex_digit(s[i]);
    if (d < 0)
      return -1;
    v = v * 16 + d;
  }
  return v;
}

/* A code point as UTF-8 into u; 0 for a surrogate or a value beyond Unicode. */
static int put_code_point(unsigned long cp, unit *u) {
  if (cp < 0x80) {
    u->bytes[0] = (unsigned char)cp;
    u->n = 1;
  } else if (cp < 0x800) {
    u->bytes[0] = (unsigned char)(0xC0 | cp >> 6);
    u->bytes[1] = (unsigned char)(0x80 | (cp & 0x3F));
    u->n = 2;
  } else if (cp < 0x10000) {
    if (cp >= 0xD800 && cp <= 0xDFFF)
      return 0;
    u->bytes[0] = (unsigned char)(0xE0 | cp >> 12);
    u->bytes[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    u->bytes[2] = (unsigned char)(0x80 | (cp & 0x3F));
    u->n = 3;
  } else if (cp <= 0x10FFFF) {
    u->bytes[0] = (unsigned char)(0xF0 | cp >> 18);
    u->bytes[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    u->bytes[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    u->bytes[3] = (unsigned char)(0x80 | (cp & 0x3F));
    u->n = 4;
  } else {
    return 0;
  }
  return 1;
}

static int one_byte(unit *u, unsigned char c, size_t used) {
  u->bytes[0] = c;
  u->n = 1;
  u->used = (unsigned char)used;
  return ESCAPE_FOUND;
}

/* \uXXXX, with a following \uXXXX when the first is a high surrogate. */
static int json_unicode(const unsigned char *s, size_t len, unit *u) {
  if (len < 6)
    return hex_value(s + 2, len - 2) < 0 ? ESCAPE_NONE : ESCAPE_CUT;
  long cp = hex_value(s + 2, 4);
  if (cp < 0)
    return ESCAPE_NONE;
  size_t used = 6;
  if (cp >= 0xD800 && cp <= 0xDBFF) {
    if (len < 12)
      return ESCAPE_CUT; /* the low half may follow */
    long low = s[6] == '\\' && s[7] == 'u' ? hex_value(s + 8, 4) : -1;
    if (low < 0xDC00 || low > 0xDFFF)
      return ESCAPE_NONE;
    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
    used = 12;
  }
  if (!put_code_point((unsigned long)cp, u))
    return ESCAPE_NONE;
  u->used = (unsigned char)used;
  return ESCAPE_FOUND;
}

static int backslash_escape(const unsigned char *s, size_t len, unit *u) {
  static const char simple_in[] = "\"\\/'?abfnrtv\n";
  static const char simple_out[] = "\"\\/'?\a\b\f\n\r\t\v\n";
  if (len < 2)
    return ESCAPE_CUT;
  const char *at = memchr(simple_in, s[1], sizeof simple_in - 1);
  if (at)
    return one_byte(u, (unsigned char)simple_out[at - simple_in], 2);
  if (s[1] == 'u')
    return json_unicode(s, len, u);
  if (s[1] == 'x') {
    if (len < 4)
      return hex_value(s + 2, len - 2) < 0 ? ESCAPE_NONE : ESCAPE_CUT;
    long v = hex_value(s + 2, 2);
    return v < 0 ? ESCAPE_NONE : one_byte(u, (unsigned char)v, 4);
  }
  if (s[1] >= '0' && s[1] <= '9') { /* Lua's \ddd: up to three decimal digits */
    size_t i = 1;
    unsigned v = 0;
    while (i < 4 && i < len && s[i] >= '0' && s[i] <= '9')
      v = v * 10 + (s[i++] - '0');
    if (i < 4 && i == len)
      return ESCAPE_CUT; /* another digit may follow */
    return v > 255 ? ESCAPE_NONE : one_byte(u, (unsigned char)v, i);
  }
  return ESCAPE_NONE;
}

static int entity(const unsigned char *s, size_t len, unit *u) {
  static const struct {
    const char *name;
    unsigned char c;
  } named[] = {{"quot", '"'}, {"amp", '&'}, {"lt", '<'}, {"gt", '>'}, {"apos", '\''}};
  size_t end = 1;
  while (end < len && end <= UNIT_MAX && s[end] != ';') {
    unsigned char c = s[end];
    if (!((c | 0x20) >= 'a' && (c | 0x20) <= 'z') && !(c >= '0' && c <= '9') && c != '#')
      return ESCAPE_NONE;
    end++;
  }
  if (end > UNIT_MAX - 1)
    return ESCAPE_NONE;
  if (end == len)
    return ESCAPE_CUT;
  const unsigned char *name = s + 1;
  size_t name_len = end - 1;
  if (name_len >= 2 && name[0] == '#') {
    int hex = (name[1] | 0x20) == 'x';
    unsigned long cp = 0;
    size_t i = hex ? 2 : 1;
    if (i == name_len)
      return ESCAPE_NONE;
    for (; i < name_len; i++) {
      int d = hex ? hex_digit(name[i]) : (name[i] >= '0' && name[i] <= '9' ? name[i] - '0' : -1);
      if (d < 0)
        return ESCAPE_NONE;
      cp = cp * (hex ? 16 : 10) + (unsigned long)d;
    }
    if (!put_code_point(cp, u))
      return ESCAPE_NONE;
    u->used = (unsigned char)(end + 1);
    return ESCAPE_FOUND;
  }
  for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
    if (strlen(named[i].name) == name_len &&
        strncasecmp(named[i].name, (const char *)name, name_len) == 0)
      return one_byte(u, named[i].c, end + 1);
  return ESCAPE_NONE;
}

/* An escape of an escape, as a JSON string inside a JSON string writes one character:
   "\\\"" for '"', "\\n" for a newline, "\\u00e9" for 'é'. Reads past the first
   backslash one level down, then the escape that gives. */
static int doubled_escape(const unsigned char *s, size_t len, unit *u) {
  unsigned char inner[UNIT_MAX];
  unsigned char used_at[UNIT_MAX + 1]; /* output bytes behind inner[0 .. i) */
  size_t n = 1, at = 2;
  int ended = 0;
  inner[0] = '\\';
  used_at[1] = 2;
  while (n < sizeof inner) {
    if (at == len) {
      ended = 1;
      break;
    }
    if (s[at] == '\\') {
      if (at + 1 == len) {
        ended = 1;
        break;
      }
      if (s[at + 1] != '"' && s[at + 1] != '\\')
        break;
      inner[n++] = s[at + 1];
      at += 2;
    } else {
      inner[n++] = s[at++];
    }
    used_at[n] = (unsigned char)at;
  }
  int found = backslash_escape(inner, n, u);
  if (found == ESCAPE_CUT)
    return ended ? ESCAPE_CUT : ESCAPE_NONE;
  if (found != ESCAPE_FOUND)
    return found;
  u->used = used_at[u->used];
  return u->used <= UNIT_MAX ? ESCAPE_FOUND : ESCAPE_NONE;
}

enum { UNITS_MAX = 3 };

/* The ways s[0..len) (len > 0) spells bytes at its start: the byte itself, then any escape
   that starts there. Returns how many went into u. *cut is set when the text ends before
   an escape can be told, with *cut_byte the only byte it could spell or -1 for any. */
static int units_at(const unsigned char *s, size_t len, unit u[UNITS_MAX], int *cut,
                    int *cut_byte) {
  int n = 1, found = ESCAPE_NONE;
  u[0] = (unit){{s[0]}, 1, 1};
  *cut = 0;
  *cut_byte = -1;
  switch (s[0]) {
  case '\\':
    found = backslash_escape(s, len, &u[n]);
    if (len >= 2 && s[1] == '\\') {
      if (found == ESCAPE_FOUND)
        n++;
      found = doubled_escape(s, len, &u[n]);
    }
    break;
  case '&':
    found = entity(s, len, &u[n]);
    break;
  case '%':
    if (len < 3) {
      found = hex_value(s + 1, len - 1) < 0 ? ESCAPE_NONE : ESCAPE_CUT;
    } else {
      long v = hex_value(s + 1, 2);
      found = v < 0 ? ESCAPE_NONE : one_byte(&u[n], (unsigned char)v, 3);
    }
    break;
  case '+':
    found = one_byte(&u[n], ' ', 1);
    break;
  case '\'': /* the shell's '\'' and YAML's '' */
    if (len >= 2 && s[1] == '\'')
      found = one_byte(&u[n], '\'', 2);
    else if (len < 4)
      found = memcmp(s, "'\\''", len) == 0 ? ESCAPE_CUT : ESCAPE_NONE;
    else
      found = memcmp(s, "'\\''", 4) == 0 ? one_byte(&u[n], '\'', 4) : ESCAPE_NONE;
    if (found == ESCAPE_CUT)
      *cut_byte = '\'';
    break;
  }
  if (found == ESCAPE_FOUND)
    n++;
  else if (found == ESCAPE_CUT)
    *cut = 1;
  return n;
}

/* ---- matching ---- */

static int bit_test(const uint64_t *row, size_t k) { return row[k / 64] >> (k % 64) & 1; }

/* Output bytes taken by the longest spelling of p at the start of s[0..len), 0 when there
   is none. *more is set when the text ends while a spelling may still go on. */
static size_t spelled_at(const pattern *p, const unsigned char *s, size_t len, int *more) {
  size_t words = (p->len + 1 + 63) / 64, live = 1, best = 0;
  uint64_t *ring = R.ring;
  ring[0] |= 1; /* offset 0 in the output, offset 0 in the secret */
  for (size_t j = 0; live > 0; j++) {
    uint64_t *row = ring + (j % RING) * R.ring_words;
    unit units[UNITS_MAX];
    int nunits = -1, cut = 0, cut_byte = -1;
    for (size_t w = 0; w < words; w++) {
      while (row[w]) {
        size_t k = w * 64 + (size_t)__builtin_ctzll(row[w]);
        row[w] &= row[w] - 1;
        live--;
        if (k == p->len) {
          best = j; /* j only grows: the last is the longest */
          continue;
        }
        if (j == len) {
          *more = 1;
          continue;
        }
        if (nunits < 0) /* the ways to read the output here, worked out once */
          nunits = units_at(s + j, len - j, units, &cut, &cut_byte);
        if (cut && (cut_byte < 0 || cut_byte == p->bytes[k]))
          *more = 1;
        for (int i = 0; i < nunits; i++) {
          const unit *u = &units[i];
          if (u->n > p->len - k || memcmp(p->bytes + k, u->bytes, u->n) != 0)
            continue;
          uint64_t *next = ring + ((j + u->used) % RING) * R.ring_words;
          size_t nk = k + u->n;
          if (!bit_test(next, nk)) {
            next[nk / 64] |= (uint64_t)1 << (nk % 64);
            live++;
          }
        }
      }
    }
  }
  return best;
}

static int maybe_pattern_pair(unsigned char b0, unsigned char b1) {
  return R.single[b0] || (R.pairs[(b0 << 5) | (b1 >> 3)] >> (b1 & 7) & 1);
}

/* Output bytes taken by the longest spelling of any secret at the start of s[0..len). */
static size_t secret_at(const unsigned char *s, size_t len, int *more) {
  size_t best = 0;
  unit units[UNITS_MAX];
  int cut, cut_byte;
  int nunits = units_at(s, len, units, &cut, &cut_byte);
  if (cut && (cut_byte < 0 || R.first_at[cut_byte] != R.first_at[cut_byte + 1]))
    *more = 1;
  /* a literal start must also match a pattern's first two bytes, unless what follows
     may be an escape or is not there yet */
  int first = len < 2 || is_escape_start(s[1]) || maybe_pattern_pair(s[0], s[1]) ? 0 : 1;
  for (int u = first; u < nunits; u++) {
    int b = units[u].bytes[0], seen = 0;
    for (int v = first; v < u; v++)
      seen |= units[v].bytes[0] == b;
    if (seen)
      continue; /* the patterns that start with b were tried */
    for (size_t i = R.first_at[b]; i < R.first_at[b + 1]; i++) {
      size_t m = spelled_at(&R.items[R.by_first[i]], s, len, more);
      if (m > best)
        best = m;
    }
  }
  return best;
}

typedef void (*put_fn)(void *ctx, const char *s, size_t n);

/* Copies s to put with every secret masked. With `hold`, stops where a secret may start
   but the text ends first; returns how many bytes were taken (the rest is not written). */
static size_t redact_scan(const char *text, size_t len, int hold, put_fn put, void *ctx) {
  const unsigned char *s = (const unsigned char *)text;
  size_t i = 0, start = 0;
  while (i < len) {
    if (!R.starts[s[i]]) {
      i++;
      continue;
    }
    int more = 0;
    size_t m = secret_at(s + i, len - i, &more);
    if (hold && more)
      break;
    if (m) {
      put(ctx, text + start, i - start);
      put(ctx, MASK, sizeof MASK - 1);
      i += m;
      start = i;
    } else {
      i++;
    }
  }
  put(ctx, text + start, i - start);
  return i;
}

/* ---- to Lua strings ---- */

static void put_buffer(void *ctx, const char *s, size_t n) {
  if (n)
    luaL_addlstring((luaL_Buffer *)ctx, s, n);
}

const char *tug_redact_push(lua_State *L, const char *s, size_t len, size_t *out_len) {
  if (R.count == 0)
    return lua_pushlstring(L, s, len), lua_tolstring(L, -1, out_len);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  redact_scan(s, len, 0, put_buffer, &b);
  luaL_pushresult(&b);
  return lua_tolstring(L, -1, out_len);
}

/* ---- to the terminal: stdout and stderr as streams ---- */

typedef struct {
  FILE *f;
  int failed, error; /* a write failed, and its errno */
} file_sink;

static void put_file(void *ctx, const char *s, size_t n) {
  file_sink *sink = ctx;
  if (n && fwrite(s, 1, n, sink->f) != n && !sink->failed) {
    sink->failed = 1;
    sink->error = errno;
  }
}

static tug_buf held[2]; /* what stdout and stderr hold back: the start of a secret, maybe */

static tug_buf *held_for(FILE *f) { return f == stdout ? &held[0] : f == stderr ? &held[1] : NULL; }

int tug_redact_write(FILE *f, const char *s, size_t len) {
  file_sink sink = {f, 0, 0};
  tug_buf *h = held_for(f);
  if (R.count == 0 || h == NULL) {
    if (R.count == 0)
      put_file(&sink, s, len);
    else
      redact_scan(s, len, 0, put_file, &sink);
  } else if (h->len == 0) {
    size_t taken = redact_scan(s, len, 1, put_file, &sink);
    if (tug_buf_append(h, s + taken, len - taken) != 0)
      redact_scan(s + taken, len - taken, 0, put_file, &sink); /* never lose output */
  } else if (tug_buf_append(h, s, len) == 0) {
    tug_buf_consume(h, redact_scan(h->data, h->len, 1, put_file, &sink));
  } else {
    redact_scan(h->data, h->len, 0, put_file, &sink);
    h->len = 0;
    redact_scan(s, len, 0, put_file, &sink);
  }
  if (sink.failed)
    errno = sink.error;
  return sink.failed ? -1 : 0;
}

void tug_redact_flush(void) {
  FILE *files[2] = {stdout, stderr};
  for (int i = 0; i < 2; i++) {
    if (held[i].len == 0)
      continue;
    file_sink sink = {files[i], 0, 0};
    redact_scan(held[i].data, held[i].len, 0, put_file, &sink);
    held[i].len = 0;
    fflush(files[i]);
  }
}

void tug_secrets_free(void) {
  tug_redact_flush();
  tug_buf_free(&held[0]);
  tug_buf_free(&held[1]);
  for (size_t i = 0; i < R.count; i++)
    free(R.items[i].bytes);
  free(R.items);
  free(R.by_first);
  free(R.ring);
  int at_exit = R.at_exit;
  memset(&R, 0, sizeof R);
  R.at_exit = at_exit;
}
