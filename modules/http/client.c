/*
 * client.c: the HTTP client mechanism of the http module (part of "http.core"): libcurl's
 * multi interface driven by tug's libuv loop, one transfer per call.
 *
 * core.start(opts) starts one attempt of one request and returns an http.request userdata;
 * req:wait() waits for the end and returns the result table, req:next() hands over streamed
 * body data (a string, or an array of lines), req:stop() ends a stream early. http.lua builds
 * the public API (defaults, query and body encoding, retries, plan mode) over these.
 *
 * The glue follows curl's docs/examples/multi-uv.c: one multi handle for the process, one
 * uv_poll per socket started and stopped by curl's socket callback, one uv_timer driven by
 * curl's timer callback; both call curl_multi_socket_action and then drain
 * curl_multi_info_read. Callbacks only record bytes and outcomes in C memory and call
 * tug_op_done; the scheduler resumes the task later, which pushes the results into Lua.
 *
 * Ownership: an http_req owns its easy handle, header list, request body copy and response
 * buffers, released by req_release; the struct itself is freed by req_maybe_free once no
 * userdata points at it and no task waits on it. The poll handles and the timer are malloc'd
 * and freed in their close callbacks. A registry sentinel tears everything down at exit.
 */
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "http_internal.h"

#define HTTP_REQUEST_MT "http.request"
#define HTTP_SENTINEL_MT "http.client"
#define HTTP_SENTINEL_KEY "http.client.sentinel"
#define HTTP_MAX_BODY_DEFAULT ((size_t)64 * 1024 * 1024)
#define HTTP_MAX_HOST_CONNECTIONS_DEFAULT 16
#define HTTP_MAX_REDIRECTS 10
#define HTTP_TIMEOUT_DEFAULT 30.0
#define HTTP_CONNECT_TIMEOUT_DEFAULT 10.0
/* Streamed data beyond this pauses the transfer until the task takes it. */
#define HTTP_QUEUE_HIGH (1024 * 1024)

enum { STREAM_NONE, STREAM_CHUNKS, STREAM_LINES };
enum { WAIT_DONE, WAIT_DATA };
enum { DECIDE_PENDING, DECIDE_BUFFER, DECIDE_STREAM };

typedef struct http_req http_req;

struct http_req {
  tug_op op; /* the task's wait; valid while `waiting` */
  int waiting;
  int signalled; /* tug_op_done already called for this wait */
  int wait_kind;

  CURL *easy; /* NULL once released */
  struct curl_slist *header_list;
  char *request_body;
  char *method;
  char *safe_url; /* the requested URL without user:password@ */
  char *password; /* the URL's password, scrubbed from messages */
  char errbuf[CURL_ERROR_SIZE];

  tug_buf body;         /* the response body when it is not streamed */
  tug_buf header_lines; /* raw header lines of the latest response */
  tug_buf queue;        /* streamed bytes, or line records (size_t length, bytes) */
  tug_buf partial;      /* the incomplete last line */

  int stream;   /* STREAM_* requested */
  int decision; /* DECIDE_*: streaming happens for 2xx responses only */
  int paused;   /* the write callback returned CURL_WRITEFUNC_PAUSE */
  size_t max_body;

  int attached; /* a userdata points here */
  int in_multi;
  int done;
  CURLcode result;
  long os_errno;
  int too_large, out_of_memory, stopped, cancelled;

  http_req *prev, *next; /* every request holding curl resources (for the exit teardown) */
};

typedef struct http_handle {
  http_req *req; /* NULL once closed */
} http_handle;

typedef struct http_sock {
  uv_poll_t poll;
  curl_socket_t fd;
  struct http_sock *prev, *next;
} http_sock;

static struct {
  CURLM *multi;
  uv_timer_t *timer;
  http_sock *socks;
  http_req *reqs;
  int in_multi; /* transfers in the multi: while any, the loop must stay alive */
  int referenced;
  int shutting_down;
  long max_host_connections;
  size_t max_body;
} G = {.max_host_connections = HTTP_MAX_HOST_CONNECTIONS_DEFAULT,
       .max_body = HTTP_MAX_BODY_DEFAULT};

/* ---- URLs in messages ---- */

/* A copy of url without the user:password@ part; *password receives a copy of the
   password (or NULL) so that messages can scrub it wherever else it shows up. */
static char *strip_credentials(const char *url, char **password) {
  size_t len = strlen(url);
  char *copy = malloc(len + 1);
  if (password)
    *password = NULL;
  if (!copy)
    return NULL;
  const char *scheme_end = strstr(url, "://");
  const char *host = scheme_end ? scheme_end + 3 : url;
  size_t authority = strcspn(host, "/?#");
  const char *at = NULL;
  for (const char *p = host; p < host + authority; p++)
    if (*p == '@')
      at = p;
  if (!at) {
    memcpy(copy, url, len + 1);
    return copy;
  }
  if (password) {
    const char *colon = memchr(host, ':', (size_t)(at - host));
    if (colon && at - colon > 1) {
      size_t n = (size_t)(at - colon - 1);
      *password = malloc(n + 1);
      if (*password) {
        memcpy(*password, colon + 1, n);
        (*password)[n] = '\0';
      }
    }
  }
  size_t prefix = (size_t)(host - url);
  memcpy(copy, url, prefix);
  memcpy(copy + prefix, at + 1, len - (size_t)(at + 1 - url) + 1);
  return copy;
}

