/*
 * exec.c: child processes for tug (the C half of the exec module, preloaded as "exec.core").
 *
 * core.spawn(argv, opts) starts a program from an argv array (never through a shell) and
 * returns an exec.process userdata. The userdata only points at a malloc'd exec_proc that owns
 * the libuv handles: the process, the stdin/stdout/stderr pipes and two timers (the timeout and
 * the grace period between TERM and KILL). The struct frees itself once every handle's close
 * callback has run, no Lua userdata points at it and no task waits on it. Callbacks only record
 * what happened (output, exit status) in C memory; proc:wait() and proc:next_lines() push it
 * into Lua when the task resumes. The child runs in its own session and process group so that
 * kill, timeout and cancellation reach the whole tree a shell command may have started.
 * exec.lua builds the public API (exec.run, on_line, check) over this mechanism.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* kill, strcasecmp, SIGWINCH and friends */
#endif

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "tug.h"

#define EXEC_PROCESS_MT "exec.process"
#define EXEC_READ_SIZE (32 * 1024)
#define EXEC_MAX_OUTPUT_DEFAULT (16 * 1024 * 1024)
#define EXEC_KILL_GRACE_DEFAULT 5.0
/* A line longer than this reaches on_line in pieces. */
#define EXEC_MAX_LINE (1024 * 1024)
/* Buffered lines beyond this stop reading until the task takes them (the child then blocks). */
#define EXEC_QUEUE_HIGH (1024 * 1024)

extern char **environ;

enum { EXEC_STDIN, EXEC_STDOUT, EXEC_STDERR };
enum { EXEC_WAIT_EXIT, EXEC_WAIT_LINES };

typedef struct exec_proc exec_proc;

typedef struct exec_op {
  tug_op base; /* first member: the runtime sees a tug_op */
  exec_proc *proc;
  int kind;
  int signalled; /* tug_op_done already called */
} exec_op;

struct exec_proc {
  uv_process_t process;
  uv_pipe_t pipes[3];
  uv_timer_t timeout_timer;
  uv_timer_t grace_timer;
  uv_write_t stdin_req;
  char *stdin_data;

  /* Lifetime: freed when all three are zero/NULL (see proc_maybe_free). */
  int handles_open; /* initialized handles whose close callback has not run yet */
  int attached;     /* a Lua userdata points here */
  int pinned;       /* a resume is reading the results */
  exec_op *waiter;  /* the task waiting on this process, if any */

  /* Which handles are initialized and not yet closing. */
  int process_open, pipe_open[3], timeout_open, grace_open;

  int pid;
  int exited;   /* the exit callback ran */
  int done;     /* exited and both output pipes finished: the result is final */
  int stopping; /* timeout or cancellation: TERM sent, KILL pending */
  int killed;   /* KILL sent to the group */
  int timed_out;
  int64_t exit_status;
  int term_signal;
  uint64_t start_ns, end_ns;
  uint64_t grace_ms;

  size_t max_output;
  int capture;
  int streaming; /* spawned with lines = true */
  int lines;     /* still buffering lines (wait() ends it) */
  int paused;    /* reading stopped because too many lines wait for the task */
  int truncated;
  tug_buf out[3];     /* captured stdout and stderr (index 1 and 2) */
  tug_buf partial[3]; /* the incomplete last line of each stream, when lines is on */
  int split[3];       /* the last piece queued was cut at EXEC_MAX_LINE, not at a newline */
  tug_buf queue;      /* complete lines: records of stream byte, size_t length, bytes */
  char read_buf[3][EXEC_READ_SIZE];
};

typedef struct exec_handle {
  exec_proc *proc; /* NULL once closed */
  int pid;
} exec_handle;

/* ---- signals ---- */

static const struct {
  const char *name;
  int number;
} exec_signals[] = {
    {"HUP", SIGHUP},   {"INT", SIGINT},     {"QUIT", SIGQUIT},     {"ILL", SIGILL},
    {"TRAP", SIGTRAP}, {"ABRT", SIGABRT},   {"BUS", SIGBUS},       {"FPE", SIGFPE},
    {"KILL", SIGKILL}, {"USR1", SIGUSR1},   {"SEGV", SIGSEGV},     {"USR2", SIGUSR2},
    {"PIPE", SIGPIPE}, {"ALRM", SIGALRM},   {"TERM", SIGTERM},     {"CHLD", SIGCHLD},
    {"CONT", SIGCONT}, {"STOP", SIGSTOP},   {"TSTP", SIGTSTP},     {"TTIN", SIGTTIN},
    {"TTOU", SIGTTOU}, {"URG", SIGURG},     {"XCPU", SIGXCPU},     {"XFSZ", SIGXFSZ},
    {"PROF", SIGPROF}, {"WINCH", SIGWINCH}, {"VTALRM", SIGVTALRM}, {"SYS", SIGSYS},
};

