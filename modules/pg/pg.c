/*
 * pg.c: PostgreSQL connections on tug's loop (the C half of the pg module, "pg.core").
 *
 * libpq's asynchronous API does the protocol: PQconnectStartParams/PQconnectPoll to connect,
 * PQsendQuery/PQsendQueryParams to send, PQconsumeInput/PQisBusy/PQgetResult to read. One
 * uv_poll on PQsocket tells us when the socket is ready; its callback only feeds libpq and, when
 * a statement's last result is in, calls tug_op_done. The waiting task then converts the
 * PGresult into Lua values (pg_op_resume), so Lua never runs inside a callback.
 *
 * A connection (pg_conn) is malloc'd and owned by C: the Lua userdata only points at it. It
 * runs one statement at a time; statements from other tasks wait in a FIFO queue, and while a
 * transaction is open only its own task's statements go out. Its libuv handles (the poll,
 * which is replaced when libpq changes sockets while connecting, and one timer for timeouts)
 * free the struct from their close callbacks once the userdata has let go. A task cancelled
 * while its statement runs leaves the statement to be cancelled (PQcancel, on libuv's thread
 * pool because it blocks) and its results drained before the next one starts; a server that
 * ignores the cancel for the grace period (5 s by default) loses the connection.
 *
 * pg.lua builds the public API (URLs and secrets, plan mode, parameters that are tables,
 * transactions, helpers) over core.connect, core.query and the connection methods here.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libpq-fe.h>

#include "tug.h"

#define PG_CONN_MT "pg.connection"
#define PG_DECODE_KEY "pg.json_decode"
/* Seconds a server gets to answer a cancel request before the connection is dropped
   (core.connect's third argument changes it). */
#define PG_CANCEL_GRACE 5.0
/* Notices kept per statement (a migration full of RAISE NOTICE must not grow memory). */
#define PG_MAX_NOTICES 100
/* How much of a statement names it in errors and plans. */
#define PG_LABEL_MAX 100

/* Type OIDs from pg_type.h (stable across server versions). */
enum {
  OID_BOOL = 16,
  OID_BYTEA = 17,
  OID_CHAR = 18,
  OID_NAME = 19,
  OID_INT8 = 20,
  OID_INT2 = 21,
  OID_INT4 = 23,
  OID_TEXT = 25,
  OID_OID = 26,
  OID_XID = 28,
  OID_JSON = 114,
  OID_FLOAT4 = 700,
  OID_FLOAT8 = 701,
  OID_BPCHAR = 1042,
  OID_VARCHAR = 1043,
  OID_DATE = 1082,
  OID_TIMESTAMP = 1114,
  OID_TIMESTAMPTZ = 1184,
  OID_NUMERIC = 1700,
  OID_UUID = 2950,
  OID_JSONB = 3802,
};

enum conn_state { CONN_CONNECTING, CONN_IDLE, CONN_LOST, CONN_CLOSED };
enum op_kind { OP_CONNECT, OP_RESET, OP_QUERY };
/* What a statement's op gives back: rows and info, the affected count and info, nothing
   (discard), or just the first row or the first row's first column (row, value). */
enum op_mode { MODE_ROWS, MODE_COUNT, MODE_DISCARD, MODE_ROW, MODE_VALUE };
/* A transaction owns its connection: statements from other tasks wait from its BEGIN (sent
   with OWN_HOLD) until its COMMIT or ROLLBACK (sent with OWN_RELEASE). */
enum op_ownership { OWN_NONE, OWN_HOLD, OWN_RELEASE };
enum timer_phase { TIMER_OFF, TIMER_CONNECT, TIMER_STATEMENT, TIMER_GRACE };

typedef struct pg_conn pg_conn;

typedef struct pg_op {
  tug_op base;   /* first member: the runtime sees a tug_op */
  pg_conn *conn; /* set while queued or running on conn; NULL once finished */
  pg_conn *made; /* OP_CONNECT: the new connection, handed to Lua in resume */
  struct pg_op *next;
  int kind, mode;
  int ownership;     /* enum op_ownership */
  lua_Integer owner; /* the task (its id) that sent the statement; 0 when unknown */
  int finished;      /* the outcome is in: result or error */
  int timed_out;     /* our timeout cancelled it */
  int lost;          /* the connection broke under it */
  double timeout;
  char *block;     /* owns the statement and the parameters (or the target of a connect) */
  const char *sql; /* the statement (OP_QUERY) or the target (connects), inside block */
  int nparams;
  const char **values;
  int *lengths, *formats;
  PGresult *result;
  char *error; /* a libpq message when there is no error result */
  tug_buf notices;
  uint64_t start_ns, end_ns;
} pg_op;

struct pg_conn {
  PGconn *pq;
  int state;
  uv_poll_t *poll; /* the current poll handle (malloc'd), or NULL */
  int poll_fd;
  int poll_events;
  uv_timer_t timer;
  int timer_phase;
  double grace;        /* seconds a cancel request may take */
  int handles_open;    /* handles whose close callback has not run yet */
  int cancels_pending; /* cancel requests on the thread pool: the queue waits for them */
  int attached;        /* a Lua userdata points here */
  int waiters;         /* tasks waiting on this connection (keeps the loop alive) */
  pg_op *connecting;
  pg_op *current; /* the op whose statement runs; NULL when none or when it was cancelled */
  int in_flight;  /* a statement was sent and its results are not all read */
  int copy_out;   /* inside a COPY TO STDOUT nobody reads: discard the data */
  int want_write; /* PQflush has more to send */
  pg_op *queue_head, *queue_tail;
  lua_Integer held_by; /* the task whose transaction owns the connection, or 0 */
  tug_buf notices;     /* collected for the running statement: "SEVERITY: message\n"... */
  int notices_count;
  char label[160]; /* user@host:port/db, for messages and __tostring */
};

typedef struct pg_handle {
  pg_conn *conn; /* NULL once closed */
  char label[160];
} pg_handle;

typedef struct pg_cancel_req {
  uv_work_t work;
  PGcancel *cancel;
  pg_conn *conn; /* kept alive (cancels_pending) until the request is done */
} pg_cancel_req;

static void conn_step(pg_conn *c);
static void conn_send_next(pg_conn *c);

/* ---- small helpers ---- */

static char *dup_string(const char *s) {
  size_t n = strlen(s);
  char *copy = malloc(n + 1);
  if (copy)
    memcpy(copy, s, n + 1);
  return copy;
}

/* libpq messages end with a newline and indent continuation lines with a tab. */
static void push_trimmed(lua_State *L, const char *s) {
  size_t n = strlen(s);
  while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
    n--;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '\n') {
      luaL_addchar(&b, ' ');
      while (i + 1 < n && (s[i + 1] == '\t' || s[i + 1] == ' '))
        i++;
    } else {
      luaL_addchar(&b, s[i]);
    }
  }
  luaL_pushresult(&b);
}

/* The first non-empty line of a statement, cut at PG_LABEL_MAX bytes. */
static void push_label(lua_State *L, const char *sql) {
  while (*sql == ' ' || *sql == '\t' || *sql == '\n' || *sql == '\r')
    sql++;
  size_t n = strcspn(sql, "\r\n");
  while (n > 0 && (sql[n - 1] == ' ' || sql[n - 1] == '\t'))
    n--;
  if (n > PG_LABEL_MAX) {
    lua_pushlstring(L, sql, PG_LABEL_MAX);
    lua_pushliteral(L, "...");
    lua_concat(L, 2);
  } else {
    lua_pushlstring(L, sql, n);
  }
}

