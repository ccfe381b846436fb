/*
 * scheduler.h: the scheduler's interface for the runtime and the task module.
 * Modules that only wait need tug.h alone; this adds spawning, watching and cancelling.
 */
#ifndef TUG_SCHEDULER_H
#define TUG_SCHEDULER_H

#include <stdint.h>

#include "tug.h"

#define TUG_TASK_MT "tug.task"

/* A node through which one party follows a task until it finishes. notify runs once,
   from the scheduler (never inside a libuv callback), after the task has finished. */
typedef struct sched_watch sched_watch;
struct sched_watch {
  sched_watch *prev, *next;
  tug_task *target;
  void (*notify)(sched_watch *w, tug_task *finished);
};

void sched_init(lua_State *L, uv_loop_t *loop);
/* Runs the loop until no task is ready and libuv has nothing left to do.
   Returns 0 when every task finished, -1 when some still wait on something that
   can never happen. */
int sched_run(void);
void sched_close(void);

/* Stack: fn, args (nargs of them). Replaces them with the new task's userdata, which is
   queued to start at the loop's next turn. */
tug_task *sched_spawn(lua_State *L, int nargs);
void sched_cancel(tug_task *t);
/* Cancels every task that is not running right now (Ctrl-C, a failed main chunk). */
void sched_cancel_all(void);
/* Prints a failed task's message and traceback to stderr, redacted. */
void sched_report(tug_task *t);
/* Hook-based deadline for code that never yields; 0 removes it. */
void sched_set_deadline(tug_task *t, uint64_t deadline_hrtime);

void sched_watch_add(sched_watch *w, tug_task *target);
void sched_watch_remove(sched_watch *w);

int sched_done(tug_task *t);
/* "new", "ready", "running", "waiting", "done", "failed" or "cancelled". */
const char *sched_status(tug_task *t);
int sched_failed(tug_task *t);
int sched_cancelled(tug_task *t);
/* Marks a finished task's outcome as handled by someone (no "unhandled" exit status). */
void sched_observe(tug_task *t);
/* Pushes up to max of a finished task's results; returns how many. */
int sched_push_results(lua_State *L, tug_task *t, int max);
/* Pushes a failed task's error value (the object it raised). */
void sched_push_error(lua_State *L, tug_task *t);
uint64_t sched_id(tug_task *t);
/* Pushes the handle (userdata) of a task that has not finished. */
void sched_push_handle(lua_State *L, tug_task *t);
tug_task *sched_task_of(lua_State *co);
tug_task *sched_current(void);
int sched_unobserved_failures(void);
int sched_interrupted(void);
/* A new scope, for tasks that belong together (a run's steps and all they start). */
int sched_scope_new(void);
/* The current task's scope (0: none). */
int sched_scope_current(void);
/* Puts the current task in a scope (0: none): what it spawns from now on (and what those
   spawn) belongs to it. Returns the scope it was in. */
int sched_scope_set(int scope);
/* Cancels every task of the scope still alive (but the current one), and pushes a list of
   what they were (their labels, else where they waited). */
int sched_scope_close(lua_State *L, int scope);
/* Names a task for that list ("http.server on 127.0.0.1:8080"). */
void sched_set_label(tug_task *t, const char *label);
/* Pops a function (or nil) from L: the handler that Ctrl-C and SIGTERM run, as
   handler(count) in a new task, instead of cancelling every task. */
void sched_set_interrupt_handler(lua_State *L);
/* Pops a function (or nil) as the SIGHUP handler: while one is set, SIGHUP detaches tug
   from its terminal (stdin, stdout, stderr to /dev/null) and calls it in a new task;
   without one, SIGHUP is handled as SIGTERM. */
void sched_set_hangup_handler(lua_State *L);

#endif
