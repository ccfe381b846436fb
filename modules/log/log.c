/*
 * log.c: the mechanism under the log module: the secret registry (runtime/redact.c)
 * and redacted writes to the terminal. The levels, fields and formats are in log.lua.
 *
 *   core.secret(value)                registers value as secret; returns it
 *   core.redact(text)                 text with every secret replaced by "***" (text itself
 *                                     when there is nothing to mask)
 *   core.write(stream, text [, flush]) writes to "stdout" or "stderr", redacted, and flushes
 *                                     unless flush is false; true, or nil, message, errno
 *   core.flush()                      writes out what stdout and stderr hold back (the
 *                                     start of a secret, maybe), as before reading stdin
 */
#include <errno.h>
#include <string.h>

#include "tug.h"

static int log_secret(lua_State *L) {
  luaL_argexpected(L, lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER, 1, "string");
  size_t len;
  const char *s = lua_tolstring(L, 1, &len);
  tug_secret_add(s, len);
  lua_settop(L, 1);
  return 1;
}

static int log_redact(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  size_t out_len;
  const char *out = tug_redact_push(L, s, len, &out_len);
  if (out_len == len && memcmp(out, s, len) == 0)
    lua_settop(L, 1);
  return 1;
}

static int log_write(lua_State *L) {
  static const char *const streams[] = {"stdout", "stderr", NULL};
  FILE *f = luaL_checkoption(L, 1, NULL, streams) == 0 ? stdout : stderr;
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  int flush = lua_isnoneornil(L, 3) || lua_toboolean(L, 3);
  int rc = tug_redact_write(f, s, len);
  int saved = errno;
  if (flush && fflush(f) != 0 && rc == 0) {
    rc = -1;
    saved = errno;
  }
  errno = saved;
  return luaL_fileresult(L, rc == 0, NULL);
}

static int log_flush(lua_State *L) {
  (void)L;
  tug_redact_flush();
  return 0;
}

static const luaL_Reg log_funcs[] = {
    {"secret", log_secret}, {"redact", log_redact}, {"write", log_write},
    {"flush", log_flush},   {NULL, NULL},
};

int luaopen_tug_log(lua_State *L) {
  luaL_newlib(L, log_funcs);
  return 1;
}
