/*
 * json.c: the json module, JSON text <-> Lua values on top of jansson.
 *
 * Built to round-trip Kubernetes objects faithfully: decoded arrays and objects carry the
 * runtime's marker metatables so that [] and {} stay apart when encoded again, null is the
 * runtime's shared sentinel (also yaml.null), integers stay exact 64-bit Lua integers, and
 * floats are written with just enough digits to read back the same double.
 *
 * jansson memory is owned by a "holder" userdata on the Lua stack while Lua values are
 * converted, so that a Lua error in the middle of a conversion (out of memory, a value that
 * cannot be encoded) never leaks the jansson tree: errors we raise ourselves release it
 * first, anything else leaves it to the holder's __gc.
 */

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "tug.h"

/* Both sides must hold the same 64-bit range, or "integers stay exact" would be a lie. */
_Static_assert(sizeof(json_int_t) == sizeof(lua_Integer), "json_int_t must match lua_Integer");

#define HOLDER_MT "tug.json.holder"

/* jansson refuses to parse deeper documents; encode stops at the same depth so that whatever
   encode writes, decode can read, and jansson's recursive dump and free stay within bounds. */
#define MAX_DEPTH JSON_PARSER_MAX_DEPTH

/* A table reached again through another branch (a shared table: YAML aliases share theirs)
   is written again, whole. Those repeats may add at most this many values to a document:
   tables shared inside shared tables multiply, and ten levels of ten would write 10^10
   values. A string weighs one value more per STRING_BYTES_PER_VALUE bytes, so that the
   repeats of a long string count for its length (the repeated text stays under 64 MB). The
   yaml module caps its aliases and its encoder with the same figures. */
#define MAX_REPEATED 1000000
#define STRING_BYTES_PER_VALUE 64

/* Doubles need at most 17 significant digits to read back exactly. */
#define MAX_PRECISION 17

/* ---- the holder: one owner for the jansson memory of one call ---- */

typedef struct {
  json_t *root;
  char *text;      /* output of json_dumps, allocated by jansson's allocator */
  int nul_as_mark; /* decoding: U+FDD0 in a string stands for NUL (see decode_nul_keys) */
} json_holder;

static void holder_release(json_holder *h) {
  json_decref(h->root);
  h->root = NULL;
  if (h->text != NULL) {
    json_malloc_t malloc_fn;
    json_free_t free_fn;
    json_get_alloc_funcs(&malloc_fn, &free_fn);
    free_fn(h->text);
    h->text = NULL;
  }
}

static int holder_gc(lua_State *L) {
  holder_release(luaL_checkudata(L, 1, HOLDER_MT));
  return 0;
}

static json_holder *holder_push(lua_State *L) {
  json_holder *h = lua_newuserdatauv(L, sizeof(json_holder), 0);
  h->root = NULL;
  h->text = NULL;
  h->nul_as_mark = 0;
  luaL_setmetatable(L, HOLDER_MT);
  return h;
}

/* ---- decode ---- */

/* jansson 2.14 stores object keys with their length, but its parser refuses a key with a
   NUL in it ("NUL byte in object key not supported"), which JSON allows (\u0000). When it
   does, the text is parsed again with every \u0000 escape written \uFDD0 instead: the same
   length, so error positions do not move. U+FDD0 is a noncharacter that the text must not
   hold already (else the mark would be ambiguous and jansson's refusal stands), and the
   decoded strings and keys turn it back into NUL. */
#define NUL_MARK "\xef\xb7\x90" /* U+FDD0 in UTF-8 */
#define NUL_MARK_LEN 3

/* Pushes s, with every NUL_MARK turned back into NUL when h->nul_as_mark is set. */
static void push_decoded(lua_State *L, json_holder *h, const char *s, size_t len) {
  const char *mark;
  luaL_Buffer b;
  if (!h->nul_as_mark || (mark = memmem(s, len, NUL_MARK, NUL_MARK_LEN)) == NULL) {
    lua_pushlstring(L, s, len);
    return;
  }
  luaL_buffinit(L, &b);
  do {
    luaL_addlstring(&b, s, (size_t)(mark - s));
    luaL_addchar(&b, '\0');
    len -= (size_t)(mark - s) + NUL_MARK_LEN;
    s = mark + NUL_MARK_LEN;
  } while ((mark = memmem(s, len, NUL_MARK, NUL_MARK_LEN)) != NULL);
  luaL_addlstring(&b, s, len);
  luaL_pushresult(&b);
}

