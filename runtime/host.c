/*
 * host.c: the Lua host. Makes the one Lua state, preloads the native modules and the
 * Lua compiled into the binary, provides the values and errors that modules share
 * (tug.h), and runs the main chunk as the first task on the loop.
 */
#include "host.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "scheduler.h"

#define ERROR_MT "tug.error"

static uv_loop_t loop;
static lua_State *S_L; /* the main thread, for the main task's watcher */

/* ---- shared values ---- */

void tug_push_null(lua_State *L) { lua_pushlightuserdata(L, NULL); }

int tug_is_null(lua_State *L, int idx) {
  return lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == NULL;
}

void tug_mark_table(lua_State *L, int idx, const char *mt) {
  idx = lua_absindex(L, idx);
  luaL_getmetatable(L, mt);
  lua_setmetatable(L, idx);
}

enum tug_table_kind tug_table_kind(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (lua_getmetatable(L, idx)) {
    luaL_getmetatable(L, TUG_ARRAY_MT);
    int is_array = lua_rawequal(L, -1, -2);
    luaL_getmetatable(L, TUG_OBJECT_MT);
    int is_object = lua_rawequal(L, -1, -3);
    lua_pop(L, 3);
    if (is_array)
      return TUG_TABLE_ARRAY;
    if (is_object)
      return TUG_TABLE_OBJECT;
  }
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
  lua_Integer count = 0;
  int other = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1 && lua_tointeger(L, -1) <= n)
      count++;
    else
      other = 1;
  }
  if (count == 0 && !other)
    return TUG_TABLE_EMPTY;
  if (other)
    return count ? TUG_TABLE_MIXED : TUG_TABLE_OBJECT;
  return count == n ? TUG_TABLE_ARRAY : TUG_TABLE_MIXED;
}

/* ---- structured errors ---- */

static int error_tostring(lua_State *L) {
  lua_getfield(L, 1, "message");
  if (!lua_isstring(L, -1)) {
    lua_getfield(L, 1, "kind");
    lua_pushfstring(L, "%s error", lua_isstring(L, -1) ? lua_tostring(L, -1) : "unknown");
  }
  return 1;
}

void tug_push_error(lua_State *L, const char *kind, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  const char *msg = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  size_t len;
  tug_redact_push(L, msg, strlen(msg), &len);
  lua_createtable(L, 0, 2);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_rotate(L, -2, 1); /* msg, redacted, table -> msg, table, redacted */
  lua_setfield(L, -2, "message");
  luaL_setmetatable(L, ERROR_MT);
  lua_remove(L, -2);
}

int tug_raise(lua_State *L, const char *kind, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  tug_push_error(L, kind, "%s", lua_tostring(L, -1));
  return lua_error(L);
}

/* error.new(kind, message [, fields]) for the Lua side: the same object C raises. */
static int error_new(lua_State *L) {
  const char *kind = luaL_checkstring(L, 1);
  const char *msg = luaL_checkstring(L, 2);
  if (!lua_isnoneornil(L, 3))
    luaL_checktype(L, 3, LUA_TTABLE);
  tug_push_error(L, kind, "%s", msg);
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_settable(L, -4);
    }
  }
  return 1;
}

/* print, but through redaction. */
static int host_print(lua_State *L) {
  int n = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 1; i <= n; i++) {
    if (i > 1)
      luaL_addchar(&b, '\t');
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_addchar(&b, '\n');
  luaL_pushresult(&b);
  size_t len;
  const char *s = lua_tolstring(L, -1, &len);
  tug_redact_write(stdout, s, len);
  fflush(stdout);
  return 0;
}

/* tug.on_interrupt(fn): Ctrl-C and SIGTERM call fn(count) in a new task instead of
   cancelling every task; nil restores the default. The engine rolls back this way. */
static int host_on_interrupt(lua_State *L) {
  if (!lua_isnoneornil(L, 1))
    luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  sched_set_interrupt_handler(L);
  return 0;
}

/* tug.on_hangup(fn): when the terminal goes (SIGHUP), tug goes on without it and calls
   fn() in a new task; nil restores the default (SIGHUP ends tug as SIGTERM does). */