/* Pushes s with every occurrence of secret replaced by "***". */
static void push_scrubbed(lua_State *L, const char *s, const char *secret) {
  if (!secret || !*secret) {
    lua_pushstring(L, s);
    return;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  size_t n = strlen(secret);
  const char *hit;
  while ((hit = strstr(s, secret)) != NULL) {
    luaL_addlstring(&b, s, (size_t)(hit - s));
    luaL_addstring(&b, "***");
    s = hit + n;
  }
  luaL_addstring(&b, s);
  luaL_pushresult(&b);
}

/* ---- the loop glue ---- */

static void update_refs(void) {
  int want = G.in_multi > 0;
  if (want == G.referenced || !G.timer)
    return;
  G.referenced = want;
  void (*set)(uv_handle_t *) = want ? uv_ref : uv_unref;
  set((uv_handle_t *)G.timer);
  for (http_sock *s = G.socks; s; s = s->next)
    set((uv_handle_t *)&s->poll);
}

static void notify(http_req *req) {
  if (!req->waiting || req->signalled)
    return;
  if (req->wait_kind == WAIT_DONE ? req->done : (req->queue.len > 0 || req->done)) {
    req->signalled = 1;
    tug_op_done(&req->op);
  }
}

static void flush_partial(http_req *req);

/* Takes the transfer out of the multi; curl closes a connection left mid-response. */
static void req_remove(http_req *req) {
  if (!req->in_multi)
    return;
  req->in_multi = 0;
  G.in_multi--;
  if (G.multi)
    curl_multi_remove_handle(G.multi, req->easy);
  update_refs();
}

static void req_finish(http_req *req, CURLcode result) {
  req_remove(req);
  req->done = 1;
  req->result = result;
  curl_easy_getinfo(req->easy, CURLINFO_OS_ERRNO, &req->os_errno);
  if (result == CURLE_OK && req->decision == DECIDE_STREAM)
    flush_partial(req);
  notify(req);
}

static void drain_messages(void) {
  CURLMsg *msg;
  int left;
  while (G.multi && (msg = curl_multi_info_read(G.multi, &left))) {
    if (msg->msg != CURLMSG_DONE)
      continue;
    CURL *easy = msg->easy_handle;
    CURLcode result = msg->data.result; /* msg is invalid once the handle is removed */
    char *private = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, &private);
    if (private)
      req_finish((http_req *)private, result);
  }
}

static void on_sock_closed(uv_handle_t *handle) { free(handle->data); }

static void sock_close(http_sock *s) {
  if (s->prev)
    s->prev->next = s->next;
  else
    G.socks = s->next;
  if (s->next)
    s->next->prev = s->prev;
  uv_poll_stop(&s->poll);
  uv_close((uv_handle_t *)&s->poll, on_sock_closed);
}

