/*
 * http.c: the entry point of the http module's C half ("http.core"). The client lives in
 * client.c and the server in server.c; modules/http/http.lua is the public module.
 */
#include "http_internal.h"

int luaopen_tug_http(lua_State *L) {
  lua_newtable(L);
  int t = lua_gettop(L);
  http_client_register(L, t);
  http_server_register(L, t);
  return 1;
}
