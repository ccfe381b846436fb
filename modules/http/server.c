/*
 * server.c: the HTTP/1.1 server of the http module (http.server), on tug's one libuv loop.
 *
 * C owns the mechanism: listening, connections, parsing (http-parser), keep-alive,
 * pipelining, timeouts, back-pressure and the bytes of each response. server.lua owns the
 * policy: options, what a handler may return, JSON, logging, what a failure answers.
 *
 * Memory follows the one-owner rule. The listening server (srv_server) is malloc'd; the
 * Lua userdata only points at it, and it is freed once its handles have closed, no
 * connection is left and no userdata points at it. Each connection (srv_conn) owns its
 * uv_tcp_t, its timer, its parser and its buffers, and is freed in its close callback.
 * Each request/response (srv_exchange) sits in its connection's queue, in request order,
 * so pipelined responses leave in order; the handler's task holds it through an
 * exchange userdata, and when the connection closes the exchange's `conn` becomes NULL
 * (invalidated, never dangling): its respond and write then report false.
 *
 * No libuv callback touches Lua. A callback that completes a request queues it on the
 * server and wakes the server's own task (the "serve" task that server.lua starts); that
 * task spawns one handler task per request with sched_spawn. Cancelling tasks when the
 * server closes also happens in a task or in a Lua call, never in a callback.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <http_parser.h>

#include "http_internal.h"
#include "scheduler.h"

#define SERVER_MT "http.server"
#define EXCHANGE_MT "http.server.exchange"

#define SRV_READ_SIZE (64 * 1024)
/* Requests read ahead of their responses on one connection (pipelining). */
#define SRV_MAX_PIPELINE 32
/* A stream's write waits while more than this is queued for the socket... */
#define SRV_STREAM_HIGH (64 * 1024)
/* ...and is woken once it falls to this. */
#define SRV_STREAM_LOW (16 * 1024)
/* Reading further requests stops while this much response data waits for the client. */
#define SRV_INPUT_PAUSE (1024 * 1024)
/* After a final error response, how long the input is drained before closing. */
#define SRV_LINGER_MS 2000
#define SRV_BACKLOG 1024

typedef struct srv_server srv_server;
typedef struct srv_conn srv_conn;
typedef struct srv_exchange srv_exchange;

typedef struct srv_accept_op {
  tug_op base; /* first member: the runtime sees a tug_op */
  srv_server *server;
} srv_accept_op;

typedef struct srv_write_op {
  tug_op base;
  srv_exchange *ex;
  size_t limit; /* woken once no more than this waits for the socket */
} srv_write_op;

typedef struct srv_write {
  uv_write_t req;
  srv_conn *conn;
  char *data;
} srv_write;

enum { TIMER_NONE, TIMER_IDLE, TIMER_REQUEST, TIMER_WRITE, TIMER_LINGER };

struct srv_exchange {
  srv_exchange *next;                /* the connection's queue, in request order */
  srv_exchange *ready_next;          /* the server's queue of requests waiting for a task */
  srv_exchange *run_prev, *run_next; /* the server's list of exchanges with a live task */
  srv_server *server;
  srv_conn *conn; /* NULL once the connection closed or the response went out */

  /* the request, until request() hands it to Lua */
  tug_buf url, headers, body; /* headers: records of size_t length + bytes, name then value */
  unsigned method;
  unsigned short http_major, http_minor;
  int keep_alive;
  int head_request;
  int upgrade;      /* an Upgrade (or CONNECT) request: the last one on its connection */
  int detached;     /* take_connection handed the socket over */
  tug_buf raw_head; /* an upgrade request's head as received, plus the bytes after it */
  int queued;       /* in conn's queue (from the end of its headers) */
  int complete;     /* the whole request has been read */

  /* the response */
  int responded; /* the head is out (or buffered) */
  int streaming;
  int chunked;
  int finished; /* every byte of the response is out (or buffered) */
  int close_after;
  tug_buf out; /* bytes waiting for the exchanges before this one */

  /* who refers to it */
  tug_task *task;
  sched_watch watch;
  srv_write_op *writer;
  int has_handle;
  int in_ready;
};

struct srv_conn {
  srv_server *server;
  srv_conn *prev, *next;
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_shutdown_t shutdown_req;
  int handles_open;
  int closing;          /* conn_close ran: everything is going away */
  int reading;          /* uv_read_start is active */
  int eof;              /* the client finished sending */
  int no_more_requests; /* an error, Connection: close, an upgrade or the server closing */
  int shutting;         /* the write side is being shut down after the last response */
  int lingering;        /* shut down; discarding input until EOF or the linger timer */
  int processing;       /* inside conn_process_input */
  int timer_kind;
  size_t write_mark; /* bytes queued when the timer started: less later means progress */
  int error_status;  /* set by a parser callback that rejects the request */
  http_parser parser;
  srv_exchange *parsing; /* the request being read */
  tug_buf field, value;
  int in_value;
  tug_buf in; /* received bytes not parsed yet */
  size_t in_off;
  srv_exchange *head, *tail;
  int queued;
  char remote_ip[64];
  int remote_port;
};

struct srv_server {
  uv_tcp_t tcp;
  uv_timer_t grace_timer;
  int handles_open;
  int attached; /* a Lua userdata points here */
  int closing;
  int grace_expired;
  int grace_timer_open;
  srv_conn *conns;
  int conn_count; /* connections not yet freed */
  int live_conns; /* connections not yet closing */
  srv_exchange *ready_head, *ready_tail;
  srv_exchange *running;
  srv_accept_op *acceptor; /* the serve task, while it waits */
  sched_watch serve_watch; /* the serve task: the server closes when it ends, however */
  int handler_ref, dispatch_ref;
  size_t max_body;
  uint64_t idle_ms;
  char host[64];
  int port;
  int ipv6;
  uint64_t requests;
  char read_buf[SRV_READ_SIZE];
};

typedef struct srv_handle {
  srv_server *server;
} srv_handle;

typedef struct srv_exchange_handle {
  srv_exchange *ex;
} srv_exchange_handle;

static void conn_close(srv_conn *c);
static void conn_flush(srv_conn *c);
static void conn_process_input(srv_conn *c);
static void conn_update_timer(srv_conn *c);
static void conn_update_reading(srv_conn *c);
static void srv_server_maybe_free(srv_server *s);
static void srv_exchange_task_done(sched_watch *w, tug_task *finished);

/* ---- the Date header and reason phrases ---- */

static const char *http_date(void) {
  static char text[64];
  static time_t cached = (time_t)-1;
  static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  time_t now = time(NULL);
  if (now != cached) {
    struct tm tm;
    gmtime_r(&now, &tm);
    snprintf(text, sizeof text, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday % 7],
             tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
             tm.tm_sec);
    cached = now;
  }
  return text;
}

static const char *reason_phrase(int status) {
  const char *s = http_status_str((enum http_status)status);
  return s == NULL || s[0] == '<' ? "Unknown" : s;
}

/* 1xx, 204 and 304 responses carry no body and no Content-Length. */
static int status_has_body(int status) { return !(status < 200 || status == 204 || status == 304); }

/* ---- exchanges ---- */

static void ex_free_request(srv_exchange *ex) {
  tug_buf_free(&ex->url);
  tug_buf_free(&ex->headers);
  tug_buf_free(&ex->body);
}

static void ex_free_all(srv_exchange *ex) {
  ex_free_request(ex);
  tug_buf_free(&ex->raw_head);
}

static void ex_maybe_free(srv_exchange *ex) {
  if (ex->conn || ex->has_handle || ex->in_ready || ex->task || ex->writer)
    return;
  ex_free_all(ex);
  tug_buf_free(&ex->out);
  free(ex);
}