static void on_poll(uv_poll_t *poll, int status, int events) {
  http_sock *s = poll->data;
  int flags = 0;
  if (status < 0)
    flags = CURL_CSELECT_ERR;
  else {
    if (events & UV_READABLE)
      flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
      flags |= CURL_CSELECT_OUT;
  }
  int running;
  curl_multi_socket_action(G.multi, s->fd, flags, &running);
  drain_messages();
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
  http_sock *s = socketp;
  (void)easy, (void)userp;
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      sock_close(s);
      if (!G.shutting_down)
        curl_multi_assign(G.multi, fd, NULL);
    }
    return 0;
  }
  if (!s) {
    s = calloc(1, sizeof *s);
    if (!s)
      return -1;
    if (uv_poll_init_socket(tug_loop(), &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    s->fd = fd;
    s->poll.data = s;
    s->next = G.socks;
    if (G.socks)
      G.socks->prev = s;
    G.socks = s;
    if (!G.referenced)
      uv_unref((uv_handle_t *)&s->poll);
    curl_multi_assign(G.multi, fd, s);
  }
  int events = 0;
  if (what & CURL_POLL_IN)
    events |= UV_READABLE;
  if (what & CURL_POLL_OUT)
    events |= UV_WRITABLE;
  uv_poll_start(&s->poll, events, on_poll);
  return 0;
}

static void on_timer(uv_timer_t *timer) {
  int running;
  (void)timer;
  curl_multi_socket_action(G.multi, CURL_SOCKET_TIMEOUT, 0, &running);
  drain_messages();
}

static int on_timer_set(CURLM *multi, long timeout_ms, void *userp) {
  (void)multi, (void)userp;
  if (!G.timer || G.shutting_down)
    return 0;
  if (timeout_ms < 0)
    uv_timer_stop(G.timer);
  else /* 0 fires at the loop's next turn: curl must not be re-entered from here */
    uv_timer_start(G.timer, on_timer, (uint64_t)timeout_ms, 0);
  return 0;
}

static void on_timer_closed(uv_handle_t *handle) { free(handle); }

/* The multi handle and its timer, made on the first request. */
static int client_init(void) {
  if (G.multi)
    return 0;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    return -1;
  G.timer = malloc(sizeof *G.timer);
  G.multi = curl_multi_init();
  if (!G.timer || !G.multi) {
    free(G.timer);
    G.timer = NULL;
    if (G.multi)
      curl_multi_cleanup(G.multi);
    G.multi = NULL;
    curl_global_cleanup();
    return -1;
  }
  uv_timer_init(tug_loop(), G.timer);
  uv_unref((uv_handle_t *)G.timer);
  G.referenced = 0;
  curl_multi_setopt(G.multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(G.multi, CURLMOPT_TIMERFUNCTION, on_timer_set);
  curl_multi_setopt(G.multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  curl_multi_setopt(G.multi, CURLMOPT_MAX_HOST_CONNECTIONS, G.max_host_connections);
  return 0;
}

/* At exit (the registry sentinel's __gc, during lua_close): every transfer goes, then the
   multi with its connection cache, then the poll handles and the timer; the loop runs their
   close callbacks after the Lua state is gone. */
static int client_shutdown(lua_State *L) {
  (void)L;
  if (!G.multi)
    return 0;
  while (G.reqs) {
    http_req *req = G.reqs;
    req_remove(req);
    req->done = 1;
    curl_easy_cleanup(req->easy);
    req->easy = NULL;
    G.reqs = req->next;
    req->prev = req->next = NULL;
  }
  G.shutting_down = 1;
  curl_multi_cleanup(G.multi);
  G.multi = NULL;
  while (G.socks)
    sock_close(G.socks);
  uv_close((uv_handle_t *)G.timer, on_timer_closed);
  G.timer = NULL;
  curl_global_cleanup();
  return 0;
}

/* ---- curl callbacks: record, never raise, never touch Lua ---- */

static int queue_line(http_req *req, const char *s, size_t n) {
  if (n > 0 && s[n - 1] == '\r')
    n--;
  if (tug_buf_append(&req->queue, &n, sizeof n) != 0 || tug_buf_append(&req->queue, s, n) != 0)
    return -1;
  return 0;
}

static int split_lines(http_req *req, const char *s, size_t n) {
  while (n > 0) {
    const char *nl = memchr(s, '\n', n);
    size_t take = nl ? (size_t)(nl - s) : n;
    if (req->partial.len + take > req->max_body) {
      req->too_large = 1;
      return -1;
    }
    if (nl && req->partial.len == 0) {
      if (queue_line(req, s, take) != 0)
        return -1;
    } else {
      if (tug_buf_append(&req->partial, s, take) != 0)
        return -1;
      if (nl) {
        if (queue_line(req, req->partial.data, req->partial.len) != 0)
          return -1;
        req->partial.len = 0;
      }
    }
    if (nl)
      take++;
    s += take;
    n -= take;
  }
  return 0;
}

static void flush_partial(http_req *req) {
  if (req->stream == STREAM_LINES && req->partial.len > 0) {
    if (queue_line(req, req->partial.data, req->partial.len) != 0)
      req->out_of_memory = 1;
    req->partial.len = 0;
  }
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *userp) {
  http_req *req = userp;
  size_t n = size * nmemb;
  if (req->decision == DECIDE_PENDING) {
    long status = 0;
    curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &status);
    /* An error response is kept whole so that r:raise() can quote it. */
    req->decision =
        req->stream != STREAM_NONE && status >= 200 && status < 300 ? DECIDE_STREAM : DECIDE_BUFFER;
  }
  if (req->decision == DECIDE_BUFFER) {
    if (n > req->max_body - req->body.len) {
      req->too_large = 1;
      return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (tug_buf_append(&req->body, data, n) != 0) {
      req->out_of_memory = 1;
      return 0;
    }
    return n;
  }
  if (req->queue.len >= HTTP_QUEUE_HIGH) {
    req->paused = 1; /* curl keeps these bytes and offers them again on unpause */
    return CURL_WRITEFUNC_PAUSE;
  }
  int rc = req->stream == STREAM_CHUNKS ? tug_buf_append(&req->queue, data, n)
                                        : split_lines(req, data, n);
  if (rc != 0) {
    if (!req->too_large)
      req->out_of_memory = 1;
    return 0;
  }
  notify(req);
  return n;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userp) {
  http_req *req = userp;
  size_t n = size * nmemb;
  /* Each response (a redirect, a 100 Continue, the final one) starts over. */
  if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
    req->header_lines.len = 0;
    req->decision = DECIDE_PENDING;
  }
  if (tug_buf_append(&req->header_lines, data, n) != 0) {
    req->out_of_memory = 1;
    return 0;
  }
  return n;
}

/* ---- lifetime ---- */

/* Frees what the transfer holds: the one place for the easy handle and the buffers. */
static void req_release(http_req *req) {
  req_remove(req);
  if (req->easy) {
    if (req->prev)
      req->prev->next = req->next;
    else if (G.reqs == req)
      G.reqs = req->next;
    if (req->next)
      req->next->prev = req->prev;
    req->prev = req->next = NULL;
    curl_easy_cleanup(req->easy);
    req->easy = NULL;
  }
  curl_slist_free_all(req->header_list);
  req->header_list = NULL;
  free(req->request_body);
  req->request_body = NULL;
  tug_buf_free(&req->body);
  tug_buf_free(&req->header_lines);
  tug_buf_free(&req->queue);
  tug_buf_free(&req->partial);
}

static void req_maybe_free(http_req *req) {
  if (req->attached || req->waiting)
    return;
  req_release(req);
  free(req->method);
  free(req->safe_url);
  free(req->password);
  free(req);
}

/* Ends the transfer now (a stopped stream, a closed handle, a cancelled task). */
static void req_abort(http_req *req, int stopped) {
  if (req->done)
    return;
  req_remove(req);
  req->done = 1;
  req->result = CURLE_OK;
  if (stopped)
    req->stopped = 1;
  else
    req->cancelled = 1;
  req->queue.len = req->partial.len = 0;
}

/* ---- options ---- */

/* A bad option: raised as a plain string without a position, which http.lua adds (the
   caller's line). */
static int usage_error(lua_State *L, const char *fmt, const char *name, const char *detail) {
  lua_pushfstring(L, fmt, name, detail);
  return lua_error(L);
}

static const char *opt_string(lua_State *L, int t, const char *name, int required) {
  int type = lua_getfield(L, t, name);
  const char *s = NULL;
  if (type == LUA_TSTRING) {
    size_t len;
    s = lua_tolstring(L, -1, &len);
    if (strlen(s) != len)
      usage_error(L, "http: %s contains a NUL byte%s", name, "");
  } else if (type != LUA_TNIL || required) {
    usage_error(L, "http: %s must be a string (got %s)", name, luaL_typename(L, -1));
  }
  lua_pop(L, 1); /* the string stays anchored in the table */
  return s;
}

/* Seconds as a number or a duration string; false (or a missing field) gives def. */
static double opt_seconds(lua_State *L, int t, const char *name, double def) {
  int type = lua_getfield(L, t, name);
  double v = def;
  if (type == LUA_TSTRING) {
    if (tug_parse_duration(lua_tostring(L, -1), &v) != 0)
      usage_error(L, "http: %s: '%s' is not a duration (try \"30s\", \"500ms\")", name,
                  lua_tostring(L, -1));
  } else if (type == LUA_TNUMBER) {
    v = lua_tonumber(L, -1);
  } else if (type == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
    v = 0; /* no limit */
  } else if (type != LUA_TNIL) {
    usage_error(L, "http: %s must be seconds or a duration string (got %s)", name,
                luaL_typename(L, -1));
  }
  if (!(v >= 0))
    usage_error(L, "http: %s must not be negative%s", name, "");
  lua_pop(L, 1);
  return v;
}

static long seconds_to_ms(double s) {
  double ms = s * 1000.0;
  if (ms > 1e12)
    ms = 1e12;
  return ms > 0 && ms < 1 ? 1 : (long)ms;
}

static size_t check_size(lua_State *L, int idx, const char *name) {
  lua_Integer n = 0;
  if (!lua_isinteger(L, idx) || (n = lua_tointeger(L, idx)) < 1)
    usage_error(L, "http: %s must be a positive integer (got %s)", name,
                luaL_tolstring(L, idx, NULL));
  return (size_t)n;
}

/* A TLS file option: a path, or PEM text set as a blob. */
static void set_tls_file(CURL *easy, const char *value, CURLoption path_opt, CURLoption blob_opt) {
  if (!value)
    return;
  if (strstr(value, "-----BEGIN ")) {
    struct curl_blob blob = {(void *)value, strlen(value), CURL_BLOB_COPY};
    curl_easy_setopt(easy, blob_opt, &blob);
  } else {
    curl_easy_setopt(easy, path_opt, value);
  }
}

/* ---- bindings ---- */

static http_handle *check_handle(lua_State *L) { return luaL_checkudata(L, 1, HTTP_REQUEST_MT); }

static http_req *check_open(lua_State *L) {
  http_handle *h = check_handle(L);
  if (!h->req)
    luaL_error(L, "attempt to use a closed http request");
  return h->req;
}

/* core.start{ method, url, headers = { "Name: value", ... }, body, timeout, connect_timeout,
   follow, tls = { ca, cert, key, insecure }, proxy, unix_socket, max_body,
   stream = "chunks" | "lines" } -> http.request */
static int http_start(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  tug_check_task(L, "http.request");
  const char *method = opt_string(L, 1, "method", 1);
  const char *url = opt_string(L, 1, "url", 1);
  size_t body_len = 0;
  const char *body = NULL;
  if (lua_getfield(L, 1, "body") != LUA_TNIL) {
    if (!lua_isstring(L, -1))
      usage_error(L, "http: %s must be a string (got %s)", "body", luaL_typename(L, -1));
    body = lua_tolstring(L, -1, &body_len);
  }
  lua_pop(L, 1);
  double timeout = opt_seconds(L, 1, "timeout", HTTP_TIMEOUT_DEFAULT);
  double connect_timeout = opt_seconds(L, 1, "connect_timeout", HTTP_CONNECT_TIMEOUT_DEFAULT);
  lua_getfield(L, 1, "follow");
  int follow = lua_toboolean(L, -1);
  lua_pop(L, 1);
  const char *proxy = opt_string(L, 1, "proxy", 0);
  const char *unix_socket = opt_string(L, 1, "unix_socket", 0);
  size_t max_body = G.max_body;
  if (lua_getfield(L, 1, "max_body") != LUA_TNIL)
    max_body = check_size(L, -1, "max_body");
  lua_pop(L, 1);
  const char *stream = opt_string(L, 1, "stream", 0);
  int stream_mode = STREAM_NONE;
  if (stream && strcmp(stream, "chunks") == 0)
    stream_mode = STREAM_CHUNKS;
  else if (stream && strcmp(stream, "lines") == 0)
    stream_mode = STREAM_LINES;
  else if (stream)
    usage_error(L, "http: stream must be \"chunks\" or \"lines\" (got '%s')%s", stream, "");
  const char *ca = NULL, *cert = NULL, *key = NULL;
  int insecure = 0;
  int tls_type = lua_getfield(L, 1, "tls");
  if (tls_type == LUA_TTABLE) {
    int tls = lua_gettop(L);
    ca = opt_string(L, tls, "ca", 0);
    cert = opt_string(L, tls, "cert", 0);
    key = opt_string(L, tls, "key", 0);
    lua_getfield(L, tls, "insecure");
    insecure = lua_toboolean(L, -1);
    lua_pop(L, 1);
  } else if (tls_type != LUA_TNIL) {
    usage_error(L, "http: tls must be a table (got %s)%s", luaL_typename(L, -1), "");
  }
  lua_pop(L, 1); /* the strings stay anchored in opts.tls, which opts anchors */
  int headers_type = lua_getfield(L, 1, "headers");
  if (headers_type != LUA_TNIL && headers_type != LUA_TTABLE)
    usage_error(L, "http: headers must be a table (got %s)%s", luaL_typename(L, -1), "");
  int headers = lua_gettop(L);
  lua_Integer nheaders = headers_type == LUA_TTABLE ? luaL_len(L, headers) : 0;
  for (lua_Integer i = 1; i <= nheaders; i++) {
    if (lua_geti(L, headers, i) != LUA_TSTRING) {
      const char *type = luaL_typename(L, -1);
      usage_error(L, "http: headers[%s] must be a string (got %s)",
                  lua_pushfstring(L, "%d", (int)i), type);
    }
    lua_pop(L, 1);
  }

  http_handle *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->req = NULL;
  luaL_setmetatable(L, HTTP_REQUEST_MT);

  /* Nothing below raises until the request is either running or released. */
  if (client_init() != 0)
    return tug_raise(L, "http", "http: cannot initialize libcurl");
  http_req *req = calloc(1, sizeof *req);
  if (!req)
    return luaL_error(L, "http: out of memory");
  req->attached = 1;
  req->stream = stream_mode;
  req->max_body = max_body;
  req->method = strdup(method);
  req->safe_url = strip_credentials(url, &req->password);
  req->easy = curl_easy_init();
  if (body) {
    req->request_body = malloc(body_len ? body_len : 1);
    if (req->request_body)
      memcpy(req->request_body, body, body_len);
  }
  int failed = !req->method || !req->safe_url || !req->easy || (body && !req->request_body);
  for (lua_Integer i = 1; !failed && i <= nheaders; i++) {
    lua_geti(L, headers, i);
    struct curl_slist *list = curl_slist_append(req->header_list, lua_tostring(L, -1));
    lua_pop(L, 1);
    if (list)
      req->header_list = list;
    else
      failed = 1;
  }
  if (req->easy) {
    req->next = G.reqs;
    if (G.reqs)
      G.reqs->prev = req;
    G.reqs = req;
  }
  if (failed) {
    req->attached = 0;
    req_maybe_free(req);
    return luaL_error(L, "http: out of memory");
  }

  CURL *e = req->easy;
  curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)req);
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, req->errbuf);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_USERAGENT, "tug/" TUG_VERSION);
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  /* Waiting for a connection that may multiplex only pays over TLS, where HTTP/2 is
     negotiated; over plain HTTP/1.1 it makes concurrent requests to a new host queue up
     behind the first one. */
  if (strncasecmp(url, "https://", 8) == 0)
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, req);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, req);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, req->header_list);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, seconds_to_ms(timeout));
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, seconds_to_ms(connect_timeout));
  if (follow) {
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, (long)HTTP_MAX_REDIRECTS);
  }
  if (stream_mode == STREAM_NONE) /* refuses an announced oversized body before reading it */
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)max_body);
  if (strcmp(method, "HEAD") == 0)
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  else if (strcmp(method, "GET") != 0 || body)
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  if (body) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->request_body);
  }
  set_tls_file(e, ca, CURLOPT_CAINFO, CURLOPT_CAINFO_BLOB);
  set_tls_file(e, cert, CURLOPT_SSLCERT, CURLOPT_SSLCERT_BLOB);
  set_tls_file(e, key, CURLOPT_SSLKEY, CURLOPT_SSLKEY_BLOB);
  if (insecure) {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if (proxy)
    curl_easy_setopt(e, CURLOPT_PROXY, proxy);
  if (unix_socket)
    curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, unix_socket);

  CURLMcode mc = curl_multi_add_handle(G.multi, e);
  if (mc != CURLM_OK) {
    req->attached = 0;
    req_maybe_free(req);
    return tug_raise(L, "http", "http: %s: %s", method, curl_multi_strerror(mc));
  }
  req->in_multi = 1;
  G.in_multi++;
  update_refs();
  h->req = req;
  return 1;
}