static int host_on_hangup(lua_State *L) {
  if (!lua_isnoneornil(L, 1))
    luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  sched_set_hangup_handler(L);
  return 0;
}

/* tug.interrupted() -> how many Ctrl-C or SIGTERM the loop has seen. */
static int host_interrupted(lua_State *L) {
  lua_pushinteger(L, sched_interrupted());
  return 1;
}

/* tug.scope_new() -> scope; tug.scope_set(scope) -> the previous one; tug.scope_close(scope)
   -> { "what was still open", ... }: the engine makes everything a run's steps start belong
   to the run (scheduler.c); scope 0 starts what must outlive it (the embedded simulator).
   tug.scope() -> the current task's scope. Modules that start what is not a task (exec's
   processes) add a closer to tug.scope_closers: closer(scope) -> { "what it closed", ... }. */
static int host_scope_new(lua_State *L) {
  lua_pushinteger(L, sched_scope_new());
  return 1;
}

static int check_scope(lua_State *L, int arg) {
  lua_Integer scope = luaL_checkinteger(L, arg);
  luaL_argcheck(L, scope >= 0 && scope <= INT32_MAX, arg, "not a scope");
  return (int)scope;
}

static int host_scope_set(lua_State *L) {
  lua_pushinteger(L, sched_scope_set(check_scope(L, 1)));
  return 1;
}

static int host_scope_close(lua_State *L) { return sched_scope_close(L, check_scope(L, 1)); }

static int host_scope(lua_State *L) {
  lua_pushinteger(L, sched_scope_current());
  return 1;
}

static const luaL_Reg host_functions[] = {
    {"on_interrupt", host_on_interrupt},
    {"on_hangup", host_on_hangup},
    {"interrupted", host_interrupted},
    {"scope_new", host_scope_new},
    {"scope_set", host_scope_set},
    {"scope_close", host_scope_close},
    {"scope", host_scope},
    {NULL, NULL},
};

/* ---- preloading ---- */

static const struct host_script *find_script(const char *name) {
  for (const struct host_script *s = host_scripts; s->name; s++)
    if (strcmp(s->name, name) == 0)
      return s;
  return NULL;
}

void host_load_script(lua_State *L, const char *name) {
  const struct host_script *s = find_script(name);
  if (s == NULL)
    luaL_error(L, "no embedded script named '%s'", name);
  lua_pushfstring(L, "@%s", s->path);
  int rc = luaL_loadbufferx(L, s->code, s->len, lua_tostring(L, -1), "t");
  lua_remove(L, -2);
  if (rc != LUA_OK)
    lua_error(L);
}

static int load_embedded(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  host_load_script(L, name);
  lua_pushvalue(L, 1);
  lua_call(L, 1, 1);
  return 1;
}

static void preload(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_newtable(L); /* tug.modules: the public module names, for the lazy globals */
  int n = 0;
  for (const struct host_native *m = host_natives; m->name; m++) {
    int has_lua = find_script(m->name) != NULL;
    if (has_lua) {
      lua_pushfstring(L, "%s.core", m->name);
      lua_pushcfunction(L, m->open);
      lua_settable(L, -4);
    } else {
      lua_pushcfunction(L, m->open);
      lua_setfield(L, -3, m->name);
      lua_pushstring(L, m->name);
      lua_rawseti(L, -2, ++n);
    }
  }
  for (const struct host_script *s = host_scripts; s->name; s++) {
    lua_pushcfunction(L, load_embedded);
    lua_setfield(L, -3, s->name);
    if (strncmp(s->name, "tug.", 4) != 0 && strchr(s->name, '.') == NULL) {
      lua_pushstring(L, s->name);
      lua_rawseti(L, -2, ++n);
    }
  }
  lua_newtable(L); /* the tug table */
  lua_insert(L, -2);
  lua_setfield(L, -2, "modules");
  lua_pushliteral(L, TUG_VERSION);
  lua_setfield(L, -2, "version");
  char exe[4096];
  size_t exe_len = sizeof exe;
  if (uv_exepath(exe, &exe_len) == 0) {
    lua_pushlstring(L, exe, exe_len);
    lua_setfield(L, -2, "executable"); /* specs run this very binary as a child */
  }
  lua_newtable(L);
  lua_pushcfunction(L, error_new);
  lua_setfield(L, -2, "new");
  lua_setfield(L, -2, "error");
  host_open_plan(L);
  lua_setfield(L, -2, "plan");
  host_open_sys(L);
  lua_setfield(L, -2, "sys");
  luaL_setfuncs(L, host_functions, 0);
  lua_newtable(L);
  lua_setfield(L, -2, "scope_closers");
  lua_setglobal(L, "tug");
  lua_pop(L, 1);
}