static int is_hex_zero4(const char *s) { return memcmp(s, "0000", 4) == 0; }

/* Pushes text with every \u0000 escape written \uFDD0; returns 0 (pushing nothing) when the
   text already holds U+FDD0, raw or escaped. */
static int push_nul_marked(lua_State *L, const char *text, size_t len) {
  luaL_Buffer b;
  char *copy;
  if (memmem(text, len, NUL_MARK, NUL_MARK_LEN) != NULL)
    return 0;
  for (size_t i = 0; i + 5 < len; i++)
    if (text[i] == '\\' && text[i + 1] == 'u' && strncasecmp(text + i + 2, "fdd0", 4) == 0)
      return 0;
  copy = luaL_buffinitsize(L, &b, len);
  memcpy(copy, text, len);
  /* Walk escapes in order, so that in \\u0000 (a backslash, then u0000) nothing changes. */
  for (size_t i = 0; i + 1 < len; i++) {
    if (copy[i] != '\\')
      continue;
    if (copy[i + 1] == 'u' && i + 5 < len && is_hex_zero4(copy + i + 2))
      memcpy(copy + i + 2, "FDD0", 4);
    i++;
  }
  luaL_pushresultsize(&b, len);
  return 1;
}

static void decode_value(lua_State *L, json_holder *h, json_t *value) {
  /* A table, a key and a value per level; jansson's depth limit keeps this small. */
  if (!lua_checkstack(L, 4)) {
    holder_release(h);
    luaL_error(L, "json.decode: document nested too deeply");
  }
  switch (json_typeof(value)) {
  case JSON_OBJECT: {
    const char *key;
    size_t key_len;
    json_t *member;
    lua_createtable(L, 0, (int)json_object_size(value));
    json_object_keylen_foreach(value, key, key_len, member) {
      push_decoded(L, h, key, key_len);
      decode_value(L, h, member);
      lua_rawset(L, -3);
    }
    tug_mark_table(L, lua_gettop(L), TUG_OBJECT_MT);
    break;
  }
  case JSON_ARRAY: {
    size_t n = json_array_size(value);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
      decode_value(L, h, json_array_get(value, i));
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    tug_mark_table(L, lua_gettop(L), TUG_ARRAY_MT);
    break;
  }
  case JSON_STRING:
    push_decoded(L, h, json_string_value(value), json_string_length(value));
    break;
  case JSON_INTEGER:
    lua_pushinteger(L, (lua_Integer)json_integer_value(value));
    break;
  case JSON_REAL:
    lua_pushnumber(L, (lua_Number)json_real_value(value));
    break;
  case JSON_TRUE:
    lua_pushboolean(L, 1);
    break;
  case JSON_FALSE:
    lua_pushboolean(L, 0);
    break;
  case JSON_NULL:
    tug_push_null(L);
    break;
  }
}

/* A raw NUL byte is never valid JSON (inside a string it must be written \u0000), but
   jansson's reader takes one after a complete value as the end of the text. */
static int refuse_nul(lua_State *L, const char *text, size_t len) {
  const char *nul = memchr(text, '\0', len);
  lua_Integer line = 1, column = 1;
  if (nul == NULL)
    return 0;
  for (const char *c = text; c < nul; c++) {
    if (*c == '\n')
      line++, column = 1;
    else if (((unsigned char)*c & 0xc0) != 0x80)
      column++;
  }
  return luaL_error(L,
                    "json.decode: NUL byte (a raw 0x00; write \\u0000 inside a string) at byte %I "
                    "(line %I, column %I)",
                    (lua_Integer)(nul - text) + 1, line, column);
}