static const char *error_kind(http_req *req) {
  if (req->cancelled)
    return "cancelled";
  if (req->too_large)
    return "too_large";
  switch (req->result) {
  case CURLE_OPERATION_TIMEDOUT:
    return "timeout";
  case CURLE_COULDNT_CONNECT:
    return "connect";
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY:
    return "dns";
  case CURLE_FILESIZE_EXCEEDED:
    return "too_large";
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_CRL_BADFILE:
  case CURLE_SSL_ENGINE_NOTFOUND:
  case CURLE_SSL_ENGINE_SETFAILED:
  case CURLE_SSL_ENGINE_INITFAILED:
  case CURLE_USE_SSL_FAILED:
    return "tls";
  default:
    return "protocol";
  }
}

/* Pushes "METHOD URL: KIND: what failed", with the URL's password scrubbed. */
static void push_message(lua_State *L, http_req *req, const char *kind) {
  const char *detail;
  char tmp[160];
  if (req->cancelled) {
    detail = "the request was cancelled";
  } else if (req->too_large) {
    snprintf(tmp, sizeof tmp, "the response body is larger than max_body (%zu bytes)",
             req->max_body);
    detail = tmp;
  } else if (req->result == CURLE_FILESIZE_EXCEEDED) {
    snprintf(tmp, sizeof tmp, "the announced body is larger than max_body (%zu bytes)",
             req->max_body);
    detail = tmp;
  } else if (req->out_of_memory) {
    detail = "out of memory";
  } else if (req->result == CURLE_COULDNT_CONNECT && req->os_errno != 0) {
    detail = strerror((int)req->os_errno);
  } else if (req->errbuf[0]) {
    detail = req->errbuf;
  } else {
    detail = curl_easy_strerror(req->result);
  }
  lua_pushfstring(L, "%s %s: %s: %s", req->method, req->safe_url, kind, detail);
  const char *raw = lua_tostring(L, -1);
  push_scrubbed(L, raw, req->password);
  lua_remove(L, -2);
}

