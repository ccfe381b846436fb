/*
 * http_internal.h: what the parts of the http module share. http.c is the entry point
 * (http.core); client.c is the libcurl client on the loop; server.c the HTTP/1.1 server.
 */
#ifndef TUG_HTTP_INTERNAL_H
#define TUG_HTTP_INTERNAL_H

#include "tug.h"

/* Each adds its functions to the table at index t. */
void http_client_register(lua_State *L, int t);
void http_server_register(lua_State *L, int t);

#endif