static int module_decode(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  refuse_nul(L, text, len);
  json_holder *h = holder_push(L);
  json_error_t error;
  /* Without JSON_DISABLE_EOF_CHECK jansson rejects anything after the value. */
  h->root = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &error);
  if (h->root == NULL && json_error_code(&error) == json_error_null_byte_in_key &&
      push_nul_marked(L, text, len)) {
    h->nul_as_mark = 1;
    h->root = json_loadb(lua_tostring(L, -1), len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &error);
    lua_pop(L, 1);
  }
  if (h->root == NULL) {
    /* jansson quotes the token it stopped at: show it as written */
    const char *what = h->nul_as_mark ? luaL_gsub(L, error.text, "\\uFDD0", "\\u0000") : error.text;
    return luaL_error(L, "json.decode: %s at byte %d (line %d, column %d)", what, error.position,
                      error.line, error.column);
  }
  decode_value(L, h, h->root);
  holder_release(h);
  return 1;
}

/* ---- encode ---- */

/* Where a value sits in the document being encoded: used both to attach the value to its
   parent and to name the place in error messages. Lives on the C stack of the recursion. */
typedef struct path_seg {
  const struct path_seg *up; /* NULL for the root */
  json_t *container;         /* the array or object the value goes into; NULL for the root */
  const char *key;           /* member name in an object (on the Lua stack), NULL in an array */
  size_t key_len;
  size_t index; /* position in an array, from 0 */
  int depth;    /* 0 for the root */
} path_seg;

typedef struct {
  lua_State *L;
  json_holder *holder;
  int seen;        /* stack index of a table: Lua table being encoded -> its path_seg */
  int done;        /* stack index of the set of tables encoded so far, to notice a repeat */
  int repeating;   /* how many of the tables being encoded are repeats */
  size_t repeated; /* values written inside repeats (MAX_REPEATED) */
  int precision;   /* significant digits that make every float so far read back exactly */
} encoder;

/* Paths this deep are shortened to their first and last segments in messages. */
#define PATH_KEEP 16