static void set_number(lua_State *L, const char *name, double v) {
  lua_pushnumber(L, v);
  lua_setfield(L, -2, name);
}

static void push_timings(lua_State *L, CURL *e) {
  curl_off_t dns = 0, connect = 0, tls = 0, ttfb = 0, total = 0;
  curl_easy_getinfo(e, CURLINFO_NAMELOOKUP_TIME_T, &dns);
  curl_easy_getinfo(e, CURLINFO_CONNECT_TIME_T, &connect);
  curl_easy_getinfo(e, CURLINFO_APPCONNECT_TIME_T, &tls);
  curl_easy_getinfo(e, CURLINFO_STARTTRANSFER_TIME_T, &ttfb);
  curl_easy_getinfo(e, CURLINFO_TOTAL_TIME_T, &total);
  lua_createtable(L, 0, 5);
  /* curl's times all count from the start; dns, connect and tls are phases */
  set_number(L, "dns", (double)dns / 1e6);
  set_number(L, "connect", connect > dns ? (double)(connect - dns) / 1e6 : 0);
  set_number(L, "tls", tls > connect ? (double)(tls - connect) / 1e6 : 0);
  set_number(L, "ttfb", (double)ttfb / 1e6);
  set_number(L, "total", (double)total / 1e6);
  lua_setfield(L, -2, "timings");
}

