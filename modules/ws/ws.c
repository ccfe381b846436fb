/*
 * ws.c: WebSocket connections for Lua tasks (the C half of the ws module, "ws.core"), on
 * tug's one libuv loop, with libwebsockets doing the protocol: the opening handshake,
 * framing, masking, fragmentation, ping/pong and the closing handshake.
 *
 * core.connect(opts) dials a server (ws:// or wss://) and waits until the handshake is
 * done. A host name is resolved first with uv_getaddrinfo (libuv's thread pool, under the
 * connection's timeout and cancellable): lws 4.1 would call getaddrinfo itself, blocking
 * the whole loop while DNS answers. lws then dials the numeric address (ci.address) while
 * the Host header, Origin, SNI and the certificate's name check keep the name from the
 * URL: lws takes SNI and the X509_VERIFY_PARAM host from ci.host (the Host header, its
 * port stripped), never from ci.address. core.accept(fd, head, opts) takes over a socket
 * whose HTTP upgrade request another server already read (http.server's
 * req:take_connection()) and answers the handshake. Both return a ws.connection userdata:
 * send(data, binary), recv([timeout]), close([code, reason]). ws.lua holds the public API
 * (options, URLs, errors, ws.upgrade).
 *
 * One lws context for the process, created on first use on tug's loop (a foreign libuv
 * loop, its handles unreferenced: an open connection that no task waits on does not keep
 * tug running), and one lws vhost per connection: each connection has exactly its own
 * subprotocols and TLS settings (an OpenSSL SSL_CTX we build, so CA bundles and
 * certificate chains come from files or PEM text). The connection's timer is active while
 * a task waits on it or a close is under way; that keeps the loop alive.
 *
 * Teardown: when a connection has closed and lws has freed its wsi, the reaper (an idle
 * handle, outside any lws callback) destroys its vhost; lws's finalize callback says when
 * the vhost is gone, and the connection is freed once no userdata points at it. A
 * connection whose userdata is collected while its close is under way (a server handler
 * that sends, closes and returns) is not dropped: what it queued and the close frame still
 * leave, and its timer goes once it has closed. At exit a registry sentinel drops such
 * connections and starts lws_context_destroy, sched_close's last run of the loop closes
 * lws's handles, and an atexit handler calls lws_context_destroy again, which frees the
 * context (with a foreign libuv loop, lws 4.1 frees it only on that second call). The
 * context is never destroyed earlier: lws 4.1 closes its event pipe's descriptor twice
 * when a context goes, and the second close could hit a descriptor opened meanwhile.
 *
 * Callbacks only record what happened in C memory and call tug_op_done; the waiting task
 * is resumed later and pushes the results into Lua.
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <libwebsockets.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "tug.h"

#define WS_CONN_MT "ws.connection"
#define WS_MAX_MESSAGE_DEFAULT ((size_t)64 * 1024 * 1024)
#define WS_RX_BUFFER 65536
/* Received messages beyond this stop reading from the socket until a task takes them. */
#define WS_RX_HIGH (1024 * 1024)
/* A send waits while more than this is queued for the socket... */
#define WS_TX_HIGH (1024 * 1024)
/* ...and goes on once it falls to this. */
#define WS_TX_LOW (256 * 1024)
/* A closing connection is dropped when the peer takes none of the queue, or does not answer
   the close frame, for this long. */
#define WS_CLOSE_TIMEOUT_MS 5000
/* Keeps the loop alive while a task waits without a deadline. */
#define WS_KEEPALIVE_MS 60000
#define WS_MAX_PROTOCOLS 16
/* How long the reaper waits for lws to free a closed connection's wsi. */
#define WS_REAP_PATIENCE_MS 10000

enum { ST_CONNECTING, ST_OPEN, ST_CLOSING, ST_CLOSED };
enum { WAIT_OPEN, WAIT_MESSAGE, WAIT_DRAIN };

typedef struct ws_msg {
  struct ws_msg *next;
  size_t len;
  int binary;
  unsigned char data[]; /* for sending: LWS_PRE bytes of room, then the payload */
} ws_msg;

typedef struct ws_conn ws_conn;

typedef struct ws_op {
  tug_op base; /* first member: the runtime sees a tug_op */
  ws_conn *conn;
  int kind;
  int timed_out;
} ws_op;

struct ws_conn {
  ws_conn *prev, *next; /* every connection not yet freed */
  struct lws_vhost *vh; /* NULL once lws finalized it */
  struct lws *wsi;      /* NULL once closed */
  struct lws *main_wsi; /* the connection's wsi as lws gave it, for WSI_DESTROY */
  SSL_CTX *ssl_ctx;
  struct lws_protocols protocols[WS_MAX_PROTOCOLS + 1];
  char *protocol_names[WS_MAX_PROTOCOLS];
  int nprotocols;
  char vhost_name[32];
  uint64_t reap_started;

  /* client handshake: "name:" and value pairs */
  char **headers;
  int nheaders;

  /* client: what lws is given once the host's address is known */
  char *host_name; /* as in the URL (no brackets): resolved, and named in messages */
  char *path, *host_header, *origin, *offered;
  int port;
  char address[INET6_ADDRSTRLEN]; /* numeric */
  int resolving;                  /* uv_getaddrinfo under way: c lives until its callback */
  uv_getaddrinfo_t gai;

  int state;
  int server;
  int insecure;
  int attached;       /* a userdata points here */
  int orphaned;       /* the userdata went while closing: the close finishes on its own */
  int destroy_wanted; /* closed: the vhost goes once lws has freed the wsi */
  int vh_destroying;  /* lws_vhost_destroy was called */
  size_t max_message;

  ws_op *rx_waiter;     /* connect/accept, or recv */
  ws_op *tx_waiter;     /* a send waiting for the queue to drain */
  uint64_t rx_deadline; /* uv_now() ms, 0 for none */
  uint64_t close_deadline;
  int close_expired; /* the deadline passed: dropped unless the next poll phase moves it */
  uv_timer_t *timer; /* NULL once closed */

  ws_msg *rx_head, *rx_tail;
  size_t rx_bytes;
  int rx_paused;
  unsigned char *partial;
  size_t partial_len, partial_cap;
  int partial_binary;

  ws_msg *tx_head, *tx_tail;
  size_t tx_bytes;
  int close_wanted;
  int close_now;  /* send the close frame from outside lws (see conn_send_close) */
  int discarding; /* a message over max_message: the rest is dropped, the close follows */
  int close_code;
  char close_reason[124];

  int peer_code;
  char peer_reason[124];
  int closed_by_peer;

  int http_status;
  int sent_request; /* the TCP (and TLS) connection was up: the upgrade request went out */
  int tls;
  char peer[320]; /* host:port ("at address" once resolved), for messages */
  char error_kind[16];
  char error[256];
  char verify_error[160];
  char protocol[64];
};

typedef struct ws_handle {
  ws_conn *conn;
} ws_handle;

static struct {
  struct lws_context *ctx; /* the one context, made on first use */
  int ctx_destroyed;       /* the first lws_context_destroy ran (exit) */
  ws_conn *conns;
  uv_idle_t *reaper; /* NULL while not running */
  unsigned long serial;
} G;

static void conn_update_timer(ws_conn *c);
static void conn_release_timer(ws_conn *c);
static void close_deadline_restart(ws_conn *c);
static void reaper_add(ws_conn *c);

/* ---- small helpers ---- */

static void set_error(ws_conn *c, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_error(ws_conn *c, const char *kind, const char *fmt, ...) {
  if (c->error_kind[0])
    return; /* the first cause is the one that explains */
  snprintf(c->error_kind, sizeof c->error_kind, "%s", kind);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->error, sizeof c->error, fmt, ap);
  va_end(ap);
}

