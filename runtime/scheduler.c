/*
 * scheduler.c: the scheduler. One libuv loop, one Lua state, every task a coroutine.
 *
 * The yield/resume protocol lives here and nowhere else (see tug.h): a binding that waits
 * calls tug_await, which parks the task on its op and yields; a libuv callback calls
 * tug_op_done, which only queues the task; sched_run resumes queued tasks from one place,
 * between turns of the loop, so no Lua code ever runs inside a libuv callback.
 *
 * A task is a full userdata (struct tug_task) whose first user value is its coroutine.
 * While a task is alive the registry anchors its userdata; when it finishes, its results
 * (or its error) stay with it for whoever waits, and the anchor is dropped. Other tasks
 * watch a task through struct sched_watch nodes, which join, parallel and timeout use.
 */
#include "scheduler.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "host.h"

enum task_state { TASK_NEW, TASK_READY, TASK_RUNNING, TASK_WAITING, TASK_DONE };

struct tug_task {
  lua_State *co;
  int ref; /* registry anchor of the userdata while alive */
  enum task_state state;
  int nargs;  /* arguments waiting on co's stack for the first resume */
  int queued; /* on the ready queue */
  int cancelled;
  int failed;   /* finished with an error: { value, traceback } is on co's stack */
  int observed; /* someone waited for the outcome */
  int reported; /* its failure was printed as unhandled */
  int nresults; /* results left on co's stack when it finished */
  uint64_t id;
  uint64_t deadline;        /* uv_hrtime() after which the runaway-loop hook raises */
  uint64_t cancelled_at;    /* uv_hrtime() of the cancel */
  uint64_t cancel_raise_at; /* cancelled: when the hook next raises in code that never waits */
  int hook_yielded;         /* the hook yielded it so the loop could see a signal */
  uint64_t resumed_at;      /* uv_hrtime() of its last resume */
  int scope;                /* the scope it belongs to (0: none), inherited from its spawner */
  char label[96];           /* what it is, for the warning when its scope closes ("" if plain) */
  tug_op *op;               /* what the task waits for */
  tug_task *next_ready;
  tug_task *prev_live, *next_live;
  sched_watch *watchers;
};

#define HOOK_COUNT 10000
/* While a signal waits for the loop, the hook looks this often... */
#define SIGNAL_HOOK_COUNT 1000
/* ...and takes the task off the CPU once it has run this long without waiting. A task
   that waits sooner gives the loop its turn by itself, at a wait, where cancelling it is
   safe; only a runaway is interrupted between two instructions. */
#define RUNAWAY_NS 200000000u

static struct {
  lua_State *L; /* the main thread */
  uv_loop_t *loop;
  tug_task *ready_head, *ready_tail;
  tug_task *live; /* every task not yet finished */
  tug_task *current;
  uint64_t next_id;
  int unobserved_failures;
  int interrupts;          /* signals the loop has handled */
  int cancel_all_pending;  /* set by the signal callback, acted on between loop turns */
  int interrupt_pending;   /* the same, for a Lua interrupt handler: calls still to make */
  int interrupt_ref;       /* registry ref of that handler, or LUA_NOREF */
  int hangup_ref;          /* registry ref of the SIGHUP handler (a run's), or LUA_NOREF */
  int hangups_seen;        /* SIGHUPs the loop has acted on */
  uv_async_t signal_async; /* wakes the loop from the signal handler */
} S;

/* Written by the signal handler (see "interrupts" below). raw_signals counts every SIGINT
   and SIGTERM; S.interrupts catches up with it on the loop. running_co is the coroutine
   lua_resume is running, so that the handler can hook code that never yields. */
static volatile sig_atomic_t raw_signals;
/* SIGHUP while a run has a hangup handler: counted here, acted on by the loop. Without a
   handler (a script, the simulator) SIGHUP ends tug as SIGTERM does. */
static volatile sig_atomic_t raw_hangups, hangup_detaches;
static lua_State *volatile running_co;
static pthread_t main_thread; /* the one that runs Lua: the only one the handler may hook */

uv_loop_t *tug_loop(void) { return S.loop; }

static tug_task *task_of(lua_State *co) { return *(tug_task **)lua_getextraspace(co); }