static uint64_t seconds_to_ms(double s) {
  double ms = s * 1000.0;
  if (ms > 1e12)
    ms = 1e12;
  return ms > 0 && ms < 1 ? 1 : (uint64_t)ms;
}

/* ---- lifetime of a connection ---- */

static void conn_maybe_free(pg_conn *c) {
  if (c->handles_open > 0 || c->cancels_pending > 0 || c->attached || c->state != CONN_CLOSED)
    return;
  tug_buf_free(&c->notices);
  free(c);
}

static void on_handle_closed(uv_handle_t *handle) {
  pg_conn *c = handle->data;
  if ((uv_timer_t *)handle != &c->timer)
    free(handle); /* a poll handle, replaced when libpq changes sockets */
  c->handles_open--;
  conn_maybe_free(c);
}

static void on_poll(uv_poll_t *handle, int status, int events);

/* Only tasks waiting on the connection keep the loop running; an idle connection or one
   draining a cancelled statement does not hold up the end of a script. */
static void conn_update_ref(pg_conn *c) {
  int ref = c->waiters > 0;
  if (c->poll)
    ref ? uv_ref((uv_handle_t *)c->poll) : uv_unref((uv_handle_t *)c->poll);
  if (c->state != CONN_CLOSED)
    ref ? uv_ref((uv_handle_t *)&c->timer) : uv_unref((uv_handle_t *)&c->timer);
}

static void poll_close(pg_conn *c) {
  if (!c->poll)
    return;
  uv_poll_stop(c->poll);
  uv_close((uv_handle_t *)c->poll, on_handle_closed);
  c->poll = NULL;
  c->poll_fd = -1;
  c->poll_events = 0;
}

/* Watches PQsocket for events. libpq may move to another socket while it connects (another
   address, an SSL retry), and a new socket may get the old one's number, so `fresh` (used
   while connecting) re-registers the descriptor even when its number has not changed. */
static int poll_watch(pg_conn *c, int events, int fresh) {
  int fd = PQsocket(c->pq);
  if (fd < 0) {
    poll_close(c);
    return -1;
  }
  if (c->poll && c->poll_fd != fd)
    poll_close(c);
  if (!c->poll) {
    uv_poll_t *p = malloc(sizeof *p);
    if (!p)
      return -1;
    if (uv_poll_init_socket(tug_loop(), p, fd) != 0) {
      free(p);
      return -1;
    }
    p->data = c;
    c->handles_open++;
    c->poll = p;
    c->poll_fd = fd;
    c->poll_events = 0;
  } else if (fresh) {
    uv_poll_stop(c->poll);
    c->poll_events = 0;
  }
  if (events != c->poll_events) {
    if (uv_poll_start(c->poll, events, on_poll) != 0)
      return -1;
    c->poll_events = events;
  }
  conn_update_ref(c);
  return 0;
}

static void timer_stop(pg_conn *c) {
  c->timer_phase = TIMER_OFF;
  if (c->state != CONN_CLOSED)
    uv_timer_stop(&c->timer);
}

static void on_timer(uv_timer_t *timer);

static void timer_start(pg_conn *c, int phase, double seconds) {
  c->timer_phase = phase;
  uv_timer_start(&c->timer, on_timer, seconds_to_ms(seconds), 0);
  conn_update_ref(c);
}

/* ---- cancel requests (PQcancel blocks, so it runs on libuv's thread pool) ----
   PQcancel returns once the postmaster has handled the request. Until then no statement is
   sent on the connection: a cancel that arrived late would hit the next statement (another
   task's) instead of the one it was meant for. */

static void cancel_work(uv_work_t *work) {
  pg_cancel_req *req = (pg_cancel_req *)work;
  char errbuf[256];
  PQcancel(req->cancel, errbuf, sizeof errbuf); /* thread-safe; a failure shows as the grace */
}

static void cancel_done(uv_work_t *work, int status) {
  pg_cancel_req *req = (pg_cancel_req *)work;
  pg_conn *c = req->conn;
  (void)status;
  PQfreeCancel(req->cancel);
  free(req);
  c->cancels_pending--;
  if (c->state == CONN_IDLE)
    conn_send_next(c);
  conn_maybe_free(c);
}

static void conn_send_cancel(pg_conn *c) {
  pg_cancel_req *req = malloc(sizeof *req);
  if (!req)
    return;
  req->conn = c;
  req->cancel = PQgetCancel(c->pq);
  if (!req->cancel || uv_queue_work(tug_loop(), &req->work, cancel_work, cancel_done) != 0) {
    if (req->cancel)
      PQfreeCancel(req->cancel);
    free(req);
    return;
  }
  c->cancels_pending++;
}

/* ---- operations ---- */

static void op_free(pg_op *op) {
  if (op->result)
    PQclear(op->result);
  free(op->error);
  tug_buf_free(&op->notices);
  free(op->block);
  free(op);
}

/* The outcome is in: the op leaves its connection and wakes its task (an op nobody waits for,
   a discarded statement, is freed at once). */
static void op_finish(pg_op *op) {
  pg_conn *c = op->conn;
  op->finished = 1;
  op->end_ns = uv_hrtime();
  op->conn = NULL;
  if (op->mode == MODE_DISCARD) {
    op_free(op);
    return;
  }
  if (c) {
    c->waiters--;
    conn_update_ref(c);
  }
  tug_op_done(&op->base);
}

static void op_fail(pg_op *op, const char *message, int lost) {
  if (!op->result && !op->error)
    op->error = dup_string(message && *message ? message : "the connection failed");
  op->lost = op->lost || lost;
  op_finish(op);
}

static void queue_push(pg_conn *c, pg_op *op) {
  op->next = NULL;
  if (c->queue_tail)
    c->queue_tail->next = op;
  else
    c->queue_head = op;
  c->queue_tail = op;
}

static pg_op *queue_pop(pg_conn *c) {
  pg_op *op = c->queue_head;
  if (op) {
    c->queue_head = op->next;
    if (!c->queue_head)
      c->queue_tail = NULL;
    op->next = NULL;
  }
  return op;
}

static void queue_remove(pg_conn *c, pg_op *op) {
  pg_op **at = &c->queue_head, *prev = NULL;
  while (*at && *at != op) {
    prev = *at;
    at = &(*at)->next;
  }
  if (!*at)
    return;
  *at = op->next;
  if (c->queue_tail == op)
    c->queue_tail = prev;
  op->next = NULL;
}

/* Keeps the first error, otherwise the last result (several statements in one string). */
static void op_take_result(pg_conn *c, PGresult *res) {
  pg_op *op = c->current;
  if (!op) {
    PQclear(res);
    return;
  }
  if (op->result) {
    ExecStatusType old = PQresultStatus(op->result);
    if (old == PGRES_FATAL_ERROR || old == PGRES_BAD_RESPONSE) {
      PQclear(res);
      return;
    }
    PQclear(op->result);
  }
  op->result = res;
}