static void msg_list_free(ws_msg **head, ws_msg **tail) {
  ws_msg *m = *head;
  while (m) {
    ws_msg *next = m->next;
    free(m);
    m = next;
  }
  *head = *tail = NULL;
}

static void conn_maybe_free(ws_conn *c) {
  if (c->attached || c->vh || c->timer || c->rx_waiter || c->tx_waiter || c->resolving)
    return;
  if (c->prev)
    c->prev->next = c->next;
  else
    G.conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  if (c->ssl_ctx)
    SSL_CTX_free(c->ssl_ctx);
  for (int i = 0; i < c->nprotocols; i++)
    free(c->protocol_names[i]);
  for (int i = 0; i < c->nheaders * 2; i++)
    free(c->headers[i]);
  free(c->headers);
  free(c->host_name);
  free(c->path);
  free(c->host_header);
  free(c->origin);
  free(c->offered);
  msg_list_free(&c->rx_head, &c->rx_tail);
  msg_list_free(&c->tx_head, &c->tx_tail);
  free(c->partial);
  free(c);
}

static void wake(ws_op *op) {
  if (op)
    tug_op_done(&op->base);
}

/* The connection is over: wake whoever waits and start the teardown. */
static void conn_closed(ws_conn *c) {
  c->state = ST_CLOSED;
  c->close_deadline = 0;
  c->close_expired = 0;
  wake(c->rx_waiter);
  wake(c->tx_waiter);
  reaper_add(c);
  conn_update_timer(c);
  if (c->orphaned) /* no userdata will release it */
    conn_release_timer(c);
}

/* Drops the connection at once. Never from inside an lws callback. */
static void conn_abort(ws_conn *c) {
  if (c->resolving) /* fails once the lookup runs: its callback then finds the state closed */
    uv_cancel((uv_req_t *)&c->gai);
  struct lws *wsi = c->wsi;
  if (wsi && c->state != ST_CLOSED) {
    c->wsi = NULL;
    lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_SYNC);
  }
  if (c->state != ST_CLOSED)
    conn_closed(c);
}

/* ---- libuv handles lws made: unreferenced, and remembered ---- */

/* Every handle the context made at creation stops counting as work for the loop. */
typedef struct handle_walk {
  int seen, skip;
} handle_walk;

static void count_handle(uv_handle_t *h, void *arg) {
  (void)h;
  ((handle_walk *)arg)->seen++;
}

/* uv_walk visits handles in the order they were made: the ones the context creation added
   are those past the count taken before it. */
static void unref_new_handle(uv_handle_t *h, void *arg) {
  handle_walk *w = arg;
  if (w->seen++ >= w->skip)
    uv_unref(h);
}

/* The poll handle of the connection's socket stops counting as work for the loop too. */
static void unref_socket_cb(uv_handle_t *h, void *arg) {
  int fd = *(int *)arg;
  uv_os_fd_t hfd;
  if (h->type == UV_POLL && !uv_is_closing(h) && uv_fileno(h, &hfd) == 0 && hfd == fd)
    uv_unref(h);
}

static void unref_socket(ws_conn *c) {
  if (!c->wsi)
    return;
  int fd = (int)lws_get_socket_fd(c->wsi);
  if (fd >= 0)
    uv_walk(tug_loop(), unref_socket_cb, &fd);
}

/* ---- the reaper: destroys the vhosts of closed connections, outside lws callbacks ---- */

static void on_reaper_closed(uv_handle_t *h) { free(h); }

static void on_reap(uv_idle_t *idle) {
  int pending = 0;
  uint64_t now = uv_now(tug_loop());
  for (ws_conn *c = G.conns, *next; c; c = next) {
    next = c->next;
    if (!c->destroy_wanted || c->vh_destroying || c->vh == NULL)
      continue;
    /* lws frees the wsi (its socket's handle closes first); then the vhost has nothing
       bound and goes at once. Should that never be seen, lws's own sweep finishes it. */
    if (c->main_wsi && now - c->reap_started < WS_REAP_PATIENCE_MS) {
      pending = 1;
      continue;
    }
    c->vh_destroying = 1;
    lws_vhost_destroy(c->vh); /* the finalize callback clears c->vh and may free c, maybe now */
  }
  if (!pending) {
    uv_idle_stop(idle);
    uv_close((uv_handle_t *)idle, on_reaper_closed);
    G.reaper = NULL;
  }
}

static void reaper_add(ws_conn *c) {
  if (c->destroy_wanted || c->vh == NULL || G.ctx_destroyed)
    return;
  c->destroy_wanted = 1;
  c->reap_started = uv_now(tug_loop());
  if (G.reaper)
    return;
  G.reaper = malloc(sizeof *G.reaper);
  if (G.reaper == NULL)
    return; /* out of memory: the vhost goes with the context at exit */
  uv_idle_init(tug_loop(), G.reaper);
  uv_idle_start(G.reaper, on_reap);
}

/* lws is done with the vhost: called from inside lws, once. */
static void on_vhost_finalized(struct lws_vhost *vh, void *arg) {
  (void)vh;
  ws_conn *c = arg;
  c->vh = NULL;
  conn_maybe_free(c);
}

/* ---- the connection's timer: deadlines, and keeping the loop alive while needed ---- */

static void on_timer_closed(uv_handle_t *h) {
  ws_conn *c = h->data;
  free(h);
  c->timer = NULL;
  conn_maybe_free(c);
}

/* Sends the close frame and waits for the peer's. Only from outside lws callbacks: the
   Debian build of lws 4.1 (a _DEBUG build) closes a connection twice when a callback
   returns -1 under libuv, and the second close drops the socket before the close frame
   could leave. Closing "by timeout" from outside takes lws's polite path instead. */
static void conn_send_close(ws_conn *c) {
  c->close_now = 0;
  struct lws *wsi = c->wsi;
  if (wsi == NULL || c->state == ST_CLOSED)
    return;
  close_deadline_restart(c); /* the peer's answer is awaited from now (lws may close at once) */
  lws_close_reason(wsi, (enum lws_close_status)c->close_code, (unsigned char *)c->close_reason,
                   strlen(c->close_reason));
  lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_SYNC);
}

static void on_timer(uv_timer_t *t) {
  ws_conn *c = t->data;
  uint64_t now = uv_now(tug_loop());
  if (c->close_now)
    conn_send_close(c);
  if (c->rx_waiter && c->rx_deadline && now >= c->rx_deadline) {
    c->rx_deadline = 0;
    if (c->rx_waiter->kind == WAIT_OPEN) {
      if (c->resolving)
        set_error(c, "timeout", "%s did not resolve in time", c->host_name);
      set_error(c, "timeout", "the connection was not established in time");
      conn_abort(c);
    }
    c->rx_waiter->timed_out = 1;
    wake(c->rx_waiter);
  }
  if (c->close_deadline && now >= c->close_deadline) {
    if (!c->close_expired) {
      /* Timers run before the poll phase: after a turn of the loop that Lua kept busy past
         the deadline, room to write or the peer's answer may be waiting unseen. The next
         poll phase decides (a write or the close frame moves the deadline). */
      c->close_expired = 1;
    } else {
      c->close_deadline = 0;
      conn_abort(c); /* the peer took nothing, or never answered our close: drop it */
    }
  }
  conn_update_timer(c);
}

/* The closing connection made progress: the peer has WS_CLOSE_TIMEOUT_MS from now. */
static void close_deadline_restart(ws_conn *c) {
  c->close_deadline = uv_now(tug_loop()) + WS_CLOSE_TIMEOUT_MS;
  c->close_expired = 0;
}

