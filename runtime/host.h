/*
 * host.h: the Lua host. Builds the one Lua state with every module preloaded and the
 * prelude run, and runs chunks as tasks. Used by main.c.
 */
#ifndef TUG_HOST_H
#define TUG_HOST_H

#include "tug.h"

/* Written by the build (build/embedded.c) from modules/ and runtime/lua/. */
struct host_native {
  const char *name;
  lua_CFunction open;
};
struct host_script {
  const char *name; /* module name, e.g. "exec" or "tug.test" */
  const char *path; /* source path in the tree, used as the chunk name */
  const char *code;
  size_t len;
};
extern const struct host_native host_natives[];
extern const struct host_script host_scripts[];

/* Exit codes, listed in `tug help`. */
enum {
  EXIT_OK = 0,
  EXIT_FAILED = 1, /* a Lua error, a failing test, an unhandled task failure */
  EXIT_USAGE = 2,  /* bad command line */
  EXIT_INTERRUPTED = 130,
};

lua_State *host_open(void);
/* Runs the loop until all work is done, then closes the state. Returns an exit code.
   Expects the main chunk and its arguments on the stack (fn, args...). When
   returns_exit_code is set, an integer the main chunk returns is the exit code. */
int host_run_main(lua_State *L, int nargs, int returns_exit_code);
/* Pushes the tug.plan table (runtime/plan.c). */
void host_open_plan(lua_State *L);
/* Pushes the tug.sys table (runtime/sys.c). */
void host_open_sys(lua_State *L);
/* Adds lock_create and lock_probe to the tug.sys table on top (runtime/lockfile.c). */
void host_open_lockfile(lua_State *L);
/* Frees the secret registry at exit (runtime/redact.c). */
void tug_secrets_free(void);
/* Loads an embedded script by module name; pushes the chunk or raises. */
void host_load_script(lua_State *L, const char *name);

#endif