static void notices_move(pg_conn *c, pg_op *op) {
  if (op && !op->notices.data) {
    op->notices = c->notices;
    c->notices = (tug_buf){0};
  } else {
    tug_buf_free(&c->notices);
  }
  c->notices_count = 0;
}

/* The connection is gone (the server went away, a cancel went unanswered): every statement
   running or queued fails with the reason, and the connection waits for reconnect or close. */
static void conn_lose_as(pg_conn *c, const char *reason, int lost);

static void conn_lose(pg_conn *c, const char *reason) { conn_lose_as(c, reason, 1); }

static void conn_lose_as(pg_conn *c, const char *reason, int lost) {
  char *why = dup_string(reason && *reason ? reason : "the connection to the server was lost");
  timer_stop(c);
  if (c->in_flight) {
    /* libpq may still hold the error the server sent before it hung up */
    for (int i = 0; i < 8; i++) {
      if (PQstatus(c->pq) != CONNECTION_BAD && PQisBusy(c->pq))
        break; /* PQgetResult would block */
      PGresult *res = PQgetResult(c->pq);
      if (!res)
        break;
      op_take_result(c, res);
    }
  }
  c->in_flight = 0;
  c->copy_out = 0;
  c->want_write = 0;
  c->held_by = 0; /* the session, and its transaction, are gone */
  poll_close(c);
  if (c->state != CONN_CLOSED)
    c->state = CONN_LOST;
  pg_op *op = c->current;
  c->current = NULL;
  if (op) {
    notices_move(c, op);
    op_fail(op, why, lost);
  }
  while ((op = queue_pop(c)) != NULL)
    op_fail(op, why, lost);
  free(why);
  conn_update_ref(c);
}

/* Ends the connection for good: statements fail with "closed", libpq lets go of the socket,
   the handles close (and their callbacks free the struct once Lua has let go too). */
static void conn_close(pg_conn *c, const char *reason) {
  if (c->state == CONN_CLOSED)
    return;
  pg_op *op = c->connecting;
  c->connecting = NULL;
  if (op) {
    op->made = NULL;
    op_fail(op, reason, 0);
  }
  /* a statement still running on the server is cancelled, not left to run unobserved */
  if (c->in_flight && c->pq && PQstatus(c->pq) == CONNECTION_OK)
    conn_send_cancel(c);
  conn_lose_as(c, reason, 0);
  c->state = CONN_CLOSED;
  poll_close(c); /* before PQfinish closes the descriptor */
  if (c->pq) {
    PQfinish(c->pq);
    c->pq = NULL;
  }
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
  conn_maybe_free(c);
}

static void on_notice(void *arg, const PGresult *res) {
  pg_conn *c = arg;
  const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY);
  const char *message = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
  if (!message || c->notices_count >= PG_MAX_NOTICES)
    return;
  if (tug_buf_appendf(&c->notices, "%s%s%s\n", severity ? severity : "", severity ? ": " : "",
                      message) == 0)
    c->notices_count++;
}

/* ---- the state machine, driven by the poll and the timer ---- */

static void conn_connect_failed(pg_conn *c, const char *message);

static void conn_connected(pg_conn *c) {
  if (poll_watch(c, UV_READABLE, 1) != 0) {
    conn_connect_failed(c, "cannot watch the connection's socket");
    return;
  }
  pg_op *op = c->connecting;
  c->connecting = NULL;
  timer_stop(c);
  PQsetnonblocking(c->pq, 1);
  PQsetNoticeReceiver(c->pq, on_notice, c);
  c->state = CONN_IDLE;
  if (op) {
    if (op->kind == OP_CONNECT)
      op->made = c;
    op->conn = c; /* op_finish reads it to count the waiter */
    op_finish(op);
  }
  conn_send_next(c);
}

static void conn_connect_failed(pg_conn *c, const char *message) {
  pg_op *op = c->connecting;
  c->connecting = NULL;
  timer_stop(c);
  poll_close(c);
  c->state = CONN_LOST;
  if (op) {
    op->conn = c;
    op->made = NULL;
    op_fail(op, message, 0);
  }
  /* a first connection that failed has no userdata: nothing else will close it */
  if (op && op->kind == OP_CONNECT)
    conn_close(c, message);
}

/* One step of PQconnectPoll/PQresetPoll, then wait for what it asks for. */
static void conn_connect_step(pg_conn *c) {
  int resetting = c->connecting && c->connecting->kind == OP_RESET;
  PostgresPollingStatusType st = resetting ? PQresetPoll(c->pq) : PQconnectPoll(c->pq);
  switch (st) {
  case PGRES_POLLING_OK:
    conn_connected(c);
    return;
  case PGRES_POLLING_READING:
  case PGRES_POLLING_WRITING:
    if (poll_watch(c, st == PGRES_POLLING_READING ? UV_READABLE : UV_WRITABLE, 1) != 0)
      conn_connect_failed(c, "cannot watch the connection's socket");
    return;
  default:
    conn_connect_failed(c, PQerrorMessage(c->pq));
    return;
  }
}

/* The statement's results are all in: its op finishes and the next statement goes out. */
static void conn_statement_done(pg_conn *c) {
  pg_op *op = c->current;
  c->current = NULL;
  c->in_flight = 0;
  timer_stop(c);
  notices_move(c, op);
  if (op)
    op_finish(op);
  if (PQstatus(c->pq) == CONNECTION_BAD) {
    conn_lose(c, PQerrorMessage(c->pq));
    return;
  }
  conn_send_next(c);
}

/* Reads every result that is complete; returns when libpq needs more input. */
static void conn_collect(pg_conn *c) {
  while (c->in_flight) {
    if (c->copy_out) {
      char *buf;
      int n;
      while ((n = PQgetCopyData(c->pq, &buf, 1)) > 0)
        PQfreemem(buf);
      if (n == 0)
        return;
      c->copy_out = 0;
    }
    if (PQisBusy(c->pq))
      return;
    PGresult *res = PQgetResult(c->pq);
    if (!res) {
      conn_statement_done(c);
      return;
    }
    switch (PQresultStatus(res)) {
    case PGRES_COPY_IN:
      PQclear(res);
      PQputCopyEnd(c->pq, "tug: COPY FROM STDIN is not supported; use a file on the server or "
                          "INSERT with parameters");
      c->want_write = PQflush(c->pq) == 1;
      break;
    case PGRES_COPY_OUT:
      PQclear(res);
      if (c->current && !c->current->error)
        c->current->error = dup_string("COPY TO STDOUT is not supported (the data was discarded)");
      c->copy_out = 1;
      break;
    default:
      op_take_result(c, res);
    }
  }
}

static void conn_step(pg_conn *c) {
  if (c->state != CONN_IDLE)
    return;
  if (!PQconsumeInput(c->pq)) {
    conn_lose(c, PQerrorMessage(c->pq));
    return;
  }
  if (c->want_write) {
    int r = PQflush(c->pq);
    if (r < 0) {
      conn_lose(c, PQerrorMessage(c->pq));
      return;
    }
    c->want_write = r == 1;
  }
  if (c->in_flight) {
    conn_collect(c);
  } else {
    PGnotify *n;
    while ((n = PQnotifies(c->pq)) != NULL) /* LISTEN is not offered; do not pile them up */
      PQfreemem(n);
    if (PQstatus(c->pq) == CONNECTION_BAD) {
      conn_lose(c, PQerrorMessage(c->pq));
      return;
    }
  }
  if (c->state == CONN_IDLE && c->poll)
    poll_watch(c, UV_READABLE | (c->want_write ? UV_WRITABLE : 0), 0);
}