/* Adds one header to the table on top: names lowercased, repeats joined with ", ", except
   set-cookie, which is a list. */
static void add_header(lua_State *L, const char *name, size_t name_len, const char *value,
                       size_t value_len) {
  char lower[128];
  luaL_Buffer b;
  if (name_len < sizeof lower) {
    for (size_t i = 0; i < name_len; i++)
      lower[i] = (char)tolower((unsigned char)name[i]);
    lua_pushlstring(L, lower, name_len);
  } else {
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < name_len; i++)
      luaL_addchar(&b, (char)tolower((unsigned char)name[i]));
    luaL_pushresult(&b);
  }
  int is_cookie = strcmp(lua_tostring(L, -1), "set-cookie") == 0;
  lua_pushvalue(L, -1);
  int existing = lua_rawget(L, -3);
  if (is_cookie) {
    if (existing != LUA_TTABLE) {
      lua_pop(L, 1);
      lua_newtable(L);
      lua_pushvalue(L, -2);
      lua_pushvalue(L, -2);
      lua_rawset(L, -5);
    }
    lua_pushlstring(L, value, value_len);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    lua_pop(L, 2);
    return;
  }
  if (existing == LUA_TSTRING) {
    lua_pushliteral(L, ", ");
    lua_pushlstring(L, value, value_len);
    lua_concat(L, 3);
  } else {
    lua_pop(L, 1);
    lua_pushlstring(L, value, value_len);
  }
  lua_rawset(L, -3);
}