static void running_remove(srv_exchange *ex) {
  srv_server *s = ex->server;
  if (ex->run_prev)
    ex->run_prev->run_next = ex->run_next;
  else if (s->running == ex)
    s->running = ex->run_next;
  if (ex->run_next)
    ex->run_next->run_prev = ex->run_prev;
  ex->run_prev = ex->run_next = NULL;
}

/* Stream writes wait while the exchange cannot send (pipelined behind another response)
   or the socket is behind by more than `limit` bytes. */
static int ex_must_wait(srv_exchange *ex, size_t limit) {
  srv_conn *c = ex->conn;
  if (c == NULL)
    return 0;
  return c->head != ex || ex->out.len > 0 ||
         uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > limit;
}

static void ex_wake_writer(srv_exchange *ex) {
  if (ex->writer && !ex_must_wait(ex, ex->writer->limit))
    tug_op_done(&ex->writer->base);
}

/* A response made by the server itself (an error, or a handler that ended without
   answering). Always the last response on its connection. */
static void ex_simple_response(srv_exchange *ex, int status, const char *detail) {
  char body[256];
  int n = snprintf(body, sizeof body, "%d %s%s%s\n", status, reason_phrase(status),
                   detail ? ": " : "", detail ? detail : "");
  if (n < 0 || (size_t)n >= sizeof body)
    n = (int)sizeof body - 1;
  ex->close_after = 1;
  ex->responded = ex->finished = 1;
  if (tug_buf_appendf(&ex->out,
                      "HTTP/1.1 %d %s\r\nServer: tug/" TUG_VERSION "\r\nDate: %s\r\n"
                      "Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
                      "Connection: close\r\n\r\n",
                      status, reason_phrase(status), http_date(), ex->head_request ? 0 : n) != 0 ||
      (!ex->head_request && tug_buf_append(&ex->out, body, (size_t)n) != 0)) {
    if (ex->conn)
      conn_close(ex->conn);
    return;
  }
  if (ex->conn)
    conn_flush(ex->conn);
}

/* ---- connections: writing ---- */

static void conn_finish(srv_conn *c);

static void on_write_done(uv_write_t *req, int status) {
  srv_write *w = (srv_write *)req;
  srv_conn *c = w->conn;
  free(w->data);
  free(w);
  if (c->closing)
    return; /* cancelled by uv_close; the close callback comes after */
  if (status < 0) {
    conn_close(c);
    return;
  }
  if (c->timer_kind == TIMER_WRITE) /* progress: the write timeout starts over */
    c->timer_kind = TIMER_NONE;
  if (c->head)
    ex_wake_writer(c->head);
  conn_process_input(c); /* reading may have stopped while output piled up */
}

/* Hands the buffer's bytes to libuv; the buffer is left empty. */
static void conn_write(srv_conn *c, tug_buf *b) {
  if (b->len == 0)
    return;
  srv_write *w = malloc(sizeof *w);
  if (w == NULL) {
    conn_close(c);
    return;
  }
  w->conn = c;
  uv_buf_t ub = uv_buf_init(b->data, (unsigned int)b->len);
  w->data = tug_buf_take(b);
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &ub, 1, on_write_done) != 0) {
    free(w->data);
    free(w);
    conn_close(c);
  }
}

/* Sends what the exchanges at the head of the queue have ready, in request order, and
   retires each finished one. */
static void conn_flush(srv_conn *c) {
  int popped = 0;
  while (!c->closing && !c->shutting && c->head) {
    srv_exchange *ex = c->head;
    conn_write(c, &ex->out);
    if (c->closing || !ex->finished)
      break;
    c->head = ex->next;
    if (c->head == NULL)
      c->tail = NULL;
    c->queued--;
    ex->next = NULL;
    ex->queued = 0;
    ex->conn = NULL;
    int close_after = ex->close_after;
    if (ex->writer) /* a write that waited on this exchange learns it is over */
      tug_op_done(&ex->writer->base);
    ex_maybe_free(ex);
    popped = 1;
    if (close_after) { /* the last response: any later requests go unanswered */
      conn_finish(c);
      return;
    }
  }
  if (c->closing)
    return;
  if (c->head)
    ex_wake_writer(c->head);
  if (c->head == NULL && c->no_more_requests && !c->shutting) {
    conn_finish(c);
    return;
  }
  if (popped)
    conn_process_input(c);
  else
    conn_update_timer(c);
}

/* ---- connections: closing ---- */

static void on_conn_closed(uv_handle_t *h) {
  srv_conn *c = h->data;
  if (--c->handles_open > 0)
    return;
  srv_server *s = c->server;
  if (c->prev)
    c->prev->next = c->next;
  else
    s->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  s->conn_count--;
  tug_buf_free(&c->field);
  tug_buf_free(&c->value);
  tug_buf_free(&c->in);
  free(c);
  srv_server_maybe_free(s);
}

static void server_wake(srv_server *s) {
  if (s->acceptor)
    tug_op_done(&s->acceptor->base);
}

/* Closes at once: the exchanges are invalidated (their tasks see false from respond and
   write), pending writes are cancelled, and the struct is freed in the close callback. */
static void conn_close(srv_conn *c) {
  if (c->closing)
    return;
  c->closing = 1;
  srv_server *s = c->server;
  s->live_conns--;
  srv_exchange *ex = c->head;
  c->head = c->tail = NULL;
  c->queued = 0;
  while (ex) {
    srv_exchange *next = ex->next;
    ex->next = NULL;
    ex->queued = 0;
    ex->conn = NULL;
    if (ex == c->parsing)
      c->parsing = NULL;
    if (ex->writer)
      tug_op_done(&ex->writer->base);
    ex_maybe_free(ex);
    ex = next;
  }
  if (c->parsing) { /* headers not complete yet: nobody else knows it */
    c->parsing->conn = NULL;
    ex_maybe_free(c->parsing);
    c->parsing = NULL;
  }
  uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
  uv_close((uv_handle_t *)&c->timer, on_conn_closed);
  if (s->closing && s->live_conns == 0)
    server_wake(s);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  srv_conn *c = req->data;
  if (c->closing)
    return;
  if (status < 0 || c->eof || c->server->closing) {
    conn_close(c);
    return;
  }
  /* Closing now could reset the connection before the client read the last response (it
     may still be sending a body we refused): drain its input until it closes. */
  c->lingering = 1;
  conn_update_reading(c);
  conn_update_timer(c);
}

/* Ends the connection after its last response: shut the write side down once the queued
   writes are out. */
static void conn_finish(srv_conn *c) {
  if (c->closing || c->shutting)
    return;
  c->shutting = 1;
  c->no_more_requests = 1;
  conn_update_reading(c);
  c->shutdown_req.data = c;
  if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
    conn_close(c);
  else
    conn_update_timer(c);
}

/* The request cannot be served (malformed, too large, too slow): answer `status` after the
   responses already owed, then close. */
static void conn_fail(srv_conn *c, int status, const char *detail) {
  if (c->closing)
    return;
  c->no_more_requests = 1;
  srv_exchange *ex = c->parsing;
  c->parsing = NULL;
  if (ex == NULL || !ex->queued) {
    if (ex == NULL) {
      ex = calloc(1, sizeof *ex);
      if (ex == NULL) {
        conn_close(c);
        return;
      }
      ex->server = c->server;
      ex->conn = c;
    }
    ex->queued = 1;
    if (c->tail)
      c->tail->next = ex;
    else
      c->head = ex;
    c->tail = ex;
    c->queued++;
  }
  ex_free_request(ex);
  ex->complete = 1;
  ex_simple_response(ex, status, detail);
}

/* ---- connections: timers and reading ---- */

static void on_conn_timer(uv_timer_t *t) {
  srv_conn *c = t->data;
  int kind = c->timer_kind;
  c->timer_kind = TIMER_NONE;
  if (kind == TIMER_WRITE) {
    size_t queued = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
    if (queued > 0 && queued < c->write_mark) { /* slow, but reading: give it more time */
      conn_update_timer(c);
      return;
    }
  }
  if (kind == TIMER_REQUEST)
    conn_fail(c, 408, "the request took too long to arrive");
  else
    conn_close(c);
}

