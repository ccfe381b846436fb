/*
 * yaml.c: the yaml module, YAML text to Lua values and back, on libyaml.
 *
 * Decoding walks libyaml's event stream and builds Lua values as the events arrive.
 * Mappings and sequences carry the runtime's object and array markers and null is the
 * runtime's shared sentinel, so a decoded manifest re-encodes as JSON with its [] and {}
 * intact. Plain scalars are resolved with the YAML 1.2 core schema (README.md has the
 * rules). Encoding drives libyaml's emitter and double-quotes every string that a YAML
 * reader would take for something else.
 *
 * libyaml's state (parser or emitter, the pending event, the output buffer) lives in a
 * userdata, and the conversion runs inside lua_pcall: whatever fails, the binding frees
 * that state in one place and only then raises.
 */
#include <errno.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "tug.h"

/* Deeper documents are refused: the builders recurse on the C stack. */
#define MAX_NESTING 512

/* A document may repeat, through aliases, at most this many nodes in all: an alias counts
   as every node of the anchored value, expanded. Aliases share the anchored Lua table, so
   decoding stays linear, but every walk of the result (json.encode, resolving an
   environment's references, a diff) visits the expansion, and ten nested aliases of ten
   items each (the "billion laughs") expand to 10^10 nodes. The cap bounds any such walk by
   the size of the text plus this many nodes; real manifests and environments repeat a few
   hundred. A scalar weighs one node more per SCALAR_BYTES_PER_NODE bytes of its text, so
   that the repeats of a long string count for its length: the repeated text is bounded
   too, at 64 MB. The encoder caps the values it writes again for shared tables the same
   way. */
#define MAX_ALIAS_EXPANSION 1000000
#define SCALAR_BYTES_PER_NODE 64

/* Error paths deeper than twice this keep only their first and last segments. */
#define PATH_KEEP 16

#define CORE_TAG "tag:yaml.org,2002:"
#define CORE_TAG_LEN (sizeof(CORE_TAG) - 1)

/* ---- scalar resolution (YAML 1.2 core schema), shared by the decoder and the encoder ---- */

enum scalar_kind { SCALAR_STRING, SCALAR_NULL, SCALAR_BOOL, SCALAR_INT, SCALAR_FLOAT };

static int same_word(const char *s, size_t len, const char *word) {
  return strlen(word) == len && memcmp(s, word, len) == 0;
}

static int is_digit(int c) { return c >= '0' && c <= '9'; }

static int hex_value(int c) {
  if (is_digit(c))
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

static int match_null(const char *s, size_t len) {
  return len == 0 || same_word(s, len, "~") || same_word(s, len, "null") ||
         same_word(s, len, "Null") || same_word(s, len, "NULL");
}

/* Only the YAML 1.2 spellings: yes/no/on/off are strings, as in Kubernetes' own parser. */
static int match_bool(const char *s, size_t len, int *value) {
  if (same_word(s, len, "true") || same_word(s, len, "True") || same_word(s, len, "TRUE")) {
    *value = 1;
    return 1;
  }
  if (same_word(s, len, "false") || same_word(s, len, "False") || same_word(s, len, "FALSE")) {
    *value = 0;
    return 1;
  }
  return 0;
}

/* [-+]?[0-9]+ | 0o[0-7]+ | 0x[0-9a-fA-F]+ */
static int match_int(const char *s, size_t len) {
  size_t i = 0;
  if (len > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o')) {
    int octal = s[1] == 'o';
    for (i = 2; i < len; i++) {
      int digit = hex_value((unsigned char)s[i]);
      if (digit < 0 || (octal && digit > 7))
        return 0;
    }
    return 1;
  }
  if (len > 0 && (s[0] == '-' || s[0] == '+'))
    i = 1;
  if (i == len)
    return 0;
  for (; i < len; i++)
    if (!is_digit((unsigned char)s[i]))
      return 0;
  return 1;
}

static int match_special_float(const char *s, size_t len) {
  const char *rest = s;
  size_t rest_len = len;
  if (len > 0 && (s[0] == '-' || s[0] == '+')) {
    rest++;
    rest_len--;
  }
  if (same_word(rest, rest_len, ".inf") || same_word(rest, rest_len, ".Inf") ||
      same_word(rest, rest_len, ".INF"))
    return 1;
  return same_word(s, len, ".nan") || same_word(s, len, ".NaN") || same_word(s, len, ".NAN");
}

/* [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? and the .inf/.nan spellings. */
static int match_float(const char *s, size_t len) {
  size_t i = 0, digits = 0, exponent_digits = 0;
  if (match_special_float(s, len))
    return 1;
  if (i < len && (s[i] == '-' || s[i] == '+'))
    i++;
  if (i < len && s[i] == '.') {
    for (i++; i < len && is_digit((unsigned char)s[i]); i++)
      digits++;
  } else {
    for (; i < len && is_digit((unsigned char)s[i]); i++)
      digits++;
    if (digits > 0 && i < len && s[i] == '.')
      for (i++; i < len && is_digit((unsigned char)s[i]); i++)
        ;
  }
  if (digits == 0)
    return 0;
  if (i < len && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    if (i < len && (s[i] == '-' || s[i] == '+'))
      i++;
    for (; i < len && is_digit((unsigned char)s[i]); i++)
      exponent_digits++;
    if (exponent_digits == 0)
      return 0;
  }
  return i == len;
}

static enum scalar_kind resolve_plain(const char *s, size_t len) {
  int ignored;
  if (match_null(s, len))
    return SCALAR_NULL;
  if (match_bool(s, len, &ignored))
    return SCALAR_BOOL;
  if (match_int(s, len))
    return SCALAR_INT;
  if (match_float(s, len))
    return SCALAR_FLOAT;
  return SCALAR_STRING;
}

/* s matched match_int. Out of the 64-bit range the value becomes the nearest float, so no
   document fails to load for a big number (a user who needs the digits quotes them). */
static void push_int(lua_State *L, const char *s, size_t len) {
  lua_Unsigned acc = 0, limit;
  double approx = 0;
  int base = 10, negative = 0, overflow = 0;
  size_t i = 0;
  if (len > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o')) {
    base = s[1] == 'x' ? 16 : 8;
    i = 2;
  } else if (s[0] == '-' || s[0] == '+') {
    negative = s[0] == '-';
    i = 1;
  }
  limit = negative ? (lua_Unsigned)LUA_MAXINTEGER + 1 : (lua_Unsigned)LUA_MAXINTEGER;
  for (; i < len; i++) {
    int digit = hex_value((unsigned char)s[i]);
    approx = approx * base + digit;
    if (!overflow && acc > (limit - (lua_Unsigned)digit) / (lua_Unsigned)base)
      overflow = 1;
    else if (!overflow)
      acc = acc * (lua_Unsigned)base + (lua_Unsigned)digit;
  }
  if (!overflow)
    lua_pushinteger(L, negative ? (lua_Integer)(0u - acc) : (lua_Integer)acc);
  else if (base == 10)
    lua_pushnumber(L, (lua_Number)strtod(s, NULL)); /* digits only: no locale question */
  else
    lua_pushnumber(L, (lua_Number)approx);
}

/* s matched match_float and is NUL-terminated (libyaml terminates every scalar). */
static void push_float(lua_State *L, const char *s, size_t len) {
  if (match_special_float(s, len)) {
    if (s[len - 1] == 'n' || s[len - 1] == 'N')
      lua_pushnumber(L, (lua_Number)NAN);
    else
      lua_pushnumber(L, s[0] == '-' ? -(lua_Number)HUGE_VAL : (lua_Number)HUGE_VAL);
    return;
  }
  /* lua_stringtonumber copes with the locale's decimal point; strtod alone would not. */
  if (lua_stringtonumber(L, s) == 0) {
    lua_pushlstring(L, s, len);
  } else if (lua_isinteger(L, -1)) {
    lua_pushnumber(L, (lua_Number)lua_tointeger(L, -1));
    lua_remove(L, -2);
  }
}

/* ---- decoding ---- */

typedef struct decoder {
  yaml_parser_t parser;
  yaml_event_t event; /* the event being looked at; all zero when there is none */
  const char *name;   /* what errors call the input: opts.name, the path, "<string>" */
  const char *text;   /* the input, to place reader errors (they only know an offset) */
  size_t text_len;
  char *file_text;  /* load_file's copy of the file, freed with the parser */
  int anchors;      /* stack index of the current document's anchor table */
  int anchor_sizes; /* stack index of anchor name -> nodes in its value, expanded */
  size_t expanded;  /* nodes the current document's aliases have repeated so far */
} decoder;

static int decode_error(lua_State *L, decoder *d, yaml_mark_t mark, const char *fmt, ...) {
  va_list ap;
  lua_pushfstring(L, "%s:%I:%I: ", d->name, (lua_Integer)mark.line + 1,
                  (lua_Integer)mark.column + 1);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 2);
  return lua_error(L);
}