static void conn_update_timer(ws_conn *c) {
  if (!c->timer || uv_is_closing((uv_handle_t *)c->timer))
    return;
  int needed = c->rx_waiter || c->tx_waiter || c->state == ST_CLOSING;
  if (!needed) {
    uv_timer_stop(c->timer);
    return;
  }
  uv_update_time(tug_loop());
  uint64_t now = uv_now(tug_loop());
  uint64_t due = c->close_now ? now : now + WS_KEEPALIVE_MS;
  if (c->rx_waiter && c->rx_deadline && c->rx_deadline < due)
    due = c->rx_deadline;
  if (c->state == ST_CLOSING && c->close_deadline && c->close_deadline < due)
    due = c->close_deadline;
  if (c->close_expired && due <= now) /* not 0: libuv would run it again before polling */
    due = now + 1;
  uv_timer_start(c->timer, on_timer, due > now ? due - now : 0, 0);
}

static void conn_release_timer(ws_conn *c) {
  if (c->timer && !uv_is_closing((uv_handle_t *)c->timer))
    uv_close((uv_handle_t *)c->timer, on_timer_closed);
}

/* ---- libwebsockets callbacks ---- */

static void rx_push(ws_conn *c) {
  ws_msg *m = malloc(sizeof *m + c->partial_len);
  if (m == NULL) {
    set_error(c, "protocol", "out of memory for a received message");
    return;
  }
  m->next = NULL;
  m->len = c->partial_len;
  m->binary = c->partial_binary;
  if (c->partial_len)
    memcpy(m->data, c->partial, c->partial_len);
  c->partial_len = 0;
  if (c->rx_tail)
    c->rx_tail->next = m;
  else
    c->rx_head = m;
  c->rx_tail = m;
  c->rx_bytes += m->len + 1;
  if (c->rx_bytes > WS_RX_HIGH && c->wsi && !c->rx_paused) {
    c->rx_paused = 1;
    lws_rx_flow_control(c->wsi, 0);
  }
  if (c->rx_waiter && c->rx_waiter->kind == WAIT_MESSAGE)
    wake(c->rx_waiter);
}

/* Returns -1 to make lws close the connection. */
static int on_receive(ws_conn *c, struct lws *wsi, const void *in, size_t len) {
  if (c->discarding || c->orphaned) /* nobody can take it: never let it pause the reading */
    return 0;
  if (lws_is_first_fragment(wsi)) {
    c->partial_len = 0;
    c->partial_binary = lws_frame_is_binary(wsi);
  }
  if (len > c->max_message - c->partial_len) {
    set_error(c, "protocol", "a message is larger than max_message (%zu bytes)", c->max_message);
    c->discarding = 1;
    c->partial_len = 0;
    if (!c->close_wanted) {
      c->close_wanted = 1;
      c->close_code = LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE;
      snprintf(c->close_reason, sizeof c->close_reason, "message too large");
      c->state = ST_CLOSING;
      close_deadline_restart(c);
      c->close_now = 1;
      conn_update_timer(c);
    }
    return 0;
  }
  if (c->partial_cap - c->partial_len < len) {
    size_t cap = c->partial_cap ? c->partial_cap : 4096;
    while (cap - c->partial_len < len)
      cap *= 2;
    unsigned char *p = realloc(c->partial, cap);
    if (p == NULL) {
      set_error(c, "protocol", "out of memory for a received message");
      return -1;
    }
    c->partial = p;
    c->partial_cap = cap;
  }
  if (len)
    memcpy(c->partial + c->partial_len, in, len);
  c->partial_len += len;
  if (lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0)
    rx_push(c);
  return 0;
}

/* Sends one queued message; then the close frame once the queue is empty and a close is
   wanted. Returns -1 to close. */
static int on_writeable(ws_conn *c, struct lws *wsi) {
  ws_msg *m = c->tx_head;
  if (m) {
    c->tx_head = m->next;
    if (c->tx_head == NULL)
      c->tx_tail = NULL;
    c->tx_bytes -= m->len + 1;
    int n =
        lws_write(wsi, m->data + LWS_PRE, m->len, m->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT);
    free(m);
    if (n < 0) {
      set_error(c, "closed", "writing to the connection failed");
      return -1;
    }
    if (c->state == ST_CLOSING)
      close_deadline_restart(c);
    if (c->tx_waiter && c->tx_bytes <= WS_TX_LOW)
      wake(c->tx_waiter);
    if (c->tx_head || c->close_wanted)
      lws_callback_on_writable(wsi);
    return 0;
  }
  if (c->close_wanted && !c->close_now) { /* everything queued has left */
    c->close_now = 1;
    conn_update_timer(c);
  }
  return 0;
}

static void on_established(ws_conn *c, struct lws *wsi) {
  c->state = ST_OPEN;
  c->wsi = c->main_wsi = wsi;
  if (c->server) {
    const struct lws_protocols *p = lws_get_protocol(wsi);
    snprintf(c->protocol, sizeof c->protocol, "%s", p && p->name ? p->name : "");
  }
  unref_socket(c);
  if (c->rx_waiter && c->rx_waiter->kind == WAIT_OPEN) {
    c->rx_deadline = 0;
    wake(c->rx_waiter);
  }
  if (c->tx_head || c->close_wanted)
    lws_callback_on_writable(wsi);
}