static int open_all(lua_State *L) {
  luaL_openlibs(L);
  luaL_newmetatable(L, TUG_ARRAY_MT);
  lua_pushliteral(L, "array");
  lua_setfield(L, -2, "__name");
  luaL_newmetatable(L, TUG_OBJECT_MT);
  lua_pushliteral(L, "object");
  lua_setfield(L, -2, "__name");
  luaL_newmetatable(L, ERROR_MT);
  lua_pushcfunction(L, error_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 3);
  lua_pushcfunction(L, host_print);
  lua_setglobal(L, "print");
  preload(L);
  host_load_script(L, "tug.prelude");
  lua_call(L, 0, 0);
  return 0;
}

static int on_panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "tug: unrecoverable Lua error: %s\n", msg ? msg : "(not a string)");
  return 0; /* abort() follows */
}

lua_State *host_open(void) {
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    fputs("tug: out of memory\n", stderr);
    exit(EXIT_FAILED);
  }
  lua_atpanic(L, on_panic);
  uv_loop_init(&loop);
  sched_init(L, &loop);
  lua_pushcfunction(L, open_all);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
    fprintf(stderr, "tug: cannot start: %s\n", lua_tostring(L, -1));
    exit(EXIT_FAILED);
  }
  return L;
}

/* ---- running ---- */

static int main_failed;
static int main_exit_code = -1; /* set when the main chunk returns an exit code */

static void on_main_done(sched_watch *w, tug_task *t) {
  (void)w;
  if (sched_failed(t)) {
    main_failed = 1;
    if (!(sched_cancelled(t) && sched_interrupted())) /* Ctrl-C already said so: no traceback */
      sched_report(t);
    sched_cancel_all();
  } else if (sched_push_results(S_L, t, 1) == 1) {
    if (lua_isinteger(S_L, -1))
      main_exit_code = (int)lua_tointeger(S_L, -1);
    lua_pop(S_L, 1);
  }
}

static int run_loop(lua_State *L) {
  (void)L;
  lua_pushinteger(L, sched_run());
  return 1;
}

int host_run_main(lua_State *L, int nargs, int returns_exit_code) {
  static sched_watch main_watch;
  S_L = L;
  tug_task *main_task = sched_spawn(L, nargs);
  sched_observe(main_task);
  main_watch.notify = on_main_done;
  sched_watch_add(&main_watch, main_task);
  lua_pop(L, 1);

  int code = EXIT_OK;
  lua_pushcfunction(L, run_loop);
  if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "tug: internal error in the scheduler: %s\n", lua_tostring(L, -1));
    code = EXIT_FAILED;
  } else if (lua_tointeger(L, -1) != 0) {
    fputs("tug: some tasks still wait on something that can never finish\n", stderr);
    code = EXIT_FAILED;
  }
  lua_pop(L, 1);
  if (code != EXIT_OK)
    ;
  else if (returns_exit_code && main_exit_code >= 0 && !main_failed)
    code = main_exit_code;
  else if (sched_interrupted())
    code = EXIT_INTERRUPTED;
  else if (main_failed || sched_unobserved_failures() > 0)
    code = EXIT_FAILED;
  fflush(stdout);
  lua_close(L);
  sched_close();
  uv_loop_close(&loop);
  tug_secrets_free();
  return code;
}