static void conn_update_timer(srv_conn *c) {
  if (c->closing)
    return;
  int kind;
  uint64_t ms = c->server->idle_ms;
  if (c->lingering) {
    kind = TIMER_LINGER;
    ms = SRV_LINGER_MS;
  } else if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > 0) {
    kind = TIMER_WRITE; /* a client that stops reading its response */
  } else if (c->parsing && !c->no_more_requests) {
    kind = TIMER_REQUEST; /* headers (and body) must arrive in time: slow clients */
  } else if (c->head == NULL && !c->shutting) {
    kind = TIMER_IDLE;
  } else {
    kind = TIMER_NONE; /* a handler runs: it takes the time it needs */
  }
  if (kind == c->timer_kind)
    return;
  c->timer_kind = kind;
  if (kind == TIMER_NONE || ms == 0) {
    uv_timer_stop(&c->timer);
    return;
  }
  /* libuv times from the loop's cached clock, which a long Lua turn leaves behind: a
     handler that computed for a second must not start its connection's timer expired */
  uv_update_time(tug_loop());
  c->write_mark = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
  uv_timer_start(&c->timer, on_conn_timer, ms, 0);
}

static int conn_can_parse(srv_conn *c) {
  return !c->closing && !c->no_more_requests && !c->shutting && !c->eof &&
         c->queued < SRV_MAX_PIPELINE &&
         uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) < SRV_INPUT_PAUSE;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  srv_conn *c = h->data;
  (void)suggested;
  /* one buffer for every connection: each read is copied out before the next one */
  *buf = uv_buf_init(c->server->read_buf, SRV_READ_SIZE);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  srv_conn *c = stream->data;
  if (c->closing || nread == 0)
    return;
  if (nread < 0) {
    if (nread != UV_EOF || c->lingering) {
      conn_close(c);
      return;
    }
    c->eof = 1;
    conn_update_reading(c);
    /* a half-received request can never complete; complete ones are still answered */
    if (c->parsing || c->head == NULL)
      conn_close(c);
    else
      c->no_more_requests = 1;
    return;
  }
  if (c->lingering)
    return;
  if (tug_buf_append(&c->in, buf->base, (size_t)nread) != 0) {
    conn_close(c);
    return;
  }
  conn_process_input(c);
}

static void conn_update_reading(srv_conn *c) {
  if (c->closing)
    return;
  int want = !c->eof && (c->lingering || (!c->shutting && conn_can_parse(c)));
  if (want && !c->reading) {
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
      c->reading = 1;
  } else if (!want && c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
}

/* ---- parsing (http-parser callbacks) ---- */

/* Moves the header being read (field, value) into the exchange, the name lower-cased. */
static int commit_header(srv_conn *c) {
  srv_exchange *ex = c->parsing;
  if (c->field.len == 0)
    return 0;
  for (size_t i = 0; i < c->field.len; i++) {
    char ch = c->field.data[i];
    if (ch >= 'A' && ch <= 'Z')
      c->field.data[i] = (char)(ch - 'A' + 'a');
  }
  int rc = tug_buf_append(&ex->headers, &c->field.len, sizeof c->field.len) ||
           tug_buf_append(&ex->headers, c->field.data, c->field.len) ||
           tug_buf_append(&ex->headers, &c->value.len, sizeof c->value.len) ||
           tug_buf_append(&ex->headers, c->value.data, c->value.len);
  c->field.len = c->value.len = 0;
  c->in_value = 0;
  return rc ? -1 : 0;
}

/* Iterates the header records: returns 0 at the end. */
static int next_header(const tug_buf *h, size_t *at, const char **name, size_t *nlen,
                       const char **value, size_t *vlen) {
  if (*at >= h->len)
    return 0;
  memcpy(nlen, h->data + *at, sizeof *nlen);
  *name = h->data + *at + sizeof *nlen;
  *at += sizeof *nlen + *nlen;
  memcpy(vlen, h->data + *at, sizeof *vlen);
  *value = h->data + *at + sizeof *vlen;
  *at += sizeof *vlen + *vlen;
  return 1;
}

static int on_message_begin(http_parser *p) {
  srv_conn *c = p->data;
  srv_exchange *ex = calloc(1, sizeof *ex);
  if (ex == NULL)
    return -1;
  ex->server = c->server;
  ex->conn = c;
  c->parsing = ex;
  c->field.len = c->value.len = 0;
  c->in_value = 0;
  conn_update_timer(c); /* the request's deadline starts with its first byte */
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
  srv_conn *c = p->data;
  if (c->closing)
    return -1;
  return tug_buf_append(&c->parsing->url, at, len) ? -1 : 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
  srv_conn *c = p->data;
  if (c->closing)
    return -1;
  if (c->in_value && commit_header(c) != 0)
    return -1;
  return tug_buf_append(&c->field, at, len) ? -1 : 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
  srv_conn *c = p->data;
  if (c->closing)
    return -1;
  c->in_value = 1;
  return tug_buf_append(&c->value, at, len) ? -1 : 0;
}

/* An upgrade request's head, written back as it came (names lower-cased), for the protocol
   that takes the connection over (take_connection). */
static int append_raw_head(srv_exchange *ex) {
  tug_buf *b = &ex->raw_head;
  const char *method = http_method_str((enum http_method)ex->method);
  if (tug_buf_append(b, method, strlen(method)) || tug_buf_append(b, " ", 1) ||
      tug_buf_append(b, ex->url.data ? ex->url.data : "/", ex->url.data ? ex->url.len : 1) ||
      tug_buf_appendf(b, " HTTP/%d.%d\r\n", ex->http_major, ex->http_minor) != 0)
    return -1;
  size_t at = 0, nlen, vlen;
  const char *name, *value;
  while (next_header(&ex->headers, &at, &name, &nlen, &value, &vlen))
    if (tug_buf_append(b, name, nlen) || tug_buf_append(b, ": ", 2) ||
        tug_buf_append(b, value, vlen) || tug_buf_append(b, "\r\n", 2))
      return -1;
  return tug_buf_append(b, "\r\n", 2);
}

static int on_headers_complete(http_parser *p) {
  srv_conn *c = p->data;
  srv_exchange *ex = c->parsing;
  if (c->closing)
    return -1;
  if (commit_header(c) != 0)
    return -1;
  srv_server *s = c->server;
  ex->method = p->method;
  ex->http_major = p->http_major;
  ex->http_minor = p->http_minor;
  ex->keep_alive = http_should_keep_alive(p) && !p->upgrade;
  ex->head_request = p->method == HTTP_HEAD;
  ex->upgrade = p->upgrade;
  if (p->upgrade && append_raw_head(ex) != 0)
    return -1;
  int has_length = (p->flags & F_CONTENTLENGTH) != 0;
  if (has_length && p->content_length > s->max_body) {
    c->error_status = 413;
    return -1;
  }
  int expects_body = (has_length && p->content_length > 0) || (p->flags & F_CHUNKED);
  /* queued from here, so that a 100 Continue goes out in order */
  ex->queued = 1;
  if (c->tail)
    c->tail->next = ex;
  else
    c->head = ex;
  c->tail = ex;
  c->queued++;
  if (expects_body && p->http_major == 1 && p->http_minor >= 1) {
    size_t at = 0, nlen, vlen;
    const char *name, *value;
    while (next_header(&ex->headers, &at, &name, &nlen, &value, &vlen)) {
      if (nlen == 6 && memcmp(name, "expect", 6) == 0 && vlen == 12 &&
          strncasecmp(value, "100-continue", 12) == 0) {
        if (tug_buf_append(&ex->out, "HTTP/1.1 100 Continue\r\n\r\n", 25) != 0)
          return -1;
        conn_flush(c);
        break;
      }
    }
  }
  return c->closing ? -1 : 0; /* the write may have failed: stop parsing */
}

static int on_body(http_parser *p, const char *at, size_t len) {
  srv_conn *c = p->data;
  srv_exchange *ex = c->parsing;
  if (c->closing)
    return -1;
  if (len > c->server->max_body - ex->body.len) {
    c->error_status = 413;
    return -1;
  }
  if (tug_buf_append(&ex->body, at, len) != 0)
    return -1;
  if (c->timer_kind == TIMER_REQUEST) { /* progress: the body may take its time */
    c->timer_kind = TIMER_NONE;
    conn_update_timer(c);
  }
  return 0;
}

static int on_message_complete(http_parser *p) {
  srv_conn *c = p->data;
  srv_server *s = c->server;
  srv_exchange *ex = c->parsing;
  if (c->closing)
    return -1;
  c->parsing = NULL;
  ex->complete = 1;
  if (!ex->keep_alive)
    c->no_more_requests = 1;
  ex->in_ready = 1;
  if (s->ready_tail)
    s->ready_tail->ready_next = ex;
  else
    s->ready_head = ex;
  s->ready_tail = ex;
  s->requests++;
  server_wake(s);
  http_parser_pause(p, 1); /* one request per pass: conn_process_input checks the limits */
  return 0;
}

static const http_parser_settings srv_parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void conn_process_input(srv_conn *c) {
  if (c->processing || c->closing)
    return;
  c->processing = 1;
  while (!c->closing && c->in_off < c->in.len && conn_can_parse(c)) {
    size_t avail = c->in.len - c->in_off;
    size_t n = http_parser_execute(&c->parser, &srv_parser_settings, c->in.data + c->in_off, avail);
    c->in_off += n;
    enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
    if (err == HPE_PAUSED) {
      http_parser_pause(&c->parser, 0);
    } else if (err != HPE_OK) {
      int status = c->error_status ? c->error_status : err == HPE_HEADER_OVERFLOW ? 431 : 400;
      conn_fail(c, status, status == 400 ? http_errno_description(err) : NULL);
      break;
    } else if (n < avail) {
      break; /* cannot happen without an error; never spin */
    }
    if (c->parser.upgrade) { /* CONNECT or Upgrade: the last request on this connection */
      c->no_more_requests = 1;
      /* bytes after it belong to the new protocol, should a handler take the connection */
      if (c->tail && c->tail->upgrade && c->tail->complete && c->in_off < c->in.len &&
          tug_buf_append(&c->tail->raw_head, c->in.data + c->in_off, c->in.len - c->in_off) != 0)
        conn_close(c);
    }
  }
  if (c->closing) {
    c->processing = 0;
    return;
  }
  if (c->no_more_requests)
    c->in.len = 0;
  else
    tug_buf_consume(&c->in, c->in_off);
  c->in_off = 0;
  c->processing = 0;
  if (c->head == NULL && c->no_more_requests && !c->shutting) {
    conn_finish(c);
    return;
  }
  conn_update_reading(c);
  conn_update_timer(c);
}

/* ---- the listening server ---- */

static void srv_server_maybe_free(srv_server *s) {
  if (s->handles_open > 0 || s->attached || s->conn_count > 0 || s->running || s->acceptor)
    return;
  sched_watch_remove(&s->serve_watch);
  while (s->ready_head) { /* requests that never got a task: their connections are gone */
    srv_exchange *ex = s->ready_head;
    s->ready_head = ex->ready_next;
    ex->in_ready = 0;
    ex_maybe_free(ex);
  }
  free(s);
}

static void on_server_closed(uv_handle_t *h) {
  srv_server *s = h->data;
  s->handles_open--;
  srv_server_maybe_free(s);
}

static void on_connection(uv_stream_t *listener, int status) {
  srv_server *s = listener->data;
  if (status < 0 || s->closing)
    return;
  srv_conn *c = calloc(1, sizeof *c);
  if (c == NULL)
    return;
  c->server = s;
  uv_tcp_init(tug_loop(), &c->tcp);
  uv_timer_init(tug_loop(), &c->timer);
  c->tcp.data = c->timer.data = c;
  c->handles_open = 2;
  c->next = s->conns;
  if (s->conns)
    s->conns->prev = c;
  s->conns = c;
  s->conn_count++;
  s->live_conns++;
  if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  struct sockaddr_storage peer;
  int len = sizeof peer;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&peer, &len) == 0) {
    if (peer.ss_family == AF_INET6) {
      struct sockaddr_in6 *a = (struct sockaddr_in6 *)&peer;
      uv_ip6_name(a, c->remote_ip, sizeof c->remote_ip);
      c->remote_port = ntohs(a->sin6_port);
    } else {
      struct sockaddr_in *a = (struct sockaddr_in *)&peer;
      uv_ip4_name(a, c->remote_ip, sizeof c->remote_ip);
      c->remote_port = ntohs(a->sin_port);
    }
  }
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  conn_update_reading(c);
  conn_update_timer(c);
}

