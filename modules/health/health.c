/*
 * health.c: the C half of the health module ("health.core"): a latency histogram and the
 * native load generator behind health.load. health.lua is the public module and holds the
 * policy (options, which statuses count as errors, plan mode, gates and their sentences).
 *
 * core.histogram() returns a health.histogram: log-linear buckets in the manner of
 * HdrHistogram. Values are microseconds; below 256 us every value has its own bucket, above
 * it each power of two is cut into 128 buckets, so a reported value (a bucket's midpoint) is
 * within 0.4% of what was recorded, in 36 KB whatever the number of samples.
 *
 * core.load(opts) runs one load check to the end and returns its figures. The hot path stays
 * in C, as in wrk: the request bytes are built once by health.lua, each connection writes
 * them, parses the response with http-parser and records the latency in the histogram; Lua
 * runs only before and after. Closed-loop (`concurrency` connections, each waiting for its
 * response before sending the next) or open-loop (`rate` requests a second started on
 * schedule whatever the responses do; a request with no free connection waits in a queue and
 * its latency counts from its scheduled start, so a stalled server cannot hide its stall by
 * slowing the sender: no coordinated omission). Plain HTTP/1.1 over TCP with keep-alive;
 * https goes through the http client in health.lua.
 *
 * Ownership: the run (a malloc'd load_run embedding the task's tug_op) owns its connections,
 * its timer and the address lookup. It is freed once every handle's close callback has run,
 * the lookup has ended and the task no longer waits (resumed or cancelled). Callbacks only
 * count and record; the results reach Lua when the task resumes.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <http_parser.h>

#include "tug.h"

#define HEALTH_HISTOGRAM_MT "health.histogram"

/* ---- the histogram ---- */

#define HIST_SUB_BITS 7
#define HIST_SUB (1 << HIST_SUB_BITS) /* buckets per power of two above the linear range */
#define HIST_LINEAR (2 * HIST_SUB)    /* 0..255 us: one bucket per microsecond */
#define HIST_OCTAVES 34               /* up to 2^42 us, about 50 days */
#define HIST_BUCKETS (HIST_LINEAR + HIST_OCTAVES * HIST_SUB)
#define HIST_MAX_VALUE ((UINT64_C(1) << (HIST_SUB_BITS + 1 + HIST_OCTAVES)) - 1)

typedef struct histogram {
  uint64_t count;
  uint64_t min, max; /* exact, in microseconds */
  double sum;        /* for the mean */
  uint64_t buckets[HIST_BUCKETS];
} histogram;

static void hist_reset(histogram *h) {
  memset(h, 0, sizeof *h);
  h->min = UINT64_MAX;
}

static int hist_index(uint64_t v) {
  if (v < HIST_LINEAR)
    return (int)v;
  if (v > HIST_MAX_VALUE)
    v = HIST_MAX_VALUE;
  int msb = 63 - __builtin_clzll(v);
  int shift = msb - HIST_SUB_BITS; /* >= 1: keeps the top 8 bits, the first always set */
  int top = (int)(v >> shift);     /* 128..255 */
  return HIST_LINEAR + (shift - 1) * HIST_SUB + (top - HIST_SUB);
}

/* The value a bucket stands for: its midpoint (exact in the linear range). */
static uint64_t hist_value(int idx) {
  if (idx < HIST_LINEAR)
    return (uint64_t)idx;
  int shift = (idx - HIST_LINEAR) / HIST_SUB + 1;
  uint64_t top = (uint64_t)(HIST_SUB + (idx - HIST_LINEAR) % HIST_SUB);
  return (top << shift) + (UINT64_C(1) << (shift - 1));
}

static void hist_record(histogram *h, uint64_t us, uint64_t n) {
  if (n == 0)
    return;
  h->buckets[hist_index(us)] += n;
  h->count += n;
  h->sum += (double)us * (double)n;
  if (us < h->min)
    h->min = us;
  if (us > h->max)
    h->max = us;
}