static void on_poll(uv_poll_t *handle, int status, int events) {
  pg_conn *c = handle->data;
  (void)status, (void)events; /* on an error, libpq finds out what happened when it reads */
  if (c->poll != handle)
    return;
  if (c->state == CONN_CONNECTING)
    conn_connect_step(c);
  else
    conn_step(c);
}

static void on_timer(uv_timer_t *timer) {
  pg_conn *c = timer->data;
  int phase = c->timer_phase;
  c->timer_phase = TIMER_OFF;
  if (phase == TIMER_CONNECT) {
    char message[96];
    snprintf(message, sizeof message, "timed out after %.3gs",
             c->connecting ? c->connecting->timeout : 0.0);
    if (c->connecting)
      c->connecting->timed_out = 1;
    conn_connect_failed(c, message);
  } else if (phase == TIMER_STATEMENT) {
    if (c->current)
      c->current->timed_out = 1;
    conn_send_cancel(c);
    timer_start(c, TIMER_GRACE, c->grace);
  } else if (phase == TIMER_GRACE) {
    /* a reconnect (PQresetStart) closes the socket and starts afresh */
    char message[128];
    snprintf(message, sizeof message,
             "the server did not answer the cancel request within %.3gs, so the connection "
             "was dropped",
             c->grace);
    conn_lose(c, message);
  }
}

/* Sends the next queued statement when the connection is free. */
static void conn_send_next(pg_conn *c) {
  while (c->state == CONN_IDLE && !c->in_flight && !c->cancels_pending && c->queue_head) {
    pg_op *op = NULL;
    if (!c->held_by) {
      op = queue_pop(c);
    } else {
      for (pg_op *o = c->queue_head; o; o = o->next)
        if (o->owner == c->held_by) {
          op = o;
          break;
        }
      if (!op)
        return; /* the rest wait for the transaction to end */
      queue_remove(c, op);
    }
    int sent = op->nparams == 0 ? PQsendQuery(c->pq, op->sql)
                                : PQsendQueryParams(c->pq, op->sql, op->nparams, NULL, op->values,
                                                    op->lengths, op->formats, 0);
    if (!sent) {
      int lost = PQstatus(c->pq) == CONNECTION_BAD;
      op_fail(op, PQerrorMessage(c->pq), lost);
      if (lost) {
        conn_lose(c, PQerrorMessage(c->pq));
        return;
      }
      continue;
    }
    op->start_ns = uv_hrtime();
    c->current = op;
    c->in_flight = 1;
    if (op->ownership == OWN_HOLD)
      c->held_by = op->owner;
    else if (op->ownership == OWN_RELEASE)
      c->held_by = 0;
    int r = PQflush(c->pq);
    if (r < 0) {
      conn_lose(c, PQerrorMessage(c->pq));
      return;
    }
    c->want_write = r == 1;
    if (op->timeout > 0)
      timer_start(c, TIMER_STATEMENT, op->timeout);
    if (poll_watch(c, UV_READABLE | (c->want_write ? UV_WRITABLE : 0), 0) != 0)
      conn_lose(c, "cannot watch the connection's socket");
  }
}

/* ---- the operation protocol (tug.h) ---- */

static void set_field_string(lua_State *L, const char *name, const char *value) {
  if (value) {
    lua_pushstring(L, value);
    lua_setfield(L, -2, name);
  }
}

/* Pushes the error object for a failed op: "pg: WHAT: WHY (SQLSTATE x)", where WHAT is the
   statement's first line or the connection being made, with the server's fields beside it. */
static void push_op_error(lua_State *L, pg_op *op) {
  luaL_checkstack(L, 10, NULL);
  int query = op->kind == OP_QUERY;
  if (query)
    push_label(L, op->sql);
  else
    lua_pushfstring(L, "connecting to %s", op->sql);
  const char *what = lua_tostring(L, -1);
  const PGresult *r = query ? op->result : NULL;
  const char *sqlstate = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
  const char *primary = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
  if (primary)
    lua_pushstring(L, primary);
  else if (op->error)
    push_trimmed(L, op->error);
  else if (op->result)
    push_trimmed(L, PQresultErrorMessage(op->result));
  else
    lua_pushliteral(L, "failed");
  const char *reason = lua_tostring(L, -1);
  int timed_out =
      op->timed_out || (sqlstate && strcmp(sqlstate, "57014") == 0 && strstr(reason, "timeout"));
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (op->timed_out && query) {
    char seconds[48];
    snprintf(seconds, sizeof seconds, "timed out after %.3gs", op->timeout);
    luaL_addstring(&b, seconds);
    if (op->lost) {
      luaL_addstring(&b, "; ");
      luaL_addstring(&b, reason);
    } else {
      luaL_addstring(&b, " (the statement was cancelled)");
    }
  } else {
    luaL_addstring(&b, reason);
  }
  if (sqlstate) {
    luaL_addstring(&b, " (SQLSTATE ");
    luaL_addstring(&b, sqlstate);
    luaL_addchar(&b, ')');
  }
  if (op->lost && query)
    luaL_addstring(&b, "; the connection is lost: conn:reconnect() opens a new session");
  luaL_pushresult(&b);
  tug_push_error(L, "pg", "pg: %s: %s", what, lua_tostring(L, -1));
  lua_pushstring(L, what);
  lua_setfield(L, -2, "doing");
  lua_pushstring(L, reason);
  lua_setfield(L, -2, "reason");
  lua_pushboolean(L, timed_out);
  lua_setfield(L, -2, "timed_out");
  lua_pushboolean(L, op->lost);
  lua_setfield(L, -2, "connection_lost");
  if (r) {
    set_field_string(L, "sqlstate", sqlstate);
    set_field_string(L, "severity", PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED));
    set_field_string(L, "detail", PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL));
    set_field_string(L, "hint", PQresultErrorField(r, PG_DIAG_MESSAGE_HINT));
    set_field_string(L, "constraint", PQresultErrorField(r, PG_DIAG_CONSTRAINT_NAME));
    set_field_string(L, "table", PQresultErrorField(r, PG_DIAG_TABLE_NAME));
    set_field_string(L, "column", PQresultErrorField(r, PG_DIAG_COLUMN_NAME));
    set_field_string(L, "schema", PQresultErrorField(r, PG_DIAG_SCHEMA_NAME));
    const char *position = PQresultErrorField(r, PG_DIAG_STATEMENT_POSITION);
    if (position) {
      lua_pushinteger(L, atoi(position));
      lua_setfield(L, -2, "position");
    }
  }
  lua_replace(L, -4); /* over what; drop reason and the message */
  lua_settop(L, lua_gettop(L) - 2);
}

/* ---- converting values ---- */

static void push_value(lua_State *L, Oid type, const char *s, size_t len);