/* libyaml's reader reports a byte offset only; count lines and characters up to it. */
static yaml_mark_t mark_at_offset(const decoder *d, size_t offset) {
  yaml_mark_t mark = {0, 0, 0};
  size_t i;
  if (offset > d->text_len)
    offset = d->text_len;
  mark.index = offset;
  for (i = 0; i < offset; i++) {
    unsigned char c = (unsigned char)d->text[i];
    if (c == '\n') {
      mark.line++;
      mark.column = 0;
    } else if ((c & 0xC0) != 0x80) {
      mark.column++;
    }
  }
  return mark;
}

static int parser_error(lua_State *L, decoder *d) {
  yaml_parser_t *p = &d->parser;
  const char *problem = p->problem ? p->problem : "cannot parse the document";
  switch (p->error) {
  case YAML_MEMORY_ERROR:
    return decode_error(L, d, p->mark, "out of memory");
  case YAML_READER_ERROR: {
    char value[16] = "";
    if (p->problem_value != -1)
      snprintf(value, sizeof value, " (#x%02X)", (unsigned)p->problem_value);
    return decode_error(L, d, mark_at_offset(d, p->problem_offset), "%s%s", problem, value);
  }
  default:
    if (p->context == NULL)
      return decode_error(L, d, p->problem_mark, "%s", problem);
    if (p->context_mark.line == p->problem_mark.line &&
        p->context_mark.column == p->problem_mark.column)
      return decode_error(L, d, p->problem_mark, "%s (%s)", problem, p->context);
    return decode_error(L, d, p->problem_mark, "%s (%s that started at line %I, column %I)",
                        problem, p->context, (lua_Integer)p->context_mark.line + 1,
                        (lua_Integer)p->context_mark.column + 1);
  }
}

static void next_event(lua_State *L, decoder *d) {
  yaml_event_delete(&d->event);
  if (!yaml_parser_parse(&d->parser, &d->event))
    parser_error(L, d);
}