/* ---- the ready queue ---- */

static void ready_push(tug_task *t) {
  if (t->queued)
    return;
  t->queued = 1;
  t->next_ready = NULL;
  if (S.ready_tail)
    S.ready_tail->next_ready = t;
  else
    S.ready_head = t;
  S.ready_tail = t;
}

void tug_op_done(tug_op *op) {
  tug_task *t = op->task;
  if (t == NULL || t->op != op)
    return; /* cancelled meanwhile: the op releases itself through cancel */
  t->state = TASK_READY;
  ready_push(t);
  /* A timer callback runs at the top of uv_run(UV_RUN_ONCE), whose poll phase would then
     block with this task ready: make the turn end without waiting. */
  uv_stop(S.loop);
}

/* ---- waiting ---- */

static int raise_cancelled(lua_State *L) { return tug_raise(L, "cancelled", "task cancelled"); }

static int await_k(lua_State *L, int status, lua_KContext ctx) {
  tug_task *t = task_of(L);
  tug_op *op = (tug_op *)ctx;
  (void)status;
  if (t->op != op) /* detached by a cancel: op->cancel already ran */
    return raise_cancelled(L);
  t->op = NULL;
  op->task = NULL;
  return op->resume(L, op);
}

void tug_check_task(lua_State *L, const char *what) {
  tug_task *t = task_of(L);
  if (t == NULL || t->co != L)
    luaL_error(L,
               "%s must be called from a task, not from the main thread or a coroutine "
               "made with coroutine.create",
               what);
  if (!lua_isyieldable(L))
    luaL_error(L,
               "%s cannot wait here: a C function (such as a table.sort comparator, a "
               "string.gsub callback or require) is on the stack",
               what);
}

int tug_await(lua_State *L, tug_op *op) {
  tug_task *t = task_of(L);
  if (t == NULL || t->co != L || !lua_isyieldable(L) || t->cancelled) {
    op->task = NULL;
    op->cancel(op);
    if (t != NULL && t->co == L && t->cancelled)
      return raise_cancelled(L);
    tug_check_task(L, "a waiting call");
  }
  op->task = t;
  t->op = op;
  t->state = TASK_WAITING;
  return lua_yieldk(L, 0, (lua_KContext)op, await_k);
}

static int yield_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status, (void)ctx;
  if (task_of(L)->cancelled)
    return raise_cancelled(L);
  return 0;
}

int tug_yield(lua_State *L) {
  tug_check_task(L, "task.yield");
  if (task_of(L)->cancelled)
    return raise_cancelled(L);
  return lua_yieldk(L, 0, 0, yield_k); /* with no op, task_resume requeues the task */
}

/* ---- watchers ---- */

void sched_watch_add(sched_watch *w, tug_task *target) {
  w->target = target;
  w->prev = NULL;
  w->next = target->watchers;
  if (target->watchers)
    target->watchers->prev = w;
  target->watchers = w;
}

void sched_watch_remove(sched_watch *w) {
  if (w->target == NULL)
    return;
  if (w->prev)
    w->prev->next = w->next;
  else
    w->target->watchers = w->next;
  if (w->next)
    w->next->prev = w->prev;
  w->target = NULL;
}

/* ---- task life ---- */

static void task_hook(lua_State *L, lua_Debug *ar);
static void on_signal_async(uv_async_t *h);

/* The count hook a task needs when no signal is pending: for its deadline, or to stop it
   once cancelled if it never waits again. */
static void task_set_hook(tug_task *t) {
  int wanted = t->deadline != 0 || t->cancelled;
  lua_sethook(t->co, wanted ? task_hook : NULL, wanted ? LUA_MASKCOUNT : 0, HOOK_COUNT);
}

static int signal_unseen(void) { return S.interrupts != raw_signals; }

/* The one hook of a task's coroutine. It runs every HOOK_COUNT instructions for a deadline
   or a cancel, and every SIGNAL_HOOK_COUNT once the signal handler installed it: code that
   never yields still sees a signal, its cancel and its deadline. */