/* ISO 8601 from PostgreSQL's ISO DateStyle: "2024-01-02 03:04:05.5+00" becomes
   "2024-01-02T03:04:05.5Z", "+05:30" stays, "+05" becomes "+05:00"; anything else (infinity,
   BC dates) is left as the server wrote it. */
static void push_timestamp(lua_State *L, const char *s, size_t len, int with_zone) {
  if (len < 19 || s[10] != ' ' || s[4] != '-' || s[13] != ':' || memchr(s, 'B', len)) {
    lua_pushlstring(L, s, len);
    return;
  }
  char buf[64];
  if (len >= sizeof buf - 4) {
    lua_pushlstring(L, s, len);
    return;
  }
  memcpy(buf, s, len);
  buf[10] = 'T';
  size_t n = len;
  if (with_zone) {
    size_t z = 19;
    while (z < n && buf[z] != '+' && buf[z] != '-')
      z++;
    if (z < n) {
      size_t zl = n - z;
      if (zl == 3 && buf[z + 1] == '0' && buf[z + 2] == '0') {
        buf[z] = 'Z';
        n = z + 1;
      } else if (zl == 3) {
        memcpy(buf + n, ":00", 3);
        n += 3;
      }
    }
  }
  lua_pushlstring(L, buf, n);
}

static int hex_value(char ch) {
  if (ch >= '0' && ch <= '9')
    return ch - '0';
  if (ch >= 'a' && ch <= 'f')
    return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F')
    return ch - 'A' + 10;
  return -1;
}

/* bytea's hex output ("\x68656c6c6f") as the raw bytes. */
static void push_bytea(lua_State *L, const char *s, size_t len) {
  if (len < 2 || s[0] != '\\' || s[1] != 'x') {
    lua_pushlstring(L, s, len);
    return;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (size_t i = 2; i + 1 < len; i += 2) {
    int hi = hex_value(s[i]), lo = hex_value(s[i + 1]);
    if (hi < 0 || lo < 0)
      break;
    luaL_addchar(&b, (char)(hi * 16 + lo));
  }
  luaL_pushresult(&b);
}

static void push_integer_text(lua_State *L, const char *s, size_t len) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno == 0 && end == s + len)
    lua_pushinteger(L, (lua_Integer)v);
  else
    lua_pushlstring(L, s, len);
}

static void push_float_text(lua_State *L, const char *s, size_t len) {
  if (strcmp(s, "NaN") == 0)
    lua_pushnumber(L, (lua_Number)NAN);
  else if (strcmp(s, "Infinity") == 0)
    lua_pushnumber(L, (lua_Number)HUGE_VAL);
  else if (strcmp(s, "-Infinity") == 0)
    lua_pushnumber(L, (lua_Number)-HUGE_VAL);
  else
    lua_pushnumber(L, (lua_Number)strtod(s, NULL));
  (void)len;
}

static void push_json(lua_State *L, const char *s, size_t len) {
  lua_getfield(L, LUA_REGISTRYINDEX, PG_DECODE_KEY);
  lua_pushlstring(L, s, len);
  lua_call(L, 1, 1);
}

/* The array types we decode (arrays of simple types) and their element types. */
static const struct {
  Oid array, element;
} array_types[] = {
    {1000, OID_BOOL},    {1001, OID_BYTEA},  {1002, OID_CHAR},      {1003, OID_NAME},
    {1005, OID_INT2},    {1007, OID_INT4},   {1016, OID_INT8},      {1009, OID_TEXT},
    {1028, OID_OID},     {1021, OID_FLOAT4}, {1022, OID_FLOAT8},    {1014, OID_BPCHAR},
    {1015, OID_VARCHAR}, {1182, OID_DATE},   {1115, OID_TIMESTAMP}, {1185, OID_TIMESTAMPTZ},
    {1231, OID_NUMERIC}, {2951, OID_UUID},   {199, OID_JSON},       {3807, OID_JSONB},
};

/* The element type of an array type we decode, or 0. */
static Oid array_element(Oid type) {
  for (size_t i = 0; i < sizeof array_types / sizeof array_types[0]; i++)
    if (array_types[i].array == type)
      return array_types[i].element;
  return 0;
}

/* Parses one level of PostgreSQL's array text form ("{1,NULL,\"a b\",{...}}") at *at into a
   Lua array (marked as one), elements converted as `element`. NULL elements are json.null so
   the array keeps its length. Returns -1 on malformed input. */
static int parse_array(lua_State *L, const char *s, size_t len, size_t *at, Oid element,
                       int depth) {
  size_t i = *at;
  if (depth > 8 || i >= len || s[i] != '{')
    return -1;
  luaL_checkstack(L, 4, NULL);
  lua_newtable(L);
  tug_mark_table(L, -1, TUG_ARRAY_MT);
  lua_Integer n = 0;
  i++;
  if (i < len && s[i] == '}') {
    *at = i + 1;
    return 0;
  }
  luaL_Buffer b;
  for (;;) {
    if (i >= len)
      return -1;
    if (s[i] == '{') {
      if (parse_array(L, s, len, &i, element, depth + 1) != 0)
        return -1;
    } else if (s[i] == '"') {
      luaL_buffinit(L, &b);
      for (i++; i < len && s[i] != '"'; i++) {
        if (s[i] == '\\' && i + 1 < len)
          i++;
        luaL_addchar(&b, s[i]);
      }
      if (i >= len)
        return -1;
      i++;
      luaL_pushresult(&b);
      size_t elen;
      const char *e = lua_tolstring(L, -1, &elen);
      push_value(L, element, e, elen);
      lua_remove(L, -2);
    } else {
      size_t start = i;
      while (i < len && s[i] != ',' && s[i] != '}')
        i++;
      if (i - start == 4 && strncasecmp(s + start, "NULL", 4) == 0) {
        tug_push_null(L);
      } else {
        lua_pushlstring(L, s + start, i - start); /* NUL-terminated copy for strtoll */
        size_t elen;
        const char *e = lua_tolstring(L, -1, &elen);
        push_value(L, element, e, elen);
        lua_remove(L, -2);
      }
    }
    lua_rawseti(L, -2, ++n);
    if (i >= len)
      return -1;
    if (s[i] == '}') {
      *at = i + 1;
      return 0;
    }
    if (s[i] != ',')
      return -1;
    i++;
  }
}

static void push_array(lua_State *L, Oid element, const char *s, size_t len) {
  size_t at = 0;
  if (len > 0 && s[0] == '[') { /* explicit bounds: "[0:2]={...}" */
    const char *eq = memchr(s, '=', len);
    at = eq ? (size_t)(eq - s) + 1 : len;
  }
  int top = lua_gettop(L);
  if (parse_array(L, s, len, &at, element, 0) != 0) {
    lua_settop(L, top);
    lua_pushlstring(L, s, len);
  }
}