/* Pushes the value of the scalar event being looked at. */
static void push_scalar(lua_State *L, decoder *d) {
  yaml_event_t *e = &d->event;
  const char *s = (const char *)e->data.scalar.value;
  size_t len = e->data.scalar.length;
  const char *tag = (const char *)e->data.scalar.tag;
  enum scalar_kind kind;
  int boolean = 0;

  if (tag != NULL && strncmp(tag, CORE_TAG, CORE_TAG_LEN) == 0) {
    const char *type = tag + CORE_TAG_LEN;
    if (strcmp(type, "str") == 0) {
      lua_pushlstring(L, s, len);
      return;
    }
    if (strcmp(type, "null") == 0) {
      if (!match_null(s, len))
        decode_error(L, d, e->start_mark, "a !!null scalar must be null, ~ or empty");
      tug_push_null(L);
      return;
    }
    if (strcmp(type, "bool") == 0) {
      if (!match_bool(s, len, &boolean))
        decode_error(L, d, e->start_mark, "a !!bool scalar must be true or false");
      lua_pushboolean(L, boolean);
      return;
    }
    if (strcmp(type, "int") == 0) {
      if (!match_int(s, len))
        decode_error(L, d, e->start_mark, "a !!int scalar must be an integer");
      push_int(L, s, len);
      return;
    }
    if (strcmp(type, "float") == 0) {
      if (match_int(s, len)) {
        push_int(L, s, len);
        lua_pushnumber(L, lua_tonumber(L, -1));
        lua_remove(L, -2);
      } else if (match_float(s, len)) {
        push_float(L, s, len);
      } else {
        decode_error(L, d, e->start_mark, "a !!float scalar must be a number");
      }
      return;
    }
    /* Other core tags (!!binary, !!timestamp, ...) resolve like untagged scalars. */
  } else if (tag != NULL && strcmp(tag, "!") == 0) {
    lua_pushlstring(L, s, len); /* the non-specific tag "!" means a string */
    return;
  }

  /* Quoted and block scalars are always strings: the quotes are how YAML says so. */
  kind = e->data.scalar.style == YAML_PLAIN_SCALAR_STYLE ? resolve_plain(s, len) : SCALAR_STRING;
  switch (kind) {
  case SCALAR_NULL:
    tug_push_null(L);
    break;
  case SCALAR_BOOL:
    match_bool(s, len, &boolean);
    lua_pushboolean(L, boolean);
    break;
  case SCALAR_INT:
    push_int(L, s, len);
    break;
  case SCALAR_FLOAT:
    push_float(L, s, len);
    break;
  default:
    lua_pushlstring(L, s, len);
    break;
  }
}

static int has_marker(lua_State *L, int idx, const char *mt) {
  int same;
  if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx))
    return 0;
  luaL_getmetatable(L, mt);
  same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return same;
}

/* Pushes the anchored value and returns its size, expanded (see MAX_ALIAS_EXPANSION). */
static size_t push_alias(lua_State *L, decoder *d) {
  const char *name = (const char *)d->event.data.alias.anchor;
  size_t size;
  lua_pushstring(L, name);
  lua_rawget(L, d->anchors);
  if (lua_isnil(L, -1))
    decode_error(L, d, d->event.start_mark, "undefined alias *%s", name);
  /* The decoder's own address marks an anchored collection still being built: a cycle,
     which would make every recursive walk of the result (including json.encode) loop. */
  if (lua_type(L, -1) == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == d)
    decode_error(L, d, d->event.start_mark, "alias *%s refers to a node that contains it", name);
  lua_pushstring(L, name);
  lua_rawget(L, d->anchor_sizes);
  size = (size_t)lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (size > MAX_ALIAS_EXPANSION - d->expanded)
    decode_error(L, d, d->event.start_mark,
                 "alias *%s would make the document's aliases repeat more than %d nodes "
                 "(nested aliases multiply, as in a \"billion laughs\")",
                 name, MAX_ALIAS_EXPANSION);
  d->expanded += size;
  return size;
}

static size_t build_node(lua_State *L, decoder *d, int depth);

static size_t build_sequence(lua_State *L, decoder *d, int depth) {
  lua_Integer n = 0;
  size_t size = 1;
  lua_newtable(L);
  tug_mark_table(L, -1, TUG_ARRAY_MT);
  for (;;) {
    next_event(L, d);
    if (d->event.type == YAML_SEQUENCE_END_EVENT)
      break;
    size += build_node(L, d, depth + 1);
    lua_rawseti(L, -2, ++n);
  }
  return size;
}

static int is_merge_key(const yaml_event_t *e) {
  const char *tag = (const char *)e->data.scalar.tag;
  if (e->type != YAML_SCALAR_EVENT || e->data.scalar.length != 2 ||
      memcmp(e->data.scalar.value, "<<", 2) != 0)
    return 0;
  if (tag == NULL)
    return e->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
  return strcmp(tag, CORE_TAG "merge") == 0;
}

/* The value of a << key is at the top: a mapping, or a sequence of mappings. Appends the
   mappings, in order, to the list at sources. */
static void add_merge_sources(lua_State *L, decoder *d, int sources, yaml_mark_t mark) {
  lua_Integer i, n = (lua_Integer)lua_rawlen(L, sources);
  if (has_marker(L, -1, TUG_OBJECT_MT)) {
    lua_pushvalue(L, -1);
    lua_rawseti(L, sources, n + 1);
    return;
  }
  if (!has_marker(L, -1, TUG_ARRAY_MT))
    decode_error(L, d, mark,
                 "the value of a merge key (<<) must be a mapping or a sequence of "
                 "mappings");
  for (i = 1; i <= (lua_Integer)lua_rawlen(L, -1); i++) {
    lua_rawgeti(L, -1, i);
    if (!has_marker(L, -1, TUG_OBJECT_MT))
      decode_error(L, d, mark, "item %I of the merge key's (<<) sequence is not a mapping", i);
    lua_rawseti(L, sources, ++n);
  }
}

/* Copies into the mapping at map the keys of each source it does not have yet: keys
   written in the mapping win, then earlier sources win over later ones. */
static void apply_merges(lua_State *L, int map, int sources) {
  lua_Integer i, n = (lua_Integer)lua_rawlen(L, sources);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, sources, i);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      lua_pushvalue(L, -2);
      if (lua_rawget(L, map) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, map);
      } else {
        lua_pop(L, 2);
      }
    }
    lua_pop(L, 1);
  }
}