#define EXEC_NSIGNALS (sizeof exec_signals / sizeof exec_signals[0])

static const char *signal_name(int number) {
  for (size_t i = 0; i < EXEC_NSIGNALS; i++)
    if (exec_signals[i].number == number)
      return exec_signals[i].name;
  return NULL;
}

static void push_signal(lua_State *L, int number) {
  const char *name = signal_name(number);
  if (name)
    lua_pushstring(L, name);
  else
    lua_pushinteger(L, number);
}

/* Accepts "TERM", "SIGTERM" (any case) or a number. */
static int check_signal(lua_State *L, int arg, int def) {
  if (lua_isnoneornil(L, arg))
    return def;
  if (lua_type(L, arg) == LUA_TNUMBER) {
    lua_Integer n = luaL_checkinteger(L, arg);
    luaL_argcheck(L, n > 0 && n < 65, arg, "not a signal number");
    return (int)n;
  }
  const char *s = luaL_checkstring(L, arg);
  const char *name = strncasecmp(s, "SIG", 3) == 0 ? s + 3 : s;
  for (size_t i = 0; i < EXEC_NSIGNALS; i++)
    if (strcasecmp(name, exec_signals[i].name) == 0)
      return exec_signals[i].number;
  return luaL_argerror(L, arg, lua_pushfstring(L, "unknown signal '%s'", s));
}

/* ---- lifetime ---- */

static void proc_maybe_free(exec_proc *p) {
  if (p->handles_open > 0 || p->attached || p->pinned || p->waiter)
    return;
  for (int i = 0; i < 3; i++) {
    tug_buf_free(&p->out[i]);
    tug_buf_free(&p->partial[i]);
  }
  tug_buf_free(&p->queue);
  free(p->stdin_data);
  free(p);
}

static void proc_on_close(uv_handle_t *handle) {
  exec_proc *p = handle->data;
  p->handles_open--;
  proc_maybe_free(p);
}

static void proc_close(uv_handle_t *handle, int *open) {
  if (!*open)
    return;
  *open = 0;
  uv_close(handle, proc_on_close);
}

/* Wakes the waiting task once what it waits for is there. */
static void proc_notify(exec_proc *p) {
  exec_op *op = p->waiter;
  if (!op || op->signalled)
    return;
  if (op->kind == EXEC_WAIT_EXIT ? p->done : (p->queue.len > 0 || p->done)) {
    op->signalled = 1;
    tug_op_done(&op->base);
  }
}

/* Signals the child's process group (the child is a session leader, so its pgid is its pid);
   falls back to the child alone if the group is already gone. */
static int proc_signal(exec_proc *p, int sig) {
  if (kill(-p->pid, sig) == 0)
    return 0;
  if (!p->exited && uv_process_kill(&p->process, sig) == 0)
    return 0;
  return -1;
}

static void proc_read_start(exec_proc *p);

/* ---- output: capture and lines ---- */

static void queue_line(exec_proc *p, int stream, const char *s, size_t n) {
  if (n > 0 && s[n - 1] == '\r')
    n--;
  unsigned char tag = (unsigned char)stream;
  if (tug_buf_reserve(&p->queue, 1 + sizeof n + n) != 0) {
    p->truncated = 1;
    return;
  }
  tug_buf_append(&p->queue, &tag, 1);
  tug_buf_append(&p->queue, &n, sizeof n);
  tug_buf_append(&p->queue, s, n);
}

static void split_lines(exec_proc *p, int stream, const char *s, size_t n) {
  tug_buf *partial = &p->partial[stream];
  while (n > 0) {
    const char *nl = memchr(s, '\n', n);
    size_t take = nl ? (size_t)(nl - s) : n;
    if (partial->len + take >= EXEC_MAX_LINE) {
      take = EXEC_MAX_LINE - partial->len;
      nl = NULL;
    }
    if (partial->len == 0 && nl) {
      /* a newline right after a cut ends the line already delivered */
      if (take > 0 || !p->split[stream])
        queue_line(p, stream, s, take);
      p->split[stream] = 0;
    } else {
      if (tug_buf_append(partial, s, take) != 0)
        p->truncated = 1;
      if (nl || partial->len >= EXEC_MAX_LINE) {
        queue_line(p, stream, partial->data, partial->len);
        p->split[stream] = !nl;
        partial->len = 0;
      }
    }
    if (nl)
      take++;
    s += take;
    n -= take;
  }
}

