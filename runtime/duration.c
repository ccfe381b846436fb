/*
 * duration.c: durations as people write them in playbooks ("1m30s", "500ms", "2h").
 * One parser, used by time.parse_duration and by every binding that takes a timeout.
 */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tug.h"

static const struct {
  const char *unit;
  double seconds;
} units[] = {{"ms", 1e-3}, {"us", 1e-6}, {"ns", 1e-9}, {"s", 1},
             {"m", 60},    {"h", 3600},  {"d", 86400}};

int tug_parse_duration(const char *s, double *seconds) {
  double total = 0;
  const char *p = s;
  if (*p == '\0')
    return -1;
  char *end;
  double plain = strtod(p, &end);
  if (*end == '\0' && isfinite(plain) && plain >= 0 && !isspace((unsigned char)*p)) {
    if (plain > TUG_DURATION_MAX)
      return -2;
    *seconds = plain; /* a bare number is seconds */
    return 0;
  }
  while (*p) {
    if (!isdigit((unsigned char)*p) && *p != '.')
      return -1;
    double n = strtod(p, &end);
    if (end == p || !isfinite(n))
      return -1;
    p = end;
    size_t i, len = 0;
    for (i = 0; i < sizeof units / sizeof units[0]; i++) {
      len = strlen(units[i].unit);
      if (strncmp(p, units[i].unit, len) == 0 && !isalpha((unsigned char)p[len]))
        break;
    }
    if (i == sizeof units / sizeof units[0])
      return -1;
    total += n * units[i].seconds;
    if (!(total <= TUG_DURATION_MAX)) /* also catches an infinite sum */
      return -2;
    p += len;
  }
  *seconds = total;
  return 0;
}

const char *tug_duration_error(lua_State *L, const char *text, int code) {
  if (code == -2)
    return lua_pushfstring(L, "'%s' is longer than the longest duration, " TUG_DURATION_MAX_TEXT,
                           text);
  return lua_pushfstring(L,
                         "'%s' is not a duration (try \"30s\", \"1m30s\", "
                         "\"500ms\" or a number of seconds)",
                         text);
}

double tug_check_seconds(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TNUMBER) {
    double s = lua_tonumber(L, idx);
    luaL_argcheck(L, s >= 0 && s <= TUG_DURATION_MAX, idx,
                  "seconds must be a number from 0 to " TUG_DURATION_MAX_TEXT);
    return s;
  }
  const char *text = lua_tostring(L, idx);
  if (lua_type(L, idx) != LUA_TSTRING)
    luaL_typeerror(L, idx, "number of seconds or duration string");
  double s;
  int code = tug_parse_duration(text, &s);
  if (code != 0)
    luaL_argerror(L, idx, tug_duration_error(L, text, code));
  return s;
}