static void task_hook(lua_State *L, lua_Debug *ar) {
  tug_task *t = task_of(L);
  if (t == NULL || t->co != L || ar->event != LUA_HOOKCOUNT)
    return; /* a plain coroutine inherited the hook: it is not a task */
  if (signal_unseen() && uv_hrtime() - t->resumed_at >= RUNAWAY_NS) {
    if (lua_isyieldable(L)) {
      t->hook_yielded = 1; /* on resume the hook raises at once if the loop cancelled it */
      lua_yield(L, 0);
      return;
    }
    /* A C function (require, table.sort) is on the stack: the loop cannot get a turn, so
       the signal is taken here and the task ends, as the cancel it brings would end it. */
    on_signal_async(&S.signal_async);
    t->cancelled = 1;
    t->cancelled_at = t->cancel_raise_at = uv_hrtime();
  }
  if (t->cancelled && S.interrupts > 0 && uv_hrtime() >= t->cancelled_at + 1500000000u) {
    /* It was cancelled by Ctrl-C or SIGTERM 1.5 s ago and still runs without waiting: it
       catches the cancel (a pcall around a loop). Nothing else can run while it spins. */
    static const char msg[] =
        "\ntug: a task kept running 1.5 s after Ctrl-C cancelled it (it catches the cancel): "
        "aborting at once\n";
    fflush(stdout);
    fputs(msg, stderr);
    _exit(EXIT_INTERRUPTED);
  }
  if (t->cancelled && (t->hook_yielded || uv_hrtime() >= t->cancel_raise_at)) {
    t->hook_yielded = 0;
    t->cancel_raise_at = uv_hrtime() + 1000000000u; /* a pcall that swallows it: once a second */
    task_set_hook(t);
    tug_raise(L, "cancelled", "task cancelled");
  }
  t->hook_yielded = 0; /* if it was yielded, the signal was seen and did not cancel it */
  if (!signal_unseen())
    task_set_hook(t); /* the signal handler's frequent hook is no longer needed */
  if (t->deadline != 0 && uv_hrtime() > t->deadline) {
    t->deadline = 0; /* raise once; a pcall that swallows it gets no second chance to spin */
    task_set_hook(t);
    tug_raise(L, "timeout", "timed out (the code ran without yielding past its deadline)");
  }
}

tug_task *sched_spawn(lua_State *L, int nargs) {
  /* stack: fn, args... (nargs) -> replaced by the task userdata */
  int fn = lua_gettop(L) - nargs;
  tug_task *t = lua_newuserdatauv(L, sizeof *t, 1);
  memset(t, 0, sizeof *t);
  luaL_setmetatable(L, TUG_TASK_MT);
  lua_State *co = lua_newthread(L);
  lua_setiuservalue(L, -2, 1);
  *(tug_task **)lua_getextraspace(co) = t;
  t->co = co;
  t->id = ++S.next_id;
  t->scope = S.current ? S.current->scope : 0;
  t->state = TASK_NEW;
  t->nargs = nargs;
  lua_pushvalue(L, -1);
  t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_rotate(L, fn, 1); /* task, fn, args... */
  lua_xmove(L, co, nargs + 1);
  t->next_live = S.live;
  if (S.live)
    S.live->prev_live = t;
  S.live = t;
  ready_push(t);
  return t;
}

void sched_report(tug_task *t) {
  lua_State *L = S.L;
  lua_pushvalue(t->co, 1);
  lua_xmove(t->co, L, 1);
  lua_getfield(L, -1, "traceback");
  size_t len;
  const char *msg = lua_tolstring(L, -1, &len);
  if (msg == NULL)
    msg = "error", len = 5;
  tug_redact_write(stderr, "tug: ", 5);
  tug_redact_write(stderr, msg, len);
  tug_redact_write(stderr, "\n", 1);
  lua_pop(L, 2);
}

static void task_finish(tug_task *t) {
  t->state = TASK_DONE;
  if (t->prev_live)
    t->prev_live->next_live = t->next_live;
  else
    S.live = t->next_live;
  if (t->next_live)
    t->next_live->prev_live = t->prev_live;
  t->prev_live = t->next_live = NULL;

  if (t->failed && t->watchers == NULL && !t->cancelled) {
    sched_report(t);
    t->reported = 1;
    S.unobserved_failures++;
  }
  while (t->watchers) {
    sched_watch *w = t->watchers;
    sched_watch_remove(w);
    w->notify(w, t);
  }
  luaL_unref(S.L, LUA_REGISTRYINDEX, t->ref);
  t->ref = LUA_NOREF;
}