static void flush_partial(exec_proc *p, int stream) {
  tug_buf *partial = &p->partial[stream];
  if (p->lines && partial->len > 0)
    queue_line(p, stream, partial->data, partial->len);
  partial->len = 0;
}

static void proc_finish(exec_proc *p) {
  if (p->done || !p->exited || p->pipe_open[EXEC_STDOUT] || p->pipe_open[EXEC_STDERR])
    return;
  p->done = 1;
  proc_close((uv_handle_t *)&p->pipes[EXEC_STDIN], &p->pipe_open[EXEC_STDIN]);
  proc_close((uv_handle_t *)&p->timeout_timer, &p->timeout_open);
  /* After a TERM, something the child started may still live on in its group: the grace
     timer stays to KILL it. */
  if (!p->stopping || p->killed || kill(-p->pid, 0) != 0)
    proc_close((uv_handle_t *)&p->grace_timer, &p->grace_open);
  proc_notify(p);
}

static void proc_end_stream(exec_proc *p, int stream) {
  if (!p->pipe_open[stream])
    return;
  flush_partial(p, stream);
  proc_close((uv_handle_t *)&p->pipes[stream], &p->pipe_open[stream]);
}

/* Stops waiting for output: used when the child is gone but something it started still holds
   the pipes, or when nobody will read the output any more. */
static void proc_end_output(exec_proc *p) {
  proc_end_stream(p, EXEC_STDOUT);
  proc_end_stream(p, EXEC_STDERR);
  proc_finish(p);
  proc_notify(p);
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  exec_proc *p = handle->data;
  int stream = (uv_pipe_t *)handle == &p->pipes[EXEC_STDOUT] ? EXEC_STDOUT : EXEC_STDERR;
  (void)suggested;
  *buf = uv_buf_init(p->read_buf[stream], EXEC_READ_SIZE);
}

static void on_read(uv_stream_t *stream_handle, ssize_t nread, const uv_buf_t *buf) {
  exec_proc *p = stream_handle->data;
  int stream = (uv_pipe_t *)stream_handle == &p->pipes[EXEC_STDOUT] ? EXEC_STDOUT : EXEC_STDERR;
  if (nread < 0) {
    proc_end_stream(p, stream);
    proc_finish(p);
    proc_notify(p);
    return;
  }
  size_t n = (size_t)nread;
  if (p->capture) {
    tug_buf *out = &p->out[stream];
    size_t room = p->max_output - out->len;
    size_t take = n < room ? n : room;
    if (tug_buf_append(out, buf->base, take) != 0 || take < n)
      p->truncated = 1;
  }
  if (p->lines) {
    split_lines(p, stream, buf->base, n);
    if (p->queue.len >= EXEC_QUEUE_HIGH && !p->paused) {
      p->paused = 1;
      for (int i = EXEC_STDOUT; i <= EXEC_STDERR; i++)
        if (p->pipe_open[i])
          uv_read_stop((uv_stream_t *)&p->pipes[i]);
    }
  }
  proc_notify(p);
}

static void proc_read_start(exec_proc *p) {
  p->paused = 0;
  for (int i = EXEC_STDOUT; i <= EXEC_STDERR; i++)
    if (p->pipe_open[i])
      uv_read_start((uv_stream_t *)&p->pipes[i], on_alloc, on_read);
}

static void on_stdin_written(uv_write_t *req, int status) {
  exec_proc *p = req->data;
  (void)status; /* a child that does not read its stdin is not an error */
  free(p->stdin_data);
  p->stdin_data = NULL;
  proc_close((uv_handle_t *)&p->pipes[EXEC_STDIN], &p->pipe_open[EXEC_STDIN]);
}

/* ---- exit, timeout, termination ---- */

static void on_process_exit(uv_process_t *process, int64_t exit_status, int term_signal) {
  exec_proc *p = process->data;
  p->exited = 1;
  p->end_ns = uv_hrtime();
  p->exit_status = exit_status;
  p->term_signal = term_signal;
  proc_close((uv_handle_t *)&p->process, &p->process_open);
  proc_close((uv_handle_t *)&p->timeout_timer, &p->timeout_open);
  if (p->killed || (!p->attached && !p->waiter))
    proc_end_output(p);
  /* Otherwise output still flows from whatever the child left behind; when stopping, the grace
     timer ends it. */
  proc_finish(p);
}

