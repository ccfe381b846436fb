/*
 * sys.c: the few operating-system calls the engine needs that Lua's io and os lack:
 * fsync for the journal, owner-only directories and files (whatever the umask) for what
 * .tug holds, a liveness check for lock holders, directory listing for playbook
 * discovery, and terminal facts for the live view. Lock files are in lockfile.c. Exposed
 * to the engine's Lua as tug.sys; not a public module.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "host.h"

static int sys_fail(lua_State *L, const char *what) {
  int e = errno;
  luaL_pushfail(L);
  lua_pushfstring(L, "%s: %s", what, strerror(e));
  lua_pushinteger(L, e);
  return 3;
}

static int sys_pid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)getpid());
  return 1;
}

static int sys_hostname(lua_State *L) {
  char name[256];
  if (gethostname(name, sizeof name) != 0)
    return sys_fail(L, "gethostname");
  name[sizeof name - 1] = '\0';
  lua_pushstring(L, name);
  return 1;
}

/* true if a process with this pid exists on this host (EPERM means it does). */
static int sys_pid_alive(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  luaL_argcheck(L, pid > 0, 1, "pid must be positive");
  lua_pushboolean(L, kill((pid_t)pid, 0) == 0 || errno == EPERM);
  return 1;
}

/* Flushes a Lua file and forces its data to disk. */
static int sys_fsync(lua_State *L) {
  luaL_Stream *s = (luaL_Stream *)luaL_checkudata(L, 1, LUA_FILEHANDLE);
  luaL_argcheck(L, s->closef != NULL, 1, "file is closed");
  if (fflush(s->f) != 0 || fsync(fileno(s->f)) != 0)
    return sys_fail(L, "fsync");
  lua_pushboolean(L, 1);
  return 1;
}

/* mkdir -p PATH [MODE]: the directories it creates get MODE (default 0755) whatever the
   umask; existing ones are left as they are. */