static int is_identifier(const char *s, size_t len) {
  if (len == 0 || !(s[0] == '_' || (s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z')))
    return 0;
  for (size_t i = 1; i < len; i++) {
    char c = s[i];
    if (!(c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
      return 0;
  }
  return 1;
}

static void add_path(luaL_Buffer *b, const path_seg *seg, int last_depth) {
  if (seg->up == NULL) {
    luaL_addchar(b, '$');
    return;
  }
  add_path(b, seg->up, last_depth);
  if (last_depth > 2 * PATH_KEEP && seg->depth > PATH_KEEP &&
      seg->depth <= last_depth - PATH_KEEP) {
    if (seg->depth == PATH_KEEP + 1)
      luaL_addstring(b, "...");
    return;
  }
  if (seg->key == NULL) {
    char index[32];
    snprintf(index, sizeof index, "[%zu]", seg->index);
    luaL_addstring(b, index);
  } else if (is_identifier(seg->key, seg->key_len)) {
    luaL_addchar(b, '.');
    luaL_addlstring(b, seg->key, seg->key_len);
  } else {
    luaL_addstring(b, "[\"");
    for (size_t i = 0; i < seg->key_len; i++) {
      unsigned char c = (unsigned char)seg->key[i];
      if (c == '"' || c == '\\') {
        luaL_addchar(b, '\\');
        luaL_addchar(b, (char)c);
      } else if (c < 0x20 || c == 0x7f) {
        char escape[8];
        snprintf(escape, sizeof escape, "\\u%04x", c);
        luaL_addstring(b, escape);
      } else {
        luaL_addchar(b, (char)c);
      }
    }
    luaL_addstring(b, "\"]");
  }
}

/* Pushes the path of seg, like $.spec.template.containers[0].name (JSON indexes, from 0). */
static const char *push_path(lua_State *L, const path_seg *seg) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  add_path(&b, seg, seg->depth);
  luaL_pushresult(&b);
  return lua_tostring(L, -1);
}

/* Raises "json.encode: WHAT at PATH" after releasing the partly built tree. */
static int encode_fail(encoder *e, const path_seg *at, const char *fmt, ...) {
  lua_State *L = e->L;
  va_list ap;
  va_start(ap, fmt);
  const char *what = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  const char *path = push_path(L, at);
  lua_pushfstring(L, "json.encode: %s at %s", what, path);
  holder_release(e->holder);
  return lua_error(L);
}

/* Returns 0 when s is valid UTF-8 as JSON requires (no overlong forms, no surrogates, nothing
   above U+10FFFF), else the position (from 1) of the first byte of the first bad sequence. We
   check ourselves, rather than let jansson return NULL, so the message can say what is wrong
   and where. */
static size_t utf8_invalid_at(const char *str, size_t len) {
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0;
  while (i < len) {
    unsigned c = s[i];
    size_t more;
    unsigned long cp;
    if (c < 0x80) {
      i++;
      continue;
    } else if (c >= 0xc2 && c <= 0xdf) {
      more = 1, cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      more = 2, cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      more = 3, cp = c & 0x07;
    } else {
      return i + 1;
    }
    if (len - i - 1 < more)
      return i + 1;
    for (size_t k = 1; k <= more; k++) {
      if ((s[i + k] & 0xc0) != 0x80)
        return i + 1;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    if ((more == 2 && cp < 0x800) || (more == 3 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
      return i + 1;
    i += more + 1;
  }
  return 0;
}

/* Raises e->precision until "%.{precision}g" of d reads back as d. */
static void encode_track_precision(encoder *e, double d) {
  char digits[64];
  while (e->precision < MAX_PRECISION) {
    snprintf(digits, sizeof digits, "%.*g", e->precision, d);
    if (strtod(digits, NULL) == d)
      return;
    e->precision++;
  }
}

/* Hands value to its place in the tree at once, so that the holder owns it from now on. */
static json_t *encode_attach(encoder *e, const path_seg *at, json_t *value) {
  int failed;
  if (value == NULL)
    failed = 1;
  else if (at->container == NULL)
    e->holder->root = value, failed = 0;
  else if (at->key == NULL)
    failed = json_array_append_new(at->container, value);
  else /* the key was checked by encode_object */
    failed = json_object_setn_new_nocheck(at->container, at->key, at->key_len, value);
  if (failed)
    encode_fail(e, at, "out of memory");
  return value;
}

static void encode_value(encoder *e, int idx, const path_seg *at);

static void encode_array(encoder *e, int idx, const path_seg *at) {
  lua_State *L = e->L;
  json_t *array = encode_attach(e, at, json_array());
  lua_Unsigned n = lua_rawlen(L, idx);
  path_seg item = {at, array, NULL, 0, 0, at->depth + 1};
  for (lua_Unsigned i = 1; i <= n; i++) {
    item.index = (size_t)(i - 1);
    if (lua_rawgeti(L, idx, (lua_Integer)i) == LUA_TNIL)
      encode_fail(e, &item, "nil inside an array (use json.null for null)");
    encode_value(e, lua_gettop(L), &item);
    lua_pop(L, 1);
  }
  /* A table marked as an array is classified by its marker alone: refuse keys outside 1..n
     rather than drop them silently. */
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || (lua_Unsigned)lua_tointeger(L, -1) > n)
      encode_fail(e, at, "array has a %s key outside 1..%I", luaL_typename(L, -1), (lua_Integer)n);
  }
}

static void encode_object(encoder *e, int idx, const path_seg *at) {
  lua_State *L = e->L;
  json_t *object = encode_attach(e, at, json_object());
  path_seg member = {at, object, NULL, 0, 0, at->depth + 1};
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    /* Check the type before lua_tolstring, which would turn a number key into a string and
       confuse lua_next. */
    int key_type = lua_type(L, -2);
    if (key_type == LUA_TNUMBER) {
      lua_pushvalue(L, -2);
      encode_fail(e, at, "object key %s is a number; JSON object keys must be strings",
                  lua_tostring(L, -1));
    } else if (key_type != LUA_TSTRING) {
      encode_fail(e, at, "object key is a %s; JSON object keys must be strings",
                  lua_typename(L, key_type));
    }
    member.key = lua_tolstring(L, -2, &member.key_len);
    size_t bad = utf8_invalid_at(member.key, member.key_len);
    if (bad != 0)
      encode_fail(e, at, "object key is not valid UTF-8 (byte %I of the key)", (lua_Integer)bad);
    encode_value(e, lua_gettop(L), &member);
    lua_pop(L, 1);
  }
}

static void encode_table(encoder *e, int idx, const path_seg *at) {
  lua_State *L = e->L;
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->seen) != LUA_TNIL) {
    const path_seg *first = lua_touserdata(L, -1);
    encode_fail(e, at, "cycle (the table at %s contains itself)", push_path(L, first));
  }
  lua_pop(L, 1);
  if (at->depth >= MAX_DEPTH)
    encode_fail(e, at, "value nested deeper than %d levels", MAX_DEPTH);
  if (!lua_checkstack(L, 8))
    encode_fail(e, at, "value nested too deeply for the Lua stack");

  /* Only tables on the current path are remembered: a table shared by two branches is
     written twice, which is fine; only a table inside itself is a cycle. */
  lua_pushvalue(L, idx);
  lua_pushlightuserdata(L, (void *)at);
  lua_rawset(L, e->seen);
  lua_pushvalue(L, idx);
  int again = lua_rawget(L, e->done) != LUA_TNIL;
  lua_pop(L, 1);
  if (again) {
    e->repeating++;
  } else {
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, e->done);
  }
  switch (tug_table_kind(L, idx)) {
  case TUG_TABLE_ARRAY:
    encode_array(e, idx, at);
    break;
  case TUG_TABLE_EMPTY: /* an unmarked {} is an object; json.array{} makes [] */
  case TUG_TABLE_OBJECT:
    encode_object(e, idx, at);
    break;
  case TUG_TABLE_MIXED:
    encode_fail(e, at, "cannot encode a table that mixes array items (1..n) with other keys");
    break;
  }
  lua_pushvalue(L, idx);
  lua_pushnil(L);
  lua_rawset(L, e->seen);
  if (again)
    e->repeating--;
}

static void encode_value(encoder *e, int idx, const path_seg *at) {
  lua_State *L = e->L;
  if (e->repeating > 0 && (e->repeated += 1 + (lua_type(L, idx) == LUA_TSTRING
                                                   ? lua_rawlen(L, idx) / STRING_BYTES_PER_VALUE
                                                   : 0)) > MAX_REPEATED)
    encode_fail(e, at,
                "tables shared by several branches repeat more than %d values (shared tables "
                "nested in shared tables multiply)",
                MAX_REPEATED);
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    encode_fail(e, at, "cannot encode nil (use json.null for null)");
    break;
  case LUA_TBOOLEAN:
    encode_attach(e, at, json_boolean(lua_toboolean(L, idx)));
    break;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) {
      encode_attach(e, at, json_integer((json_int_t)lua_tointeger(L, idx)));
    } else {
      double d = (double)lua_tonumber(L, idx);
      if (isnan(d))
        encode_fail(e, at, "cannot encode NaN");
      if (isinf(d))
        encode_fail(e, at, "cannot encode %s", d > 0 ? "inf" : "-inf");
      encode_track_precision(e, d);
      encode_attach(e, at, json_real(d));
    }
    break;
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    size_t bad = utf8_invalid_at(s, len);
    if (bad != 0)
      encode_fail(e, at, "string is not valid UTF-8 (byte %I)", (lua_Integer)bad);
    encode_attach(e, at, json_stringn_nocheck(s, len));
    break;
  }
  case LUA_TTABLE:
    encode_table(e, idx, at);
    break;
  case LUA_TLIGHTUSERDATA:
    if (!tug_is_null(L, idx))
      encode_fail(e, at, "cannot encode a light userdata other than json.null");
    encode_attach(e, at, json_null());
    break;
  default:
    encode_fail(e, at, "cannot encode a %s", luaL_typename(L, idx));
    break;
  }
}

