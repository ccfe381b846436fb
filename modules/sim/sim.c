/*
 * sim.c: the native half of the cluster simulator (sim.core). Two small mechanisms the
 * Lua model needs and the runtime does not offer:
 *
 *   core.signal()          a wake-up point: sig:wait([seconds]) parks the calling task
 *                          until sig:notify() (-> true) or until the timeout (-> false);
 *                          watch streams wait on their resource's signal, the
 *                          controller's clock waits on its own.
 *   core.fnv32a(text)      the 32-bit FNV-1a hash Kubernetes uses for pod-template-hash.
 *
 * A waiter is a tug_op in its signal's list. notify takes every waiter off the list and
 * marks it done; the scheduler resumes each task later, from its own place, never from
 * here. A waiter with a timeout owns a uv_timer and is freed in the timer's close
 * callback; one without is freed when it is resumed or cancelled.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "tug.h"

#define SIGNAL_MT "sim.signal"

typedef struct sig_waiter sig_waiter;

typedef struct {
  sig_waiter *head; /* waiters, in the order they started waiting */
  sig_waiter *tail;
  lua_Integer notifies; /* how many times notify ran: lets callers spot missed wake-ups */
} sim_signal;

struct sig_waiter {
  tug_op base;     /* first member: the scheduler sees a tug_op */
  sim_signal *sig; /* NULL once off the list */
  sig_waiter *prev, *next;
  uv_timer_t timer;
  int has_timer;
  int notified;
};

static void waiter_unlink(sig_waiter *w) {
  sim_signal *s = w->sig;
  if (s == NULL)
    return;
  if (w->prev)
    w->prev->next = w->next;
  else
    s->head = w->next;
  if (w->next)
    w->next->prev = w->prev;
  else
    s->tail = w->prev;
  w->prev = w->next = NULL;
  w->sig = NULL;
}

static void waiter_closed(uv_handle_t *h) { free(h->data); }

/* The one release path: off the list, timer closed (freeing in its callback) or freed. */
static void waiter_release(sig_waiter *w) {
  waiter_unlink(w);
  if (w->has_timer)
    uv_close((uv_handle_t *)&w->timer, waiter_closed);
  else
    free(w);
}

static void waiter_timed_out(uv_timer_t *t) {
  sig_waiter *w = t->data;
  waiter_unlink(w);
  tug_op_done(&w->base);
}

static int waiter_resume(lua_State *L, tug_op *base) {
  sig_waiter *w = (sig_waiter *)base;
  int notified = w->notified;
  waiter_release(w);
  lua_pushboolean(L, notified);
  return 1;
}

static void waiter_cancel(tug_op *base) { waiter_release((sig_waiter *)base); }

static sim_signal *check_signal(lua_State *L) {
  return (sim_signal *)luaL_checkudata(L, 1, SIGNAL_MT);
}

/* sig:wait([seconds]) -> true when notified, false when the time ran out. */
static int signal_wait(lua_State *L) {
  sim_signal *s = check_signal(L);
  double seconds = -1;
  if (!lua_isnoneornil(L, 2)) {
    seconds = tug_check_seconds(L, 2);
    luaL_argcheck(L, seconds >= 0, 2, "must not be negative");
  }
  tug_check_task(L, "signal:wait");
  sig_waiter *w = calloc(1, sizeof *w);
  if (w == NULL)
    return luaL_error(L, "signal:wait: out of memory");
  w->base.resume = waiter_resume;
  w->base.cancel = waiter_cancel;
  w->sig = s;
  w->prev = s->tail;
  if (s->tail)
    s->tail->next = w;
  else
    s->head = w;
  s->tail = w;
  if (seconds >= 0) {
    w->has_timer = 1;
    uv_timer_init(tug_loop(), &w->timer);
    w->timer.data = w;
    uv_update_time(tug_loop());
    uv_timer_start(&w->timer, waiter_timed_out, (uint64_t)ceil(seconds * 1000), 0);
  }
  return tug_await(L, &w->base);
}

/* sig:notify(): wakes every task waiting now; tasks that start waiting later are not. */
static int signal_notify(lua_State *L) {
  sim_signal *s = check_signal(L);
  s->notifies++;
  sig_waiter *w = s->head;
  s->head = s->tail = NULL;
  while (w) {
    sig_waiter *next = w->next;
    w->prev = w->next = NULL;
    w->sig = NULL;
    w->notified = 1;
    if (w->has_timer)
      uv_timer_stop(&w->timer);
    tug_op_done(&w->base);
    w = next;
  }
  return 0;
}

static int signal_waiters(lua_State *L) {
  sim_signal *s = check_signal(L);
  lua_Integer n = 0;
  for (sig_waiter *w = s->head; w; w = w->next)
    n++;
  lua_pushinteger(L, n);
  return 1;
}

/* A signal collected with tasks still on it cannot happen (each waiting task holds it on
   its stack), but detach them anyway rather than leave pointers into freed memory. */
static int signal_gc(lua_State *L) {
  sim_signal *s = check_signal(L);
  for (sig_waiter *w = s->head; w;) {
    sig_waiter *next = w->next;
    w->sig = NULL;
    w->prev = w->next = NULL;
    w = next;
  }
  s->head = s->tail = NULL;
  return 0;
}

static int signal_tostring(lua_State *L) {
  sim_signal *s = check_signal(L);
  lua_pushfstring(L, "sim.signal (%I notifies)", s->notifies);
  return 1;
}

static int sim_new_signal(lua_State *L) {
  sim_signal *s = lua_newuserdatauv(L, sizeof *s, 0);
  s->head = s->tail = NULL;
  s->notifies = 0;
  luaL_setmetatable(L, SIGNAL_MT);
  return 1;
}

/* fnv32a(text) -> integer: FNV-1a over the bytes of text, as Go's hash/fnv New32a. */
static int sim_fnv32a(lua_State *L) {
  size_t len;
  const unsigned char *p = (const unsigned char *)luaL_checklstring(L, 1, &len);
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= 16777619u;
  }
  lua_pushinteger(L, (lua_Integer)h);
  return 1;
}

static const luaL_Reg signal_methods[] = {
    {"wait", signal_wait},
    {"notify", signal_notify},
    {"waiters", signal_waiters},
    {NULL, NULL},
};

static const luaL_Reg signal_meta[] = {
    {"__gc", signal_gc},
    {"__tostring", signal_tostring},
    {NULL, NULL},
};

static const luaL_Reg sim_functions[] = {
    {"signal", sim_new_signal},
    {"fnv32a", sim_fnv32a},
    {NULL, NULL},
};

int luaopen_tug_sim(lua_State *L) {
  luaL_newmetatable(L, SIGNAL_MT);
  luaL_setfuncs(L, signal_meta, 0);
  luaL_newlib(L, signal_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newlib(L, sim_functions);
  return 1;
}