static int error_tostring_protected(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

/* Pushes the text of the error value at the top of L. Its __tostring is the playbook's
   code and may itself raise (or return a non-string): that must not take the scheduler
   down, so it runs protected and a failure is described instead. */
static const char *push_error_text(lua_State *L) {
  lua_pushcfunction(L, error_tostring_protected);
  lua_pushvalue(L, -2);
  if (lua_pcall(L, 1, 1, 0) == LUA_OK)
    return lua_tostring(L, -1);
  const char *why = lua_tostring(L, -1);
  lua_pushfstring(L, "a %s error whose __tostring failed: %s", luaL_typename(L, -2),
                  why ? why : "(its own error is not a string either)");
  lua_remove(L, -2);
  return lua_tostring(L, -1);
}

/* Keeps the error of a coroutine that died as the only value on its stack:
   { value = <the error>, traceback = "<message and traceback>" }. */
static void task_save_error(tug_task *t) {
  lua_State *L = S.L, *co = t->co;
  lua_createtable(L, 0, 2);
  lua_xmove(co, L, 1); /* the error value */
  const char *msg = NULL;
  if (lua_istable(L, -1)) {
    int has_tostring = luaL_getmetafield(L, -1, "__tostring") != LUA_TNIL;
    if (has_tostring)
      lua_pop(L, 1);
    else if (lua_getfield(L, -1, "message") == LUA_TSTRING)
      msg = lua_tostring(L, -1); /* error{ message = ... } reads well without a metatable */
    else
      lua_pop(L, 1);
  }
  if (msg == NULL)
    msg = push_error_text(L);
  luaL_traceback(L, co, msg, 0);
  lua_setfield(L, -4, "traceback");
  lua_pop(L, 1);
  lua_setfield(L, -2, "value");
  lua_resetthread(co); /* closes its pending to-be-closed variables */
  lua_settop(co, 0);   /* resetthread leaves the stale error object behind */
  lua_xmove(L, co, 1);
  t->failed = 1;
}

static void task_resume(tug_task *t) {
  int nres, nargs = 0;
  if (t->state == TASK_NEW && t->cancelled) { /* cancelled before it ever ran */
    lua_settop(t->co, 0);
    tug_push_error(t->co, "cancelled", "task cancelled");
    task_save_error(t);
    task_finish(t);
    return;
  }
  if (t->state == TASK_NEW)
    nargs = t->nargs;
  t->state = TASK_RUNNING;
  tug_task *prev = S.current;
  lua_State *prev_co = running_co;
  S.current = t;
  running_co = t->co;
  t->resumed_at = uv_hrtime();
  if (signal_unseen()) /* a signal came between turns: it must reach a runaway too */
    lua_sethook(t->co, task_hook, LUA_MASKCOUNT, SIGNAL_HOOK_COUNT);
  int status = lua_resume(t->co, S.L, nargs, &nres);
  running_co = prev_co;
  S.current = prev;
  if (status == LUA_YIELD) {
    lua_pop(t->co, nres);
    if (t->op == NULL) { /* a bare coroutine.yield(): give the loop a turn, then go on */
      t->state = TASK_READY;
      ready_push(t);
    }
  } else if (status == LUA_OK) {
    t->nresults = nres;
    task_finish(t);
  } else {
    task_save_error(t);
    task_finish(t);
  }
}

void sched_cancel(tug_task *t) {
  if (t->state == TASK_DONE || t->cancelled)
    return;
  t->cancelled = 1;
  /* code that catches the cancel and spins without waiting again is stopped by the hook */
  t->cancelled_at = uv_hrtime();
  t->cancel_raise_at = t->cancelled_at + 1000000000u;
  if (!t->hook_yielded)
    task_set_hook(t);
  if (t->op) {
    tug_op *op = t->op;
    t->op = NULL;
    op->task = NULL;
    op->cancel(op);
  }
  /* A task that never ran is still queued: task_resume finishes it without running it.
     It must stay anchored and queued until then, or the queue would point at freed memory. */
  if (t->state == TASK_WAITING || t->state == TASK_READY) {
    t->state = TASK_READY;
    ready_push(t);
  }
  /* a running task sees the flag at its next wait */
}

void sched_set_deadline(tug_task *t, uint64_t deadline) {
  t->deadline = deadline;
  if (!t->hook_yielded)
    task_set_hook(t);
}

/* ---- scopes: what a run started ----
 *
 * A scope is a number. A task belongs to the scope of the task that spawned it, so the
 * serve task of an http.server a step started, a background task and its own children all
 * belong to the run whose step started them (the engine spawns each step's task in the
 * run's scope). When the run ends, whatever is still alive in its scope is cancelled (the
 * server closes with its serve task) and named in a warning.
 */

int sched_scope_new(void) {
  static int last_scope;
  return ++last_scope;
}

int sched_scope_current(void) { return S.current ? S.current->scope : 0; }

int sched_scope_set(int scope) {
  tug_task *t = S.current;
  int previous = t ? t->scope : 0;
  if (t)
    t->scope = scope;
  return previous;
}

/* Pushes where t was started or waits: "file.lua:12". */
static void push_task_where(lua_State *L, tug_task *t) {
  lua_Debug ar;
  if (t->state == TASK_NEW) { /* fn sits at the bottom of its stack until it first runs */
    lua_pushvalue(t->co, 1);
    if (lua_getinfo(t->co, ">S", &ar) && ar.currentline != -2) {
      lua_pushfstring(L, "%s:%d", ar.short_src, ar.linedefined);
      return;
    }
  } else {
    for (int level = 0; lua_getstack(t->co, level, &ar); level++) {
      if (lua_getinfo(t->co, "Sl", &ar) && ar.currentline > 0) {
        lua_pushfstring(L, "%s:%d", ar.short_src, ar.currentline);
        return;
      }
    }
  }
  lua_pushliteral(L, "an unknown place");
}

int sched_scope_close(lua_State *L, int scope) {
  lua_newtable(L);
  if (scope == 0)
    return 1;
  int n = 0;
  for (;;) { /* oldest first, rescanning: a cancel may finish or cancel other tasks */
    tug_task *oldest = NULL;
    for (tug_task *t = S.live; t; t = t->next_live)
      if (t->scope == scope && t != S.current && !t->cancelled && t->state != TASK_RUNNING)
        oldest = t;
    if (oldest == NULL)
      return 1;
    if (oldest->label[0])
      lua_pushstring(L, oldest->label);
    else {
      push_task_where(L, oldest);
      lua_pushfstring(L, "a task %s at %s", oldest->state == TASK_NEW ? "started" : "waiting",
                      lua_tostring(L, -1));
      lua_remove(L, -2);
    }
    lua_rawseti(L, -2, ++n);
    oldest->scope = 0;
    sched_cancel(oldest);
  }
}

void sched_set_label(tug_task *t, const char *label) {
  snprintf(t->label, sizeof t->label, "%s", label);
}

/* ---- results ---- */

int sched_failed(tug_task *t) { return t->failed; }
int sched_cancelled(tug_task *t) { return t->cancelled; }
int sched_done(tug_task *t) { return t->state == TASK_DONE; }

const char *sched_status(tug_task *t) {
  static const char *const names[] = {"new", "ready", "running", "waiting", "done"};
  if (t->state == TASK_DONE)
    return t->cancelled ? "cancelled" : t->failed ? "failed" : "done";
  return names[t->state];
}

void sched_observe(tug_task *t) {
  if (t->reported && !t->observed)
    S.unobserved_failures--; /* it was reported as unhandled; now someone handles it */
  t->observed = 1;
}

int sched_push_results(lua_State *L, tug_task *t, int max) {
  int n = t->nresults < max ? t->nresults : max;
  luaL_checkstack(L, n, "too many results");
  int base = lua_gettop(t->co) - t->nresults;
  for (int i = 1; i <= n; i++) {
    lua_pushvalue(t->co, base + i);
    lua_xmove(t->co, L, 1);
  }
  return n;
}

void sched_push_error(lua_State *L, tug_task *t) {
  lua_pushvalue(t->co, 1);
  lua_xmove(t->co, L, 1);
  lua_getfield(L, -1, "value");
  lua_remove(L, -2);
}

uint64_t sched_id(tug_task *t) { return t->id; }

void sched_push_handle(lua_State *L, tug_task *t) { lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref); }
lua_State *sched_main(void) { return S.L; }
tug_task *sched_current(void) { return S.current; }
tug_task *sched_task_of(lua_State *co) { return task_of(co); }