/* Reads the options table at arg into json_dumps flags (all but the float precision). */
static size_t encode_flags(lua_State *L, int arg) {
  lua_Integer indent = 0;
  int sort_keys = 1;
  if (lua_isnoneornil(L, arg))
    return JSON_COMPACT | JSON_SORT_KEYS;
  luaL_checktype(L, arg, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, arg)) {
    const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
    if (strcmp(name, "indent") == 0) {
      int is_integer;
      indent = lua_tointegerx(L, -1, &is_integer);
      if (!is_integer || indent < 0 || indent > JSON_MAX_INDENT)
        luaL_argerror(L, arg, "opts.indent must be an integer from 0 to 31");
    } else if (strcmp(name, "sort_keys") == 0) {
      if (!lua_isboolean(L, -1))
        luaL_argerror(L, arg, "opts.sort_keys must be a boolean");
      sort_keys = lua_toboolean(L, -1);
    } else {
      lua_pushvalue(L, -2);
      luaL_argerror(L, arg,
                    lua_pushfstring(L, "unknown option '%s'; the options are indent and sort_keys",
                                    luaL_tolstring(L, -1, NULL)));
    }
    lua_pop(L, 1);
  }
  return (indent > 0 ? JSON_INDENT(indent) : JSON_COMPACT) | (sort_keys ? JSON_SORT_KEYS : 0);
}

