/*
 * k8s.c: the native half of the Kubernetes module (k8s.core). One mechanism the Lua part
 * needs and the runtime does not offer: a wake-up flag between tasks.
 *
 *   core.event()           ev:wait([seconds]) parks the calling task until ev:notify()
 *                          (-> true) or until the timeout (-> false). A notify that finds
 *                          nobody waiting is remembered: the next wait returns true at
 *                          once. So a consumer that drains a queue and then waits never
 *                          misses a notify that came in between.
 *
 * One watch stream per namespace and resource feeds every rollout_status and wait of that
 * namespace (modules/k8s/watch.lua); each waiting verb owns an event the stream notifies.
 *
 * A waiter is a tug_op on its event's list. notify takes every waiter off the list and
 * marks it done; the scheduler resumes each task later, from its own place, never from
 * here. A waiter with a timeout owns a uv_timer and is freed in the timer's close
 * callback; one without is freed when it is resumed or cancelled.
 */
#include <math.h>
#include <stdlib.h>

#include "tug.h"

#define EVENT_MT "k8s.event"

typedef struct event_waiter event_waiter;

typedef struct {
  event_waiter *head; /* waiters, oldest first */
  event_waiter *tail;
  int pending; /* notified while nobody waited */
  lua_Integer notifies;
} k8s_event;

struct event_waiter {
  tug_op base;   /* first member: the scheduler sees a tug_op */
  k8s_event *ev; /* NULL once off the list */
  event_waiter *prev, *next;
  uv_timer_t timer;
  int has_timer;
  int notified;
};

static void waiter_unlink(event_waiter *w) {
  k8s_event *ev = w->ev;
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

static k8s_event *check_event(lua_State *L) { return (k8s_event *)luaL_checkudata(L, 1, EVENT_MT); }

/* ev:wait([seconds]) -> true when notified (now or before), false when the time ran out. */
static int event_wait(lua_State *L) {
  k8s_event *ev = check_event(L);
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
  k8s_event *ev = check_event(L);
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
  k8s_event *ev = check_event(L);
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
  k8s_event *ev = check_event(L);
  lua_pushfstring(L, "k8s.event (%I notifies%s)", ev->notifies, ev->pending ? ", pending" : "");
  return 1;
}

static int k8s_new_event(lua_State *L) {
  k8s_event *ev = lua_newuserdatauv(L, sizeof *ev, 0);
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

static const luaL_Reg event_meta[] = {
    {"__gc", event_gc},
    {"__tostring", event_tostring},
    {NULL, NULL},
};

static const luaL_Reg k8s_functions[] = {
    {"event", k8s_new_event},
    {NULL, NULL},
};

int luaopen_tug_k8s(lua_State *L) {
  luaL_newmetatable(L, EVENT_MT);
  luaL_setfuncs(L, event_meta, 0);
  luaL_newlib(L, event_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newlib(L, k8s_functions);
  return 1;
}