static void on_grace_expired(uv_timer_t *timer) {
  exec_proc *p = timer->data;
  p->killed = 1;
  proc_signal(p, SIGKILL);
  if (p->exited)
    proc_end_output(p);
  if (p->done)
    proc_close((uv_handle_t *)&p->grace_timer, &p->grace_open);
}

/* TERM to the group now, KILL after the grace period (at once if the grace is zero). */
static void proc_stop(exec_proc *p) {
  if (p->done || p->stopping)
    return;
  p->stopping = 1;
  if (p->grace_ms == 0) {
    on_grace_expired(&p->grace_timer);
    return;
  }
  proc_signal(p, SIGTERM);
  uv_timer_start(&p->grace_timer, on_grace_expired, p->grace_ms, 0);
}

static void on_timeout(uv_timer_t *timer) {
  exec_proc *p = timer->data;
  p->timed_out = 1;
  proc_stop(p);
}

/* The Lua side lets go: kill what still runs and stop reading output nobody will see. A stop
   already under way (timeout, cancellation) keeps its TERM-then-KILL course. */
static void proc_detach(exec_proc *p) {
  p->attached = 0;
  if (!p->done) {
    if (!p->killed && !p->stopping) {
      p->killed = 1;
      proc_signal(p, SIGKILL);
    }
    if (!p->waiter && p->exited)
      proc_end_output(p);
  }
  proc_maybe_free(p);
}

/* ---- spawning ---- */

/* A bad argument to spawn: raised without a position, which exec.lua adds (the caller's line,
   not its own). */
static int usage_error(lua_State *L, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  return lua_error(L);
}

static void check_no_nul(lua_State *L, const char *s, size_t len, const char *what) {
  if (strlen(s) != len)
    usage_error(L, "exec: %s contains a NUL byte", what);
}

/* Pushes a userdata holding a NULL-terminated char* array of argv's strings (anchored by the
   argv table at index arg, which stays on the stack). */
static const char **check_argv(lua_State *L, int arg) {
  if (lua_type(L, arg) != LUA_TTABLE)
    usage_error(L,
                "exec: argv must be an array of strings (use {\"sh\", \"-c\", cmd} for a shell)");
  lua_Integer n = luaL_len(L, arg);
  if (n < 1)
    usage_error(L, "exec: argv is empty");
  const char **argv = lua_newuserdatauv(L, sizeof(char *) * ((size_t)n + 1), 0);
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_geti(L, arg, i) != LUA_TSTRING)
      usage_error(L, "exec: argv[%d] is a %s, expected a string", (int)i, luaL_typename(L, -1));
    size_t len;
    argv[i - 1] = lua_tolstring(L, -1, &len);
    check_no_nul(L, argv[i - 1], len, "argv");
    lua_pop(L, 1); /* still referenced by the argv table */
  }
  argv[n] = NULL;
  return argv;
}

/* Pushes a table name -> "NAME=value" (the strings stay anchored there) and a userdata with
   the NULL-terminated array; returns the array. opts is at index opts. */