static int ws_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                       size_t len) {
  struct lws_vhost *vh = wsi ? lws_get_vhost(wsi) : NULL;
  ws_conn *c = vh ? lws_vhost_user(vh) : NULL;
  if (c == NULL || reason == LWS_CALLBACK_PROTOCOL_INIT || reason == LWS_CALLBACK_PROTOCOL_DESTROY)
    return 0;
  switch (reason) {
  case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER: {
    unsigned char **p = in, *end = *p + len;
    c->sent_request = 1;
    for (int i = 0; i < c->nheaders; i++) {
      const char *name = c->headers[2 * i], *value = c->headers[2 * i + 1];
      if (lws_add_http_header_by_name(wsi, (const unsigned char *)name,
                                      (const unsigned char *)value, (int)strlen(value), p, end))
        return -1;
    }
    return 0;
  }
  case LWS_CALLBACK_ESTABLISHED_CLIENT_HTTP:
    c->http_status = (int)lws_http_client_http_response(wsi);
    if (lws_hdr_copy(wsi, c->protocol, sizeof c->protocol, WSI_TOKEN_PROTOCOL) < 0)
      c->protocol[0] = '\0';
    return 0;
  case LWS_CALLBACK_OPENSSL_PERFORM_SERVER_CERT_VERIFICATION: {
    X509_STORE_CTX *store = user;
    int err = X509_STORE_CTX_get_error(store);
    if (err != X509_V_OK) {
      if (c->insecure) {
        X509_STORE_CTX_set_error(store, X509_V_OK);
      } else if (!c->verify_error[0]) {
        snprintf(c->verify_error, sizeof c->verify_error, "%s", X509_verify_cert_error_string(err));
      }
    }
    return 0;
  }
  case LWS_CALLBACK_CLIENT_ESTABLISHED:
  case LWS_CALLBACK_ESTABLISHED:
    on_established(c, wsi);
    return 0;
  case LWS_CALLBACK_CLIENT_CONNECTION_ERROR: {
    const char *why = in ? (const char *)in : "the connection failed";
    if (c->verify_error[0])
      set_error(c, "tls", "the server's certificate was not accepted: %s", c->verify_error);
    else if (c->http_status == 401)
      set_error(c, "handshake", "the server refused the WebSocket upgrade: HTTP 401");
    else if (c->http_status && c->http_status != 101)
      set_error(c, "handshake", "the server refused the WebSocket upgrade: HTTP %d",
                c->http_status);
    else if (strstr(why, "HS: PROTOCOL"))
      set_error(c, "protocol", "the server chose a subprotocol that was not offered");
    else if (strncmp(why, "HS:", 3) == 0)
      set_error(c, "handshake", "the WebSocket handshake failed: %s", why + 4);
    else if (c->sent_request)
      set_error(c, "handshake", "the server closed the connection during the WebSocket handshake");
    else if (strstr(why, "dns") || strstr(why, "DNS") || strstr(why, "resolv") ||
             strstr(why, "getaddrinfo"))
      set_error(c, "dns", "cannot resolve %s", c->peer);
    else if (c->tls &&
             (strstr(why, "tls") || strstr(why, "TLS") || strstr(why, "SSL") || strstr(why, "ssl")))
      set_error(c, "tls", "the TLS handshake with %s failed: %s", c->peer, why);
    else if (c->tls)
      set_error(c, "connect", "cannot connect to %s, or the TLS handshake failed (%s)", c->peer,
                why);
    else
      set_error(c, "connect", "cannot connect to %s (connection refused or unreachable)", c->peer);
    c->wsi = NULL;
    conn_closed(c);
    return 0;
  }
  case LWS_CALLBACK_RECEIVE:
  case LWS_CALLBACK_CLIENT_RECEIVE:
    return on_receive(c, wsi, in, len);
  case LWS_CALLBACK_CLIENT_WRITEABLE:
  case LWS_CALLBACK_SERVER_WRITEABLE:
    return on_writeable(c, wsi);
  case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE: {
    const unsigned char *b = in;
    c->closed_by_peer = 1;
    if (len >= 2) {
      c->peer_code = (b[0] << 8) | b[1];
      size_t n = len - 2 < sizeof c->peer_reason - 1 ? len - 2 : sizeof c->peer_reason - 1;
      memcpy(c->peer_reason, b + 2, n);
      c->peer_reason[n] = '\0';
    } else {
      c->peer_code = LWS_CLOSE_STATUS_NO_STATUS;
    }
    return 0; /* lws answers the close */
  }
  case LWS_CALLBACK_HTTP:
    /* the adopted request was no WebSocket upgrade after all */
    set_error(c, "handshake", "the request is not a WebSocket upgrade");
    return -1;
  case LWS_CALLBACK_CLIENT_CLOSED:
  case LWS_CALLBACK_CLOSED:
    if (c->partial_len && !c->error_kind[0] && c->closed_by_peer == 0)
      set_error(c, "closed", "the connection closed in the middle of a message");
    if (!c->closed_by_peer && !c->close_wanted)
      set_error(c, "closed", "the connection ended without a closing handshake");
    c->wsi = NULL;
    conn_closed(c);
    return 0;
  case LWS_CALLBACK_WSI_DESTROY:
    if (c->main_wsi == wsi) {
      c->main_wsi = NULL;
      c->wsi = NULL;
      if (c->state != ST_CLOSED) {
        if (c->state == ST_CONNECTING)
          set_error(c, "connect", "the connection closed during the handshake");
        conn_closed(c);
      }
    }
    return 0;
  default:
    return 0;
  }
}

/* ---- TLS: the client SSL_CTX (CA bundle, certificate chain, key: files or PEM text) ---- */

static int is_pem(const char *s) { return s && strstr(s, "-----BEGIN ") != NULL; }

static const char *tls_why(void) {
  unsigned long e = ERR_peek_last_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  return r ? r : "invalid data";
}

/* Returns NULL and sets *err on failure. Messages name the option, never its content. */
static SSL_CTX *make_ssl_ctx(const char *ca, const char *cert, const char *key, char *err,
                             size_t errlen) {
  ERR_clear_error();
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == NULL) {
    snprintf(err, errlen, "cannot make a TLS context");
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  if (ca && is_pem(ca)) {
    BIO *bio = BIO_new_mem_buf(ca, -1);
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    int count = 0;
    X509 *x;
    while (bio && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
      X509_STORE_add_cert(store, x);
      X509_free(x);
      count++;
    }
    BIO_free(bio);
    ERR_clear_error();
    if (count == 0) {
      snprintf(err, errlen, "tls.ca holds no PEM certificate");
      goto fail;
    }
  } else if (ca) {
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
      snprintf(err, errlen, "cannot read the CA file %s: %s", ca, tls_why());
      goto fail;
    }
  } else {
    SSL_CTX_set_default_verify_paths(ctx);
  }
  if (cert && is_pem(cert)) {
    BIO *bio = BIO_new_mem_buf(cert, -1);
    X509 *leaf = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    if (leaf == NULL || SSL_CTX_use_certificate(ctx, leaf) != 1) {
      X509_free(leaf);
      BIO_free(bio);
      snprintf(err, errlen, "tls.cert: not a usable PEM certificate (%s)", tls_why());
      goto fail;
    }
    X509_free(leaf);
    X509 *x;
    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL)
      if (SSL_CTX_add_extra_chain_cert(ctx, x) != 1) /* takes x on success */
        X509_free(x);
    BIO_free(bio);
    ERR_clear_error();
  } else if (cert && SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
    snprintf(err, errlen, "cannot read the certificate file %s: %s", cert, tls_why());
    goto fail;
  }
  if (key && is_pem(key)) {
    BIO *bio = BIO_new_mem_buf(key, -1);
    EVP_PKEY *pk = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    int ok = pk && SSL_CTX_use_PrivateKey(ctx, pk) == 1;
    EVP_PKEY_free(pk);
    if (!ok) {
      snprintf(err, errlen, "tls.key: not a usable PEM private key");
      goto fail;
    }
  } else if (key && SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
    snprintf(err, errlen, "cannot read the key file %s: %s", key, tls_why());
    goto fail;
  }
  if ((cert || key) && SSL_CTX_check_private_key(ctx) != 1) {
    snprintf(err, errlen, "tls.key does not match tls.cert");
    goto fail;
  }
  ERR_clear_error();
  return ctx;
fail:
  ERR_clear_error();
  SSL_CTX_free(ctx);
  return NULL;
}

/* ---- making a connection's context ---- */

static ws_conn *conn_new(void) {
  ws_conn *c = calloc(1, sizeof *c);
  if (c == NULL)
    return NULL;
  c->max_message = WS_MAX_MESSAGE_DEFAULT;
  c->next = G.conns;
  if (G.conns)
    G.conns->prev = c;
  G.conns = c;
  c->timer = malloc(sizeof *c->timer);
  if (c->timer == NULL) {
    conn_maybe_free(c);
    return NULL;
  }
  uv_timer_init(tug_loop(), c->timer);
  c->timer->data = c;
  return c;
}

/* The process's lws context, on tug's loop; made on first use. */
static struct lws_context *shared_context(char *err, size_t errlen) {
  if (G.ctx)
    return G.ctx;
  if (G.ctx_destroyed) {
    snprintf(err, errlen, "tug is exiting");
    return NULL;
  }
  void *loops[1] = {tug_loop()};
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_EXPLICIT_VHOSTS |
                 LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
  info.foreign_loops = loops;
  info.port = CONTEXT_PORT_NO_LISTEN;
  info.fd_limit_per_thread = 1024; /* a lookup table of this size, not of the fd ulimit */
  info.timeout_secs = 30;
  info.max_http_header_data = 16384; /* a long exec URL fits */
  info.gid = (gid_t)-1;
  info.uid = (uid_t)-1;
  handle_walk walk = {0, 0};
  uv_walk(tug_loop(), count_handle, &walk);
  walk.skip = walk.seen;
  walk.seen = 0;
  G.ctx = lws_create_context(&info);
  if (G.ctx == NULL) {
    snprintf(err, errlen, "cannot set up libwebsockets (is libwebsockets-evlib-uv installed?)");
    return NULL;
  }
  uv_walk(tug_loop(), unref_new_handle, &walk);
  return G.ctx;
}

