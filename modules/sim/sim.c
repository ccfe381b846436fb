/*
 * sim.c: the native half of the cluster simulator (sim.core): the one mechanism the Lua
 * model needs that is hot enough for C.
 *
 *   core.fnv32a(text)      the 32-bit FNV-1a hash Kubernetes uses for pod-template-hash.
 *
 * (Watch streams and the controller's clock wait on task.event, from the task module.)
 */
#include <stdint.h>

#include "tug.h"

/* fnv32a(text) -> integer: FNV-1a over the bytes of text, as Go's hash/fnv New32a. */
static int sim_fnv32a(lua_State *L) {
  size_t len;
  const unsigned char *p = (const unsigned char *)luaL_checklstring(L, 1, &len);
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= 16777619u;
  }
  lua_pushinteger(L, (lua_Integer)h);
  return 1;
}

static const luaL_Reg sim_functions[] = {
    {"fnv32a", sim_fnv32a},
    {NULL, NULL},
};

int luaopen_tug_sim(lua_State *L) {
  luaL_newlib(L, sim_functions);
  return 1;
}