static char **check_env(lua_State *L, int opts) {
  int clear = lua_getfield(L, opts, "env_clear") != LUA_TNIL && lua_toboolean(L, -1);
  lua_pop(L, 1);
  int t = lua_getfield(L, opts, "env");
  if (t == LUA_TNIL && !clear) {
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_pushnil(L);
    return NULL; /* inherit as is */
  }
  if (t != LUA_TNIL && t != LUA_TTABLE)
    usage_error(L, "exec: opts.env must be a table of name = value strings");
  int env = lua_gettop(L);
  lua_newtable(L);
  int merged = lua_gettop(L);
  if (!clear) {
    for (char **e = environ; *e; e++) {
      const char *eq = strchr(*e, '=');
      if (!eq)
        continue;
      lua_pushlstring(L, *e, (size_t)(eq - *e));
      lua_pushstring(L, *e);
      lua_rawset(L, merged);
    }
  }
  if (t == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, env)) {
      if (lua_type(L, -2) != LUA_TSTRING)
        usage_error(L, "exec: opts.env keys must be strings");
      size_t klen;
      const char *k = lua_tolstring(L, -2, &klen);
      if (klen == 0 || strchr(k, '=') || strlen(k) != klen)
        usage_error(L, "exec: opts.env: bad variable name '%s'", k);
      int vt = lua_type(L, -1);
      lua_pushvalue(L, -2);
      if (vt == LUA_TBOOLEAN && !lua_toboolean(L, -2)) {
        lua_pushnil(L); /* false unsets */
      } else if (vt == LUA_TSTRING || vt == LUA_TNUMBER) {
        size_t vlen;
        const char *v = lua_tolstring(L, -2, &vlen);
        check_no_nul(L, v, vlen, "opts.env value");
        lua_pushfstring(L, "%s=%s", k, v);
      } else {
        usage_error(L, "exec: opts.env.%s must be a string, number or false (got %s)", k,
                    luaL_typename(L, -2));
      }
      lua_rawset(L, merged);
      lua_pop(L, 1);
    }
  }
  size_t count = 0;
  lua_pushnil(L);
  while (lua_next(L, merged)) {
    count++;
    lua_pop(L, 1);
  }
  char **envp = lua_newuserdatauv(L, sizeof(char *) * (count + 1), 0);
  size_t i = 0;
  lua_pushnil(L);
  while (lua_next(L, merged)) {
    envp[i++] = (char *)lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  envp[i] = NULL;
  lua_remove(L, env);
  return envp;
}

static double opt_number_field(lua_State *L, int opts, const char *name, double def) {
  int t = lua_getfield(L, opts, name);
  double v = def;
  if (t != LUA_TNIL) {
    if (t != LUA_TNUMBER)
      usage_error(L, "exec: opts.%s must be a number (got %s)", name, luaL_typename(L, -1));
    v = lua_tonumber(L, -1);
    if (!(v >= 0))
      usage_error(L, "exec: opts.%s must not be negative", name);
  }
  lua_pop(L, 1);
  return v;
}

/* Seconds as a number or a duration string ("500ms", "1m30s"). */
static double opt_seconds_field(lua_State *L, int opts, const char *name, double def) {
  int t = lua_getfield(L, opts, name);
  double v = def;
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    return def;
  }
  if (t == LUA_TSTRING) {
    if (tug_parse_duration(lua_tostring(L, -1), &v) != 0)
      usage_error(L, "exec: opts.%s: '%s' is not a duration (try \"30s\", \"1m30s\", \"500ms\")",
                  name, lua_tostring(L, -1));
  } else {
    if (t != LUA_TNUMBER)
      usage_error(L, "exec: opts.%s must be seconds or a duration string (got %s)", name,
                  luaL_typename(L, -1));
    v = lua_tonumber(L, -1);
  }
  if (!(v >= 0))
    usage_error(L, "exec: opts.%s must not be negative", name);
  lua_pop(L, 1);
  return v;
}