/* Makes the connection's vhost: its subprotocols and TLS settings. Returns 0, or -1 with a
   message. */
static int conn_make_vhost(ws_conn *c, int server, int tls, int ipv6, char *err, size_t errlen) {
  struct lws_context *ctx = shared_context(err, errlen);
  if (ctx == NULL)
    return -1;
  for (int i = 0; i < c->nprotocols; i++) {
    struct lws_protocols *p = &c->protocols[i];
    memset(p, 0, sizeof *p);
    p->name = c->protocol_names[i];
    p->callback = ws_callback;
    p->rx_buffer_size = WS_RX_BUFFER;
  }
  memset(&c->protocols[c->nprotocols], 0, sizeof c->protocols[0]);
  /* fixed width: lws matches a request's Host against vhost names by prefix */
  snprintf(c->vhost_name, sizeof c->vhost_name, "tug-ws-%012lu", ++G.serial);

  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  info.options = LWS_SERVER_OPTION_LIBUV;
  if (!ipv6) /* "localhost" must not pick ::1 when the server listens on 127.0.0.1 */
    info.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
  if (tls) {
    info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.provided_client_ssl_ctx = c->ssl_ctx;
  }
  info.vhost_name = c->vhost_name;
  info.port = server ? CONTEXT_PORT_NO_LISTEN_SERVER : CONTEXT_PORT_NO_LISTEN;
  info.protocols = c->protocols;
  info.user = c;
  info.finalize = on_vhost_finalized;
  info.finalize_arg = c;
  info.timeout_secs = 30;
  c->vh = lws_create_vhost(ctx, &info);
  if (c->vh == NULL) {
    snprintf(err, errlen, "cannot set up a libwebsockets vhost");
    return -1;
  }
  c->server = server;
  return 0;
}

/* ---- waiting ---- */

static int push_failure(lua_State *L, ws_conn *c, const char *fallback_kind, const char *fallback) {
  lua_pushnil(L);
  lua_pushstring(L, c->error_kind[0] ? c->error_kind : fallback_kind);
  lua_pushstring(L, c->error_kind[0] ? c->error : fallback);
  if (c->http_status && c->http_status != 101)
    lua_pushinteger(L, c->http_status);
  else
    lua_pushnil(L);
  return 4;
}

static void push_handle(lua_State *L, ws_conn *c) {
  ws_handle *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->conn = c;
  c->attached = 1;
  luaL_setmetatable(L, WS_CONN_MT);
}

static int op_resume(lua_State *L, tug_op *base);
static void op_cancel(tug_op *base);

static int await(lua_State *L, ws_conn *c, int kind, double timeout) {
  ws_op *op = calloc(1, sizeof *op);
  if (op == NULL)
    return luaL_error(L, "ws: out of memory");
  op->base.resume = op_resume;
  op->base.cancel = op_cancel;
  op->conn = c;
  op->kind = kind;
  if (kind == WAIT_DRAIN) {
    c->tx_waiter = op;
  } else {
    c->rx_waiter = op;
    uv_update_time(tug_loop());
    c->rx_deadline = timeout > 0 ? uv_now(tug_loop()) + (uint64_t)(timeout * 1000.0 + 0.5) : 0;
  }
  conn_update_timer(c);
  return tug_await(L, &op->base);
}

static int recv_step(lua_State *L, ws_conn *c, int timed_out);

static int op_resume(lua_State *L, tug_op *base) {
  ws_op *op = (ws_op *)base;
  ws_conn *c = op->conn;
  int kind = op->kind, timed_out = op->timed_out;
  if (kind == WAIT_DRAIN)
    c->tx_waiter = NULL;
  else {
    c->rx_waiter = NULL;
    c->rx_deadline = 0;
  }
  free(op);
  conn_update_timer(c);
  if (kind == WAIT_OPEN) {
    if (c->state == ST_OPEN || c->state == ST_CLOSING) {
      push_handle(L, c);
      return 1;
    }
    int n = push_failure(L, c, "connect", "the connection failed");
    conn_abort(c);
    conn_release_timer(c);
    conn_maybe_free(c);
    return n;
  }
  if (kind == WAIT_DRAIN) {
    if (c->state == ST_CLOSED) {
      lua_pushboolean(L, 0);
      lua_pushstring(L, c->error_kind[0] ? c->error : "the connection is closed");
      return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
  }
  return recv_step(L, c, timed_out);
}

static void op_cancel(tug_op *base) {
  ws_op *op = (ws_op *)base;
  ws_conn *c = op->conn;
  if (op->kind == WAIT_DRAIN) {
    c->tx_waiter = NULL;
  } else {
    c->rx_waiter = NULL;
    c->rx_deadline = 0;
  }
  int kind = op->kind;
  free(op);
  if (kind == WAIT_OPEN) { /* nobody will ever get this connection: drop it */
    set_error(c, "cancelled", "cancelled");
    conn_abort(c);
    conn_release_timer(c);
  } else {
    conn_update_timer(c);
  }
  conn_maybe_free(c);
}

/* ---- Lua: core.connect and core.accept ---- */

static const char *opt_string(lua_State *L, int t, const char *name, int required) {
  int type = lua_getfield(L, t, name);
  const char *s = NULL;
  if (type == LUA_TSTRING)
    s = lua_tostring(L, -1);
  else if (type != LUA_TNIL || required)
    luaL_error(L, "ws: %s must be a string (got %s)", name, luaL_typename(L, -1));
  lua_pop(L, 1); /* the string stays anchored in the options table */
  return s;
}

static char *dup_string(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d)
    memcpy(d, s, n);
  return d;
}