static void push_value(lua_State *L, Oid type, const char *s, size_t len) {
  switch (type) {
  case OID_INT2:
  case OID_INT4:
  case OID_INT8:
  case OID_OID:
  case OID_XID:
    push_integer_text(L, s, len);
    return;
  case OID_FLOAT4:
  case OID_FLOAT8:
    push_float_text(L, s, len);
    return;
  case OID_BOOL:
    lua_pushboolean(L, len > 0 && s[0] == 't');
    return;
  case OID_JSON:
  case OID_JSONB:
    push_json(L, s, len);
    return;
  case OID_TIMESTAMPTZ:
    push_timestamp(L, s, len, 1);
    return;
  case OID_TIMESTAMP:
    push_timestamp(L, s, len, 0);
    return;
  case OID_BYTEA:
    push_bytea(L, s, len);
    return;
  default: {
    Oid element = array_element(type);
    if (element)
      push_array(L, element, s, len);
    else
      lua_pushlstring(L, s, len); /* text, numeric (exact), date, uuid, interval... */
  }
  }
}

/* One row as a table column name -> value; NULL columns are absent. */
static void push_row(lua_State *L, const PGresult *res, int i) {
  int ncols = PQnfields(res);
  luaL_checkstack(L, 4, NULL);
  lua_createtable(L, 0, ncols);
  for (int j = 0; j < ncols; j++) {
    if (PQgetisnull(res, i, j))
      continue;
    lua_pushstring(L, PQfname(res, j));
    push_value(L, PQftype(res, j), PQgetvalue(res, i, j), (size_t)PQgetlength(res, i, j));
    lua_rawset(L, -3);
  }
}

/* Rows as an array (marked as one) of tables column name -> value; NULL columns are absent. */
static void push_rows(lua_State *L, const PGresult *res) {
  int nrows = PQntuples(res), ncols = PQnfields(res);
  luaL_checkstack(L, ncols + 8, NULL);
  int names = lua_gettop(L) + 1;
  for (int j = 0; j < ncols; j++)
    lua_pushstring(L, PQfname(res, j));
  lua_createtable(L, nrows, 0);
  tug_mark_table(L, -1, TUG_ARRAY_MT);
  for (int i = 0; i < nrows; i++) {
    lua_createtable(L, 0, ncols);
    for (int j = 0; j < ncols; j++) {
      if (PQgetisnull(res, i, j))
        continue;
      lua_pushvalue(L, names + j);
      push_value(L, PQftype(res, j), PQgetvalue(res, i, j), (size_t)PQgetlength(res, i, j));
      lua_rawset(L, -3);
    }
    lua_rawseti(L, -2, i + 1);
  }
  lua_replace(L, names);
  lua_settop(L, names);
}

static lua_Integer affected_rows(const PGresult *res) {
  const char *n = PQcmdTuples((PGresult *)res);
  return n && *n ? (lua_Integer)strtoll(n, NULL, 10) : 0;
}

/* { command = "INSERT 0 1", columns = { names... }, count = rows returned, affected = rows
   changed, duration = seconds, notices = { ... } } */
static void push_info(lua_State *L, pg_op *op) {
  const PGresult *res = op->result;
  lua_createtable(L, 0, 6);
  if (res) {
    lua_pushstring(L, PQcmdStatus((PGresult *)res));
    lua_setfield(L, -2, "command");
    int ncols = PQnfields(res);
    lua_createtable(L, ncols, 0);
    tug_mark_table(L, -1, TUG_ARRAY_MT);
    for (int j = 0; j < ncols; j++) {
      lua_pushstring(L, PQfname(res, j));
      lua_rawseti(L, -2, j + 1);
    }
    lua_setfield(L, -2, "columns");
    lua_pushinteger(L, PQntuples(res));
    lua_setfield(L, -2, "count");
    lua_pushinteger(L, affected_rows(res));
    lua_setfield(L, -2, "affected");
  }
  lua_pushnumber(L, (double)(op->end_ns - op->start_ns) / 1e9);
  lua_setfield(L, -2, "duration");
  lua_newtable(L);
  tug_mark_table(L, -1, TUG_ARRAY_MT);
  lua_Integer n = 0;
  const tug_buf *notices = &op->notices;
  for (size_t at = 0; at < notices->len;) {
    const char *line = notices->data + at;
    const char *nl = memchr(line, '\n', notices->len - at);
    size_t len = nl ? (size_t)(nl - line) : notices->len - at;
    lua_pushlstring(L, line, len);
    lua_rawseti(L, -2, ++n);
    at += len + (nl ? 1 : 0);
  }
  lua_setfield(L, -2, "notices");
}

static void handle_attach(lua_State *L, pg_conn *c);

static int op_resume(lua_State *L, tug_op *base) {
  pg_op *op = (pg_op *)base;
  int failed = op->error != NULL;
  if (op->result) {
    ExecStatusType st = PQresultStatus(op->result);
    failed = failed || st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE;
  }
  if (op->kind == OP_CONNECT && !op->made)
    failed = 1;
  if (failed) {
    push_op_error(L, op);
    if (op->made)
      conn_close(op->made, "connection abandoned");
    op_free(op);
    return lua_error(L);
  }
  if (op->kind == OP_CONNECT) {
    handle_attach(L, op->made);
    op_free(op);
    return 1;
  }
  if (op->kind == OP_RESET) {
    op_free(op);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (op->mode == MODE_ROW || op->mode == MODE_VALUE) {
    const PGresult *res = op->result;
    if (!res || PQntuples(res) == 0 || PQnfields(res) == 0)
      lua_pushnil(L);
    else if (op->mode == MODE_ROW)
      push_row(L, res, 0);
    else if (PQgetisnull(res, 0, 0))
      lua_pushnil(L);
    else
      push_value(L, PQftype(res, 0), PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0));
    op_free(op);
    return 1;
  }
  if (op->mode == MODE_COUNT)
    lua_pushinteger(L, op->result ? affected_rows(op->result) : 0);
  else if (op->result)
    push_rows(L, op->result);
  else
    lua_newtable(L);
  push_info(L, op);
  op_free(op);
  return 2;
}

/* The task stopped waiting: a queued statement leaves the queue; a running one is cancelled
   on the server and its results drained (the connection stays usable); a connection being
   made is dropped. */
static void op_cancel(tug_op *base) {
  pg_op *op = (pg_op *)base;
  pg_conn *c = op->conn;
  if (op->made) {
    conn_close(op->made, "cancelled");
    op->made = NULL;
  }
  if (!c || op->finished) {
    op_free(op);
    return;
  }
  op->conn = NULL;
  c->waiters--;
  if (c->connecting == op) {
    c->connecting = NULL;
    if (op->kind == OP_CONNECT) {
      conn_close(c, "cancelled");
    } else {
      timer_stop(c);
      poll_close(c);
      c->state = CONN_LOST;
    }
  } else if (c->current == op) {
    c->current = NULL;
    conn_send_cancel(c);
    timer_start(c, TIMER_GRACE, c->grace);
  } else {
    queue_remove(c, op);
  }
  conn_update_ref(c);
  op_free(op);
}

static pg_op *op_new(lua_State *L, int kind, size_t extra) {
  pg_op *op = calloc(1, sizeof *op);
  if (!op) {
    luaL_error(L, "pg: out of memory");
    return NULL;
  }
  op->base.resume = op_resume;
  op->base.cancel = op_cancel;
  op->kind = kind;
  op->block = malloc(extra);
  if (!op->block) {
    free(op);
    luaL_error(L, "pg: out of memory");
    return NULL;
  }
  op->sql = op->block;
  return op;
}