/* The value at or below which p% of the samples lie, clamped to the exact min and max. */
static uint64_t hist_percentile(const histogram *h, double p) {
  if (h->count == 0)
    return 0;
  if (p >= 100)
    return h->max;
  uint64_t rank = (uint64_t)ceil(p / 100 * (double)h->count);
  if (rank < 1)
    rank = 1;
  uint64_t seen = 0;
  for (int i = 0; i < HIST_BUCKETS; i++) {
    seen += h->buckets[i];
    if (seen >= rank) {
      uint64_t v = hist_value(i);
      return v < h->min ? h->min : v > h->max ? h->max : v;
    }
  }
  return h->max;
}

static void hist_merge(histogram *into, const histogram *from) {
  if (from->count == 0)
    return;
  for (int i = 0; i < HIST_BUCKETS; i++)
    into->buckets[i] += from->buckets[i];
  into->count += from->count;
  into->sum += from->sum;
  if (from->min < into->min)
    into->min = from->min;
  if (from->max > into->max)
    into->max = from->max;
}

static histogram *check_histogram(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, HEALTH_HISTOGRAM_MT);
}

static histogram *push_histogram(lua_State *L) {
  histogram *h = lua_newuserdatauv(L, sizeof *h, 0);
  hist_reset(h);
  luaL_setmetatable(L, HEALTH_HISTOGRAM_MT);
  return h;
}

static void push_seconds(lua_State *L, uint64_t us) { lua_pushnumber(L, (double)us / 1e6); }

/* core.histogram() -> an empty histogram */
static int histogram_new(lua_State *L) {
  push_histogram(L);
  return 1;
}

/* h:record(seconds [, count]) */
static int histogram_record(lua_State *L) {
  histogram *h = check_histogram(L, 1);
  lua_Number seconds = luaL_checknumber(L, 2);
  lua_Integer n = luaL_optinteger(L, 3, 1);
  luaL_argcheck(L, seconds >= 0 && seconds == seconds, 2, "a latency must be >= 0 seconds");
  luaL_argcheck(L, n >= 0, 3, "count must be >= 0");
  double us = seconds * 1e6 + 0.5;
  hist_record(h, us >= (double)HIST_MAX_VALUE ? HIST_MAX_VALUE : (uint64_t)us, (uint64_t)n);
  return 0;
}

/* h:percentile(p) -> seconds, or nil when empty */
static int histogram_percentile(lua_State *L) {
  histogram *h = check_histogram(L, 1);
  lua_Number p = luaL_checknumber(L, 2);
  luaL_argcheck(L, p >= 0 && p <= 100, 2, "a percentile is from 0 to 100");
  if (h->count == 0)
    return 0;
  push_seconds(L, hist_percentile(h, p));
  return 1;
}

static int histogram_count(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_histogram(L, 1)->count);
  return 1;
}

static int histogram_min(lua_State *L) {
  histogram *h = check_histogram(L, 1);
  if (h->count == 0)
    return 0;
  push_seconds(L, h->min);
  return 1;
}

static int histogram_max(lua_State *L) {
  histogram *h = check_histogram(L, 1);
  if (h->count == 0)
    return 0;
  push_seconds(L, h->max);
  return 1;
}

static int histogram_mean(lua_State *L) {
  histogram *h = check_histogram(L, 1);
  if (h->count == 0)
    return 0;
  lua_pushnumber(L, h->sum / (double)h->count / 1e6);
  return 1;
}

/* h:merge(other): adds other's samples to h */
static int histogram_merge(lua_State *L) {
  histogram *h = check_histogram(L, 1);
  hist_merge(h, check_histogram(L, 2));
  lua_settop(L, 1);
  return 1;
}

static int histogram_reset(lua_State *L) {
  hist_reset(check_histogram(L, 1));
  return 0;
}