/* Reads opts.protocols (a list of names) into c. */
static void read_protocols(lua_State *L, int t, ws_conn *c, const char *fallback) {
  if (lua_getfield(L, t, "protocols") == LUA_TTABLE) {
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= n && c->nprotocols < WS_MAX_PROTOCOLS; i++) {
      lua_geti(L, -1, i);
      const char *name = lua_tostring(L, -1);
      if (name)
        c->protocol_names[c->nprotocols++] = dup_string(name);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  if (c->nprotocols == 0)
    c->protocol_names[c->nprotocols++] = dup_string(fallback);
}

static size_t opt_max_message(lua_State *L, int t) {
  size_t max = WS_MAX_MESSAGE_DEFAULT;
  if (lua_getfield(L, t, "max_message") != LUA_TNIL) {
    lua_Integer n = luaL_checkinteger(L, -1);
    if (n < 1)
      luaL_error(L, "ws: max_message must be a positive integer");
    max = (size_t)n;
  }
  lua_pop(L, 1);
  return max;
}

/* ---- dialling: resolving the host off the loop, then lws connects to the address ---- */

/* The resolver's own words ("Name or service not known"), from libuv's status. */
static const char *resolve_error(int status) {
  switch (status) {
  case UV_EAI_NONAME:
    return gai_strerror(EAI_NONAME);
  case UV_EAI_AGAIN:
    return gai_strerror(EAI_AGAIN);
  case UV_EAI_FAIL:
    return gai_strerror(EAI_FAIL);
  case UV_EAI_NODATA:
    return gai_strerror(EAI_NODATA);
  case UV_EAI_ADDRFAMILY:
    return gai_strerror(EAI_ADDRFAMILY);
  case UV_EAI_MEMORY:
    return gai_strerror(EAI_MEMORY);
  default:
    return uv_strerror(status);
  }
}

/* Hands the connection to lws, which connects to c->address (numeric: lws's own
   getaddrinfo returns at once) and speaks TLS and HTTP with the name from the URL. From the
   task (a literal address) or from on_resolved; never from inside an lws callback. On
   failure the connection is closed with the error set, which wakes a waiting task. */
static void conn_dial(ws_conn *c) {
  char err[256];
  if (conn_make_vhost(c, 0, c->tls, strchr(c->address, ':') != NULL, err, sizeof err) != 0) {
    set_error(c, "connect", "%s", err);
    conn_closed(c);
    return;
  }
  struct lws_client_connect_info ci;
  memset(&ci, 0, sizeof ci);
  ci.context = G.ctx;
  ci.vhost = c->vh;
  ci.address = c->address;
  ci.port = c->port;
  ci.path = c->path;
  ci.host = c->host_header; /* also SNI and the certificate's name: see the top */
  ci.origin = c->origin;
  ci.protocol = c->offered;
  ci.local_protocol_name = c->protocol_names[0];
  ci.alpn = "http/1.1"; /* WebSocket over HTTP/2 is not what servers expect here */
  if (c->tls) {
    ci.ssl_connection = LCCSCF_USE_SSL;
    if (c->insecure)
      ci.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK |
                           LCCSCF_ALLOW_EXPIRED | LCCSCF_ALLOW_INSECURE;
  }
  ci.pwsi = &c->wsi;
  struct lws *wsi = lws_client_connect_via_info(&ci);
  if (wsi && c->state == ST_CONNECTING)
    c->main_wsi = wsi;
  if (wsi == NULL && c->state == ST_CONNECTING) {
    set_error(c, "connect", "cannot connect to %s", c->peer);
    c->wsi = NULL;
    conn_closed(c);
  }
  unref_socket(c);
}

/* uv_getaddrinfo's answer. The connection may have been given up meanwhile (a timeout, a
   cancelled task): then only the lookup's memory goes, and the connection if it can. */
static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  ws_conn *c = req->data;
  c->resolving = 0;
  if (c->state != ST_CONNECTING || G.ctx_destroyed) {
    uv_freeaddrinfo(res);
    if (c->state == ST_CONNECTING) {
      set_error(c, "connect", "tug is exiting");
      conn_closed(c);
    }
    conn_maybe_free(c);
    return;
  }
  /* IPv4 first, as lws did ("localhost" is 127.0.0.1 where servers listen); one address,
     since lws dials exactly one */
  const struct addrinfo *pick = NULL;
  for (const struct addrinfo *ai = status == 0 ? res : NULL; ai; ai = ai->ai_next)
    if (ai->ai_family == AF_INET || (ai->ai_family == AF_INET6 && pick == NULL)) {
      pick = ai;
      if (ai->ai_family == AF_INET)
        break;
    }
  if (pick == NULL) {
    set_error(c, "dns", "cannot resolve %s: %s", c->host_name,
              status < 0 ? resolve_error(status) : "no IPv4 or IPv6 address");
    uv_freeaddrinfo(res);
    conn_closed(c);
    return;
  }
  if (pick->ai_family == AF_INET)
    uv_ip4_name((const struct sockaddr_in *)pick->ai_addr, c->address, sizeof c->address);
  else
    uv_ip6_name((const struct sockaddr_in6 *)pick->ai_addr, c->address, sizeof c->address);
  uv_freeaddrinfo(res);
  snprintf(c->peer, sizeof c->peer, "%s:%d at %s", c->host_name, c->port, c->address);
  conn_dial(c);
}

/* core.connect{ host, port, path, tls, host_header, origin, protocols = { ... },
   headers = { "name:", "value", ... }, ca, cert, key, insecure, timeout, max_message }
   -> connection | nil, kind, message, http_status */
static int ws_connect(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  tug_check_task(L, "ws.connect");
  const char *host = opt_string(L, 1, "host", 1);
  const char *path = opt_string(L, 1, "path", 1);
  const char *host_header = opt_string(L, 1, "host_header", 1);
  const char *origin = opt_string(L, 1, "origin", 0);
  const char *ca = opt_string(L, 1, "ca", 0);
  const char *cert = opt_string(L, 1, "cert", 0);
  const char *key = opt_string(L, 1, "key", 0);
  lua_getfield(L, 1, "port");
  lua_Integer port = luaL_checkinteger(L, -1);
  lua_getfield(L, 1, "tls");
  int tls = lua_toboolean(L, -1);
  lua_getfield(L, 1, "insecure");
  int insecure = lua_toboolean(L, -1);
  lua_getfield(L, 1, "timeout");
  double timeout = lua_isnil(L, -1) ? 0 : tug_check_seconds(L, -1);
  lua_pop(L, 4);
  size_t max_message = opt_max_message(L, 1);
  luaL_argcheck(L, port > 0 && port < 65536, 1, "port must be between 1 and 65535");

  /* everything that can raise is done: from here on, failures are returned */
  char err[256];
  ws_conn *c = conn_new();
  if (c == NULL)
    return luaL_error(L, "ws: out of memory");
  c->max_message = max_message;
  c->insecure = insecure;
  c->tls = tls;
  c->port = (int)port;
  c->state = ST_CONNECTING;
  snprintf(c->peer, sizeof c->peer, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, (int)port);
  read_protocols(L, 1, c, "tug-ws");
  if (lua_getfield(L, 1, "headers") == LUA_TTABLE) {
    lua_Integer n = luaL_len(L, -1) / 2;
    c->headers = calloc((size_t)n * 2 + 1, sizeof *c->headers);
    for (lua_Integer i = 0; c->headers && i < n; i++) {
      lua_geti(L, -1, 2 * i + 1);
      lua_geti(L, -2, 2 * i + 2);
      const char *name = lua_tostring(L, -2), *value = lua_tostring(L, -1);
      if (name && value) {
        c->headers[2 * c->nheaders] = dup_string(name);
        c->headers[2 * c->nheaders + 1] = dup_string(value);
        c->nheaders++;
      }
      lua_pop(L, 2);
    }
  }
  lua_pop(L, 1);
  /* The offered subprotocols, comma-separated, as the Sec-WebSocket-Protocol header. */
  char offered[WS_MAX_PROTOCOLS * 64] = "";
  for (int i = 0; i < c->nprotocols; i++) {
    if (i)
      strncat(offered, ", ", sizeof offered - strlen(offered) - 1);
    strncat(offered, c->protocol_names[i], sizeof offered - strlen(offered) - 1);
  }
  /* kept in c: lws gets them only once the address is known */
  c->host_name = dup_string(host);
  c->path = dup_string(path);
  c->host_header = dup_string(host_header);
  c->origin = dup_string(origin ? origin : host_header);
  c->offered = dup_string(offered);
  if (!c->host_name || !c->path || !c->host_header || !c->origin || !c->offered) {
    set_error(c, "connect", "out of memory");
    conn_release_timer(c);
    return push_failure(L, c, "connect", "out of memory");
  }
  if (tls) {
    c->ssl_ctx = make_ssl_ctx(ca, cert, key, err, sizeof err);
    if (c->ssl_ctx == NULL) {
      set_error(c, "tls", "%s", err);
      conn_release_timer(c);
      return push_failure(L, c, "tls", err);
    }
  }
  if (shared_context(err, sizeof err) == NULL) {
    set_error(c, "connect", "%s", err);
    conn_release_timer(c);
    return push_failure(L, c, "connect", err);
  }
  unsigned char literal[sizeof(struct in6_addr)];
  if (inet_pton(AF_INET, host, literal) == 1 || inet_pton(AF_INET6, host, literal) == 1) {
    snprintf(c->address, sizeof c->address, "%s", host); /* nothing to resolve */
    conn_dial(c);
  } else {
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    c->gai.data = c;
    int rc = uv_getaddrinfo(tug_loop(), &c->gai, on_resolved, host, NULL, &hints);
    if (rc < 0) {
      set_error(c, "dns", "cannot resolve %s: %s", host, resolve_error(rc));
      conn_closed(c);
    } else {
      c->resolving = 1;
    }
  }
  if (c->state == ST_CLOSED) {
    conn_release_timer(c);
    return push_failure(L, c, "connect", "the connection failed");
  }
  if (c->state == ST_OPEN) {
    push_handle(L, c);
    return 1;
  }
  return await(L, c, WAIT_OPEN, timeout);
}

