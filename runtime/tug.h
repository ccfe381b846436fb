/*
 * tug.h: what the runtime offers native modules.
 *
 * A native module lives in modules/NAME/NAME.c and exports exactly one function,
 * luaopen_tug_NAME. If modules/NAME/NAME.lua exists it is the public module NAME and
 * the C half is preloaded as "NAME.core"; otherwise the C half is the module NAME.
 *
 * Waiting: a binding that must wait (a timer, a child process, a request) allocates an
 * operation that embeds struct tug_op as its first member, starts the work and returns
 * tug_await(L, &op->base). When the work finishes, a libuv/libcurl callback calls
 * tug_op_done(&op->base); the scheduler later resumes the task, which calls op->resume
 * inside the task to push the results. If the task is cancelled first (timeout, Ctrl-C,
 * a failing sibling in task.parallel), the scheduler detaches the op and calls
 * op->cancel instead. Exactly one of resume and cancel is called, and after either the
 * op owns itself: it must stop its work and free its memory (usually in a uv_close
 * callback). Callbacks never touch Lua.
 */
#ifndef TUG_H
#define TUG_H

#include <stddef.h>
#include <stdio.h>

#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#define TUG_VERSION "0.1.0"

/* ---- the event loop and the yield/resume protocol (runtime/scheduler.c) ---- */

typedef struct tug_task tug_task;
typedef struct tug_op tug_op;

struct tug_op {
  tug_task *task; /* set by tug_await; NULL once the op is detached */
  /* Runs inside the resumed task: push results, release the op, return their count.
     May raise (the op must be released before raising). */
  int (*resume)(lua_State *L, tug_op *op);
  /* The task no longer waits: stop the work (kill, close, remove) and release the op. */
  void (*cancel)(tug_op *op);
};

uv_loop_t *tug_loop(void);

/* Suspends the running task until tug_op_done(op). Use as `return tug_await(L, op);`.
   Raises (after calling op->cancel) when not in a task or when the task is cancelled. */
int tug_await(lua_State *L, tug_op *op);

/* From a callback: the work of op has finished; queue its task for resumption.
   Harmless after the op was cancelled. */
void tug_op_done(tug_op *op);

/* Gives the loop one turn, then goes on. Use as `return tug_yield(L);`. */
int tug_yield(lua_State *L);

/* Raises a clear error unless L is a task that may wait; `what` names the caller. */
void tug_check_task(lua_State *L, const char *what);

/* ---- structured errors (runtime/host.c) ---- */

/* Pushes an error object { kind = KIND, message = MSG } whose __tostring is the message.
   The message passes through redaction. */
void tug_push_error(lua_State *L, const char *kind, const char *fmt, ...);
/* Pushes the error with tug_push_error and raises it. */
int tug_raise(lua_State *L, const char *kind, const char *fmt, ...);

/* ---- values shared by json and yaml (runtime/host.c) ---- */

/* Decoded arrays and objects carry these metatables so encoders keep [] and {} apart. */
#define TUG_ARRAY_MT "tug.array"
#define TUG_OBJECT_MT "tug.object"

/* null is a light userdata NULL, the same value for json.null and yaml.null. */
void tug_push_null(lua_State *L);
int tug_is_null(lua_State *L, int idx);

/* Sets the array or object metatable on the table at idx. */
void tug_mark_table(lua_State *L, int idx, const char *mt);

enum tug_table_kind { TUG_TABLE_EMPTY, TUG_TABLE_ARRAY, TUG_TABLE_OBJECT, TUG_TABLE_MIXED };
/* Classifies the table at idx: its marker metatable wins; otherwise keys 1..n with no
   holes make an array, any other keys an object, both a mixed table (an error to encode). */
enum tug_table_kind tug_table_kind(lua_State *L, int idx);

/* ---- plan mode (runtime/plan.c) ---- */

/* True while `tug plan` runs. A binding that would change the world (a write) does not
   do it: it records what it would have done with tug_plan_record and returns a result
   that says so (for http: { planned = true }, ok() true), so the step can go on. */
int tug_plan_active(void);
/* Records a would-be write: module ("http"), a one-line summary ("POST https://.../x"),
   and an optional detail (a body, a diff) or NULL. Secrets are redacted. */
void tug_plan_record(lua_State *L, const char *module, const char *summary, const char *detail);

/* ---- durations (runtime/duration.c) ---- */

/* The longest duration tug accepts: 100 years (876000h). Longer ones are mistakes, and
   they would overflow the nanosecond deadlines of timers (uint64 from boot). */
#define TUG_DURATION_MAX 3153600000.0
#define TUG_DURATION_MAX_TEXT "876000h (100 years)"

/* Parses "1m30s", "500ms", "2h", "1.5s", "1d" or a plain number of seconds.
   Returns 0 and sets *seconds, -1 when the text is not a duration, or -2 when it is
   longer than TUG_DURATION_MAX. */
int tug_parse_duration(const char *s, double *seconds);
/* Pushes the message for a duration that tug_parse_duration refused with `code`. */
const char *tug_duration_error(lua_State *L, const char *text, int code);
/* The argument at idx as seconds: a number from 0 to TUG_DURATION_MAX or a duration
   string; raises an argument error otherwise. */
double tug_check_seconds(lua_State *L, int idx);

/* ---- redaction (runtime/redact.c) ---- */

/* Registers a secret: from now on it never appears in any output of the process, in any
   of the spellings redact.c lists (escaped, percent-encoded, base64...). */
void tug_secret_add(const char *s, size_t len);
/* Pushes s with every spelling of a registered secret replaced by "***". */
const char *tug_redact_push(lua_State *L, const char *s, size_t len, size_t *out_len);
/* Writes s to a stdio stream with secrets replaced. stdout and stderr are streams: a tail
   that may be the start of a secret is held back until the next write or
   tug_redact_flush. Returns 0, or -1 with errno set when the stream fails. */
int tug_redact_write(FILE *f, const char *s, size_t len);
/* Writes out what stdout and stderr hold back, masked, and flushes them: before reading
   standard input, and at exit (registered with atexit). */
void tug_redact_flush(void);

/* ---- byte buffers (runtime/buf.c) ---- */

/* A growable run of bytes. A zeroed tug_buf is empty and ready; data is NULL until the
   first byte. Callers read data and len directly and may lower len to drop bytes from the
   end (len = 0 empties it and keeps the memory). Safe in libuv and libcurl callbacks:
   nothing raises or aborts; when memory runs out an operation returns -1 and the bytes
   already there stay as they were. */
typedef struct tug_buf {
  char *data;
  size_t len, cap;
} tug_buf;

/* Makes room for `extra` more bytes, so that appends of that many cannot fail. 0 or -1. */
int tug_buf_reserve(tug_buf *b, size_t extra);
/* Appends n bytes. 0 or -1. */
int tug_buf_append(tug_buf *b, const void *s, size_t n);
/* Appends printf-style text (without its terminating NUL). 0 or -1. */
int tug_buf_appendf(tug_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes (all of them when n >= len). */
void tug_buf_consume(tug_buf *b, size_t n);
/* Hands the bytes over: returns data (the caller frees it, NULL when nothing was ever
   appended) and leaves b empty with no memory. */
char *tug_buf_take(tug_buf *b);
/* Frees the memory; b is empty and ready again. */
void tug_buf_free(tug_buf *b);

#endif