static void push_key_text(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TSTRING)
    lua_pushfstring(L, "\"%s\"", lua_tostring(L, idx));
  else if (tug_is_null(L, idx))
    lua_pushliteral(L, "null");
  else
    luaL_tolstring(L, idx, NULL);
}

static size_t build_mapping(lua_State *L, decoder *d, int depth) {
  int map, sources = 0;
  size_t size = 1;
  lua_newtable(L);
  map = lua_gettop(L);
  tug_mark_table(L, map, TUG_OBJECT_MT);
  for (;;) {
    yaml_mark_t key_mark, value_mark;
    int merge;
    next_event(L, d);
    if (d->event.type == YAML_MAPPING_END_EVENT)
      break;
    key_mark = d->event.start_mark;
    if (d->event.type != YAML_SCALAR_EVENT && d->event.type != YAML_ALIAS_EVENT)
      decode_error(L, d, key_mark, "a mapping key must be a scalar, not a %s",
                   d->event.type == YAML_MAPPING_START_EVENT ? "mapping" : "sequence");
    merge = is_merge_key(&d->event);
    size += build_node(L, d, depth + 1);
    if (lua_type(L, -1) == LUA_TTABLE)
      decode_error(L, d, key_mark, "a mapping key must be a scalar, not an alias of a collection");
    if (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) != lua_tonumber(L, -1))
      decode_error(L, d, key_mark, "a mapping key cannot be .nan");

    next_event(L, d);
    value_mark = d->event.start_mark;
    /* A merged mapping's size counts every source whole: more than the keys it takes. */
    size += build_node(L, d, depth + 1);
    if (merge) {
      if (sources == 0) {
        lua_newtable(L);
        lua_insert(L, map + 1);
        sources = map + 1;
      }
      add_merge_sources(L, d, sources, value_mark);
      lua_pop(L, 2);
      continue;
    }
    lua_pushvalue(L, -2);
    if (lua_rawget(L, map) != LUA_TNIL) {
      push_key_text(L, -3);
      decode_error(L, d, key_mark, "duplicate key %s", lua_tostring(L, -1));
    }
    lua_pop(L, 1);
    lua_rawset(L, map);
  }
  if (sources != 0) {
    apply_merges(L, map, sources);
    lua_settop(L, map);
  }
  return size;
}

/* Pushes the value of the node whose first event is being looked at; returns its number of
   nodes with every alias in it expanded. */
static size_t build_node(lua_State *L, decoder *d, int depth) {
  yaml_event_t *e = &d->event;
  const char *anchor = NULL;
  int anchored;
  size_t size = 1;
  if (depth > MAX_NESTING || !lua_checkstack(L, 10))
    decode_error(L, d, e->start_mark, "nesting deeper than %d levels", MAX_NESTING);
  switch (e->type) {
  case YAML_ALIAS_EVENT:
    return push_alias(L, d);
  case YAML_SCALAR_EVENT:
    anchor = (const char *)e->data.scalar.anchor;
    break;
  case YAML_SEQUENCE_START_EVENT:
    anchor = (const char *)e->data.sequence_start.anchor;
    break;
  case YAML_MAPPING_START_EVENT:
    anchor = (const char *)e->data.mapping_start.anchor;
    break;
  default:
    decode_error(L, d, e->start_mark, "unexpected YAML event %d", (int)e->type);
  }
  anchored = anchor != NULL;
  if (anchored) {
    /* The name must outlive this event; while the node is built it maps to the marker. */
    lua_pushstring(L, anchor);
    lua_pushvalue(L, -1);
    lua_pushlightuserdata(L, d);
    lua_rawset(L, d->anchors);
  }
  if (e->type == YAML_SCALAR_EVENT) {
    size += e->data.scalar.length / SCALAR_BYTES_PER_NODE;
    push_scalar(L, d);
  } else if (e->type == YAML_SEQUENCE_START_EVENT)
    size = build_sequence(L, d, depth);
  else
    size = build_mapping(L, d, depth);
  if (anchored) {
    lua_pushvalue(L, -2);
    lua_pushinteger(L, (lua_Integer)size);
    lua_rawset(L, d->anchor_sizes);
    lua_pushvalue(L, -2);
    lua_pushvalue(L, -2);
    lua_rawset(L, d->anchors);
    lua_remove(L, -2);
  }
  return size;
}

/* Runs under lua_pcall: (decoder, all) -> the document, or the array of documents. */
static int decode_stream(lua_State *L) {
  decoder *d = lua_touserdata(L, 1);
  int all = lua_toboolean(L, 2);
  lua_Integer documents = 0;
  lua_settop(L, 2);
  lua_newtable(L); /* 3: the documents */
  if (all)
    tug_mark_table(L, 3, TUG_ARRAY_MT);
  lua_pushnil(L); /* 4: the anchors; each document has its own */
  d->anchors = 4;
  lua_pushnil(L); /* 5: the anchors' expanded sizes */
  d->anchor_sizes = 5;
  next_event(L, d); /* stream start */
  for (;;) {
    next_event(L, d);
    if (d->event.type == YAML_STREAM_END_EVENT)
      break;
    if (!all && documents == 1)
      decode_error(L, d, d->event.start_mark,
                   "expected a single document but found another (use yaml.decode_all)");
    lua_newtable(L);
    lua_replace(L, 4);
    lua_newtable(L);
    lua_replace(L, 5);
    d->expanded = 0;
    next_event(L, d);
    build_node(L, d, 1);
    lua_rawseti(L, 3, ++documents);
    next_event(L, d); /* document end */
  }
  if (!all)
    lua_rawgeti(L, 3, 1); /* nil for an empty stream */
  else
    lua_settop(L, 3);
  return 1;
}

/* Decodes text with d (the userdata at the top of the stack), then frees d's resources
   whatever happened, and returns the result or raises the error. */