/* core.accept(fd, head, { protocols, max_message }) -> connection | nil, kind, message:
   takes over an accepted socket whose HTTP upgrade request (head, plus any bytes read
   after it) was already read, and answers the handshake. The fd is closed on failure. */
static int ws_accept(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  size_t head_len;
  const char *head = luaL_checklstring(L, 2, &head_len);
  luaL_checktype(L, 3, LUA_TTABLE);
  tug_check_task(L, "ws.accept");
  size_t max_message = opt_max_message(L, 3);
  char err[256];
  ws_conn *c = conn_new();
  if (c == NULL) {
    close((int)fd);
    return luaL_error(L, "ws: out of memory");
  }
  c->max_message = max_message;
  read_protocols(L, 3, c, "tug-ws");
  if (conn_make_vhost(c, 1, 0, 1, err, sizeof err) != 0) {
    close((int)fd);
    set_error(c, "connect", "%s", err);
    conn_release_timer(c);
    return push_failure(L, c, "connect", err);
  }
  c->state = ST_CONNECTING;
  /* lws 4.1 picks a server connection's vhost by the request's Host header (the first vhost
     "on the port" otherwise, which would be another connection's): the Host it reads is
     this connection's own vhost name. The upgrade request was already checked in Lua. */
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  const char *line = head, *end = head + head_len;
  int in_headers = 0;
  while (line < end) {
    const char *eol = memchr(line, '\n', (size_t)(end - line));
    const char *next = eol ? eol + 1 : end;
    if (in_headers && next - line > 5 && strncasecmp(line, "host:", 5) == 0) {
      luaL_addstring(&b, "Host: ");
      luaL_addstring(&b, c->vhost_name);
      luaL_addstring(&b, "\r\n");
    } else {
      luaL_addlstring(&b, line, (size_t)(next - line));
    }
    if (in_headers && (next - line <= 2)) { /* the blank line: the rest is not headers */
      line = next;
      luaL_addlstring(&b, line, (size_t)(end - line));
      break;
    }
    in_headers = 1;
    line = next;
  }
  luaL_pushresult(&b);
  size_t rewritten_len;
  const char *rewritten = lua_tolstring(L, -1, &rewritten_len);
  struct lws *wsi =
      lws_adopt_socket_vhost_readbuf(c->vh, (lws_sockfd_type)fd, rewritten, rewritten_len);
  lua_pop(L, 1);
  if (wsi == NULL && c->state == ST_CONNECTING) {
    set_error(c, "handshake", "the WebSocket handshake failed");
    conn_closed(c);
  } else if (wsi && c->state == ST_CONNECTING) {
    c->wsi = c->main_wsi = wsi;
  }
  unref_socket(c);
  if (c->state == ST_CLOSED) {
    conn_release_timer(c);
    return push_failure(L, c, "handshake", "the WebSocket handshake failed");
  }
  if (c->state == ST_OPEN) {
    push_handle(L, c);
    return 1;
  }
  return await(L, c, WAIT_OPEN, 30);
}

/* ---- Lua: the connection ---- */

static ws_handle *check_handle(lua_State *L) { return luaL_checkudata(L, 1, WS_CONN_MT); }

static ws_conn *check_conn(lua_State *L) {
  ws_handle *h = check_handle(L);
  if (h->conn == NULL)
    luaL_error(L, "ws: the connection is gone");
  return h->conn;
}

/* conn:send(data [, binary]) -> true, or false, message once the connection is closed.
   Waits while much is queued for a slow peer. */