/* ---- interrupts ----
 *
 * SIGINT and SIGTERM are caught by a plain handler, not a uv_signal: a uv_signal is only
 * seen when the loop turns, and a playbook's top level or a script that loops without
 * yielding never lets it turn. The handler does only what is safe there: it counts the
 * signal, hooks the running coroutine (as lua.c does) and wakes the loop with uv_async_send.
 * The hook yields the task so that the loop gets its turn (or ends the task where it cannot
 * yield); the loop then acts on the signal, with a Lua handler if one is set (the engine
 * rolls back) or by cancelling every task. One more signal than the handler takes aborts
 * at once from the handler itself, even if the loop is stuck in C.
 */

static void on_signal(int signum) {
  int saved = errno;
  if (!pthread_equal(pthread_self(), main_thread)) {
    /* a libuv or libcurl thread caught it: hooking a coroutine from here would race the
       thread that runs it, so the signal goes to that thread instead */
    pthread_kill(main_thread, signum);
    errno = saved;
    return;
  }
  raw_signals++;
  int allowed = S.interrupt_ref != LUA_NOREF ? 2 : 1;
  if (raw_signals > allowed) {
    static const char msg[] = "\ntug: interrupted again, aborting at once\n";
    ssize_t n = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)n;
    _exit(EXIT_INTERRUPTED);
  }
  lua_State *co = running_co;
  if (co != NULL)
    lua_sethook(co, task_hook, LUA_MASKCOUNT, SIGNAL_HOOK_COUNT);
  uv_async_send(&S.signal_async);
  errno = saved;
}