static int run_decoder(lua_State *L, decoder *d, const char *text, size_t len, int all) {
  int status;
  if (!yaml_parser_initialize(&d->parser)) {
    free(d->file_text);
    return luaL_error(L, "%s: out of memory", d->name);
  }
  d->text = text;
  d->text_len = len;
  yaml_parser_set_input_string(&d->parser, (const unsigned char *)(text ? text : ""), len);
  lua_pushcfunction(L, decode_stream);
  lua_pushvalue(L, -2);
  lua_pushboolean(L, all);
  status = lua_pcall(L, 2, 1, 0);
  yaml_event_delete(&d->event);
  yaml_parser_delete(&d->parser);
  free(d->file_text);
  d->file_text = NULL;
  if (status != LUA_OK)
    return lua_error(L);
  return 1;
}

/* Raises unless the options table at arg (if any) holds only the named fields: a typo in
   an option name should not be silently ignored. */
static void check_options(lua_State *L, int arg, const char *const names[]) {
  if (lua_isnoneornil(L, arg))
    return;
  luaL_checktype(L, arg, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, arg)) {
    int known = 0, i;
    lua_pop(L, 1);
    for (i = 0; names[i] != NULL && lua_type(L, -1) == LUA_TSTRING; i++)
      known |= strcmp(lua_tostring(L, -1), names[i]) == 0;
    if (!known)
      luaL_argerror(L, arg, lua_pushfstring(L, "unknown option '%s'", luaL_tolstring(L, -1, NULL)));
  }
}

/* opts.name, left on the stack (so the pointer stays valid), or def. */
static const char *option_name(lua_State *L, int arg, const char *def) {
  if (lua_isnoneornil(L, arg) || lua_getfield(L, arg, "name") == LUA_TNIL)
    return def;
  if (lua_type(L, -1) != LUA_TSTRING)
    luaL_argerror(L, arg, "opts.name must be a string");
  return lua_tostring(L, -1);
}

static decoder *new_decoder(lua_State *L, const char *name) {
  decoder *d = lua_newuserdatauv(L, sizeof(decoder), 0);
  memset(d, 0, sizeof(decoder));
  d->name = name;
  return d;
}

static const char *const decode_options[] = {"name", NULL};

/* yaml.decode(text [, opts]) -> value (nil for an empty stream) */
static int module_decode(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  const char *name;
  check_options(L, 2, decode_options);
  name = option_name(L, 2, "<string>");
  return run_decoder(L, new_decoder(L, name), text, len, 0);
}

/* yaml.decode_all(text [, opts]) -> array of documents */
static int module_decode_all(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  const char *name;
  check_options(L, 2, decode_options);
  name = option_name(L, 2, "<string>");
  return run_decoder(L, new_decoder(L, name), text, len, 1);
}

/* Reads the whole file into a malloc'd buffer; returns 0 or an errno value. */
static int read_whole_file(const char *path, char **out, size_t *out_len) {
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  size_t len = 0, cap = 0;
  if (f == NULL)
    return errno;
  for (;;) {
    size_t want, got;
    if (len == cap) {
      char *bigger = realloc(buf, cap ? cap * 2 : 8192);
      if (bigger == NULL) {
        free(buf);
        fclose(f);
        return ENOMEM;
      }
      buf = bigger;
      cap = cap ? cap * 2 : 8192;
    }
    want = cap - len;
    errno = 0;
    got = fread(buf + len, 1, want, f);
    len += got;
    if (got < want) {
      if (ferror(f)) {
        int err = errno ? errno : EIO;
        free(buf);
        fclose(f);
        return err;
      }
      break;
    }
  }
  fclose(f);
  *out = buf;
  *out_len = len;
  return 0;
}

/* yaml.load_file(path [, opts]) -> value; errors name the file */
static int module_load_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  decoder *d;
  size_t len = 0;
  int err;
  check_options(L, 2, decode_options);
  d = new_decoder(L, option_name(L, 2, path));
  err = read_whole_file(path, &d->file_text, &len);
  if (err != 0)
    return luaL_error(L, "%s: %s", path, strerror(err));
  return run_decoder(L, d, d->file_text, len, 0);
}

/* ---- encoding ---- */

typedef struct encoder {
  yaml_emitter_t emitter;
  char *out; /* the text written so far */
  size_t out_len, out_cap;
  int explicit_start;
  int visiting;    /* stack index of table -> true while it is being encoded (a cycle if met
                      again), false once written (a repeat if met again) */
  int repeating;   /* how many of the tables being encoded are repeats */
  size_t repeated; /* values written inside repeats (MAX_ALIAS_EXPANSION) */
  int depth;
  /* How the value being encoded was reached: a sequence index, or the stack index of a
     mapping key (0 for the index kind). */
  struct {
    int key;
    lua_Integer index;
  } path[MAX_NESTING];
} encoder;

static int write_output(void *data, unsigned char *buffer, size_t size) {
  encoder *en = data;
  if (size > en->out_cap - en->out_len) {
    size_t cap = en->out_cap ? en->out_cap : 1024;
    char *bigger;
    while (cap - en->out_len < size)
      cap *= 2;
    bigger = realloc(en->out, cap);
    if (bigger == NULL)
      return 0;
    en->out = bigger;
    en->out_cap = cap;
  }
  memcpy(en->out + en->out_len, buffer, size);
  en->out_len += size;
  return 1;
}

static int is_identifier(const char *s, size_t len) {
  size_t i;
  if (len == 0 || is_digit((unsigned char)s[0]))
    return 0;
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!(is_digit(c) || c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
      return 0;
  }
  return 1;
}

