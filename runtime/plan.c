/*
 * plan.c: plan mode. While `tug plan` runs, bindings that would change the world record
 * what they would do instead of doing it. Records collect in a registry list that the
 * engine takes after each step. Lua sees this as tug.plan:
 *
 *   tug.plan.active()                       true in plan mode
 *   tug.plan.record(module, summary [, detail])
 *   tug.plan.set(on)                        the engine switches plan mode on and off
 *   tug.plan.take()                         the records so far, as a list; clears it
 */
#include <string.h>

#include "host.h"
#include "tug.h"

#define RECORDS "tug.plan.records"

static int active;

int tug_plan_active(void) { return active; }

void tug_plan_record(lua_State *L, const char *module, const char *summary, const char *detail) {
  size_t len;
  luaL_checkstack(L, 4, NULL);
  if (lua_getfield(L, LUA_REGISTRYINDEX, RECORDS) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, RECORDS);
  }
  lua_createtable(L, 0, 3);
  lua_pushstring(L, module);
  lua_setfield(L, -2, "module");
  tug_redact_push(L, summary, strlen(summary), &len);
  lua_setfield(L, -2, "summary");
  if (detail) {
    tug_redact_push(L, detail, strlen(detail), &len);
    lua_setfield(L, -2, "detail");
  }
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  lua_pop(L, 1);
}

static int plan_active(lua_State *L) {
  lua_pushboolean(L, active);
  return 1;
}

static int plan_record(lua_State *L) {
  const char *module = luaL_checkstring(L, 1);
  const char *summary = luaL_checkstring(L, 2);
  const char *detail = luaL_optstring(L, 3, NULL);
  tug_plan_record(L, module, summary, detail);
  return 0;
}

static int plan_set(lua_State *L) {
  active = lua_toboolean(L, 1);
  return 0;
}

static int plan_take(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, RECORDS) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
  }
  lua_pushnil(L);
  lua_setfield(L, LUA_REGISTRYINDEX, RECORDS);
  return 1;
}

static const luaL_Reg plan_funcs[] = {
    {"active", plan_active},
    {"record", plan_record},
    {"set", plan_set},
    {"take", plan_take},
    {NULL, NULL},
};

void host_open_plan(lua_State *L) { luaL_newlib(L, plan_funcs); }