static int histogram_tostring(lua_State *L) {
  histogram *h = check_histogram(L, 1);
  if (h->count == 0) {
    lua_pushliteral(L, "health.histogram (empty)");
    return 1;
  }
  lua_pushfstring(L, "health.histogram (%I samples, p50 %f ms, p99 %f ms, max %f ms)",
                  (lua_Integer)h->count, (double)hist_percentile(h, 50) / 1e3,
                  (double)hist_percentile(h, 99) / 1e3, (double)h->max / 1e3);
  return 1;
}

/* ---- the load generator ---- */

enum { PHASE_RESOLVING, PHASE_RUNNING, PHASE_DRAINING, PHASE_DONE };
enum { CONN_CONNECTING, CONN_IDLE, CONN_BUSY, CONN_CLOSING };
enum { ERR_CONNECT, ERR_TIMEOUT, ERR_CLOSED, ERR_PROTOCOL, ERR_KINDS };

static const char *const error_names[ERR_KINDS] = {"connect", "timeout", "closed", "protocol"};

#define LOAD_READ_SIZE (64 * 1024)
/* After a failure a closed-loop connection is replaced at the next tick, not at once, so
   a refusing server does not turn the loop into a busy spin. */
#define LOAD_CLOSED_TICK_MS 10
#define LOAD_OPEN_TICK_MS 1
#define LOAD_SWEEP_NS (10 * UINT64_C(1000000))

typedef struct load_run load_run;
typedef struct load_conn load_conn;

struct load_conn {
  uv_tcp_t tcp;
  uv_connect_t connect;
  uv_write_t write;
  http_parser parser;
  load_run *run;
  int state;
  int has_request;        /* a request is in flight (or waits for the connection to open) */
  int complete;           /* the parser saw the end of the response */
  uint64_t started;       /* ns (uv_hrtime) the request's latency counts from */
  load_conn *prev, *next; /* every open connection */
  load_conn *idle_prev, *idle_next; /* open-loop: connections with nothing to do */
};

struct load_run {
  tug_op op;     /* first member: the runtime sees a tug_op */
  int waiting;   /* a task waits on this run: resume or cancel still to come */
  int resolving; /* the address lookup has not called back yet */
  int handles_open;
  int phase;

  uv_getaddrinfo_t gai;
  uv_timer_t tick;
  int tick_open;
  struct sockaddr_storage addr;
  char *host;
  char port[16];

  char *request;
  size_t request_len;
  int head;
  int concurrency; /* closed-loop when > 0 */
  double rate;     /* open-loop when > 0 */
  int max_connections;
  uint64_t duration_ns, timeout_ns;
  uint64_t t_start, t_end, last_sweep;
  uint64_t scheduled; /* open-loop: requests started on schedule so far */

  uint64_t *pending; /* open-loop: scheduled starts with no connection yet (a ring) */
  size_t pending_head, pending_len, pending_cap;

  load_conn *conns, *idle;
  int nconns, busy;

  /* figures */
  histogram hist;
  uint64_t statuses[600];
  uint64_t errors[ERR_KINDS];
  uint64_t connects, bytes;
  uint64_t t_finish;
  char first_error[256];
  int fatal; /* the lookup failed: nothing ran */
};

static char read_buffer[LOAD_READ_SIZE];

static void run_maybe_free(load_run *run) {
  if (run->waiting || run->resolving || run->handles_open > 0)
    return;
  free(run->pending);
  free(run->request);
  free(run->host);
  free(run);
}

static void note_error(load_run *run, int kind, const char *detail) {
  run->errors[kind]++;
  if (!run->first_error[0])
    snprintf(run->first_error, sizeof run->first_error, "%s: %s", error_names[kind], detail);
}

static void conn_closed(uv_handle_t *h) {
  load_conn *c = h->data;
  load_run *run = c->run;
  free(c);
  run->handles_open--;
  run_maybe_free(run);
}

static void idle_remove(load_run *run, load_conn *c) {
  if (c->idle_prev)
    c->idle_prev->idle_next = c->idle_next;
  else if (run->idle == c)
    run->idle = c->idle_next;
  if (c->idle_next)
    c->idle_next->idle_prev = c->idle_prev;
  c->idle_prev = c->idle_next = NULL;
}