/* Cancels the handler tasks still running. Only from a task or a Lua call (sched_cancel
   may touch Lua), never from a libuv callback. */
static void server_cancel_tasks(srv_server *s) {
  srv_exchange *ex = s->running;
  while (ex) {
    srv_exchange *next = ex->run_next; /* cancelling finishes at most ex itself */
    if (ex->task)
      sched_cancel(ex->task);
    ex = next;
  }
}

static void server_close_all_conns(srv_server *s) {
  srv_conn *c = s->conns;
  while (c) {
    srv_conn *next = c->next;
    conn_close(c);
    c = next;
  }
}

static void server_close_grace_timer(srv_server *s) {
  if (s->grace_timer_open) {
    s->grace_timer_open = 0;
    uv_close((uv_handle_t *)&s->grace_timer, on_server_closed);
  }
}

static void on_grace_expired(uv_timer_t *t) {
  srv_server *s = t->data;
  s->grace_expired = 1;
  server_close_grace_timer(s);
  server_wake(s); /* the serve task cancels what is left */
}

/* Stops listening and closes idle connections. In-flight requests get grace_ms to finish
   (their responses say Connection: close); cancel_now ends them at once instead. */
static void server_close(srv_server *s, uint64_t grace_ms, int cancel_now, int cancel_tasks) {
  if (!s->closing) {
    s->closing = 1;
    uv_close((uv_handle_t *)&s->tcp, on_server_closed);
    srv_conn *c = s->conns;
    while (c) {
      srv_conn *next = c->next;
      if (c->head == NULL || !c->head->complete) {
        conn_close(c);
      } else {
        c->no_more_requests = 1;
        conn_update_reading(c);
      }
      c = next;
    }
    if (!cancel_now && grace_ms > 0) {
      uv_update_time(tug_loop());
      uv_timer_start(&s->grace_timer, on_grace_expired, grace_ms, 0);
    }
  }
  if (cancel_now || grace_ms == 0) {
    s->grace_expired = 1;
    server_close_grace_timer(s);
    server_close_all_conns(s);
    if (cancel_tasks)
      server_cancel_tasks(s);
  }
  server_wake(s);
}