static size_t trim_end(const char *s, size_t n) {
  while (n > 0 && (s[n - 1] == '\r' || s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\t'))
    n--;
  return n;
}

/* Pushes the headers table and sets reason from the status line. */
static void push_headers(lua_State *L, http_req *req) {
  lua_newtable(L);
  const char *p = req->header_lines.data, *end = p + req->header_lines.len;
  while (p && p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    size_t n = eol ? (size_t)(eol - p) + 1 : (size_t)(end - p);
    size_t len = trim_end(p, n);
    const char *colon = memchr(p, ':', len);
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
      /* the status line: "HTTP/1.1 200 OK" */
      const char *sp = memchr(p, ' ', len);
      const char *reason = sp ? memchr(sp + 1, ' ', len - (size_t)(sp + 1 - p)) : NULL;
      if (reason) {
        lua_pushlstring(L, reason + 1, len - (size_t)(reason + 1 - p));
        lua_setfield(L, -3, "reason");
      }
    } else if (colon && colon > p && *p != ' ' && *p != '\t') {
      const char *v = colon + 1;
      while (v < p + len && (*v == ' ' || *v == '\t'))
        v++;
      add_header(L, p, (size_t)(colon - p), v, len - (size_t)(v - p));
    }
    p += n;
  }
  lua_setfield(L, -2, "headers");
}

static const char *version_name(long v) {
  switch (v) {
  case CURL_HTTP_VERSION_1_0:
    return "1.0";
  case CURL_HTTP_VERSION_1_1:
    return "1.1";
  case CURL_HTTP_VERSION_2_0:
    return "2";
  case CURL_HTTP_VERSION_3:
    return "3";
  default:
    return NULL;
  }
}

static void push_result(lua_State *L, http_req *req) {
  luaL_checkstack(L, 8, "http result");
  lua_createtable(L, 0, 12);
  lua_pushstring(L, req->method);
  lua_setfield(L, -2, "method");
  int failed = req->cancelled || req->too_large || req->out_of_memory ||
               (req->result != CURLE_OK && !req->stopped) || !req->easy;
  if (req->easy) {
    char *effective = NULL;
    curl_easy_getinfo(req->easy, CURLINFO_EFFECTIVE_URL, &effective);
    char *safe = strip_credentials(effective ? effective : req->safe_url, NULL);
    lua_pushstring(L, safe ? safe : req->safe_url);
    free(safe);
    lua_setfield(L, -2, "url");
    push_timings(L, req->easy);
    long version = 0;
    curl_easy_getinfo(req->easy, CURLINFO_HTTP_VERSION, &version);
    if (version_name(version)) {
      lua_pushstring(L, version_name(version));
      lua_setfield(L, -2, "http_version");
    }
  } else {
    lua_pushstring(L, req->safe_url);
    lua_setfield(L, -2, "url");
  }
  if (failed) {
    const char *kind = error_kind(req);
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "error");
    push_message(L, req, kind);
    lua_setfield(L, -2, "message");
    lua_newtable(L);
    lua_setfield(L, -2, "headers");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "body");
    return;
  }
  long status = 0;
  curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &status);
  lua_pushinteger(L, status);
  lua_setfield(L, -2, "status");
  push_headers(L, req);
  lua_pushlstring(L, req->body.data ? req->body.data : "", req->body.len);
  lua_setfield(L, -2, "body");
  if (req->stopped) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "stopped");
  }
}

/* Pushes what the stream has buffered (a string of bytes, or an array of lines) and empties
   the queue; a paused transfer goes on. */
static void push_data(lua_State *L, http_req *req) {
  if (req->stream == STREAM_CHUNKS) {
    lua_pushlstring(L, req->queue.data ? req->queue.data : "", req->queue.len);
  } else {
    lua_newtable(L);
    size_t at = 0;
    lua_Integer n = 0;
    while (at < req->queue.len) {
      size_t len;
      memcpy(&len, req->queue.data + at, sizeof len);
      lua_pushlstring(L, req->queue.data + at + sizeof len, len);
      lua_rawseti(L, -2, ++n);
      at += sizeof len + len;
    }
  }
  req->queue.len = 0;
  if (req->paused && req->in_multi) {
    req->paused = 0;
    curl_easy_pause(req->easy, CURLPAUSE_CONT); /* may deliver the held bytes right away */
  }
}

static int op_resume(lua_State *L, tug_op *op) {
  http_req *req = (http_req *)op;
  req->waiting = 0;
  if (req->wait_kind == WAIT_DONE)
    push_result(L, req);
  else if (req->queue.len > 0)
    push_data(L, req);
  else if (req->done)
    lua_pushnil(L);
  else
    lua_pushliteral(L, "");
  req_maybe_free(req);
  return 1;
}

static void op_cancel(tug_op *op) {
  http_req *req = (http_req *)op;
  req->waiting = 0;
  req_abort(req, 0);
  req_release(req);
  req_maybe_free(req);
}

static int req_await(lua_State *L, http_req *req, int kind, const char *what) {
  if (req->waiting)
    return luaL_error(L, "%s: another task is already waiting on this request", what);
  tug_check_task(L, what);
  memset(&req->op, 0, sizeof req->op);
  req->op.resume = op_resume;
  req->op.cancel = op_cancel;
  req->waiting = 1;
  req->signalled = 0;
  req->wait_kind = kind;
  return tug_await(L, &req->op);
}