static int module_encode(lua_State *L) {
  luaL_checkany(L, 1);
  size_t flags = encode_flags(L, 2) | JSON_ENCODE_ANY;
  lua_settop(L, 2);
  encoder e;
  e.L = L;
  e.holder = holder_push(L);
  lua_newtable(L);
  e.seen = lua_gettop(L);
  lua_newtable(L);
  e.done = lua_gettop(L);
  e.repeating = 0;
  e.repeated = 0;
  /* %.15g already prints a float's shortest form when that has at most 15 digits (DBL_DIG),
     with trailing zeros stripped, so starting there gives the same text in at most three
     tries instead of up to seventeen. */
  e.precision = 15;
  path_seg root = {NULL, NULL, NULL, 0, 0, 0};
  encode_value(&e, 1, &root);
  /* One precision for the whole document: the fewest digits that round-trip every float. */
  e.holder->text = json_dumps(e.holder->root, flags | JSON_REAL_PRECISION(e.precision));
  if (e.holder->text == NULL)
    encode_fail(&e, &root, "jansson could not write the document (out of memory?)");
  lua_pushstring(L, e.holder->text);
  holder_release(e.holder);
  return 1;
}

/* ---- markers and the module table ---- */

static int mark(lua_State *L, const char *mt) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  } else {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
  }
  /* Replacing one marker by the other is fine; replacing a class's metatable is a bug. */
  if (lua_getmetatable(L, 1)) {
    luaL_getmetatable(L, TUG_ARRAY_MT);
    luaL_getmetatable(L, TUG_OBJECT_MT);
    if (!lua_rawequal(L, -3, -2) && !lua_rawequal(L, -3, -1))
      luaL_argerror(L, 1, "table already has a metatable");
    lua_settop(L, 1);
  }
  tug_mark_table(L, 1, mt);
  return 1;
}

static int module_array(lua_State *L) { return mark(L, TUG_ARRAY_MT); }

static int module_object(lua_State *L) { return mark(L, TUG_OBJECT_MT); }

static const luaL_Reg json_funcs[] = {{"decode", module_decode},
                                      {"encode", module_encode},
                                      {"array", module_array},
                                      {"object", module_object},
                                      {"null", NULL},
                                      {NULL, NULL}};

int luaopen_tug_json(lua_State *L) {
  luaL_newmetatable(L, HOLDER_MT);
  lua_pushcfunction(L, holder_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_newlib(L, json_funcs);
  tug_push_null(L);
  lua_setfield(L, -2, "null");
  return 1;
}