static void add_quoted_key(luaL_Buffer *b, const char *s, size_t len) {
  size_t i;
  luaL_addstring(b, "[\"");
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
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

/* Raises "yaml.encode: WHAT at $.spec.ports[0].name": the path is written the way json's
   errors write it (indexes from 0), so both modules point at values the same way. */
static int encode_error(lua_State *L, encoder *en, const char *what) {
  luaL_Buffer b;
  int i;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "yaml.encode: ");
  luaL_addstring(&b, what);
  luaL_addstring(&b, " at $");
  for (i = 0; i < en->depth; i++) {
    int key = en->path[i].key;
    if (en->depth > 2 * PATH_KEEP && i >= PATH_KEEP && i < en->depth - PATH_KEEP) {
      if (i == PATH_KEEP)
        luaL_addstring(&b, "...");
    } else if (key == 0) {
      lua_pushfstring(L, "[%I]", en->path[i].index - 1);
      luaL_addvalue(&b);
    } else if (lua_type(L, key) == LUA_TSTRING) {
      size_t len;
      const char *s = lua_tolstring(L, key, &len);
      if (is_identifier(s, len)) {
        luaL_addchar(&b, '.');
        luaL_addlstring(&b, s, len);
      } else {
        add_quoted_key(&b, s, len);
      }
    } else {
      luaL_addchar(&b, '[');
      luaL_tolstring(L, key, NULL);
      luaL_addvalue(&b);
      luaL_addchar(&b, ']');
    }
  }
  luaL_pushresult(&b);
  return lua_error(L);
}

/* Emits an event that initialized (the result of its yaml_*_event_initialize) or not. */
static void emit(lua_State *L, encoder *en, yaml_event_t *event, int initialized) {
  if (!initialized)
    encode_error(L, en, "out of memory");
  if (!yaml_emitter_emit(&en->emitter, event))
    encode_error(L, en, en->emitter.problem ? en->emitter.problem : "cannot write YAML");
}

static void emit_scalar(lua_State *L, encoder *en, const char *s, size_t len,
                        yaml_scalar_style_t style, int plain_implicit) {
  yaml_event_t event;
  if (len > INT_MAX)
    encode_error(L, en, "string too long");
  emit(L, en, &event,
       yaml_scalar_event_initialize(&event, NULL, NULL, (const yaml_char_t *)s, (int)len,
                                    plain_implicit, 1, style));
}

static int valid_utf8(const char *s, size_t len) {
  size_t i = 0;
  while (i < len) {
    unsigned char c = (unsigned char)s[i];
    unsigned long code;
    size_t n, k;
    if (c < 0x80) {
      i++;
      continue;
    }
    if ((c & 0xE0) == 0xC0)
      n = 2, code = c & 0x1F;
    else if ((c & 0xF0) == 0xE0)
      n = 3, code = c & 0x0F;
    else if ((c & 0xF8) == 0xF0)
      n = 4, code = c & 0x07;
    else
      return 0;
    if (len - i < n)
      return 0;
    for (k = 1; k < n; k++) {
      if (((unsigned char)s[i + k] & 0xC0) != 0x80)
        return 0;
      code = (code << 6) | ((unsigned char)s[i + k] & 0x3F);
    }
    if ((n == 2 && code < 0x80) || (n == 3 && code < 0x800) || (n == 4 && code < 0x10000) ||
        code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF))
      return 0;
    i += n;
  }
  return 1;
}

static int is_yaml11_word(const char *s, size_t len) {
  static const char *const words[] = {"y",   "Y",   "yes", "Yes", "YES", "n",  "N",
                                      "no",  "No",  "NO",  "on",  "On",  "ON", "off",
                                      "Off", "OFF", "<<",  "=",   NULL};
  int i;
  for (i = 0; words[i] != NULL; i++)
    if (same_word(s, len, words[i]))
      return 1;
  return 0;
}

/* Catches what YAML 1.1 readers (PyYAML, older Go tooling) take for numbers or dates:
   1_000, 0b101, 0755, 1:30, 2024-01-31, 1.0e+3 and the like. Quoting a few real strings
   that merely look numeric costs nothing. */
static int looks_numeric(const char *s, size_t len) {
  size_t i = 0;
  if (i < len && (s[i] == '-' || s[i] == '+'))
    i++;
  if (i < len && s[i] == '.')
    i++;
  if (i >= len || !is_digit((unsigned char)s[i]))
    return 0;
  for (; i < len; i++)
    if (!strchr("0123456789abcdefABCDEFxXoOtTzZ_:.+- ", s[i]) || s[i] == '\0')
      return 0;
  return 1;
}

/* A string that a YAML reader would take for something else as a plain scalar. */
static int needs_quotes(const char *s, size_t len) {
  return resolve_plain(s, len) != SCALAR_STRING || is_yaml11_word(s, len) || looks_numeric(s, len);
}

static void emit_string(lua_State *L, encoder *en, int idx) {
  size_t len;
  const char *s = lua_tolstring(L, idx, &len);
  if (!valid_utf8(s, len))
    encode_error(L, en, "cannot encode a string that is not valid UTF-8");
  if (needs_quotes(s, len))
    emit_scalar(L, en, s, len, YAML_DOUBLE_QUOTED_SCALAR_STYLE, 0);
  else if (memchr(s, '\n', len) != NULL)
    /* libyaml falls back to double quotes where a literal block cannot say it exactly. */
    emit_scalar(L, en, s, len, YAML_LITERAL_SCALAR_STYLE, 1);
  else
    emit_scalar(L, en, s, len, YAML_ANY_SCALAR_STYLE, 1);
}

/* Spells a float so that it reads back as the same float, and as a float: the shortest
   %g that round-trips, with ".0" added where %g leaves an integral look (1.0, 1.0e+20). */
