/*
 * main.c: the tug command line. Parses the command, builds the Lua state (host.c) and
 * runs the chosen Lua entry point as the main task on the loop.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "host.h"

static int usage_error(const char *fmt, const char *arg) {
  fputs("tug: ", stderr);
  fprintf(stderr, fmt, arg);
  fputs("\nrun 'tug help' for usage\n", stderr);
  return EXIT_USAGE;
}

/* Pushes a table like lua.c's `arg`: arg[0] = name, arg[1..] = argv[first..]. */
static void push_arg_table(lua_State *L, const char *name, char **argv, int first, int argc) {
  lua_createtable(L, argc - first, 1);
  lua_pushstring(L, name);
  lua_rawseti(L, -2, 0);
  for (int i = first; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - first + 1);
  }
  lua_setglobal(L, "arg");
}

/* Pushes argv[first..] as the main chunk's varargs; returns their count. */
static int push_args(lua_State *L, char **argv, int first, int argc) {
  luaL_checkstack(L, argc - first, "too many arguments");
  for (int i = first; i < argc; i++)
    lua_pushstring(L, argv[i]);
  return argc - first;
}

static int cmd_lua(int argc, char **argv) {
  if (argc < 3)
    return usage_error("%s", "'tug lua' needs a SCRIPT, '-e CODE' or '-'");
  lua_State *L = host_open();
  int first, rc;
  if (strcmp(argv[2], "-e") == 0) {
    if (argc < 4) {
      lua_close(L);
      return usage_error("%s", "'tug lua -e' needs a chunk of code");
    }
    rc = luaL_loadbufferx(L, argv[3], strlen(argv[3]), "=(command line)", "t");
    push_arg_table(L, "-e", argv, 4, argc);
    first = 4;
  } else {
    const char *script = strcmp(argv[2], "-") == 0 ? NULL : argv[2];
    rc = luaL_loadfilex(L, script, "t");
    push_arg_table(L, argv[2], argv, 3, argc);
    first = 3;
  }
  if (rc != LUA_OK) {
    fprintf(stderr, "tug: %s\n", lua_tostring(L, -1));
    lua_close(L);
    return EXIT_FAILED;
  }
  return host_run_main(L, push_args(L, argv, first, argc), 0);
}

static int cmd_test(int argc, char **argv) {
  lua_State *L = host_open();
  host_load_script(L, "tug.test");
  push_arg_table(L, "tug test", argv, 2, argc);
  return host_run_main(L, push_args(L, argv, 2, argc), 0);
}

/* The playbook commands are Lua (runtime/lua/cli.lua); it returns the exit code. */
static int cmd_engine(int argc, char **argv) {
  lua_State *L = host_open();
  host_load_script(L, "tug.cli");
  push_arg_table(L, "tug", argv, 1, argc);
  return host_run_main(L, push_args(L, argv, 1, argc), 1);
}

/* The help text is Lua's too (runtime/lua/help.lua): `tug help [COMMAND|--man]`. */
static const char *const engine_commands[] = {"list",       "describe",   "check",  "plan", "run",
                                              "runs",       "show",       "resume", "sim",  "help",
                                              "completion", "__complete", "init",   NULL};

static int is_help_flag(const char *arg) {
  return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0;
}

/* `tug lua --help`, `tug test --help`, `tug --help`: the same as `tug help [COMMAND]`. */
static int cmd_help(const char *command) {
  char *argv[] = {"tug", "help", (char *)command, NULL};
  return cmd_engine(command ? 3 : 2, argv);
}

int main(int argc, char **argv) {
  /* Writing to a child or a socket whose reader is gone must fail with EPIPE, not kill
     tug. Children start with the default disposition again (libuv resets it). */
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2)
    return usage_error("%s", "no command given");
  const char *cmd = argv[1];
  if (is_help_flag(cmd))
    return cmd_help(NULL);
  if ((strcmp(cmd, "lua") == 0 || strcmp(cmd, "test") == 0) && argc == 3 && is_help_flag(argv[2]))
    return cmd_help(cmd);
  if (strcmp(cmd, "lua") == 0)
    return cmd_lua(argc, argv);
  if (strcmp(cmd, "test") == 0)
    return cmd_test(argc, argv);
  for (const char *const *c = engine_commands; *c; c++)
    if (strcmp(cmd, *c) == 0)
      return cmd_engine(argc, argv);
  if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
    printf("tug %s (%s, libuv %s)\n", TUG_VERSION, LUA_RELEASE, uv_version_string());
    return EXIT_OK;
  }
  return usage_error("unknown command '%s'", cmd);
}
