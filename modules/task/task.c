/*
 * task.c: the task module, the Lua face of the scheduler (runtime/scheduler.c).
 *
 *   task.spawn(fn, ...)        start fn as a new task; returns its handle
 *   task.sleep(seconds)        wait (seconds or a duration string such as "200ms")
 *   task.yield()               give the loop one turn
 *   task.timeout(s, fn, ...)   run fn as a child task; cancel it and raise a
 *                              { kind = "timeout" } error if it takes longer than s
 *   task.parallel{ fn, ... }   run every fn at once; wait for all; return their first
 *                              results in order; on the first error cancel the rest
 *                              and raise that error
 *   task.event()               a wake-up flag: ev:wait([seconds]), ev:notify()
 *   handle:wait(), handle:cancel(), handle:status(), handle.id, <close> cancels
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler.h"

static tug_task *check_task(lua_State *L, int idx) {
  return (tug_task *)luaL_checkudata(L, idx, TUG_TASK_MT);
}

/* ---- sleep ---- */

/* libuv counts timers in whole milliseconds from a loop time cached at the start of the
   turn; refresh it and round up so that a sleep never ends before it was asked to. */
static uint64_t timer_ms(double seconds) {
  uv_update_time(tug_loop());
  return (uint64_t)ceil(seconds * 1000) + 1;
}

typedef struct {
  tug_op base;
  uv_timer_t timer;
} sleep_op;

static void sleep_closed(uv_handle_t *h) { free(h->data); }

static void sleep_fired(uv_timer_t *timer) {
  sleep_op *op = timer->data;
  tug_op_done(&op->base);
}

static void sleep_release(tug_op *base) {
  sleep_op *op = (sleep_op *)base;
  uv_close((uv_handle_t *)&op->timer, sleep_closed);
}

static int sleep_resume(lua_State *L, tug_op *base) {
  sleep_release(base);
  return 0;
}

static int task_sleep(lua_State *L) {
  double seconds = tug_check_seconds(L, 1);
  tug_check_task(L, "task.sleep");
  if (seconds == 0)
    return tug_yield(L);
  sleep_op *op = malloc(sizeof *op);
  if (op == NULL)
    return luaL_error(L, "task.sleep: out of memory");
  op->base.resume = sleep_resume;
  op->base.cancel = sleep_release;
  uv_timer_init(tug_loop(), &op->timer);
  op->timer.data = op;
  uv_timer_start(&op->timer, sleep_fired, timer_ms(seconds), 0);
  return tug_await(L, &op->base);
}

static int task_yield(lua_State *L) { return tug_yield(L); }

/* ---- spawn and the handle ---- */

static int task_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  sched_spawn(L, lua_gettop(L) - 1);
  return 1;
}

/* Pushes the outcome of a finished task: its results, or raises its error. */
static int push_outcome(lua_State *L, tug_task *t) {
  sched_observe(t);
  if (sched_failed(t)) {
    sched_push_error(L, t);
    return lua_error(L);
  }
  return sched_push_results(L, t, LUAI_MAXSTACK);
}

typedef struct {
  tug_op base;
  sched_watch watch;
  tug_task *target;
} join_op;

static void join_notify(sched_watch *w, tug_task *finished) {
  join_op *op = (join_op *)((char *)w - offsetof(join_op, watch));
  (void)finished;
  tug_op_done(&op->base);
}

static int join_resume(lua_State *L, tug_op *base) {
  join_op *op = (join_op *)base;
  tug_task *target = op->target;
  free(op);
  return push_outcome(L, target);
}

static void join_cancel(tug_op *base) {
  join_op *op = (join_op *)base;
  sched_watch_remove(&op->watch);
  free(op);
}

static int handle_wait(lua_State *L) {
  tug_task *t = check_task(L, 1);
  if (sched_done(t))
    return push_outcome(L, t);
  tug_check_task(L, "task:wait");
  if (sched_task_of(L) == t)
    return luaL_error(L, "task:wait: a task cannot wait for itself");
  join_op *op = malloc(sizeof *op);
  if (op == NULL)
    return luaL_error(L, "task:wait: out of memory");
  op->base.resume = join_resume;
  op->base.cancel = join_cancel;
  op->target = t;
  op->watch.notify = join_notify;
  sched_watch_add(&op->watch, t);
  return tug_await(L, &op->base);
}

static int handle_cancel(lua_State *L) {
  sched_cancel(check_task(L, 1));
  return 0;
}

static int handle_close(lua_State *L) {
  tug_task *t = check_task(L, 1);
  if (!sched_done(t))
    sched_cancel(t);
  return 0;
}

