/*
 * time.c: clocks and durations for playbooks.
 *
 *   time.now()                  wall-clock seconds since the epoch (float)
 *   time.monotonic()            seconds from an arbitrary start, never goes back
 *   time.parse_duration(text)   "1m30s" -> 90, "500ms" -> 0.5; nil, message if invalid
 *   time.format_duration(s)     90.5 -> "1m30.5s"
 *   time.format([t [, fmt]])    UTC strftime; default ISO 8601 "2026-11-28T22:30:00Z"
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "tug.h"

static int time_now(lua_State *L) {
  uv_timeval64_t tv;
  uv_gettimeofday(&tv);
  lua_pushnumber(L, (double)tv.tv_sec + tv.tv_usec / 1e6);
  return 1;
}

static int time_monotonic(lua_State *L) {
  lua_pushnumber(L, (double)uv_hrtime() / 1e9);
  return 1;
}

static int time_parse_duration(lua_State *L) {
  if (lua_type(L, 1) == LUA_TNUMBER) {
    double n = lua_tonumber(L, 1);
    if (n >= 0 && n <= TUG_DURATION_MAX) {
      lua_settop(L, 1);
      return 1;
    }
    luaL_pushfail(L);
    lua_pushfstring(L, "%s seconds is not a duration (from 0 to " TUG_DURATION_MAX_TEXT ")",
                    isnan(n) ? "NaN" : lua_tostring(L, 1));
    return 2;
  }
  const char *text = luaL_checkstring(L, 1);
  double seconds;
  int code = tug_parse_duration(text, &seconds);
  if (code != 0) {
    luaL_pushfail(L);
    tug_duration_error(L, text, code);
    return 2;
  }
  if (seconds == floor(seconds) && seconds < 9e15)
    lua_pushinteger(L, (lua_Integer)seconds);
  else
    lua_pushnumber(L, seconds);
  return 1;
}

static int time_format_duration(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  luaL_argcheck(L, isfinite(s), 1, "must be finite");
  char buf[64];
  const char *sign = s < 0 ? "-" : "";
  s = fabs(s);
  if (s < 1 && s > 0) {
    snprintf(buf, sizeof buf, "%s%gms", sign, round(s * 1e6) / 1e3);
  } else {
    long long whole = (long long)s;
    double frac = s - (double)whole;
    long long h = whole / 3600, m = whole / 60 % 60;
    double sec = (double)(whole % 60) + frac;
    int n = snprintf(buf, sizeof buf, "%s", sign);
    if (h)
      n += snprintf(buf + n, sizeof buf - n, "%lldh", h);
    if (m)
      n += snprintf(buf + n, sizeof buf - n, "%lldm", m);
    if (sec > 0 || (h == 0 && m == 0))
      snprintf(buf + n, sizeof buf - n, "%gs", round(sec * 1000) / 1000);
  }
  lua_pushstring(L, buf);
  return 1;
}

static int time_format(lua_State *L) {
  double t;
  if (lua_isnoneornil(L, 1)) {
    uv_timeval64_t tv;
    uv_gettimeofday(&tv);
    t = (double)tv.tv_sec;
  } else {
    t = luaL_checknumber(L, 1);
  }
  const char *fmt = luaL_optstring(L, 2, "%Y-%m-%dT%H:%M:%SZ");
  time_t secs = (time_t)floor(t);
  struct tm tm;
  if (gmtime_r(&secs, &tm) == NULL)
    return luaL_argerror(L, 1, "time out of range");
  char buf[256];
  size_t n = strftime(buf, sizeof buf, fmt, &tm);
  if (n == 0 && fmt[0] != '\0')
    return luaL_argerror(L, 2, "format gives an empty or too long result");
  lua_pushlstring(L, buf, n);
  return 1;
}

static const luaL_Reg time_funcs[] = {
    {"now", time_now},
    {"monotonic", time_monotonic},
    {"parse_duration", time_parse_duration},
    {"format_duration", time_format_duration},
    {"format", time_format},
    {NULL, NULL},
};

int luaopen_tug_time(lua_State *L) {
  luaL_newlib(L, time_funcs);
  return 1;
}