/* Runs in the serve task: gives each request that arrived its own task. */
static void spawn_ready(lua_State *L, srv_server *s) {
  while (s->ready_head) {
    srv_exchange *ex = s->ready_head;
    s->ready_head = ex->ready_next;
    if (s->ready_head == NULL)
      s->ready_tail = NULL;
    ex->ready_next = NULL;
    ex->in_ready = 0;
    if (ex->conn == NULL) {
      ex_maybe_free(ex);
      continue;
    }
    luaL_checkstack(L, 4, "http.server");
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->dispatch_ref);
    srv_exchange_handle *h = lua_newuserdatauv(L, sizeof *h, 0);
    h->ex = ex;
    ex->has_handle = 1;
    luaL_setmetatable(L, EXCHANGE_MT);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->handler_ref);
    tug_task *t = sched_spawn(L, 2);
    lua_pop(L, 1);
    ex->task = t;
    ex->watch.notify = srv_exchange_task_done;
    sched_watch_add(&ex->watch, t);
    ex->run_prev = NULL;
    ex->run_next = s->running;
    if (s->running)
      s->running->run_prev = ex;
    s->running = ex;
  }
}

/* The handler task finished (from the scheduler, not a libuv callback). */
static void srv_exchange_task_done(sched_watch *w, tug_task *finished) {
  srv_exchange *ex = (srv_exchange *)((char *)w - offsetof(srv_exchange, watch));
  srv_server *s = ex->server;
  ex->task = NULL;
  running_remove(ex);
  if (sched_failed(finished) && !sched_cancelled(finished))
    sched_report(finished); /* not the handler (server.lua catches that): a bug here */
  if (ex->conn && !ex->finished) {
    if (!ex->responded)
      ex_simple_response(ex, 500, "the handler ended without a response");
    else
      conn_close(ex->conn); /* a stream cut short: the client must see it truncated */
  }
  ex_maybe_free(ex);
  srv_server_maybe_free(s);
}

/* ---- Lua: the server userdata ---- */

static srv_handle *check_server_handle(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, SERVER_MT);
}

static srv_server *check_server(lua_State *L, int idx) {
  srv_handle *h = check_server_handle(L, idx);
  if (h->server == NULL)
    luaL_error(L, "http.server: the server is gone");
  return h->server;
}

static void server_release_refs(lua_State *L, srv_server *s) {
  luaL_unref(L, LUA_REGISTRYINDEX, s->handler_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, s->dispatch_ref);
  s->handler_ref = s->dispatch_ref = LUA_NOREF;
}

static uint64_t seconds_to_ms(double seconds) {
  double ms = seconds * 1000.0;
  if (ms > 1e12)
    ms = 1e12;
  return ms > 0 && ms < 1 ? 1 : (uint64_t)ms;
}

/* core.server_listen(host, port, handler, dispatch, max_body, idle_timeout) -> server */
static int server_listen(lua_State *L) {
  const char *host = luaL_checkstring(L, 1);
  lua_Integer port = luaL_checkinteger(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  lua_Integer max_body = luaL_checkinteger(L, 5);
  double idle = tug_check_seconds(L, 6);
  luaL_argcheck(L, port >= 0 && port <= 65535, 2, "port must be between 0 and 65535");
  luaL_argcheck(L, max_body >= 0, 5, "max_body must not be negative");
  luaL_argcheck(L, strlen(host) < 64, 1, "host too long");

  struct sockaddr_storage addr;
  int ipv6 = strchr(host, ':') != NULL;
  const char *ip = strcmp(host, "localhost") == 0 ? "127.0.0.1" : host;
  if ((ipv6 ? uv_ip6_addr(ip, (int)port, (struct sockaddr_in6 *)&addr)
            : uv_ip4_addr(ip, (int)port, (struct sockaddr_in *)&addr)) != 0)
    return luaL_error(L, "http.server: host '%s' is not an IP address", host);

  srv_handle *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->server = NULL;
  luaL_setmetatable(L, SERVER_MT);

  srv_server *s = calloc(1, sizeof *s);
  if (s == NULL)
    return luaL_error(L, "http.server: out of memory");
  s->handler_ref = s->dispatch_ref = LUA_NOREF;
  s->max_body = (size_t)max_body;
  s->idle_ms = seconds_to_ms(idle);
  s->ipv6 = ipv6;
  snprintf(s->host, sizeof s->host, "%s", ip);
  uv_tcp_init(tug_loop(), &s->tcp);
  uv_timer_init(tug_loop(), &s->grace_timer);
  s->tcp.data = s->grace_timer.data = s;
  s->handles_open = 2;
  s->grace_timer_open = 1;
  int err = uv_tcp_bind(&s->tcp, (struct sockaddr *)&addr, 0);
  if (err == 0)
    err = uv_listen((uv_stream_t *)&s->tcp, SRV_BACKLOG, on_connection);
  if (err == 0) {
    struct sockaddr_storage bound;
    int len = sizeof bound;
    err = uv_tcp_getsockname(&s->tcp, (struct sockaddr *)&bound, &len);
    if (err == 0)
      s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                  : ((struct sockaddr_in *)&bound)->sin_port);
  }
  if (err != 0) {
    s->closing = 1;
    uv_close((uv_handle_t *)&s->tcp, on_server_closed);
    server_close_grace_timer(s);
    return tug_raise(L, "http", "http.server: cannot listen on %s:%d: %s", host, (int)port,
                     uv_strerror(err));
  }
  lua_pushvalue(L, 3);
  s->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, 4);
  s->dispatch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  s->attached = 1;
  h->server = s;
  return 1;
}

static int accept_step(lua_State *L, srv_server *s, int may_wait);

static int accept_resume(lua_State *L, tug_op *base) {
  srv_accept_op *op = (srv_accept_op *)base;
  srv_server *s = op->server;
  s->acceptor = NULL;
  free(op);
  return accept_step(L, s, 0);
}

/* The serve task is cancelled (Ctrl-C, a failed main chunk): the server closes with it. */
static void accept_cancel(tug_op *base) {
  srv_accept_op *op = (srv_accept_op *)base;
  srv_server *s = op->server;
  s->acceptor = NULL;
  free(op);
  server_close(s, 0, 1, 1);
  srv_server_maybe_free(s);
}

/* Spawns the waiting requests; returns true to be called again, false once the server has
   closed and nothing is left for the serve task to do. */
static int accept_step(lua_State *L, srv_server *s, int may_wait) {
  spawn_ready(L, s);
  if (s->closing) {
    if (s->grace_expired) {
      server_close_all_conns(s);
      server_cancel_tasks(s);
    }
    if (s->live_conns == 0 && s->ready_head == NULL) {
      server_release_refs(L, s); /* nothing will be spawned any more */
      lua_pushboolean(L, 0);
      return 1;
    }
  }
  if (!may_wait) {
    lua_pushboolean(L, 1);
    return 1;
  }
  srv_accept_op *op = malloc(sizeof *op);
  if (op == NULL)
    return luaL_error(L, "http.server: out of memory");
  op->base.resume = accept_resume;
  op->base.cancel = accept_cancel;
  op->server = s;
  s->acceptor = op;
  return tug_await(L, &op->base);
}

/* The serve task ended. Usually the server had closed first; but a task cancelled before
   it ever ran (Ctrl-C right after http.server returned) never waited, so accept_cancel did
   not run: nothing else would ever close the listening socket, and the loop would serve
   it forever. */
static void serve_task_done(sched_watch *w, tug_task *finished) {
  srv_server *s = (srv_server *)((char *)w - offsetof(srv_server, serve_watch));
  (void)finished;
  server_close(s, 0, 1, 1);
  srv_server_maybe_free(s);
}

/* core.server_serve_task(server, task): task is the server's serve task (server.lua). */
static int server_serve_task(lua_State *L) {
  srv_server *s = check_server(L, 1);
  tug_task *t = luaL_checkudata(L, 2, TUG_TASK_MT);
  luaL_argcheck(L, !sched_done(t), 2, "the serve task has already finished");
  if (s->serve_watch.target != NULL)
    return luaL_error(L, "http.server: the server already has its serve task");
  s->serve_watch.notify = serve_task_done;
  sched_watch_add(&s->serve_watch, t);
  char label[96];
  snprintf(label, sizeof label, s->ipv6 ? "http.server on [%s]:%d" : "http.server on %s:%d",
           s->host, s->port);
  sched_set_label(t, label);
  return 0;
}