static int sys_mkdir(lua_State *L) {
  size_t len;
  const char *path = luaL_checklstring(L, 1, &len);
  luaL_argcheck(L, len > 0 && len < 4096, 1, "bad path");
  lua_Integer mode = luaL_optinteger(L, 2, 0755);
  luaL_argcheck(L, mode >= 0 && mode <= 07777, 2, "mode must be between 0 and 07777");
  char buf[4096];
  memcpy(buf, path, len + 1);
  for (char *p = buf + 1;; p++) {
    if (*p != '/' && *p != '\0')
      continue;
    char c = *p;
    *p = '\0';
    if (mkdir(buf, (mode_t)mode) == 0) {
      if (chmod(buf, (mode_t)mode) != 0)
        return sys_fail(L, lua_pushfstring(L, "chmod %s", buf));
    } else if (errno != EEXIST) {
      return sys_fail(L, lua_pushfstring(L, "mkdir %s", buf));
    }
    if (c == '\0')
      break;
    *p = '/';
  }
  struct stat st;
  if (stat(path, &st) != 0)
    return sys_fail(L, lua_pushfstring(L, "mkdir %s", path));
  if (!S_ISDIR(st.st_mode)) {
    errno = ENOTDIR;
    return sys_fail(L, lua_pushfstring(L, "mkdir %s", path));
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* stat(path) -> { type = "file"|"dir"|"link"|"other", mode (permission bits), uid,
   mine (owned by this process's user) }, or nil, message, errno. Does not follow a
   final symbolic link. */
static int sys_stat(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct stat st;
  if (lstat(path, &st) != 0)
    return sys_fail(L, path);
  lua_createtable(L, 0, 4);
  lua_pushstring(L, S_ISDIR(st.st_mode)   ? "dir"
                    : S_ISREG(st.st_mode) ? "file"
                    : S_ISLNK(st.st_mode) ? "link"
                                          : "other");
  lua_setfield(L, -2, "type");
  lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
  lua_setfield(L, -2, "mode");
  lua_pushinteger(L, (lua_Integer)st.st_uid);
  lua_setfield(L, -2, "uid");
  lua_pushboolean(L, st.st_uid == geteuid());
  lua_setfield(L, -2, "mine");
  return 1;
}

static int sys_chmod(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_Integer mode = luaL_checkinteger(L, 2);
  luaL_argcheck(L, mode >= 0 && mode <= 07777, 2, "mode must be between 0 and 07777");
  if (chmod(path, (mode_t)mode) != 0)
    return sys_fail(L, path);
  lua_pushboolean(L, 1);
  return 1;
}

/* The close function of a Lua file opened by open_private. */
static int private_fclose(lua_State *L) {
  luaL_Stream *s = (luaL_Stream *)luaL_checkudata(L, 1, LUA_FILEHANDLE);
  return luaL_fileresult(L, fclose(s->f) == 0, NULL);
}

/* open_private(path, "a"|"w") -> a Lua file, or nil, message, errno. A new file is
   owner-only (0600) whatever the umask; an existing one of this user that others could
   read or write is made 0600. */
static int sys_open_private(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  const char *mode = luaL_checkstring(L, 2);
  luaL_argcheck(L, strcmp(mode, "a") == 0 || strcmp(mode, "w") == 0, 2,
                "mode must be \"a\" or \"w\"");
  int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (mode[0] == 'a' ? O_APPEND : O_TRUNC);
  luaL_Stream *s = (luaL_Stream *)lua_newuserdatauv(L, sizeof *s, 0);
  s->f = NULL;
  s->closef = NULL; /* closed until fully opened */
  luaL_setmetatable(L, LUA_FILEHANDLE);
  int fd = open(path, flags, 0600);
  if (fd < 0)
    return sys_fail(L, path);
  struct stat st;
  if (fstat(fd, &st) != 0 ||
      ((st.st_mode & 077) != 0 && st.st_uid == geteuid() && fchmod(fd, st.st_mode & 07700) != 0)) {
    int e = errno;
    close(fd);
    errno = e;
    return sys_fail(L, path);
  }
  s->f = fdopen(fd, mode);
  if (s->f == NULL) {
    int e = errno;
    close(fd);
    errno = e;
    return sys_fail(L, path);
  }
  s->closef = private_fclose;
  return 1;
}

/* Returns { {name=, type="file"|"dir"|"other"}, ... } sorted by the caller. */
static int sys_listdir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  DIR *d = opendir(path);
  if (d == NULL)
    return sys_fail(L, path);
  lua_newtable(L);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    const char *type = "other";
    struct stat st;
    char full[4096];
    snprintf(full, sizeof full, "%s/%s", path, e->d_name);
    if (stat(full, &st) == 0)
      type = S_ISDIR(st.st_mode) ? "dir" : S_ISREG(st.st_mode) ? "file" : "other";
    lua_createtable(L, 0, 2);
    lua_pushstring(L, e->d_name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, type);
    lua_setfield(L, -2, "type");
    lua_rawseti(L, -2, ++n);
  }
  closedir(d);
  return 1;
}

static int sys_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

static int sys_term_width(lua_State *L) {
  struct winsize ws;
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
    lua_pushinteger(L, ws.ws_col);
  else
    lua_pushinteger(L, 80);
  return 1;
}

/* ---- read_line: a prompt's answer, read on the loop so Ctrl-C still works ---- */

/* Bytes read past the newline of an answer, kept for the next prompt. */
static struct {
  char *data;
  size_t len;
} pending;

typedef struct {
  tug_op base;
  union {
    uv_tty_t tty;
    uv_pipe_t pipe;
    uv_handle_t handle;
  } h;
  int eof;
} readline_op;

static void readline_closed(uv_handle_t *h) { free(h->data); }

static void readline_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  static char chunk[4096];
  *buf = uv_buf_init(chunk, sizeof chunk);
}

static int pending_has_line(void) {
  return pending.len > 0 && memchr(pending.data, '\n', pending.len) != NULL;
}

static void readline_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *buf) {
  readline_op *op = stream->data;
  if (n > 0) {
    char *grown = realloc(pending.data, pending.len + (size_t)n);
    if (grown == NULL) {
      op->eof = 1; /* out of memory: end the answer here */
    } else {
      pending.data = grown;
      memcpy(pending.data + pending.len, buf->base, (size_t)n);
      pending.len += (size_t)n;
    }
  } else if (n < 0) {
    op->eof = 1;
  }
  if (op->eof || pending_has_line()) {
    uv_read_stop(stream);
    tug_op_done(&op->base);
  }
}