/* Waits for op, or resumes at once if its outcome is already in (a send that failed). */
static int op_wait(lua_State *L, pg_op *op) {
  if (op->finished) {
    op->base.task = NULL;
    return op_resume(L, &op->base);
  }
  return tug_await(L, &op->base);
}

/* ---- the connection userdata ---- */

static pg_handle *check_handle(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, PG_CONN_MT);
}

static void handle_attach(lua_State *L, pg_conn *c) {
  pg_handle *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->conn = c;
  memcpy(h->label, c->label, sizeof h->label);
  c->attached = 1;
  luaL_setmetatable(L, PG_CONN_MT);
}

static int conn_gc(lua_State *L) {
  pg_handle *h = check_handle(L, 1);
  pg_conn *c = h->conn;
  if (c) {
    h->conn = NULL;
    c->attached = 0;
    conn_close(c, "the connection was closed");
    conn_maybe_free(c);
  }
  return 0;
}

static void set_label(pg_conn *c) {
  const char *user = PQuser(c->pq), *host = PQhost(c->pq), *port = PQport(c->pq), *db = PQdb(c->pq);
  snprintf(c->label, sizeof c->label, "%s@%s:%s/%s", user ? user : "?", host ? host : "?",
           port && *port ? port : "5432", db ? db : "?");
}

/* core.connect(params, connect_timeout, cancel_grace) -> connection. params maps libpq
   keywords to values (pg.lua has parsed the URL and added its defaults). */
static int pg_connect(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  double timeout = lua_isnoneornil(L, 2) ? 0 : tug_check_seconds(L, 2);
  double grace = lua_isnoneornil(L, 3) ? PG_CANCEL_GRACE : tug_check_seconds(L, 3);
  tug_check_task(L, "pg.connect");
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
      return luaL_error(L, "pg.connect: connection parameters must be strings");
    n++;
    lua_pop(L, 1);
  }
  const char **keys = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);
  const char **values = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);
  int i = 0;
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    keys[i] = lua_tostring(L, -2);
    values[i] = lua_tostring(L, -1);
    i++;
    lua_pop(L, 1);
  }
  keys[n] = values[n] = NULL;

  pg_conn *c = calloc(1, sizeof *c);
  if (!c)
    return luaL_error(L, "pg: out of memory");
  c->poll_fd = -1;
  c->grace = grace > 0 ? grace : PG_CANCEL_GRACE;
  c->pq = PQconnectStartParams(keys, values, 0);
  if (!c->pq) {
    free(c);
    return luaL_error(L, "pg: out of memory");
  }
  set_label(c);
  uv_timer_init(tug_loop(), &c->timer);
  c->timer.data = c;
  c->handles_open = 1;
  c->state = CONN_CONNECTING;
  pg_op *op = calloc(1, sizeof *op);
  if (!op || !(op->block = dup_string(c->label))) {
    free(op);
    conn_close(c, "out of memory");
    return luaL_error(L, "pg: out of memory");
  }
  op->sql = op->block;
  op->base.resume = op_resume;
  op->base.cancel = op_cancel;
  op->kind = OP_CONNECT;
  op->timeout = timeout;
  op->conn = c;
  op->start_ns = uv_hrtime();
  c->connecting = op;
  c->waiters = 1;
  if (PQstatus(c->pq) == CONNECTION_BAD) {
    conn_connect_failed(c, PQerrorMessage(c->pq));
  } else {
    if (timeout > 0)
      timer_start(c, TIMER_CONNECT, timeout);
    /* libpq wants us to behave as if PQconnectPoll had asked to write */
    if (poll_watch(c, UV_WRITABLE, 1) != 0)
      conn_connect_failed(c, "cannot watch the connection's socket");
  }
  return op_wait(L, op);
}

static pg_conn *check_usable(lua_State *L, int idx, const char *what) {
  pg_handle *h = check_handle(L, idx);
  if (!h->conn)
    luaL_error(L, "%s: the connection is closed", what);
  return h->conn;
}

/* core.query(conn, mode, timeout, owner, ownership, sql, ...) -> rows, info | affected, info.
   mode is "rows", "count" or "discard" (queued without waiting; results dropped); owner is the
   calling task's id; ownership is nil, "hold" (BEGIN) or "release" (COMMIT, ROLLBACK).
   Parameters are nil, json.null, booleans, numbers or strings (pg.lua turns tables into JSON
   or array literals). */
#define QUERY_FIXED 6
static int pg_query(lua_State *L) {
  pg_conn *c = check_usable(L, 1, "pg query");
  static const char *const modes[] = {"rows", "count", "discard", "row", "value", NULL};
  static const char *const ownerships[] = {"none", "hold", "release", NULL};
  int mode = luaL_checkoption(L, 2, "rows", modes);
  double timeout = lua_isnoneornil(L, 3) ? 0 : tug_check_seconds(L, 3);
  lua_Integer owner = luaL_optinteger(L, 4, 0);
  int ownership = luaL_checkoption(L, 5, "none", ownerships);
  size_t sql_len;
  const char *sql = luaL_checklstring(L, QUERY_FIXED, &sql_len);
  if (strlen(sql) != sql_len)
    return luaL_error(L, "pg query: the statement contains a NUL byte");
  int nparams = lua_gettop(L) - QUERY_FIXED;
  if (nparams > 65535)
    return luaL_error(L, "pg query: %d parameters (PostgreSQL takes at most 65535)", nparams);
  if (mode != MODE_DISCARD)
    tug_check_task(L, "pg query");

  /* text form of each parameter, left on the stack while the block is filled */
  size_t total = sql_len + 1;
  for (int i = 1; i <= nparams; i++) {
    int idx = QUERY_FIXED + i;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
      break;
    case LUA_TLIGHTUSERDATA:
      if (!tug_is_null(L, idx))
        return luaL_error(L,
                          "pg query: parameter $%d is a light userdata (pass nil, json.null, "
                          "a boolean, a number, a string or a table)",
                          i);
      lua_pushnil(L);
      lua_replace(L, idx);
      break;
    case LUA_TBOOLEAN:
      lua_pushstring(L, lua_toboolean(L, idx) ? "true" : "false");
      lua_replace(L, idx);
      break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, idx));
      } else {
        double d = lua_tonumber(L, idx);
        char buf[64];
        if (isnan(d))
          strcpy(buf, "NaN");
        else if (isinf(d))
          strcpy(buf, d > 0 ? "Infinity" : "-Infinity");
        else
          snprintf(buf, sizeof buf, "%.17g", d);
        lua_pushstring(L, buf);
      }
      lua_replace(L, idx);
      break;
    case LUA_TSTRING:
      break;
    default:
      return luaL_error(L,
                        "pg query: parameter $%d is a %s (pass nil, json.null, a boolean, a "
                        "number, a string or a table)",
                        i, luaL_typename(L, idx));
    }
    if (!lua_isnil(L, idx))
      total += lua_rawlen(L, idx) + 1;
  }
  if (c->state == CONN_CLOSED)
    return luaL_error(L, "pg query: the connection is closed");
  if (c->state != CONN_IDLE) {
    pg_op probe = {0};
    probe.kind = OP_QUERY;
    probe.sql = sql;
    probe.lost = c->state == CONN_LOST;
    probe.error = (char *)(c->state == CONN_CONNECTING ? "the connection is being re-established"
                                                       : "the connection to the server is lost");
    push_op_error(L, &probe);
    return lua_error(L);
  }

  /* one block: the pointer and length arrays (aligned, first), the statement, the values */
  size_t arrays = (size_t)nparams * (sizeof(char *) + 2 * sizeof(int));
  pg_op *op = op_new(L, OP_QUERY, arrays + total);
  op->mode = mode;
  op->timeout = timeout;
  op->nparams = nparams;
  op->values = (const char **)op->block;
  op->lengths = (int *)(op->block + (size_t)nparams * sizeof(char *));
  op->formats = op->lengths + nparams;
  char *text = op->block + arrays;
  memcpy(text, sql, sql_len + 1);
  op->sql = text;
  char *at = text + sql_len + 1;
  for (int i = 0; i < nparams; i++) {
    int idx = QUERY_FIXED + 1 + i;
    op->values[i] = NULL;
    op->lengths[i] = 0;
    op->formats[i] = 0;
    if (lua_isnil(L, idx))
      continue;
    size_t len;
    const char *v = lua_tolstring(L, idx, &len);
    memcpy(at, v, len);
    at[len] = '\0';
    op->values[i] = at;
    op->lengths[i] = (int)len;
    /* text parameters end at a NUL; a string holding one can only be bytea, sent as binary */
    op->formats[i] = strlen(v) != len;
    at += len + 1;
  }
  op->owner = owner;
  op->ownership = ownership;
  op->conn = c;
  op->start_ns = uv_hrtime();
  if (mode != MODE_DISCARD)
    c->waiters++;
  queue_push(c, op);
  conn_send_next(c);
  conn_update_ref(c);
  if (mode == MODE_DISCARD)
    return 0;
  return op_wait(L, op);
}