/* The terminal went away (a closed window, a lost SSH connection). A run goes on without
   it: the loop points stdin, stdout and stderr at /dev/null and tells the run. */
static void on_hangup(int signum) {
  int saved = errno;
  if (!pthread_equal(pthread_self(), main_thread)) {
    pthread_kill(main_thread, signum);
    errno = saved;
    return;
  }
  if (!hangup_detaches) {
    on_signal(signum);
    errno = saved;
    return;
  }
  raw_hangups++;
  uv_async_send(&S.signal_async);
  errno = saved;
}

/* Once per hangup: stdin reads end (EOF), writes go nowhere instead of failing, and the
   run's handler is called in a task of its own. */
static void act_on_hangups(void) {
  if (S.hangups_seen == raw_hangups)
    return;
  S.hangups_seen = raw_hangups;
  fflush(stdout);
  fflush(stderr);
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null >= 0) {
    for (int fd = 0; fd <= 2; fd++)
      dup2(null, fd);
    if (null > 2)
      close(null);
  }
  if (S.hangup_ref != LUA_NOREF) {
    lua_rawgeti(S.L, LUA_REGISTRYINDEX, S.hangup_ref);
    sched_spawn(S.L, 0);
    lua_pop(S.L, 1);
  }
}

void sched_set_hangup_handler(lua_State *L) {
  luaL_unref(L, LUA_REGISTRYINDEX, S.hangup_ref);
  S.hangup_ref = lua_isnil(L, -1) ? (lua_pop(L, 1), LUA_NOREF) : luaL_ref(L, LUA_REGISTRYINDEX);
  hangup_detaches = S.hangup_ref != LUA_NOREF;
}

static void on_signal_async(uv_async_t *h) {
  (void)h;
  while (S.interrupts < raw_signals) {
    ++S.interrupts;
    if (S.interrupt_ref != LUA_NOREF) {
      S.interrupt_pending++; /* the handler decides, once per signal */
    } else if (!S.cancel_all_pending) {
      fputs("\ntug: interrupted: cancelling every task (again to abort at once)\n", stderr);
      S.cancel_all_pending = 1;
    }
  }
}