static int conn_send(lua_State *L) {
  ws_conn *c = check_conn(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  int binary = lua_toboolean(L, 3);
  if (c->state != ST_OPEN || c->close_wanted) {
    lua_pushboolean(L, 0);
    lua_pushstring(L, c->error_kind[0] ? c->error : "the connection is closed");
    return 2;
  }
  if (c->tx_waiter)
    return luaL_error(L, "ws: another task is sending on this connection");
  ws_msg *m = malloc(sizeof *m + LWS_PRE + len);
  if (m == NULL)
    return luaL_error(L, "ws: out of memory");
  m->next = NULL;
  m->len = len;
  m->binary = binary;
  memcpy(m->data + LWS_PRE, data, len);
  if (c->tx_tail)
    c->tx_tail->next = m;
  else
    c->tx_head = m;
  c->tx_tail = m;
  c->tx_bytes += len + 1;
  if (c->wsi)
    lws_callback_on_writable(c->wsi);
  if (c->tx_bytes > WS_TX_HIGH && lua_isyieldable(L))
    return await(L, c, WAIT_DRAIN, 0);
  lua_pushboolean(L, 1);
  return 1;
}

/* What recv returns now: a message, the end, or (may_wait) a wait. */
static int recv_step(lua_State *L, ws_conn *c, int timed_out) {
  ws_msg *m = c->rx_head;
  if (m) {
    c->rx_head = m->next;
    if (c->rx_head == NULL)
      c->rx_tail = NULL;
    c->rx_bytes -= m->len + 1;
    if (c->rx_paused && c->rx_bytes <= WS_RX_HIGH / 2 && c->wsi) {
      c->rx_paused = 0;
      lws_rx_flow_control(c->wsi, 1);
    }
    lua_pushlstring(L, (const char *)m->data, m->len);
    lua_pushstring(L, m->binary ? "binary" : "text");
    free(m);
    return 2;
  }
  if (c->state == ST_CLOSED) {
    lua_pushnil(L);
    lua_createtable(L, 0, 4);
    if (c->closed_by_peer) {
      lua_pushinteger(L, c->peer_code);
      lua_setfield(L, -2, "code");
      lua_pushstring(L, c->peer_reason);
      lua_setfield(L, -2, "reason");
    }
    lua_pushboolean(L, c->closed_by_peer);
    lua_setfield(L, -2, "by_peer");
    if (c->error_kind[0]) {
      lua_pushstring(L, c->error_kind);
      lua_setfield(L, -2, "error");
      lua_pushstring(L, c->error);
      lua_setfield(L, -2, "message");
    }
    return 2;
  }
  if (timed_out) {
    lua_pushnil(L);
    lua_createtable(L, 0, 2);
    lua_pushliteral(L, "timeout");
    lua_setfield(L, -2, "error");
    lua_pushliteral(L, "no message arrived in time");
    lua_setfield(L, -2, "message");
    return 2;
  }
  return -1;
}

/* conn:recv([timeout]) -> data, "text" | "binary"; or nil, { code, reason, by_peer, error,
   message } once the connection has closed (error = "timeout" when the time ran out; the
   connection stays open then). */
static int conn_recv(lua_State *L) {
  ws_conn *c = check_conn(L);
  double timeout = lua_isnoneornil(L, 2) ? 0 : tug_check_seconds(L, 2);
  if (c->rx_waiter)
    return luaL_error(L, "ws: another task is receiving on this connection");
  int n = recv_step(L, c, 0);
  if (n >= 0)
    return n;
  tug_check_task(L, "ws recv");
  if (!lua_isnoneornil(L, 2) && timeout <= 0)
    return recv_step(L, c, 1);
  return await(L, c, WAIT_MESSAGE, timeout);
}

/* Starts the closing handshake (or drops a connection still connecting). */
static void conn_start_close(ws_conn *c, int code, const char *reason) {
  if (c->state == ST_CLOSED || c->close_wanted)
    return;
  c->close_wanted = 1;
  c->close_code = code;
  snprintf(c->close_reason, sizeof c->close_reason, "%s", reason ? reason : "");
  if (c->state == ST_OPEN && c->wsi) {
    c->state = ST_CLOSING;
    uv_update_time(tug_loop());
    close_deadline_restart(c);
    /* The close frame follows the queue, and what lws still holds of a message it could
       only partly write: lws calls the writeable callback once that has left, whereas a
       close started before would flush it and then drop the socket without the frame. */
    lws_callback_on_writable(c->wsi);
  } else {
    conn_abort(c);
  }
  conn_update_timer(c);
}

/* conn:close([code [, reason]]): sends what is queued, then the close frame; returns at
   once. Idempotent. */
static int conn_close_method(lua_State *L) {
  ws_handle *h = check_handle(L);
  lua_Integer code = luaL_optinteger(L, 2, LWS_CLOSE_STATUS_NORMAL);
  const char *reason = luaL_optstring(L, 3, "");
  luaL_argcheck(L, code >= 1000 && code <= 4999, 2, "close code must be between 1000 and 4999");
  luaL_argcheck(L, strlen(reason) <= 123, 3, "close reason must be at most 123 bytes");
  if (h->conn)
    conn_start_close(h->conn, (int)code, reason);
  return 0;
}

static int conn_close_scope(lua_State *L) {
  lua_settop(L, 1);
  return conn_close_method(L);
}

static int conn_gc(lua_State *L) {
  ws_handle *h = check_handle(L);
  ws_conn *c = h->conn;
  if (c == NULL)
    return 0;
  h->conn = NULL;
  c->attached = 0;
  if (c->rx_waiter) { /* only when the state closes under a waiting task */
    free(c->rx_waiter);
    c->rx_waiter = NULL;
  }
  if (c->tx_waiter) {
    free(c->tx_waiter);
    c->tx_waiter = NULL;
  }
  if (c->state == ST_CLOSING && c->wsi && !G.ctx_destroyed) {
    /* close() was called: the messages queued before it and the close frame must still
       leave (a server handler typically sends, closes and returns; the collector may run
       before lws could write). The timer drives the close and is released once the
       connection has closed, or after WS_CLOSE_TIMEOUT_MS at most. */
    c->orphaned = 1;
    conn_update_timer(c);
    return 0;
  }
  conn_abort(c); /* an open connection nobody can reach any more */
  conn_release_timer(c);
  conn_maybe_free(c);
  return 0;
}

static const char *state_name(int state) {
  switch (state) {
  case ST_CONNECTING:
    return "connecting";
  case ST_OPEN:
    return "open";
  case ST_CLOSING:
    return "closing";
  default:
    return "closed";
  }
}

static int conn_index(lua_State *L) {
  ws_handle *h = check_handle(L);
  const char *key = luaL_checkstring(L, 2);
  ws_conn *c = h->conn;
  if (luaL_getmetafield(L, 1, "methods") != LUA_TNIL) {
    if (lua_getfield(L, -1, key) != LUA_TNIL)
      return 1;
    lua_pop(L, 2);
  }
  if (strcmp(key, "state") == 0) {
    lua_pushstring(L, c ? state_name(c->state) : "closed");
    return 1;
  }
  if (c == NULL)
    return 0;
  if (strcmp(key, "protocol") == 0)
    lua_pushstring(L, c->protocol);
  else if (strcmp(key, "buffered") == 0)
    lua_pushinteger(L, (lua_Integer)c->tx_bytes);
  else
    return 0;
  return 1;
}

static int conn_tostring(lua_State *L) {
  ws_handle *h = check_handle(L);
  ws_conn *c = h->conn;
  if (c == NULL)
    lua_pushliteral(L, "ws.connection (closed)");
  else
    lua_pushfstring(L, "ws.connection %s (%s%s%s)", c->server ? "accepted" : "to server",
                    state_name(c->state), c->protocol[0] ? ", " : "", c->protocol);
  return 1;
}

/* core.stats() -> { connections } : connections not yet freed (for specs: teardown). */
static int ws_stats(lua_State *L) {
  lua_Integer n = 0;
  for (ws_conn *c = G.conns; c; c = c->next)
    n++;
  lua_createtable(L, 0, 1);
  lua_pushinteger(L, n);
  lua_setfield(L, -2, "connections");
  return 1;
}

/* ---- exit ---- */

/* After sched_close's last run of the loop has closed lws's handles: the second
   lws_context_destroy frees the context (and the vhosts left, whose connections go with
   them). */
static void destroy_context_at_exit(void) {
  if (G.ctx) {
    lws_context_destroy(G.ctx);
    G.ctx = NULL;
  }
}

/* The state is closing: start the context's teardown (the loop runs once more after). */
static int sentinel_gc(lua_State *L) {
  (void)L;
  /* connections still finishing a close nobody waits for: dropped, as open ones are */
  for (ws_conn *c = G.conns, *next; c; c = next) {
    next = c->next;
    if (c->orphaned && c->state != ST_CLOSED)
      conn_abort(c); /* conn_closed releases the timer; the context frees the rest */
  }
  if (G.reaper) {
    uv_idle_stop(G.reaper);
    uv_close((uv_handle_t *)G.reaper, on_reaper_closed);
    G.reaper = NULL;
  }
  if (G.ctx && !G.ctx_destroyed) {
    G.ctx_destroyed = 1;
    lws_context_destroy(G.ctx);
    atexit(destroy_context_at_exit);
  }
  return 0;
}

static void lws_log(int level, const char *line) {
  (void)level;
  fprintf(stderr, "libwebsockets: %s", line);
}

static const luaL_Reg conn_methods[] = {
    {"send", conn_send},
    {"recv", conn_recv},
    {"close", conn_close_method},
    {NULL, NULL},
};

static const luaL_Reg conn_meta[] = {
    {"__index", conn_index},
    {"__tostring", conn_tostring},
    {"__close", conn_close_scope},
    {"__gc", conn_gc},
    {NULL, NULL},
};

static const luaL_Reg ws_functions[] = {
    {"connect", ws_connect},
    {"accept", ws_accept},
    {"stats", ws_stats},
    {NULL, NULL},
};

int luaopen_tug_ws(lua_State *L) {
  /* libwebsockets logs to stderr by default; tug reports through errors instead.
     TUG_WS_LOG=<lws log level bits> shows its own log when debugging. */
  const char *level = getenv("TUG_WS_LOG");
  lws_set_log_level(level ? atoi(level) : 0, lws_log);
  if (luaL_newmetatable(L, WS_CONN_MT)) {
    luaL_setfuncs(L, conn_meta, 0);
    luaL_newlib(L, conn_methods);
    lua_setfield(L, -2, "methods");
  }
  lua_pop(L, 1);
  /* a registry sentinel tears the context down when the state closes; made once, since
     busted reloads modules for each spec file and an orphaned sentinel's finalizer would
     destroy the context the new copy still uses */
  if (lua_getfield(L, LUA_REGISTRYINDEX, "ws.sentinel") == LUA_TNIL) {
    lua_newuserdatauv(L, 1, 0);
    lua_newtable(L);
    lua_pushcfunction(L, sentinel_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, "ws.sentinel");
  }
  lua_pop(L, 1);
  luaL_newlib(L, ws_functions);
  return 1;
}
