/*
 * main.c: the tug command line. Parses the command, builds the Lua state (host.c) and
 * runs the chosen Lua entry point as the main task on the loop.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "host.h"

static const char usage[] =
    "usage: tug <command> [arguments]\n"
    "\n"
    "playbooks (in ./playbooks, TUG_PATH=DIR:DIR or --playbooks DIR; see playbooks/README.md):\n"
    "  list                     the playbooks: name, description, file\n"
    "  describe NAME            its params (types, defaults) and steps (which can be undone)\n"
    "  check [PATH...]          load every playbook and environment; report every problem\n"
    "  plan NAME [key=value...] show each step and the changes it would make; changes nothing\n"
    "  run NAME [key=value...]  run it; on a failure, undo the completed steps in reverse\n"
    "      --env E              environment (environments/E.yaml; default local)\n"
    "      --step               ask before every step: run, skip or abort (on-call mode)\n"
    "      --no-step            run a step-by-step runbook straight through\n"
    "      --yes                answer yes to confirmations (CI)\n"
    "      --from STEP          start at this step (name or number)\n"
    "      --tags T1,T2         run only the steps with one of these tags\n"
    "      --no-undo            on a failure, stop without undoing\n"
    "      --output tty|plain|json   live view, timestamped lines, or one JSON event a line\n"
    "      --junit FILE         write a JUnit report, one testcase per step\n"
    "      --break-lock         take the lock from a holder that died\n"
    "      --every DURATION     run it again every DURATION (30s, 5m) until Ctrl-C or SIGTERM:\n"
    "                           each run whole (own run id, journal, lock); a failed run does\n"
    "                           not stop the loop, a failed rollback does (synthetic monitoring)\n"
    "      --metrics-listen ADDR:PORT\n"
    "                           with --every: serve the runs' results as Prometheus metrics on\n"
    "                           http://ADDR:PORT/metrics (tug_runs_total, tug_run_success, ...)\n"
    "  runs                     the journalled runs, newest first (.tug/runs)\n"
    "  show RUN_ID              one run: steps, results, decisions, saved state\n"
    "  resume RUN_ID            continue a run that died, from its first unfinished step\n"
    "  sim [--port N] [--scenario FILE] [--kubeconfig FILE]\n"
    "                           serve the simulated Kubernetes cluster (the local environment's)\n"
    "                           until Ctrl-C; kubectl works against it\n"
    "\n"
    "scripts and tests:\n"
    "  lua SCRIPT [ARGS...]     run a Lua script with every tug module loaded; the event loop\n"
    "                           runs until all work is done (ARGS land in `arg` and `...`)\n"
    "  lua -e CODE [ARGS...]    run a chunk of Lua given on the command line\n"
    "  lua - [ARGS...]          run Lua read from standard input\n"
    "  test [BUSTED-OPTIONS] [PATH...]\n"
    "                           run busted specs inside tug (default path: spec/); ends with\n"
    "                           a line 'N passed, N failed'\n"
    "  help                     show this text\n"
    "  version, --version       show the version\n"
    "\n"
    "modules (globals in scripts and playbooks, also available through require):\n"
    "  task   spawn, parallel, sleep, timeout: tasks on one event loop\n"
    "  time   now, monotonic, parse_duration, format_duration, format\n"
    "  json   decode, encode, null, array, object (faithful to Kubernetes objects)\n"
    "  yaml   decode, decode_all, load_file, encode (libyaml)\n"
    "  exec   run and spawn programs from an argv, with timeouts and streaming\n"
    "  log    levelled, structured logging and secret redaction\n"
    "  http   HTTP client (libcurl) and server on the loop\n"
    "  ws     WebSocket client and server (libwebsockets) on the loop\n"
    "  health health checks, load checks with latency percentiles, gates\n"
    "  k8s    Kubernetes: kubeconfig, REST, watch, kubectl's verbs, exec, leases\n"
    "  sim    the simulated Kubernetes cluster\n"
    "  aws    SigV4, S3 (sync), CloudFront, Secrets Manager, ECR\n"
    "  metrics, analysis, notify   metric queries, promotion gates, notifications\n"
    "  pg     PostgreSQL: queries, transactions, advisory locks, health, backups, migrations\n"
    "  each module's reference page is modules/NAME/README.md in the source tree\n"
    "\n"
    "exit codes:\n"
    "  0    success (a run succeeded, a plan was made)\n"
    "  1    failure: a run failed and was rolled back (or had nothing to undo), a Lua error\n"
    "       (traceback on stderr), a failing test, a task that failed with nobody waiting\n"
    "  2    usage or validation error: unknown command, bad param, broken playbook or\n"
    "       environment (nothing was run)\n"
    "  3    the playbook's lock is held by another run (the holder is named)\n"
    "  4    aborted by the user: Ctrl-C or SIGTERM (after rolling back), declined confirmation,\n"
    "       --step abort (with --every: a run interrupted and rolled back ends the loop)\n"
    "  5    rollback failed: an undo failed, a human must look (--every stops there too)\n"
    "  130  Ctrl-C or SIGTERM with no run going: a script (tug lua; every task was cancelled),\n"
    "       a command still loading playbooks or environments (nothing ran), --every between\n"
    "       runs; or one Ctrl-C more than tug takes (it aborts at once). tug answers within\n"
    "       2 s, even in a Lua loop that never waits\n";

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

static const char *const engine_commands[] = {"list", "describe", "check",  "plan", "run",
                                              "runs", "show",     "resume", "sim",  NULL};

int main(int argc, char **argv) {
  /* Writing to a child or a socket whose reader is gone must fail with EPIPE, not kill
     tug. Children start with the default disposition again (libuv resets it). */
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2)
    return usage_error("%s", "no command given");
  const char *cmd = argv[1];
  if (strcmp(cmd, "lua") == 0)
    return cmd_lua(argc, argv);
  if (strcmp(cmd, "test") == 0)
    return cmd_test(argc, argv);
  for (const char *const *c = engine_commands; *c; c++)
    if (strcmp(cmd, *c) == 0)
      return cmd_engine(argc, argv);
  if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
    fputs(usage, stdout);
    return EXIT_OK;
  }
  if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
    printf("tug %s (%s, libuv %s)\n", TUG_VERSION, LUA_RELEASE, uv_version_string());
    return EXIT_OK;
  }
  return usage_error("unknown command '%s'", cmd);
}