static void format_float(lua_Number x, char *buf, size_t size) {
  char decimal_point = lua_getlocaledecpoint();
  char *p;
  int precision;
  if (x != x) {
    snprintf(buf, size, ".nan");
    return;
  }
  if (isinf(x)) {
    snprintf(buf, size, x > 0 ? ".inf" : "-.inf");
    return;
  }
  for (precision = 15; precision < 17; precision++) {
    snprintf(buf, size, "%.*g", precision, (double)x);
    if ((lua_Number)strtod(buf, NULL) == x)
      break;
  }
  if (precision == 17)
    snprintf(buf, size, "%.17g", (double)x);
  if (decimal_point != '.' && (p = strchr(buf, decimal_point)) != NULL)
    *p = '.';
  if (strchr(buf, '.') == NULL) {
    char *exponent = strchr(buf, 'e');
    size_t at = exponent ? (size_t)(exponent - buf) : strlen(buf);
    memmove(buf + at + 2, buf + at, strlen(buf + at) + 1);
    memcpy(buf + at, ".0", 2);
  }
}

static void emit_number(lua_State *L, encoder *en, int idx) {
  char buf[64];
  if (lua_isinteger(L, idx))
    snprintf(buf, sizeof buf, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, idx));
  else
    format_float(lua_tonumber(L, idx), buf, sizeof buf - 2);
  emit_scalar(L, en, buf, strlen(buf), YAML_PLAIN_SCALAR_STYLE, 1);
}

static void emit_plain(lua_State *L, encoder *en, const char *word) {
  emit_scalar(L, en, word, strlen(word), YAML_PLAIN_SCALAR_STYLE, 1);
}

static void encode_value(lua_State *L, encoder *en, int idx);

static void encode_sequence(lua_State *L, encoder *en, int idx) {
  yaml_event_t event;
  lua_Integer i, n = (lua_Integer)lua_rawlen(L, idx);
  int depth = en->depth;
  emit(L, en, &event,
       yaml_sequence_start_event_initialize(&event, NULL, NULL, 1, YAML_BLOCK_SEQUENCE_STYLE));
  for (i = 1; i <= n; i++) {
    en->path[depth].key = 0;
    en->path[depth].index = i;
    en->depth = depth + 1;
    lua_rawgeti(L, idx, i);
    encode_value(L, en, -1);
    lua_pop(L, 1);
  }
  en->depth = depth;
  emit(L, en, &event, yaml_sequence_end_event_initialize(&event));
}

typedef struct sorted_key {
  int type; /* LUA_TNUMBER, LUA_TSTRING, LUA_TBOOLEAN */
  int is_integer;
  lua_Integer integer;
  lua_Number number;
  const char *s;
  size_t len;
  lua_Integer slot; /* where the key sits in the keys table */
} sorted_key;

/* Numbers (by value), then strings (bytewise), then false, true: deterministic output. */
static int compare_keys(const void *pa, const void *pb) {
  const sorted_key *a = pa, *b = pb;
  static const int rank[LUA_NUMTYPES] = {[LUA_TNUMBER] = 0, [LUA_TSTRING] = 1, [LUA_TBOOLEAN] = 2};
  int cmp;
  if (a->type != b->type)
    return rank[a->type] - rank[b->type];
  switch (a->type) {
  case LUA_TNUMBER:
    if (a->is_integer && b->is_integer)
      return (a->integer > b->integer) - (a->integer < b->integer);
    if (a->number != b->number)
      return (a->number > b->number) - (a->number < b->number);
    return b->is_integer - a->is_integer;
  case LUA_TSTRING:
    cmp = memcmp(a->s, b->s, a->len < b->len ? a->len : b->len);
    if (cmp != 0)
      return cmp;
    return (a->len > b->len) - (a->len < b->len);
  default:
    return (a->integer > b->integer) - (a->integer < b->integer); /* false, then true */
  }
}

static void encode_mapping(lua_State *L, encoder *en, int idx) {
  yaml_event_t event;
  sorted_key *sorted;
  lua_Integer i, n = 0;
  int keys, depth = en->depth;

  lua_newtable(L);
  keys = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int type = lua_type(L, -2);
    lua_pop(L, 1);
    if (type != LUA_TSTRING && type != LUA_TNUMBER && type != LUA_TBOOLEAN)
      encode_error(
          L, en, lua_pushfstring(L, "cannot encode a %s as a mapping key", lua_typename(L, type)));
    lua_pushvalue(L, -1);
    lua_rawseti(L, keys, ++n);
  }
  /* The keys table keeps every key string alive, and Lua's collector does not move
     objects, so the pointers stored here stay valid while we sort and emit. */
  sorted = lua_newuserdatauv(L, (size_t)n * sizeof(sorted_key) + 1, 0);
  for (i = 0; i < n; i++) {
    sorted_key *k = &sorted[i];
    k->slot = i + 1;
    k->type = lua_rawgeti(L, keys, i + 1);
    k->is_integer = lua_isinteger(L, -1);
    k->integer = k->type == LUA_TBOOLEAN ? lua_toboolean(L, -1) : lua_tointeger(L, -1);
    k->number = lua_tonumber(L, -1);
    k->s = k->type == LUA_TSTRING ? lua_tolstring(L, -1, &k->len) : NULL;
    lua_pop(L, 1);
  }
  qsort(sorted, (size_t)n, sizeof(sorted_key), compare_keys);

  emit(L, en, &event,
       yaml_mapping_start_event_initialize(&event, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE));
  for (i = 0; i < n; i++) {
    int key;
    lua_rawgeti(L, keys, sorted[i].slot);
    key = lua_gettop(L);
    en->path[depth].key = key;
    en->depth = depth + 1;
    if (sorted[i].type == LUA_TSTRING)
      emit_string(L, en, key);
    else if (sorted[i].type == LUA_TNUMBER)
      emit_number(L, en, key);
    else
      emit_plain(L, en, lua_toboolean(L, key) ? "true" : "false");
    lua_pushvalue(L, key);
    lua_rawget(L, idx);
    encode_value(L, en, -1);
    lua_pop(L, 2);
  }
  en->depth = depth;
  emit(L, en, &event, yaml_mapping_end_event_initialize(&event));
  lua_pop(L, 2);
}