/* core.server_accept(server): the serve task's loop body (server.lua). */
static int server_accept(lua_State *L) {
  srv_server *s = check_server(L, 1);
  tug_check_task(L, "http.server");
  if (s->acceptor)
    return luaL_error(L, "http.server: another task already serves this server");
  return accept_step(L, s, 1);
}

/* server:close([grace]): stop accepting now; in-flight requests get `grace` seconds
   (default 0: cancelled at once). Idempotent. */
static int server_close_method(lua_State *L) {
  srv_handle *h = check_server_handle(L, 1);
  double grace = lua_isnoneornil(L, 2) ? 0 : tug_check_seconds(L, 2);
  srv_server *s = h->server;
  if (s == NULL)
    return 0;
  server_close(s, seconds_to_ms(grace), 0, 1);
  return 0;
}

/* `local srv <close> = http.server{...}`: closes at once (the second argument is the
   error that ended the scope, not a grace period). */
static int server_close_scope(lua_State *L) {
  lua_settop(L, 1);
  return server_close_method(L);
}

static int server_gc(lua_State *L) {
  srv_handle *h = check_server_handle(L, 1);
  srv_server *s = h->server;
  if (s == NULL)
    return 0;
  h->server = NULL;
  /* Reached only once the serve task let go (the server is closed) or when the state
     closes: tasks are not cancelled from a finalizer, only detached. */
  server_close(s, 0, 1, 0);
  server_release_refs(L, s);
  if (s->acceptor) { /* the state is closing under a waiting serve task */
    free(s->acceptor);
    s->acceptor = NULL;
  }
  s->attached = 0;
  srv_server_maybe_free(s);
  return 0;
}

static void push_url(lua_State *L, srv_server *s) {
  if (s->ipv6)
    lua_pushfstring(L, "http://[%s]:%d", s->host, s->port);
  else
    lua_pushfstring(L, "http://%s:%d", s->host, s->port);
}

static int server_index(lua_State *L) {
  srv_handle *h = check_server_handle(L, 1);
  const char *key = luaL_checkstring(L, 2);
  srv_server *s = h->server;
  if (strcmp(key, "close") == 0) {
    lua_pushcfunction(L, server_close_method);
    return 1;
  }
  if (s == NULL)
    return 0;
  if (strcmp(key, "port") == 0)
    lua_pushinteger(L, s->port);
  else if (strcmp(key, "host") == 0)
    lua_pushstring(L, s->host);
  else if (strcmp(key, "url") == 0)
    push_url(L, s);
  else if (strcmp(key, "closed") == 0)
    lua_pushboolean(L, s->closing);
  else if (strcmp(key, "connections") == 0)
    lua_pushinteger(L, s->live_conns);
  else if (strcmp(key, "requests") == 0)
    lua_pushinteger(L, (lua_Integer)s->requests);
  else
    return 0;
  return 1;
}

static int server_tostring(lua_State *L) {
  srv_handle *h = check_server_handle(L, 1);
  srv_server *s = h->server;
  if (s == NULL) {
    lua_pushliteral(L, "http.server (closed)");
    return 1;
  }
  push_url(L, s);
  if (s->closing)
    lua_pushfstring(L, "http.server %s (closed)", lua_tostring(L, -1));
  else
    lua_pushfstring(L, "http.server %s (listening, %d connections)", lua_tostring(L, -1),
                    s->live_conns);
  return 1;
}

/* ---- Lua: the exchange userdata (one request, inside its handler task) ---- */

static srv_exchange *check_exchange(lua_State *L) {
  srv_exchange_handle *h = luaL_checkudata(L, 1, EXCHANGE_MT);
  if (h->ex == NULL)
    luaL_error(L, "http.server: the request is gone");
  return h->ex;
}

/* ex:request() -> { method, path, raw_query, url, headers, body, remote_addr, ... } */
static int exchange_request(lua_State *L) {
  srv_exchange *ex = check_exchange(L);
  lua_createtable(L, 0, 10);
  lua_pushstring(L, http_method_str((enum http_method)ex->method));
  lua_setfield(L, -2, "method");
  const char *url = ex->url.data ? ex->url.data : "";
  size_t url_len = ex->url.len;
  lua_pushlstring(L, url, url_len);
  lua_setfield(L, -2, "url");
  struct http_parser_url u;
  http_parser_url_init(&u);
  if (url_len > 0 && http_parser_parse_url(url, url_len, ex->method == HTTP_CONNECT, &u) == 0) {
    if (u.field_set & (1 << UF_PATH))
      lua_pushlstring(L, url + u.field_data[UF_PATH].off, u.field_data[UF_PATH].len);
    else
      lua_pushliteral(L, "/");
    lua_setfield(L, -2, "path");
    if (u.field_set & (1 << UF_QUERY))
      lua_pushlstring(L, url + u.field_data[UF_QUERY].off, u.field_data[UF_QUERY].len);
    else
      lua_pushliteral(L, "");
    lua_setfield(L, -2, "raw_query");
  } else {
    const char *q = memchr(url, '?', url_len);
    size_t plen = q ? (size_t)(q - url) : url_len;
    lua_pushlstring(L, url, plen);
    lua_setfield(L, -2, "path");
    if (q)
      lua_pushlstring(L, q + 1, url_len - plen - 1);
    else
      lua_pushliteral(L, "");
    lua_setfield(L, -2, "raw_query");
  }
  lua_newtable(L);
  size_t at = 0, nlen, vlen;
  const char *name, *value;
  while (next_header(&ex->headers, &at, &name, &nlen, &value, &vlen)) {
    lua_pushlstring(L, name, nlen);
    if (lua_rawget(L, -2) == LUA_TSTRING) { /* repeated: joined as the RFC allows */
      lua_pushliteral(L, ", ");
      lua_pushlstring(L, value, vlen);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_pushlstring(L, value, vlen);
    }
    lua_pushlstring(L, name, nlen);
    lua_insert(L, -2);
    lua_rawset(L, -3);
  }
  lua_setfield(L, -2, "headers");
  lua_pushlstring(L, ex->body.data ? ex->body.data : "", ex->body.len);
  lua_setfield(L, -2, "body");
  lua_pushfstring(L, "%d.%d", ex->http_major, ex->http_minor);
  lua_setfield(L, -2, "version");
  srv_conn *c = ex->conn;
  if (c) {
    lua_pushstring(L, c->remote_ip);
    lua_setfield(L, -2, "remote_addr");
    lua_pushinteger(L, c->remote_port);
    lua_setfield(L, -2, "remote_port");
  }
  ex_free_request(ex); /* Lua has it now */
  return 1;
}

static int is_token_char(unsigned char ch) {
  return ch > 32 && ch < 127 && !strchr("()<>@,;:\\\"/[]?={}", ch);
}

typedef struct head_info {
  int close, has_date, has_server;
} head_info;

enum { HEADER_SKIP, HEADER_ONE, HEADER_LIST };