static void set_signal_handlers(void (*handler)(int)) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = handler;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaddset(&sa.sa_mask, SIGINT); /* one handler at a time: the counts stay exact */
  sigaddset(&sa.sa_mask, SIGTERM);
  sigaddset(&sa.sa_mask, SIGHUP);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  if (handler == on_signal)
    sa.sa_handler = on_hangup;
  sigaction(SIGHUP, &sa, NULL);
}

void sched_cancel_all(void) {
  /* rescan after each cancel: an op's cancel may touch other tasks */
  for (;;) {
    tug_task *t = S.live;
    while (t && (t->cancelled || t->state == TASK_RUNNING))
      t = t->next_live;
    if (t == NULL)
      return;
    sched_cancel(t);
  }
}

int sched_interrupted(void) { return S.interrupts; }

void sched_set_interrupt_handler(lua_State *L) {
  luaL_unref(L, LUA_REGISTRYINDEX, S.interrupt_ref);
  S.interrupt_ref = lua_isnil(L, -1) ? (lua_pop(L, 1), LUA_NOREF) : luaL_ref(L, LUA_REGISTRYINDEX);
}

/* ---- the loop ---- */

void sched_init(lua_State *L, uv_loop_t *loop) {
  memset(&S, 0, sizeof S);
  S.interrupt_ref = LUA_NOREF;
  S.hangup_ref = LUA_NOREF;
  raw_hangups = hangup_detaches = 0;
  S.L = L;
  S.loop = loop;
  *(tug_task **)lua_getextraspace(L) = NULL;
  luaL_newmetatable(L, TUG_TASK_MT); /* the task module fills in the methods */
  lua_pop(L, 1);
  raw_signals = 0;
  running_co = NULL;
  main_thread = pthread_self();
  uv_async_init(loop, &S.signal_async, on_signal_async);
  uv_unref((uv_handle_t *)&S.signal_async);
  set_signal_handlers(on_signal);
}

int sched_run(void) {
  for (;;) {
    /* resume only the tasks ready now, so a task that keeps yielding cannot starve I/O */
    tug_task *batch = S.ready_head;
    S.ready_head = S.ready_tail = NULL;
    while (batch) {
      tug_task *t = batch;
      batch = t->next_ready;
      t->queued = 0;
      if (t->state == TASK_READY || t->state == TASK_NEW)
        task_resume(t);
    }
    int alive = uv_loop_alive(S.loop);
    if (!alive && S.ready_head == NULL)
      break;
    uv_run(S.loop, S.ready_head ? UV_RUN_NOWAIT : UV_RUN_ONCE);
    if (signal_unseen()) /* uv_run does not poll when only unreferenced handles are left */
      on_signal_async(&S.signal_async);
    act_on_hangups();
    if (S.interrupt_pending && S.interrupt_ref == LUA_NOREF) /* the handler went meanwhile */
      S.interrupt_pending = 0, S.cancel_all_pending = 1;
    if (S.cancel_all_pending) {
      S.cancel_all_pending = 0;
      sched_cancel_all();
    }
    /* One call per signal, counting up to S.interrupts. The handlers go first in the queue:
       a task the hook yielded out of a loop must not spin again before they cancel it. */
    tug_task *first = S.ready_head, *last = S.ready_tail;
    S.ready_head = S.ready_tail = NULL;
    while (S.interrupt_pending > 0) {
      lua_rawgeti(S.L, LUA_REGISTRYINDEX, S.interrupt_ref);
      lua_pushinteger(S.L, S.interrupts - --S.interrupt_pending);
      sched_spawn(S.L, 1);
      lua_pop(S.L, 1);
    }
    if (first != NULL) {
      if (S.ready_tail != NULL)
        S.ready_tail->next_ready = first;
      else
        S.ready_head = first;
      S.ready_tail = last;
    }
  }
  return S.live == NULL ? 0 : -1;
}

int sched_unobserved_failures(void) { return S.unobserved_failures; }

void sched_close(void) {
  set_signal_handlers(SIG_DFL); /* the async handle is going: a late signal ends tug plainly */
  uv_close((uv_handle_t *)&S.signal_async, NULL);
  uv_run(S.loop, UV_RUN_DEFAULT);
}