/* req:wait() -> result: waits for the end of the transfer. Streaming stops: what still
   arrives is kept as the body (up to max_body). */
static int req_wait(lua_State *L) {
  http_req *req = check_open(L);
  if (req->stream != STREAM_NONE && !req->done) {
    req->stream = STREAM_NONE;
    if (req->decision == DECIDE_STREAM)
      req->decision = DECIDE_BUFFER;
    req->queue.len = req->partial.len = 0;
    if (req->paused && req->in_multi) {
      req->paused = 0;
      curl_easy_pause(req->easy, CURLPAUSE_CONT);
    }
  }
  if (req->done) {
    push_result(L, req);
    return 1;
  }
  return req_await(L, req, WAIT_DONE, "http wait");
}

/* req:next() -> string | lines | nil: streamed data as it arrives; nil at the end. */
static int req_next(lua_State *L) {
  http_req *req = check_open(L);
  if (req->stream == STREAM_NONE)
    return luaL_error(L, "http next: the request was not started with stream");
  if (req->queue.len > 0) {
    push_data(L, req);
    return 1;
  }
  if (req->done) {
    lua_pushnil(L);
    return 1;
  }
  return req_await(L, req, WAIT_DATA, "http next");
}

/* req:stop(): ends a stream now; the result keeps its status and headers, stopped = true. */
static int req_stop(lua_State *L) {
  http_req *req = check_open(L);
  int was_running = !req->done;
  req_abort(req, 1);
  lua_pushboolean(L, was_running);
  return 1;
}

static int req_gc(lua_State *L) {
  http_handle *h = check_handle(L);
  http_req *req = h->req;
  if (req) {
    h->req = NULL;
    req->attached = 0;
    req_abort(req, 0);
    req_maybe_free(req);
  }
  return 0;
}

static int req_tostring(lua_State *L) {
  http_handle *h = check_handle(L);
  http_req *req = h->req;
  if (!req)
    lua_pushliteral(L, "http.request (closed)");
  else
    lua_pushfstring(L, "http.request %s %s (%s)", req->method, req->safe_url,
                    req->done ? "done" : "running");
  return 1;
}

/* core.escape(s) -> s percent-encoded for a URL component (RFC 3986 unreserved kept). */
static int http_escape(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  if (len > INT32_MAX)
    return luaL_argerror(L, 1, "string too long");
  char *escaped = curl_easy_escape(NULL, s, (int)len);
  if (!escaped)
    return luaL_error(L, "http: out of memory");
  lua_pushstring(L, escaped);
  curl_free(escaped);
  return 1;
}

/* core.strip_credentials(url) -> url without user:password@. */
static int http_strip_credentials(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  char *safe = strip_credentials(url, NULL);
  if (!safe)
    return luaL_error(L, "http: out of memory");
  lua_pushstring(L, safe);
  free(safe);
  return 1;
}

/* core.configure{ max_host_connections, max_body }: process-wide settings. */
static int http_configure(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "max_host_connections");
  lua_getfield(L, 1, "max_body");
  if (!lua_isnil(L, -2)) {
    size_t n = check_size(L, -2, "max_host_connections");
    G.max_host_connections = n > 100000 ? 100000 : (long)n;
    if (G.multi)
      curl_multi_setopt(G.multi, CURLMOPT_MAX_HOST_CONNECTIONS, G.max_host_connections);
  }
  if (!lua_isnil(L, -1))
    G.max_body = check_size(L, -1, "max_body");
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, G.max_host_connections);
  lua_setfield(L, -2, "max_host_connections");
  lua_pushinteger(L, (lua_Integer)G.max_body);
  lua_setfield(L, -2, "max_body");
  return 1;
}

static const luaL_Reg req_methods[] = {
    {"wait", req_wait}, {"next", req_next}, {"stop", req_stop}, {"close", req_gc}, {NULL, NULL},
};

static const luaL_Reg req_metamethods[] = {
    {"__gc", req_gc},
    {"__close", req_gc},
    {"__tostring", req_tostring},
    {NULL, NULL},
};

static const luaL_Reg client_functions[] = {
    {"start", http_start},
    {"escape", http_escape},
    {"strip_credentials", http_strip_credentials},
    {"configure", http_configure},
    {NULL, NULL},
};

void http_client_register(lua_State *L, int t) {
  luaL_newmetatable(L, HTTP_REQUEST_MT);
  luaL_setfuncs(L, req_metamethods, 0);
  luaL_newlib(L, req_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  /* The sentinel is made before any request, so lua_close finalizes it after them. The
     module may be opened again (busted reloads modules for each spec file): a second
     sentinel would orphan the first, whose finalizer would shut the shared client down. */
  if (lua_getfield(L, LUA_REGISTRYINDEX, HTTP_SENTINEL_KEY) == LUA_TNIL) {
    lua_newuserdatauv(L, 1, 0);
    luaL_newmetatable(L, HTTP_SENTINEL_MT);
    lua_pushcfunction(L, client_shutdown);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, HTTP_SENTINEL_KEY);
  }
  lua_pop(L, 1);
  lua_pushvalue(L, t);
  luaL_setfuncs(L, client_functions, 0);
  lua_pop(L, 1);
}