/* Classifies the header whose name and value are at -2 and -1; raises when malformed. */
static int check_header(lua_State *L, head_info *info) {
  if (lua_type(L, -2) != LUA_TSTRING)
    luaL_error(L, "http.server: header names must be strings (got %s)", luaL_typename(L, -2));
  size_t nlen;
  const char *name = lua_tolstring(L, -2, &nlen);
  if (nlen == 0)
    luaL_error(L, "http.server: empty header name");
  for (size_t i = 0; i < nlen; i++)
    if (!is_token_char((unsigned char)name[i]))
      luaL_error(L, "http.server: '%s' is not a valid header name", name);
  int vt = lua_type(L, -1);
  if (strcasecmp(name, "date") == 0)
    info->has_date = 1;
  else if (strcasecmp(name, "server") == 0)
    info->has_server = 1;
  if (vt == LUA_TBOOLEAN && !lua_toboolean(L, -1))
    return HEADER_SKIP; /* false leaves a header out (Date, Server) */
  if (vt != LUA_TSTRING && vt != LUA_TNUMBER && vt != LUA_TTABLE)
    luaL_error(L, "http.server: header '%s' must be a string, a number or a list (got %s)", name,
               luaL_typename(L, -1));
  /* framing belongs to the server */
  if (strcasecmp(name, "content-length") == 0 || strcasecmp(name, "transfer-encoding") == 0)
    return HEADER_SKIP;
  if (strcasecmp(name, "connection") == 0) {
    if (vt == LUA_TSTRING && strcasecmp(lua_tostring(L, -1), "close") == 0)
      info->close = 1;
    return HEADER_SKIP;
  }
  lua_Integer n = vt == LUA_TTABLE ? luaL_len(L, -1) : 1;
  for (lua_Integer i = 1; i <= n; i++) {
    if (vt == LUA_TTABLE) {
      int et = lua_geti(L, -1, i);
      if (et != LUA_TSTRING && et != LUA_TNUMBER)
        luaL_error(L, "http.server: header '%s' item %d is a %s", name, (int)i,
                   luaL_typename(L, -1));
    } else {
      lua_pushvalue(L, -1); /* converted on a copy: the table keeps its number */
    }
    size_t vlen;
    const char *value = lua_tolstring(L, -1, &vlen);
    for (size_t j = 0; j < vlen; j++)
      if (value[j] == '\r' || value[j] == '\n' || value[j] == '\0')
        luaL_error(L, "http.server: header '%s' has a line break or NUL in its value", name);
    lua_pop(L, 1);
  }
  return vt == LUA_TTABLE ? HEADER_LIST : HEADER_ONE;
}

static void append_header_line(lua_State *L, tug_buf *out, const char *name, size_t nlen,
                               int failed[static 1]) {
  size_t vlen;
  const char *value = lua_tolstring(L, -1, &vlen);
  if (tug_buf_append(out, name, nlen) || tug_buf_append(out, ": ", 2) ||
      tug_buf_append(out, value, vlen) || tug_buf_append(out, "\r\n", 2))
    *failed = 1;
}

/* Appends the status line and the headers of the table at idx (nil for none) to out:
   a first pass checks everything (it may raise), a second writes (it does not). */
static int append_head(lua_State *L, srv_exchange *ex, int status, int idx, head_info *info,
                       tug_buf *out) {
  int has_table = !lua_isnoneornil(L, idx);
  if (has_table && !lua_istable(L, idx))
    luaL_error(L, "http.server: headers must be a table (got %s)", luaL_typename(L, idx));
  if (has_table) {
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      check_header(L, info);
      lua_pop(L, 1);
    }
  }
  int failed = tug_buf_appendf(out, "HTTP/1.1 %d %s\r\n", status, reason_phrase(status)) != 0;
  if (has_table) {
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      head_info ignored = {0, 0, 0};
      int kind = check_header(L, &ignored);
      size_t nlen;
      const char *name = lua_tolstring(L, -2, &nlen);
      if (kind == HEADER_ONE) {
        lua_pushvalue(L, -1);
        append_header_line(L, out, name, nlen, &failed);
        lua_pop(L, 1);
      } else if (kind == HEADER_LIST) {
        lua_Integer n = luaL_len(L, -1);
        for (lua_Integer i = 1; i <= n; i++) {
          lua_geti(L, -1, i);
          append_header_line(L, out, name, nlen, &failed);
          lua_pop(L, 1);
        }
      }
      lua_pop(L, 1);
    }
  }
  if (!info->has_date)
    failed |= tug_buf_appendf(out, "Date: %s\r\n", http_date()) != 0;
  if (!info->has_server)
    failed |= tug_buf_append(out, "Server: tug/" TUG_VERSION "\r\n",
                             sizeof "Server: tug/" TUG_VERSION "\r\n" - 1) != 0;
  srv_conn *c = ex->conn;
  if (c == NULL || !ex->keep_alive || c->server->closing)
    info->close = 1;
  return failed ? -1 : 0;
}

/* The end of the head: framing, Connection, the blank line. */
static int append_head_end(srv_exchange *ex, tug_buf *out, const char *framing, int close) {
  const char *conn_line = close ? "Connection: close\r\n"
                          : (ex->http_major == 1 && ex->http_minor == 0)
                              ? "Connection: keep-alive\r\n"
                              : "";
  return tug_buf_append(out, framing, strlen(framing)) ||
                 tug_buf_append(out, conn_line, strlen(conn_line)) || tug_buf_append(out, "\r\n", 2)
             ? -1
             : 0;
}

static int check_status(lua_State *L, srv_exchange *ex, const char *what) {
  lua_Integer status = luaL_checkinteger(L, 2);
  luaL_argcheck(L, status >= 200 && status <= 599, 2, "status must be between 200 and 599");
  if (ex->responded)
    luaL_error(L, "http.server %s: a response was already sent for this request", what);
  return (int)status;
}

/* ex:respond(status, headers, body) -> true, or false when the client has gone */
static int exchange_respond(lua_State *L) {
  srv_exchange *ex = check_exchange(L);
  size_t body_len = 0;
  const char *body = luaL_optlstring(L, 4, "", &body_len);
  int status = check_status(L, ex, "respond");
  head_info info = {0, 0, 0};
  tug_buf *out = &ex->out;
  size_t mark = out->len;
  int failed = append_head(L, ex, status, 3, &info, out) != 0;
  ex->responded = ex->finished = 1;
  if (ex->conn == NULL) {
    out->len = mark;
    lua_pushboolean(L, 0);
    return 1;
  }
  char framing[64] = "";
  if (!status_has_body(status))
    body_len = 0;
  else
    snprintf(framing, sizeof framing, "Content-Length: %zu\r\n", body_len);
  if (ex->head_request)
    body_len = 0;
  failed = failed || append_head_end(ex, out, framing, info.close) != 0 ||
           tug_buf_append(out, body, body_len) != 0;
  ex->close_after = info.close;
  if (failed) {
    out->len = mark;
    conn_close(ex->conn);
    return luaL_error(L, "http.server: out of memory");
  }
  conn_flush(ex->conn);
  lua_pushboolean(L, 1);
  return 1;
}

/* ex:start_stream(status, headers) -> true, or false when the client has gone */
static int exchange_start_stream(lua_State *L) {
  srv_exchange *ex = check_exchange(L);
  int status = check_status(L, ex, "stream");
  head_info info = {0, 0, 0};
  tug_buf *out = &ex->out;
  size_t mark = out->len;
  int failed = append_head(L, ex, status, 3, &info, out) != 0;
  ex->responded = ex->streaming = 1;
  if (ex->conn == NULL) {
    out->len = mark;
    lua_pushboolean(L, 0);
    return 1;
  }
  const char *framing = "";
  if (ex->head_request || !status_has_body(status)) {
    framing = "";
  } else if (ex->http_major == 1 && ex->http_minor >= 1) {
    framing = "Transfer-Encoding: chunked\r\n";
    ex->chunked = 1;
  } else {
    info.close = 1; /* HTTP/1.0: the end of the body is the end of the connection */
  }
  ex->close_after = info.close;
  if (failed || append_head_end(ex, out, framing, info.close) != 0) {
    out->len = mark;
    conn_close(ex->conn);
    return luaL_error(L, "http.server: out of memory");
  }
  conn_flush(ex->conn);
  lua_pushboolean(L, ex->conn != NULL);
  return 1;
}

static int write_resume(lua_State *L, tug_op *base) {
  srv_write_op *op = (srv_write_op *)base;
  srv_exchange *ex = op->ex;
  ex->writer = NULL;
  free(op);
  lua_pushboolean(L, ex->conn != NULL);
  return 1;
}