static int handle_status(lua_State *L) {
  lua_pushstring(L, sched_status(check_task(L, 1)));
  return 1;
}

static int handle_index(lua_State *L) {
  tug_task *t = check_task(L, 1);
  const char *key = luaL_checkstring(L, 2);
  if (strcmp(key, "id") == 0) {
    lua_pushinteger(L, (lua_Integer)sched_id(t));
    return 1;
  }
  luaL_getmetatable(L, TUG_TASK_MT);
  lua_getfield(L, -1, "methods");
  lua_getfield(L, -1, key);
  return 1;
}

static int handle_tostring(lua_State *L) {
  tug_task *t = check_task(L, 1);
  lua_pushfstring(L, "task %I (%s)", (lua_Integer)sched_id(t), sched_status(t));
  return 1;
}

/* ---- timeout ---- */

typedef struct {
  tug_op base;
  uv_timer_t timer;
  sched_watch watch;
  tug_task *child;
  double seconds;
} timeout_op;

static void timeout_closed(uv_handle_t *h) { free(h->data); }

static void timeout_fired(uv_timer_t *timer) {
  timeout_op *op = timer->data;
  tug_op_done(&op->base); /* the resume, in the task, cancels the child */
}

static void timeout_child_done(sched_watch *w, tug_task *finished) {
  timeout_op *op = (timeout_op *)((char *)w - offsetof(timeout_op, watch));
  (void)finished;
  uv_timer_stop(&op->timer);
  tug_op_done(&op->base);
}

static void timeout_release(timeout_op *op) {
  sched_watch_remove(&op->watch);
  uv_close((uv_handle_t *)&op->timer, timeout_closed);
}

static int timeout_resume(lua_State *L, tug_op *base) {
  timeout_op *op = (timeout_op *)base;
  tug_task *child = op->child;
  double seconds = op->seconds;
  timeout_release(op);
  if (sched_done(child) && !(sched_failed(child) && sched_cancelled(child)))
    return push_outcome(L, child);
  sched_cancel(child);
  sched_observe(child);
  return tug_raise(L, "timeout", "timed out after %f seconds", seconds);
}

static void timeout_cancel(tug_op *base) {
  timeout_op *op = (timeout_op *)base;
  sched_cancel(op->child);
  sched_observe(op->child);
  timeout_release(op);
}