static void encode_table(lua_State *L, encoder *en, int idx) {
  yaml_event_t event;
  if (en->depth >= MAX_NESTING || !lua_checkstack(L, 10))
    encode_error(L, en, lua_pushfstring(L, "nesting deeper than %d levels", MAX_NESTING));
  int again;
  lua_pushvalue(L, idx);
  again = lua_rawget(L, en->visiting) != LUA_TNIL;
  if (lua_toboolean(L, -1))
    encode_error(L, en, "cycle (the table contains itself)");
  lua_pop(L, 1);
  lua_pushvalue(L, idx);
  lua_pushboolean(L, 1);
  lua_rawset(L, en->visiting);
  en->repeating += again;

  switch (tug_table_kind(L, idx)) {
  case TUG_TABLE_EMPTY:
    /* An unmarked empty table reads as {}; an array-marked one is an ARRAY already. */
    emit(L, en, &event,
         yaml_mapping_start_event_initialize(&event, NULL, NULL, 1, YAML_FLOW_MAPPING_STYLE));
    emit(L, en, &event, yaml_mapping_end_event_initialize(&event));
    break;
  case TUG_TABLE_ARRAY:
    encode_sequence(L, en, idx);
    break;
  case TUG_TABLE_OBJECT:
    encode_mapping(L, en, idx);
    break;
  default:
    encode_error(L, en, "cannot encode a table that mixes array items (1..n) with other keys");
  }

  lua_pushvalue(L, idx);
  lua_pushboolean(L, 0);
  lua_rawset(L, en->visiting);
  en->repeating -= again;
}

static void encode_value(lua_State *L, encoder *en, int idx) {
  idx = lua_absindex(L, idx);
  /* A table shared by several branches is written again, whole: as on decoding, such
     repeats are capped, or tables shared inside shared tables would multiply. */
  if (en->repeating > 0 && (en->repeated += 1 + (lua_type(L, idx) == LUA_TSTRING
                                                     ? lua_rawlen(L, idx) / SCALAR_BYTES_PER_NODE
                                                     : 0)) > MAX_ALIAS_EXPANSION)
    encode_error(L, en,
                 lua_pushfstring(L,
                                 "tables shared by several branches repeat more than %d values "
                                 "(shared tables nested in shared tables multiply)",
                                 MAX_ALIAS_EXPANSION));
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    emit_plain(L, en, "null");
    break;
  case LUA_TBOOLEAN:
    emit_plain(L, en, lua_toboolean(L, idx) ? "true" : "false");
    break;
  case LUA_TNUMBER:
    emit_number(L, en, idx);
    break;
  case LUA_TSTRING:
    emit_string(L, en, idx);
    break;
  case LUA_TTABLE:
    encode_table(L, en, idx);
    break;
  default:
    if (tug_is_null(L, idx))
      emit_plain(L, en, "null");
    else
      encode_error(L, en, lua_pushfstring(L, "cannot encode a %s", luaL_typename(L, idx)));
  }
}

/* Runs under lua_pcall: (encoder, value) -> the YAML text. */
static int encode_stream(lua_State *L) {
  encoder *en = lua_touserdata(L, 1);
  yaml_event_t event;
  lua_settop(L, 2);
  lua_newtable(L);
  en->visiting = 3;
  emit(L, en, &event, yaml_stream_start_event_initialize(&event, YAML_UTF8_ENCODING));
  emit(L, en, &event,
       yaml_document_start_event_initialize(&event, NULL, NULL, NULL, !en->explicit_start));
  encode_value(L, en, 2);
  emit(L, en, &event, yaml_document_end_event_initialize(&event, 1));
  emit(L, en, &event, yaml_stream_end_event_initialize(&event));
  if (!yaml_emitter_flush(&en->emitter))
    encode_error(L, en, "out of memory");
  lua_pushlstring(L, en->out, en->out_len);
  return 1;
}

static const char *const encode_options[] = {"explicit_start", NULL};

/* yaml.encode(value [, opts]) -> text */
static int module_encode(lua_State *L) {
  encoder *en;
  int explicit_start = 0, status;
  luaL_checkany(L, 1);
  check_options(L, 2, encode_options);
  if (!lua_isnoneornil(L, 2)) {
    lua_getfield(L, 2, "explicit_start");
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
      luaL_argerror(L, 2, "opts.explicit_start must be a boolean");
    explicit_start = lua_toboolean(L, -1);
  }
  lua_settop(L, 1);
  en = lua_newuserdatauv(L, sizeof(encoder), 0);
  memset(en, 0, sizeof(encoder));
  en->explicit_start = explicit_start;
  if (!yaml_emitter_initialize(&en->emitter))
    return luaL_error(L, "yaml.encode: out of memory");
  yaml_emitter_set_output(&en->emitter, write_output, en);
  yaml_emitter_set_indent(&en->emitter, 2);
  yaml_emitter_set_width(&en->emitter, -1); /* never fold long strings across lines */
  yaml_emitter_set_unicode(&en->emitter, 1);
  yaml_emitter_set_break(&en->emitter, YAML_LN_BREAK);
  lua_pushcfunction(L, encode_stream);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 1);
  status = lua_pcall(L, 2, 1, 0);
  yaml_emitter_delete(&en->emitter);
  free(en->out);
  if (status != LUA_OK)
    return lua_error(L);
  return 1;
}

static const luaL_Reg yaml_functions[] = {
    {"decode", module_decode},
    {"decode_all", module_decode_all},
    {"load_file", module_load_file},
    {"encode", module_encode},
    {NULL, NULL},
};

int luaopen_tug_yaml(lua_State *L) {
  luaL_newlib(L, yaml_functions);
  tug_push_null(L);
  lua_setfield(L, -2, "null");
  return 1;
}