static void write_cancel(tug_op *base) {
  srv_write_op *op = (srv_write_op *)base;
  op->ex->writer = NULL;
  free(op);
}

/* ex:write(chunk) -> true once the chunk is on its way (waiting while the client is
   behind), false when the client has gone. */
static int exchange_write(lua_State *L) {
  srv_exchange *ex = check_exchange(L);
  size_t len;
  const char *chunk = luaL_checklstring(L, 2, &len);
  if (!ex->streaming || ex->finished)
    return luaL_error(L, "http.server: write outside a streaming response");
  if (ex->writer)
    return luaL_error(L, "http.server: another task is writing this response");
  if (ex->conn == NULL || ex->head_request) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (len > 0) {
    char size_line[32];
    int n = ex->chunked ? snprintf(size_line, sizeof size_line, "%zx\r\n", len) : 0;
    if (tug_buf_reserve(&ex->out, (size_t)n + len + 2) != 0)
      return luaL_error(L, "http.server: out of memory");
    tug_buf_append(&ex->out, size_line, (size_t)n);
    tug_buf_append(&ex->out, chunk, len);
    if (ex->chunked)
      tug_buf_append(&ex->out, "\r\n", 2);
    conn_flush(ex->conn);
  }
  if (!ex_must_wait(ex, SRV_STREAM_HIGH)) {
    lua_pushboolean(L, ex->conn != NULL);
    return 1;
  }
  if (!lua_isyieldable(L)) { /* cannot wait here: the chunk is queued, the socket catches up */
    lua_pushboolean(L, 1);
    return 1;
  }
  srv_write_op *op = malloc(sizeof *op);
  if (op == NULL)
    return luaL_error(L, "http.server: out of memory");
  op->base.resume = write_resume;
  op->base.cancel = write_cancel;
  op->ex = ex;
  op->limit = SRV_STREAM_LOW;
  ex->writer = op;
  return tug_await(L, &op->base);
}

static int take_step(lua_State *L, srv_exchange *ex);

static int take_resume(lua_State *L, tug_op *base) {
  srv_write_op *op = (srv_write_op *)base;
  srv_exchange *ex = op->ex;
  ex->writer = NULL;
  free(op);
  return take_step(L, ex);
}

/* Hands the socket over once every earlier response has left: a duplicate of the socket,
   and the request's head with any bytes read after it. The connection then closes its own
   handle (which does not end the TCP connection: the duplicate keeps it). */
static int take_step(lua_State *L, srv_exchange *ex) {
  srv_conn *c = ex->conn;
  if (c == NULL || c->closing) {
    lua_pushnil(L);
    return 1;
  }
  if (ex_must_wait(ex, 0)) {
    srv_write_op *op = malloc(sizeof *op);
    if (op == NULL)
      return luaL_error(L, "http.server: out of memory");
    op->base.resume = take_resume;
    op->base.cancel = write_cancel;
    op->ex = ex;
    op->limit = 0;
    ex->writer = op;
    return tug_await(L, &op->base);
  }
  uv_os_fd_t fd;
  int dup_fd = -1;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
    dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (dup_fd < 0) {
    conn_close(c);
    lua_pushnil(L);
    return 1;
  }
  lua_pushinteger(L, dup_fd);
  lua_pushlstring(L, ex->raw_head.data ? ex->raw_head.data : "", ex->raw_head.len);
  tug_buf_free(&ex->raw_head);
  ex->responded = ex->finished = 1;
  ex->detached = 1;
  conn_close(c);
  return 2;
}

/* ex:take_connection() -> fd, head: for an Upgrade request, the socket itself (the caller
   owns the fd) and what was read of it (the request's head and any bytes after it), once
   the responses to earlier requests on it are out; nil when the client has gone. */
static int exchange_take_connection(lua_State *L) {
  srv_exchange *ex = check_exchange(L);
  if (!ex->upgrade)
    return luaL_error(L, "http.server: take_connection needs a request with an Upgrade header");
  if (ex->responded)
    return luaL_error(L,
                      "http.server take_connection: a response was already sent for this request");
  if (ex->writer)
    return luaL_error(L, "http.server: another task is writing this response");
  tug_check_task(L, "http.server take_connection");
  return take_step(L, ex);
}

/* ex:finish() -> true: ends a streaming response (the terminating chunk). */
static int exchange_finish(lua_State *L) {
  srv_exchange *ex = check_exchange(L);
  if (!ex->streaming)
    return luaL_error(L, "http.server: finish outside a streaming response");
  if (ex->finished) {
    lua_pushboolean(L, ex->conn != NULL);
    return 1;
  }
  ex->finished = 1;
  if (ex->conn == NULL) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (ex->chunked && tug_buf_append(&ex->out, "0\r\n\r\n", 5) != 0) {
    conn_close(ex->conn);
    lua_pushboolean(L, 0);
    return 1;
  }
  conn_flush(ex->conn);
  lua_pushboolean(L, 1);
  return 1;
}

/* ex:abort(): closes the connection (a stream that failed half-way). */
static int exchange_abort(lua_State *L) {
  srv_exchange *ex = check_exchange(L);
  ex->responded = ex->finished = 1;
  if (ex->conn)
    conn_close(ex->conn);
  return 0;
}

/* ex:state() -> "pending", "streaming", "done", "detached" or "gone" */
static int exchange_state(lua_State *L) {
  srv_exchange *ex = check_exchange(L);
  if (ex->detached)
    lua_pushliteral(L, "detached");
  else if (ex->conn == NULL)
    lua_pushliteral(L, "gone");
  else if (ex->finished)
    lua_pushliteral(L, "done");
  else if (ex->responded)
    lua_pushliteral(L, "streaming");
  else
    lua_pushliteral(L, "pending");
  return 1;
}

static int exchange_gc(lua_State *L) {
  srv_exchange_handle *h = luaL_checkudata(L, 1, EXCHANGE_MT);
  srv_exchange *ex = h->ex;
  if (ex == NULL)
    return 0;
  h->ex = NULL;
  ex->has_handle = 0;
  if (ex->writer) { /* only when the state closes under a waiting handler */
    free(ex->writer);
    ex->writer = NULL;
  }
  if (ex->task == NULL) { /* the usual case; the server may be gone already */
    ex_maybe_free(ex);
    return 0;
  }
  /* the state closes under a running handler: while ex is on the running list, the
     server is still there */
  srv_server *s = ex->server;
  sched_watch_remove(&ex->watch);
  ex->task = NULL;
  running_remove(ex);
  ex_maybe_free(ex);
  srv_server_maybe_free(s);
  return 0;
}

static const luaL_Reg server_meta[] = {
    {"__index", server_index},
    {"__tostring", server_tostring},
    {"__close", server_close_scope},
    {"__gc", server_gc},
    {NULL, NULL},
};

static const luaL_Reg exchange_methods[] = {
    {"request", exchange_request},
    {"respond", exchange_respond},
    {"start_stream", exchange_start_stream},
    {"write", exchange_write},
    {"finish", exchange_finish},
    {"abort", exchange_abort},
    {"state", exchange_state},
    {"take_connection", exchange_take_connection},
    {NULL, NULL},
};

static const luaL_Reg server_funcs[] = {
    {"server_listen", server_listen},
    {"server_accept", server_accept},
    {"server_serve_task", server_serve_task},
    {NULL, NULL},
};

void http_server_register(lua_State *L, int t) {
  t = lua_absindex(L, t);
  if (luaL_newmetatable(L, SERVER_MT)) {
    luaL_setfuncs(L, server_meta, 0);
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, EXCHANGE_MT)) {
    luaL_newlib(L, exchange_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, exchange_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  for (const luaL_Reg *f = server_funcs; f->name; f++) {
    lua_pushcfunction(L, f->func);
    lua_setfield(L, t, f->name);
  }
}