static int task_timeout(lua_State *L) {
  double seconds = tug_check_seconds(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  tug_check_task(L, "task.timeout");
  timeout_op *op = malloc(sizeof *op);
  if (op == NULL)
    return luaL_error(L, "task.timeout: out of memory");
  tug_task *child = sched_spawn(L, lua_gettop(L) - 2); /* fn, args -> child handle */
  sched_set_deadline(child, uv_hrtime() + (uint64_t)(seconds * 1e9));
  op->base.resume = timeout_resume;
  op->base.cancel = timeout_cancel;
  op->child = child;
  op->seconds = seconds;
  op->watch.notify = timeout_child_done;
  sched_watch_add(&op->watch, child);
  uv_timer_init(tug_loop(), &op->timer);
  op->timer.data = op;
  uv_timer_start(&op->timer, timeout_fired, timer_ms(seconds), 0);
  return tug_await(L, &op->base); /* the child handle stays on this frame's stack */
}

/* ---- parallel ---- */

typedef struct parallel_op parallel_op;
typedef struct {
  sched_watch watch;
  parallel_op *op;
  tug_task *child;
} parallel_child;

struct parallel_op {
  tug_op base;
  int count, remaining;
  int failed; /* 1-based index of the first child that failed, 0 if none */
  parallel_child children[];
};

static void parallel_cancel_children(parallel_op *op) {
  for (int i = 0; i < op->count; i++) {
    sched_watch_remove(&op->children[i].watch);
    sched_cancel(op->children[i].child);
    sched_observe(op->children[i].child);
  }
}

static void parallel_child_done(sched_watch *w, tug_task *finished) {
  parallel_child *c = (parallel_child *)w;
  parallel_op *op = c->op;
  op->remaining--;
  if (sched_failed(finished) && op->failed == 0) {
    op->failed = (int)(c - op->children) + 1;
    sched_observe(finished);
    parallel_cancel_children(op); /* fail fast: the rest no longer matter */
    tug_op_done(&op->base);
  } else if (op->remaining == 0) {
    tug_op_done(&op->base);
  }
}

static int parallel_resume(lua_State *L, tug_op *base) {
  parallel_op *op = (parallel_op *)base;
  int count = op->count, failed = op->failed;
  tug_task *failed_child = failed ? op->children[failed - 1].child : NULL;
  free(op);
  if (failed_child)
    return push_outcome(L, failed_child);
  /* stack: 1 = the functions, 2 = the children handles */
  luaL_checkstack(L, count, "task.parallel: too many results");
  for (int i = 1; i <= count; i++) {
    lua_rawgeti(L, 2, i);
    tug_task *child = lua_touserdata(L, -1);
    lua_pop(L, 1);
    sched_observe(child);
    if (sched_push_results(L, child, 1) == 0)
      lua_pushnil(L);
  }
  return count;
}

static void parallel_cancel(tug_op *base) {
  parallel_op *op = (parallel_op *)base;
  parallel_cancel_children(op);
  free(op);
}

static int task_parallel(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  int count = (int)luaL_len(L, 1);
  for (int i = 1; i <= count; i++) {
    if (lua_rawgeti(L, 1, i) != LUA_TFUNCTION)
      return luaL_error(L, "task.parallel: item %d is a %s, not a function", i,
                        luaL_typename(L, -1));
    lua_pop(L, 1);
  }
  if (count == 0)
    return 0;
  tug_check_task(L, "task.parallel");
  parallel_op *op = malloc(sizeof *op + (size_t)count * sizeof op->children[0]);
  if (op == NULL)
    return luaL_error(L, "task.parallel: out of memory");
  lua_createtable(L, count, 0); /* 2: the children, kept alive on this frame */
  op->base.resume = parallel_resume;
  op->base.cancel = parallel_cancel;
  op->count = op->remaining = count;
  op->failed = 0;
  for (int i = 0; i < count; i++) {
    lua_rawgeti(L, 1, i + 1);
    tug_task *child = sched_spawn(L, 0);
    lua_rawseti(L, 2, i + 1);
    op->children[i].op = op;
    op->children[i].child = child;
    op->children[i].watch.notify = parallel_child_done;
    sched_watch_add(&op->children[i].watch, child);
  }
  return tug_await(L, &op->base);
}

static int task_current(lua_State *L) {
  tug_task *t = sched_task_of(L);
  if (t == NULL || sched_current() != t)
    return 0;
  /* the running task's handle is the userdata that owns this coroutine: find it through
     the registry anchor kept while it runs */
  return sched_push_handle(L, t), 1;
}

/* ---- events: a wake-up flag between tasks ----

   task.event() -> ev. ev:wait([seconds]) parks the calling task until ev:notify() (true)
   or until the timeout (false). A notify that finds nobody waiting is remembered: the next
   wait returns true at once, so a consumer that drains a queue and then waits never misses
   a notify that came in between. A waiter is a tug_op on its event's list; notify takes
   every waiter off the list and marks it done, and the scheduler resumes each later. A
   waiter with a timeout owns a uv_timer and is freed in the timer's close callback; one
   without is freed when it is resumed or cancelled. */

#define EVENT_MT "tug.event"

typedef struct event_waiter event_waiter;

typedef struct {
  event_waiter *head; /* waiters, oldest first */
  event_waiter *tail;
  int pending; /* notified while nobody waited */
  lua_Integer notifies;
} task_event;

struct event_waiter {
  tug_op base;    /* first member: the scheduler sees a tug_op */
  task_event *ev; /* NULL once off the list */
  event_waiter *prev, *next;
  uv_timer_t timer;
  int has_timer;
  int notified;
};

static void waiter_unlink(event_waiter *w) {
  task_event *ev = w->ev;
  if (ev == NULL)
    return;
  if (w->prev)
    w->prev->next = w->next;
  else
    ev->head = w->next;
  if (w->next)
    w->next->prev = w->prev;
  else
    ev->tail = w->prev;
  w->prev = w->next = NULL;
  w->ev = NULL;
}

static void waiter_closed(uv_handle_t *h) { free(h->data); }

/* The one release path: off the list, then the timer closed (freeing the waiter in its
   callback) or the waiter freed now. */
static void waiter_release(event_waiter *w) {
  waiter_unlink(w);
  if (w->has_timer)
    uv_close((uv_handle_t *)&w->timer, waiter_closed);
  else
    free(w);
}

static void waiter_timed_out(uv_timer_t *t) {
  event_waiter *w = t->data;
  waiter_unlink(w);
  tug_op_done(&w->base);
}

static int waiter_resume(lua_State *L, tug_op *base) {
  event_waiter *w = (event_waiter *)base;
  int notified = w->notified;
  waiter_release(w);
  lua_pushboolean(L, notified);
  return 1;
}

static void waiter_cancel(tug_op *base) { waiter_release((event_waiter *)base); }

static task_event *check_event(lua_State *L) {
  return (task_event *)luaL_checkudata(L, 1, EVENT_MT);
}

/* ev:wait([seconds]) -> true when notified (now or before), false when the time ran out. */
static int event_wait(lua_State *L) {
  task_event *ev = check_event(L);
  double seconds = -1;
  if (!lua_isnoneornil(L, 2))
    seconds = tug_check_seconds(L, 2);
  if (ev->pending) {
    ev->pending = 0;
    lua_pushboolean(L, 1);
    return 1;
  }
  tug_check_task(L, "event:wait");
  event_waiter *w = calloc(1, sizeof *w);
  if (w == NULL)
    return luaL_error(L, "event:wait: out of memory");
  w->base.resume = waiter_resume;
  w->base.cancel = waiter_cancel;
  w->ev = ev;
  w->prev = ev->tail;
  if (ev->tail)
    ev->tail->next = w;
  else
    ev->head = w;
  ev->tail = w;
  if (seconds >= 0) {
    w->has_timer = 1;
    uv_timer_init(tug_loop(), &w->timer);
    w->timer.data = w;
    uv_update_time(tug_loop());
    uv_timer_start(&w->timer, waiter_timed_out, (uint64_t)ceil(seconds * 1000), 0);
  }
  return tug_await(L, &w->base);
}

/* ev:notify(): wakes every waiting task, or, with none waiting, the next one to wait. */
static int event_notify(lua_State *L) {
  task_event *ev = check_event(L);
  ev->notifies++;
  event_waiter *w = ev->head;
  if (w == NULL) {
    ev->pending = 1;
    return 0;
  }
  ev->head = ev->tail = NULL;
  while (w) {
    event_waiter *next = w->next;
    w->prev = w->next = NULL;
    w->ev = NULL;
    w->notified = 1;
    if (w->has_timer)
      uv_timer_stop(&w->timer);
    tug_op_done(&w->base);
    w = next;
  }
  return 0;
}

/* Each waiting task holds its event on its stack, so an event is never collected with
   waiters; detach any anyway rather than leave pointers into freed memory. */
static int event_gc(lua_State *L) {
  task_event *ev = check_event(L);
  for (event_waiter *w = ev->head; w;) {
    event_waiter *next = w->next;
    w->ev = NULL;
    w->prev = w->next = NULL;
    w = next;
  }
  ev->head = ev->tail = NULL;
  return 0;
}

static int event_tostring(lua_State *L) {
  task_event *ev = check_event(L);
  lua_pushfstring(L, "task.event (%I notifies%s)", ev->notifies, ev->pending ? ", pending" : "");
  return 1;
}

static int task_new_event(lua_State *L) {
  task_event *ev = lua_newuserdatauv(L, sizeof *ev, 0);
  ev->head = ev->tail = NULL;
  ev->pending = 0;
  ev->notifies = 0;
  luaL_setmetatable(L, EVENT_MT);
  return 1;
}

static const luaL_Reg event_methods[] = {
    {"wait", event_wait},
    {"notify", event_notify},
    {NULL, NULL},
};

static const luaL_Reg event_metamethods[] = {
    {"__gc", event_gc},
    {"__tostring", event_tostring},
    {NULL, NULL},
};

static const luaL_Reg handle_methods[] = {
    {"wait", handle_wait},
    {"cancel", handle_cancel},
    {"status", handle_status},
    {NULL, NULL},
};

static const luaL_Reg handle_meta[] = {
    {"__index", handle_index},
    {"__tostring", handle_tostring},
    {"__close", handle_close},
    {NULL, NULL},
};

static const luaL_Reg task_funcs[] = {
    {"spawn", task_spawn},       {"sleep", task_sleep},
    {"yield", task_yield},       {"timeout", task_timeout},
    {"parallel", task_parallel}, {"current", task_current},
    {"event", task_new_event},   {NULL, NULL},
};

int luaopen_tug_task(lua_State *L) {
  luaL_newmetatable(L, EVENT_MT);
  luaL_setfuncs(L, event_metamethods, 0);
  luaL_newlib(L, event_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_getmetatable(L, TUG_TASK_MT);
  luaL_setfuncs(L, handle_meta, 0);
  luaL_newlib(L, handle_methods);
  lua_setfield(L, -2, "methods");
  lua_pop(L, 1);
  luaL_newlib(L, task_funcs);
  return 1;
}