static void idle_push(load_run *run, load_conn *c) {
  c->state = CONN_IDLE;
  c->idle_prev = NULL;
  c->idle_next = run->idle;
  if (run->idle)
    run->idle->idle_prev = c;
  run->idle = c;
}

/* Closes a connection; a request still in flight is dropped (the caller counted it). */
static void conn_close(load_conn *c) {
  load_run *run = c->run;
  if (c->state == CONN_CLOSING)
    return;
  if (c->state == CONN_IDLE)
    idle_remove(run, c);
  if (c->has_request) {
    c->has_request = 0;
    run->busy--;
  }
  c->state = CONN_CLOSING;
  if (c->prev)
    c->prev->next = c->next;
  else
    run->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  run->nconns--;
  uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

static void run_check_finished(load_run *run);
static int conn_open(load_run *run, int with_request, uint64_t started);

static void conn_fail(load_conn *c, int kind, const char *detail) {
  if (c->has_request)
    note_error(c->run, kind, detail);
  conn_close(c);
  run_check_finished(c->run);
}

static int on_headers_complete(http_parser *p) {
  load_conn *c = p->data;
  return c->run->head ? 1 : 0; /* a HEAD response has no body, whatever it announces */
}

static int on_message_complete(http_parser *p) {
  load_conn *c = p->data;
  c->complete = 1;
  http_parser_pause(p, 1); /* no pipelining: anything after the response is not ours */
  return 0;
}

static const http_parser_settings parser_settings = {
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

static void on_write_done(uv_write_t *req, int status) {
  load_conn *c = req->data;
  if (status < 0 && c->state != CONN_CLOSING)
    conn_fail(c, ERR_CLOSED, uv_strerror(status));
}

static void conn_send(load_conn *c, uint64_t started) {
  load_run *run = c->run;
  if (!c->has_request) {
    c->has_request = 1;
    run->busy++;
  }
  c->state = CONN_BUSY;
  c->started = started;
  c->complete = 0;
  http_parser_init(&c->parser, HTTP_RESPONSE);
  c->parser.data = c;
  uv_buf_t buf = uv_buf_init(run->request, (unsigned)run->request_len);
  int n = uv_try_write((uv_stream_t *)&c->tcp, &buf, 1);
  if (n == (int)run->request_len)
    return;
  if (n < 0 && n != UV_EAGAIN) {
    conn_fail(c, ERR_CLOSED, uv_strerror(n));
    return;
  }
  if (n > 0)
    buf = uv_buf_init(run->request + n, (unsigned)(run->request_len - (size_t)n));
  c->write.data = c;
  int rc = uv_write(&c->write, (uv_stream_t *)&c->tcp, &buf, 1, on_write_done);
  if (rc < 0)
    conn_fail(c, ERR_CLOSED, uv_strerror(rc));
}

static int pending_push(load_run *run, uint64_t t) {
  if (run->pending_len == run->pending_cap) {
    size_t cap = run->pending_cap ? run->pending_cap * 2 : 1024;
    uint64_t *p = malloc(cap * sizeof *p);
    if (!p)
      return -1;
    for (size_t i = 0; i < run->pending_len; i++)
      p[i] = run->pending[(run->pending_head + i) % run->pending_cap];
    free(run->pending);
    run->pending = p;
    run->pending_head = 0;
    run->pending_cap = cap;
  }
  run->pending[(run->pending_head + run->pending_len) % run->pending_cap] = t;
  run->pending_len++;
  return 0;
}

static uint64_t pending_pop(load_run *run) {
  uint64_t t = run->pending[run->pending_head];
  run->pending_head = (run->pending_head + 1) % run->pending_cap;
  run->pending_len--;
  return t;
}

/* A connection has nothing in flight: give it the next request, or let it rest. */
static void conn_next(load_conn *c) {
  load_run *run = c->run;
  if (c->has_request) {
    c->has_request = 0;
    run->busy--;
  }
  if (run->concurrency > 0) {
    if (run->phase == PHASE_RUNNING && uv_hrtime() < run->t_end) {
      conn_send(c, uv_hrtime());
      return;
    }
    c->state = CONN_IDLE; /* closed-loop connections rest outside the idle list */
  } else if (run->pending_len > 0) {
    conn_send(c, pending_pop(run));
    return;
  } else {
    idle_push(run, c);
  }
  run_check_finished(run);
}

/* The response on c has ended: count it, then go on on this connection or, when the server
   closes it (or already has: eof), on a new one at once. */
static void response_done(load_conn *c, int eof) {
  load_run *run = c->run;
  uint64_t now = uv_hrtime();
  uint64_t elapsed = now > c->started ? now - c->started : 0;
  hist_record(&run->hist, (elapsed + 500) / 1000, 1);
  unsigned status = c->parser.status_code;
  run->statuses[status < 600 ? status : 0]++;
  if (!eof && http_should_keep_alive(&c->parser)) {
    conn_next(c);
    return;
  }
  c->has_request = 0;
  run->busy--;
  conn_close(c);
  if (run->phase == PHASE_RUNNING && now < run->t_end) {
    if (run->concurrency > 0)
      conn_open(run, 1, now);
    else if (run->pending_len > 0)
      conn_open(run, 1, pending_pop(run));
  }
  run_check_finished(run);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  *buf = uv_buf_init(read_buffer, sizeof read_buffer);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  load_conn *c = stream->data;
  if (c->state == CONN_CLOSING)
    return;
  if (nread == 0)
    return;
  if (nread < 0) {
    if (c->has_request && nread == UV_EOF) {
      http_parser_execute(&c->parser, &parser_settings, NULL, 0); /* a body read to EOF */
      if (c->complete) {
        response_done(c, 1);
        return;
      }
    }
    if (c->has_request)
      conn_fail(c, ERR_CLOSED,
                nread == UV_EOF ? "the server closed the connection before the response ended"
                                : uv_strerror((int)nread));
    else
      conn_fail(c, ERR_CLOSED, "idle connection closed"); /* no request: nothing counted */
    return;
  }
  c->run->bytes += (uint64_t)nread;
  if (!c->has_request) {
    conn_fail(c, ERR_PROTOCOL, "data from the server with no request in flight");
    return;
  }
  http_parser_execute(&c->parser, &parser_settings, buf->base, (size_t)nread);
  if (c->complete) {
    response_done(c, 0);
  } else if (HTTP_PARSER_ERRNO(&c->parser) != HPE_OK) {
    conn_fail(c, ERR_PROTOCOL, http_errno_description(HTTP_PARSER_ERRNO(&c->parser)));
  }
}

static void on_connect(uv_connect_t *req, int status) {
  load_conn *c = req->data;
  load_run *run = c->run;
  if (c->state == CONN_CLOSING)
    return;
  if (status < 0) {
    conn_fail(c, ERR_CONNECT, uv_strerror(status));
    return;
  }
  run->connects++;
  int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (rc < 0) {
    conn_fail(c, ERR_CONNECT, uv_strerror(rc));
    return;
  }
  if (c->has_request)
    conn_send(c, c->started);
  else
    conn_next(c);
}

/* Opens a connection; with_request: a request (counted from `started`) goes out once it is
   open. Returns -1 when it could not even start (counted as a connect error). */
static int conn_open(load_run *run, int with_request, uint64_t started) {
  load_conn *c = calloc(1, sizeof *c);
  if (!c) {
    note_error(run, ERR_CONNECT, "out of memory");
    return -1;
  }
  c->run = run;
  c->state = CONN_CONNECTING;
  uv_tcp_init(tug_loop(), &c->tcp);
  c->tcp.data = c;
  run->handles_open++;
  c->next = run->conns;
  if (run->conns)
    run->conns->prev = c;
  run->conns = c;
  run->nconns++;
  if (with_request) {
    c->has_request = 1;
    c->started = started;
    run->busy++;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  c->connect.data = c;
  int rc = uv_tcp_connect(&c->connect, &c->tcp, (const struct sockaddr *)&run->addr, on_connect);
  if (rc < 0) {
    conn_fail(c, ERR_CONNECT, uv_strerror(rc));
    return -1;
  }
  return 0;
}

static void tick_closed(uv_handle_t *h) {
  load_run *run = h->data;
  run->handles_open--;
  run_maybe_free(run);
}

/* Stops everything that still runs: the timer and every connection. */
static void run_shutdown(load_run *run) {
  if (run->resolving)
    uv_cancel((uv_req_t *)&run->gai);
  if (run->tick_open) {
    run->tick_open = 0;
    uv_close((uv_handle_t *)&run->tick, tick_closed);
  }
  while (run->conns)
    conn_close(run->conns);
}

static void run_finish(load_run *run) {
  if (run->phase == PHASE_DONE)
    return;
  run->phase = PHASE_DONE;
  run->t_finish = uv_hrtime();
  run_shutdown(run);
  tug_op_done(&run->op);
}

static void run_check_finished(load_run *run) {
  if (run->phase == PHASE_DRAINING && run->busy == 0 && run->pending_len == 0)
    run_finish(run);
}

/* Requests in flight longer than the timeout fail; so do queued ones past it. */
static void run_sweep(load_run *run, uint64_t now) {
  load_conn *c = run->conns;
  while (c) {
    load_conn *next = c->next;
    if (c->has_request && now > c->started + run->timeout_ns) {
      note_error(run, ERR_TIMEOUT, "no response within the timeout");
      conn_close(c);
    }
    c = next;
  }
  while (run->pending_len > 0 && now > run->pending[run->pending_head] + run->timeout_ns) {
    pending_pop(run);
    note_error(run, ERR_TIMEOUT, "no connection free within the timeout");
  }
}

static void on_tick(uv_timer_t *timer) {
  load_run *run = timer->data;
  uint64_t now = uv_hrtime();
  if (now - run->last_sweep >= LOAD_SWEEP_NS || run->phase == PHASE_DRAINING) {
    run->last_sweep = now;
    run_sweep(run, now);
  }
  if (run->phase == PHASE_RUNNING && now >= run->t_end) {
    run->phase = PHASE_DRAINING;
    /* idle closed-loop connections have nothing more to do */
    if (run->concurrency > 0) {
      load_conn *c = run->conns;
      while (c) {
        load_conn *next = c->next;
        if (!c->has_request)
          conn_close(c);
        c = next;
      }
    }
  }
  if (run->phase == PHASE_RUNNING) {
    if (run->concurrency > 0) {
      while (run->nconns < run->concurrency)
        if (conn_open(run, 1, now) < 0)
          break;
    } else {
      /* every request whose time has come starts now, late ones counted from their time */
      for (;;) {
        uint64_t at = run->t_start + (uint64_t)((double)run->scheduled * 1e9 / run->rate);
        if (at > now || at >= run->t_end)
          break;
        run->scheduled++;
        if (run->idle) {
          load_conn *c = run->idle;
          idle_remove(run, c);
          conn_send(c, at);
        } else if (run->nconns < run->max_connections) {
          conn_open(run, 1, at);
        } else if (pending_push(run, at) < 0) {
          note_error(run, ERR_CONNECT, "out of memory");
        }
      }
    }
  }
  if (run->phase != PHASE_DONE && run->pending_len > 0) {
    /* queued requests whose connection failed: open replacements */
    while (run->pending_len > 0 && run->nconns < run->max_connections)
      if (conn_open(run, 1, pending_pop(run)) < 0)
        break;
  }
  run_check_finished(run);
}

static void run_start(load_run *run) {
  run->phase = PHASE_RUNNING;
  run->t_start = uv_hrtime();
  run->t_end = run->t_start + run->duration_ns;
  run->last_sweep = run->t_start;
  uv_timer_init(tug_loop(), &run->tick);
  run->tick.data = run;
  run->tick_open = 1;
  run->handles_open++;
  uint64_t ms = run->concurrency > 0 ? LOAD_CLOSED_TICK_MS : LOAD_OPEN_TICK_MS;
  uv_timer_start(&run->tick, on_tick, run->concurrency > 0 ? 0 : ms, ms);
  if (run->concurrency > 0)
    on_tick(&run->tick); /* open the connections now, not a tick later */
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  load_run *run = req->data;
  run->resolving = 0;
  if (status == UV_EAI_CANCELED || run->phase == PHASE_DONE) {
    uv_freeaddrinfo(res);
    run_maybe_free(run);
    return;
  }
  if (status < 0 || !res) {
    snprintf(run->first_error, sizeof run->first_error, "dns: %s: %s", run->host,
             uv_strerror(status));
    run->fatal = 1;
    uv_freeaddrinfo(res);
    run->phase = PHASE_DONE;
    run->t_finish = uv_hrtime();
    tug_op_done(&run->op);
    return;
  }
  memcpy(&run->addr, res->ai_addr, res->ai_addrlen);
  uv_freeaddrinfo(res);
  run_start(run);
}

static void push_results(lua_State *L, load_run *run) {
  lua_createtable(L, 0, 12);
  if (run->fatal) {
    lua_pushstring(L, run->first_error);
    lua_setfield(L, -2, "fatal");
  }
  uint64_t responses = 0;
  lua_newtable(L);
  for (int s = 0; s < 600; s++) {
    if (run->statuses[s]) {
      lua_pushinteger(L, (lua_Integer)run->statuses[s]);
      lua_rawseti(L, -2, s);
      responses += run->statuses[s];
    }
  }
  lua_setfield(L, -2, "statuses");
  lua_pushinteger(L, (lua_Integer)responses);
  lua_setfield(L, -2, "responses");
  lua_newtable(L);
  for (int k = 0; k < ERR_KINDS; k++) {
    lua_pushinteger(L, (lua_Integer)run->errors[k]);
    lua_setfield(L, -2, error_names[k]);
  }
  lua_setfield(L, -2, "transport_errors");
  if (run->first_error[0] && !run->fatal) {
    lua_pushstring(L, run->first_error);
    lua_setfield(L, -2, "first_error");
  }
  lua_pushinteger(L, (lua_Integer)run->connects);
  lua_setfield(L, -2, "connects");
  lua_pushinteger(L, (lua_Integer)run->bytes);
  lua_setfield(L, -2, "bytes");
  lua_pushinteger(L, (lua_Integer)run->scheduled);
  lua_setfield(L, -2, "scheduled");
  double elapsed = run->t_start && run->t_finish > run->t_start
                       ? (double)(run->t_finish - run->t_start) / 1e9
                       : 0;
  lua_pushnumber(L, elapsed);
  lua_setfield(L, -2, "elapsed");
  histogram *h = push_histogram(L);
  memcpy(h, &run->hist, sizeof *h);
  lua_setfield(L, -2, "histogram");
}

static int load_resume(lua_State *L, tug_op *op) {
  load_run *run = (load_run *)op;
  run->waiting = 0;
  push_results(L, run);
  run_maybe_free(run);
  return 1;
}

static void load_cancel(tug_op *op) {
  load_run *run = (load_run *)op;
  run->waiting = 0;
  run->phase = PHASE_DONE;
  run_shutdown(run);
  run_maybe_free(run);
}

static double field_number(lua_State *L, const char *name, double def) {
  double v = def;
  if (lua_getfield(L, 1, name) != LUA_TNIL) {
    if (!lua_isnumber(L, -1))
      luaL_error(L, "health.core.load: %s must be a number", name);
    v = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

/* core.load{ host, port, request, head, duration, concurrency | rate, max_connections,
   timeout } -> figures. health.lua checks the options; this checks what C relies on. */
static int health_load(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  tug_check_task(L, "health.load");
  lua_getfield(L, 1, "host");
  const char *host = luaL_checkstring(L, -1);
  lua_getfield(L, 1, "request");
  size_t request_len;
  const char *request = luaL_checklstring(L, -1, &request_len);
  luaL_argcheck(L, request_len > 0, 1, "request must not be empty");
  lua_getfield(L, 1, "head");
  int head = lua_toboolean(L, -1);
  lua_pop(L, 1);
  double port = field_number(L, "port", -1);
  double duration = field_number(L, "duration", -1);
  double concurrency = field_number(L, "concurrency", 0);
  double rate = field_number(L, "rate", 0);
  double max_connections = field_number(L, "max_connections", 1000);
  double timeout = field_number(L, "timeout", 10);
  luaL_argcheck(L, port >= 1 && port <= 65535, 1, "port must be from 1 to 65535");
  luaL_argcheck(L, duration > 0 && duration < 1e6, 1, "duration must be > 0");
  luaL_argcheck(L, (concurrency >= 1 && concurrency <= 100000) != (rate > 0 && rate <= 1e7), 1,
                "give concurrency (1 to 100000) or rate (> 0)");
  luaL_argcheck(L, max_connections >= 1 && max_connections <= 100000, 1,
                "max_connections must be from 1 to 100000");
  luaL_argcheck(L, timeout > 0, 1, "timeout must be > 0");

  load_run *run = calloc(1, sizeof *run);
  if (!run)
    return luaL_error(L, "health.load: out of memory");
  run->host = strdup(host);
  run->request = malloc(request_len);
  if (!run->host || !run->request) {
    free(run->host);
    free(run->request);
    free(run);
    return luaL_error(L, "health.load: out of memory");
  }
  memcpy(run->request, request, request_len);
  run->request_len = request_len;
  run->head = head;
  run->concurrency = (int)concurrency;
  run->rate = rate;
  run->max_connections = (int)max_connections;
  run->duration_ns = (uint64_t)(duration * 1e9);
  run->timeout_ns = (uint64_t)(timeout * 1e9);
  hist_reset(&run->hist);
  snprintf(run->port, sizeof run->port, "%d", (int)port);
  run->op.resume = load_resume;
  run->op.cancel = load_cancel;
  run->waiting = 1;
  run->resolving = 1;
  run->gai.data = run;
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int rc = uv_getaddrinfo(tug_loop(), &run->gai, on_resolved, run->host, run->port, &hints);
  if (rc < 0) {
    run->resolving = 0;
    snprintf(run->first_error, sizeof run->first_error, "dns: %s: %s", run->host, uv_strerror(rc));
    run->fatal = 1;
    run->phase = PHASE_DONE;
    run->waiting = 0;
    push_results(L, run);
    run_maybe_free(run);
    return 1;
  }
  return tug_await(L, &run->op);
}

static const luaL_Reg histogram_methods[] = {{"record", histogram_record},
                                             {"percentile", histogram_percentile},
                                             {"count", histogram_count},
                                             {"min", histogram_min},
                                             {"max", histogram_max},
                                             {"mean", histogram_mean},
                                             {"merge", histogram_merge},
                                             {"reset", histogram_reset},
                                             {NULL, NULL}};

static const luaL_Reg health_functions[] = {
    {"histogram", histogram_new}, {"load", health_load}, {NULL, NULL}};

int luaopen_tug_health(lua_State *L) {
  luaL_newmetatable(L, HEALTH_HISTOGRAM_MT);
  luaL_newlib(L, histogram_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, histogram_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  luaL_newlib(L, health_functions);
  lua_pushnumber(L, 1.0 / (2 * HIST_SUB));
  lua_setfield(L, -2, "histogram_relative_error");
  return 1;
}