/* core.reconnect(conn [, timeout]) -> true: a new session on the same parameters. */
static int pg_reconnect(lua_State *L) {
  pg_conn *c = check_usable(L, 1, "pg reconnect");
  double timeout = lua_isnoneornil(L, 2) ? 0 : tug_check_seconds(L, 2);
  tug_check_task(L, "pg reconnect");
  if (c->state == CONN_CONNECTING)
    return luaL_error(L, "pg reconnect: the connection is already being re-established");
  if (c->in_flight || c->queue_head)
    return luaL_error(L, "pg reconnect: statements are still running on this connection");
  if (!c->pq)
    return luaL_error(L, "pg reconnect: the connection was dropped; open a new one with "
                         "pg.connect");
  poll_close(c);
  timer_stop(c);
  c->held_by = 0;
  pg_op *op = calloc(1, sizeof *op);
  if (!op || !(op->block = dup_string(c->label))) {
    free(op);
    return luaL_error(L, "pg: out of memory");
  }
  op->sql = op->block;
  op->base.resume = op_resume;
  op->base.cancel = op_cancel;
  op->kind = OP_RESET;
  op->timeout = timeout;
  op->conn = c;
  op->start_ns = uv_hrtime();
  c->connecting = op;
  c->waiters++;
  c->state = CONN_CONNECTING;
  if (!PQresetStart(c->pq)) {
    conn_connect_failed(c, PQerrorMessage(c->pq));
  } else {
    if (timeout > 0)
      timer_start(c, TIMER_CONNECT, timeout);
    if (poll_watch(c, UV_WRITABLE, 1) != 0)
      conn_connect_failed(c, "cannot watch the connection's socket");
  }
  return op_wait(L, op);
}

static const char *state_name(pg_conn *c) {
  if (!c)
    return "closed";
  switch (c->state) {
  case CONN_CONNECTING:
    return "connecting";
  case CONN_LOST:
    return "lost";
  case CONN_CLOSED:
    return "closed";
  default:
    return c->in_flight ? "busy" : "idle";
  }
}

/* core.info(conn) -> { state, transaction, server_version, backend_pid, user, host, port,
   database } */
static int pg_info(lua_State *L) {
  pg_handle *h = check_handle(L, 1);
  pg_conn *c = h->conn;
  lua_createtable(L, 0, 8);
  lua_pushstring(L, state_name(c));
  lua_setfield(L, -2, "state");
  if (!c || !c->pq)
    return 1;
  static const char *const tx[] = {"idle", "active", "in transaction", "failed transaction",
                                   "unknown"};
  PGTransactionStatusType ts = PQtransactionStatus(c->pq);
  lua_pushstring(L, tx[ts <= PQTRANS_UNKNOWN ? ts : PQTRANS_UNKNOWN]);
  lua_setfield(L, -2, "transaction");
  if (c->state == CONN_IDLE) {
    lua_pushinteger(L, PQserverVersion(c->pq));
    lua_setfield(L, -2, "server_version");
    lua_pushinteger(L, PQbackendPID(c->pq));
    lua_setfield(L, -2, "backend_pid");
  }
  set_field_string(L, "user", PQuser(c->pq));
  set_field_string(L, "host", PQhost(c->pq));
  set_field_string(L, "port", PQport(c->pq));
  set_field_string(L, "database", PQdb(c->pq));
  return 1;
}

static int conn_tostring(lua_State *L) {
  pg_handle *h = check_handle(L, 1);
  lua_pushfstring(L, "pg.connection %s (%s)", h->label, state_name(h->conn));
  return 1;
}

/* core.parse(conninfo) -> { keyword = value } for what the URL or key=value string sets, or
   nil, message. */
static int pg_parse(lua_State *L) {
  const char *conninfo = luaL_checkstring(L, 1);
  char *err = NULL;
  PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
  if (!opts) {
    lua_pushnil(L);
    if (err) {
      push_trimmed(L, err);
      PQfreemem(err);
    } else {
      lua_pushliteral(L, "out of memory");
    }
    return 2;
  }
  lua_newtable(L);
  for (PQconninfoOption *o = opts; o->keyword; o++) {
    if (o->val) {
      lua_pushstring(L, o->val);
      lua_setfield(L, -2, o->keyword);
    }
  }
  PQconninfoFree(opts);
  return 1;
}

static const luaL_Reg conn_metamethods[] = {
    {"__gc", conn_gc},
    {"__close", conn_gc},
    {"__tostring", conn_tostring},
    {NULL, NULL},
};

static const luaL_Reg conn_methods[] = {
    {"close", conn_gc},
    {NULL, NULL},
};

static const luaL_Reg pg_functions[] = {
    {"connect", pg_connect}, {"query", pg_query}, {"reconnect", pg_reconnect},
    {"info", pg_info},       {"parse", pg_parse}, {NULL, NULL},
};

int luaopen_tug_pg(lua_State *L) {
  /* JSON columns decode with the json module, so they look like any other decoded JSON */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "json");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "decode");
  lua_setfield(L, LUA_REGISTRYINDEX, PG_DECODE_KEY);
  lua_pop(L, 1);

  luaL_newlib(L, pg_functions);
  luaL_newmetatable(L, PG_CONN_MT);
  luaL_setfuncs(L, conn_metamethods, 0);
  luaL_newlib(L, conn_methods); /* pg.lua adds the methods written in Lua */
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  lua_setfield(L, -3, "methods");
  lua_pop(L, 1);
  return 1;
}