static int opt_bool_field(lua_State *L, int opts, const char *name, int def) {
  int t = lua_getfield(L, opts, name);
  int v = t == LUA_TNIL ? def : lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

/* Returns the string field or NULL; the string stays anchored in opts. */
static const char *opt_string_field(lua_State *L, int opts, const char *name, size_t *len) {
  int t = lua_getfield(L, opts, name);
  const char *s = NULL;
  if (t != LUA_TNIL) {
    if (t != LUA_TSTRING)
      usage_error(L, "exec: opts.%s must be a string (got %s)", name, luaL_typename(L, -1));
    s = lua_tolstring(L, -1, len);
  }
  lua_pop(L, 1);
  return s;
}

static uint64_t seconds_to_ms(double s) {
  double ms = s * 1000.0;
  if (ms > 1e15)
    ms = 1e15;
  return ms > 0 && ms < 1 ? 1 : (uint64_t)ms;
}

static int exec_spawn(lua_State *L) {
  int opts = 2;
  lua_settop(L, 2);
  if (lua_isnil(L, opts)) {
    lua_newtable(L);
    lua_replace(L, opts);
  }
  if (!lua_istable(L, opts))
    usage_error(L, "exec: opts must be a table (got %s)", luaL_typename(L, opts));
  const char **argv = check_argv(L, 1);

  size_t cwd_len = 0, stdin_len = 0;
  const char *cwd = opt_string_field(L, opts, "cwd", &cwd_len);
  const char *input = opt_string_field(L, opts, "stdin", &stdin_len);
  double timeout = opt_seconds_field(L, opts, "timeout", -1);
  if (timeout == 0)
    usage_error(L, "exec: opts.timeout must be positive (leave it out for no timeout)");
  double grace = opt_seconds_field(L, opts, "kill_grace", EXEC_KILL_GRACE_DEFAULT);
  double max_output = opt_number_field(L, opts, "max_output", EXEC_MAX_OUTPUT_DEFAULT);
  int lines = opt_bool_field(L, opts, "lines", 0);
  int capture = opt_bool_field(L, opts, "capture", 1);
  if (cwd) {
    struct stat st;
    check_no_nul(L, cwd, cwd_len, "opts.cwd");
    if (stat(cwd, &st) != 0)
      return tug_raise(L, "exec", "exec: %s: cwd %s: %s", argv[0], cwd, strerror(errno));
    if (!S_ISDIR(st.st_mode))
      return tug_raise(L, "exec", "exec: %s: cwd %s: not a directory", argv[0], cwd);
  }
  char **envp = check_env(L, opts); /* pushes two values that anchor the strings */

  exec_handle *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->proc = NULL;
  h->pid = 0;
  luaL_setmetatable(L, EXEC_PROCESS_MT);

  /* Nothing below raises until the process exists or has been released. */
  exec_proc *p = calloc(1, sizeof *p);
  char *stdin_copy = input && stdin_len > 0 ? malloc(stdin_len) : NULL;
  if (!p || (input && stdin_len > 0 && !stdin_copy)) {
    free(p);
    free(stdin_copy);
    return luaL_error(L, "exec: out of memory");
  }
  uv_loop_t *loop = tug_loop();
  p->max_output = max_output > (double)SIZE_MAX / 2 ? SIZE_MAX / 2 : (size_t)max_output;
  p->capture = capture;
  p->streaming = p->lines = lines;
  p->grace_ms = seconds_to_ms(grace);
  p->attached = 1;

  uv_stdio_container_t stdio[3];
  stdio[EXEC_STDIN].flags = UV_IGNORE; /* /dev/null */
  if (input) {
    uv_pipe_init(loop, &p->pipes[EXEC_STDIN], 0);
    p->pipe_open[EXEC_STDIN] = 1;
    p->handles_open++;
    stdio[EXEC_STDIN].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
    stdio[EXEC_STDIN].data.stream = (uv_stream_t *)&p->pipes[EXEC_STDIN];
  }
  for (int i = EXEC_STDOUT; i <= EXEC_STDERR; i++) {
    uv_pipe_init(loop, &p->pipes[i], 0);
    p->pipe_open[i] = 1;
    p->handles_open++;
    stdio[i].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[i].data.stream = (uv_stream_t *)&p->pipes[i];
  }
  uv_timer_init(loop, &p->timeout_timer);
  uv_timer_init(loop, &p->grace_timer);
  p->timeout_open = p->grace_open = 1;
  p->handles_open += 2;
  for (int i = 0; i < 3; i++)
    p->pipes[i].data = p;
  p->timeout_timer.data = p->grace_timer.data = p->process.data = p;
  p->stdin_req.data = p;

  uv_process_options_t options;
  memset(&options, 0, sizeof options);
  options.exit_cb = on_process_exit;
  options.file = argv[0];
  options.args = (char **)argv;
  options.env = envp;
  options.cwd = cwd;
  options.flags = UV_PROCESS_DETACHED; /* own session and process group */
  options.stdio_count = 3;
  options.stdio = stdio;
  p->start_ns = uv_hrtime();
  int err = uv_spawn(loop, &p->process, &options);
  p->process_open = 1; /* uv_spawn initializes the handle even when it fails */
  p->handles_open++;
  if (err < 0) {
    free(stdin_copy);
    p->attached = 0;
    p->done = 1;
    for (int i = 0; i < 3; i++)
      proc_close((uv_handle_t *)&p->pipes[i], &p->pipe_open[i]);
    proc_close((uv_handle_t *)&p->timeout_timer, &p->timeout_open);
    proc_close((uv_handle_t *)&p->grace_timer, &p->grace_open);
    proc_close((uv_handle_t *)&p->process, &p->process_open);
    if (err == UV_ENOENT)
      return tug_raise(L, "exec", "exec: %s: program not found", argv[0]);
    if (err == UV_EACCES)
      return tug_raise(L, "exec", "exec: %s: permission denied", argv[0]);
    return tug_raise(L, "exec", "exec: %s: %s", argv[0], uv_strerror(err));
  }
  p->pid = p->process.pid;
  h->proc = p;
  h->pid = p->pid;

  if (input) {
    if (stdin_len > 0) {
      memcpy(stdin_copy, input, stdin_len);
      p->stdin_data = stdin_copy;
      uv_buf_t buf = uv_buf_init(stdin_copy, (unsigned int)stdin_len);
      if (uv_write(&p->stdin_req, (uv_stream_t *)&p->pipes[EXEC_STDIN], &buf, 1,
                   on_stdin_written) != 0) {
        free(p->stdin_data);
        p->stdin_data = NULL;
        proc_close((uv_handle_t *)&p->pipes[EXEC_STDIN], &p->pipe_open[EXEC_STDIN]);
      }
    } else {
      proc_close((uv_handle_t *)&p->pipes[EXEC_STDIN], &p->pipe_open[EXEC_STDIN]);
    }
  }
  proc_read_start(p);
  if (timeout > 0)
    uv_timer_start(&p->timeout_timer, on_timeout, seconds_to_ms(timeout), 0);
  return 1;
}

/* ---- the exec.process userdata ---- */

static exec_handle *check_handle(lua_State *L) { return luaL_checkudata(L, 1, EXEC_PROCESS_MT); }

static exec_proc *check_open(lua_State *L) {
  exec_handle *h = check_handle(L);
  if (!h->proc)
    luaL_error(L, "attempt to use a closed process");
  return h->proc;
}

static void push_result(lua_State *L, exec_proc *p) {
  lua_createtable(L, 0, 9);
  if (p->term_signal) {
    push_signal(L, p->term_signal);
    lua_setfield(L, -2, "signal");
  } else {
    lua_pushinteger(L, p->exit_status);
    lua_setfield(L, -2, "code");
  }
  lua_pushlstring(L, p->out[EXEC_STDOUT].data ? p->out[EXEC_STDOUT].data : "",
                  p->out[EXEC_STDOUT].len);
  lua_setfield(L, -2, "stdout");
  lua_pushlstring(L, p->out[EXEC_STDERR].data ? p->out[EXEC_STDERR].data : "",
                  p->out[EXEC_STDERR].len);
  lua_setfield(L, -2, "stderr");
  lua_pushnumber(L, (double)(p->end_ns - p->start_ns) / 1e9);
  lua_setfield(L, -2, "duration");
  lua_pushboolean(L, p->timed_out);
  lua_setfield(L, -2, "timed_out");
  lua_pushboolean(L, p->truncated);
  lua_setfield(L, -2, "truncated");
  lua_pushinteger(L, p->pid);
  lua_setfield(L, -2, "pid");
}

/* Pushes the buffered lines as an array of { stream =, line = } and empties the queue. */
static void push_lines(lua_State *L, exec_proc *p) {
  lua_newtable(L);
  size_t at = 0;
  lua_Integer n = 0;
  while (at < p->queue.len) {
    unsigned char stream = (unsigned char)p->queue.data[at];
    size_t len;
    memcpy(&len, p->queue.data + at + 1, sizeof len);
    const char *line = p->queue.data + at + 1 + sizeof len;
    lua_createtable(L, 0, 2);
    lua_pushstring(L, stream == EXEC_STDOUT ? "stdout" : "stderr");
    lua_setfield(L, -2, "stream");
    lua_pushlstring(L, line, len);
    lua_setfield(L, -2, "line");
    lua_rawseti(L, -2, ++n);
    at += 1 + sizeof len + len;
  }
  p->queue.len = 0;
  if (p->paused)
    proc_read_start(p);
}

static void op_release(exec_op *op) {
  exec_proc *p = op->proc;
  p->waiter = NULL;
  free(op);
}

static int op_resume(lua_State *L, tug_op *base) {
  exec_op *op = (exec_op *)base;
  exec_proc *p = op->proc;
  int kind = op->kind;
  op_release(op);
  p->pinned = 1;
  if (kind == EXEC_WAIT_EXIT)
    push_result(L, p);
  else if (p->queue.len > 0)
    push_lines(L, p);
  else if (p->done)
    lua_pushnil(L);
  else
    lua_newtable(L);
  p->pinned = 0;
  proc_maybe_free(p);
  return 1;
}

static void op_cancel(tug_op *base) {
  exec_op *op = (exec_op *)base;
  exec_proc *p = op->proc;
  op_release(op);
  proc_stop(p);
  if (!p->attached && p->exited)
    proc_end_output(p);
  proc_maybe_free(p);
}

static int proc_await(lua_State *L, exec_proc *p, int kind, const char *what) {
  tug_check_task(L, what);
  if (p->waiter)
    return luaL_error(L, "%s: another task is already waiting on this process", what);
  exec_op *op = calloc(1, sizeof *op);
  if (!op)
    return luaL_error(L, "%s: out of memory", what);
  op->base.resume = op_resume;
  op->base.cancel = op_cancel;
  op->proc = p;
  op->kind = kind;
  p->waiter = op;
  return tug_await(L, &op->base);
}

static int proc_wait(lua_State *L) {
  exec_proc *p = check_open(L);
  if (p->waiter)
    return luaL_error(L, "exec wait: another task is already waiting on this process");
  if (p->lines) {
    /* Nobody will take lines any more: stop buffering them. */
    p->lines = 0;
    p->queue.len = 0;
    for (int i = EXEC_STDOUT; i <= EXEC_STDERR; i++)
      p->partial[i].len = 0;
    if (p->paused)
      proc_read_start(p);
  }
  if (p->done) {
    push_result(L, p);
    return 1;
  }
  return proc_await(L, p, EXEC_WAIT_EXIT, "exec wait");
}

static int proc_next_lines(lua_State *L) {
  exec_proc *p = check_open(L);
  if (!p->streaming)
    return luaL_error(L, "exec next_lines: the process was not spawned with lines = true");
  if (p->queue.len > 0) {
    push_lines(L, p);
    return 1;
  }
  if (p->done || !p->lines) {
    lua_pushnil(L);
    return 1;
  }
  return proc_await(L, p, EXEC_WAIT_LINES, "exec next_lines");
}

static int proc_kill(lua_State *L) {
  exec_proc *p = check_open(L);
  int sig = check_signal(L, 2, SIGTERM);
  if (p->exited) {
    lua_pushnil(L);
    lua_pushstring(L, "process has exited");
    return 2;
  }
  if (proc_signal(p, sig) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  if (sig == SIGKILL)
    p->killed = 1;
  lua_pushboolean(L, 1);
  return 1;
}

/* TERM now, KILL after kill_grace, as a timeout does; returns at once. */
static int proc_stop_method(lua_State *L) {
  exec_proc *p = check_open(L);
  int was_running = !p->done && !p->stopping;
  proc_stop(p);
  lua_pushboolean(L, was_running);
  return 1;
}

static int proc_gc(lua_State *L) {
  exec_handle *h = check_handle(L);
  if (h->proc) {
    exec_proc *p = h->proc;
    h->proc = NULL;
    proc_detach(p);
  }
  return 0;
}

static int proc_tostring(lua_State *L) {
  exec_handle *h = check_handle(L);
  exec_proc *p = h->proc;
  if (!p)
    lua_pushfstring(L, "exec.process %d (closed)", h->pid);
  else if (!p->exited)
    lua_pushfstring(L, "exec.process %d (running)", h->pid);
  else if (p->term_signal)
    lua_pushfstring(L, "exec.process %d (killed by %s)", h->pid,
                    signal_name(p->term_signal) ? signal_name(p->term_signal) : "signal");
  else
    lua_pushfstring(L, "exec.process %d (exited %d)", h->pid, (int)p->exit_status);
  return 1;
}

/* Fields first (pid), then methods. */
static int proc_index(lua_State *L) {
  exec_handle *h = check_handle(L);
  if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "pid") == 0) {
    lua_pushinteger(L, h->pid);
    return 1;
  }
  lua_pushvalue(L, 2);
  lua_gettable(L, lua_upvalueindex(1));
  return 1;
}

static const luaL_Reg proc_methods[] = {
    {"wait", proc_wait}, {"next_lines", proc_next_lines},
    {"kill", proc_kill}, {"stop", proc_stop_method},
    {"close", proc_gc},  {NULL, NULL},
};

static const luaL_Reg proc_metamethods[] = {
    {"__gc", proc_gc}, {"__close", proc_gc}, {"__tostring", proc_tostring},
    {"__index", NULL}, /* set below: needs the methods as upvalue */
    {NULL, NULL},
};

static const luaL_Reg exec_functions[] = {
    {"spawn", exec_spawn},
    {NULL, NULL},
};

int luaopen_tug_exec(lua_State *L) {
  luaL_newmetatable(L, EXEC_PROCESS_MT);
  luaL_setfuncs(L, proc_metamethods, 0);
  luaL_newlib(L, proc_methods);
  lua_pushcclosure(L, proc_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newlib(L, exec_functions);
  return 1;
}