/* Pushes the first line of the pending bytes (without its newline), or everything at EOF;
   nil when there is nothing. */
static int push_pending_line(lua_State *L, int eof) {
  char *nl = pending.len ? memchr(pending.data, '\n', pending.len) : NULL;
  size_t take = nl ? (size_t)(nl - pending.data) : (eof ? pending.len : 0);
  if (nl == NULL && (take == 0 || !eof)) {
    lua_pushnil(L);
    return 1;
  }
  size_t line_len = take > 0 && pending.data[take - 1] == '\r' ? take - 1 : take;
  lua_pushlstring(L, pending.data, line_len);
  size_t consumed = nl ? take + 1 : take;
  memmove(pending.data, pending.data + consumed, pending.len - consumed);
  pending.len -= consumed;
  return 1;
}

static void readline_release(tug_op *base) {
  readline_op *op = (readline_op *)base;
  uv_close(&op->h.handle, readline_closed);
}

static int readline_resume(lua_State *L, tug_op *base) {
  readline_op *op = (readline_op *)base;
  int eof = op->eof;
  readline_release(base);
  return push_pending_line(L, eof);
}

/* tug.sys.read_line(): one line from standard input (nil at the end), waiting on the loop. */
static int sys_read_line(lua_State *L) {
  tug_redact_flush(); /* a prompt held back as the possible start of a secret must show */
  if (pending_has_line())
    return push_pending_line(L, 0);
  uv_handle_type type = uv_guess_handle(0);
  if (type != UV_TTY && type != UV_NAMED_PIPE) {
    /* a file or /dev/null answers at once: a plain read cannot stall the loop */
    char line[4096];
    if (fgets(line, sizeof line, stdin) == NULL) {
      lua_pushnil(L);
      return 1;
    }
    line[strcspn(line, "\r\n")] = '\0';
    lua_pushstring(L, line);
    return 1;
  }
  tug_check_task(L, "reading an answer");
  readline_op *op = calloc(1, sizeof *op);
  if (op == NULL)
    return luaL_error(L, "out of memory");
  int rc = type == UV_TTY ? uv_tty_init(tug_loop(), &op->h.tty, 0, 1)
                          : uv_pipe_init(tug_loop(), &op->h.pipe, 0);
  if (rc == 0 && type == UV_NAMED_PIPE)
    rc = uv_pipe_open(&op->h.pipe, 0);
  op->h.handle.data = op;
  if (rc == 0)
    rc = uv_read_start((uv_stream_t *)&op->h.handle, readline_alloc, readline_read);
  if (rc != 0) {
    uv_close(&op->h.handle, readline_closed);
    return luaL_error(L, "cannot read standard input: %s", uv_strerror(rc));
  }
  op->base.resume = readline_resume;
  op->base.cancel = readline_release;
  return tug_await(L, &op->base);
}

static const luaL_Reg sys_funcs[] = {
    {"read_line", sys_read_line},
    {"pid", sys_pid},
    {"hostname", sys_hostname},
    {"pid_alive", sys_pid_alive},
    {"fsync", sys_fsync},
    {"mkdir", sys_mkdir},
    {"listdir", sys_listdir},
    {"stat", sys_stat},
    {"chmod", sys_chmod},
    {"open_private", sys_open_private},
    {"isatty", sys_isatty},
    {"term_width", sys_term_width},
    {NULL, NULL},
};

void host_open_sys(lua_State *L) {
  luaL_newlib(L, sys_funcs);
  host_open_lockfile(L);
}
