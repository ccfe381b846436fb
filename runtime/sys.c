/*
 * sys.c: the few operating-system calls the engine needs that Lua's io and os lack:
 * fsync for the journal, exclusive creation for locks, a liveness check for lock
 * holders, directory listing for playbook discovery, and terminal facts for the live
 * view. Exposed to the engine's Lua as tug.sys; not a public module.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
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

/* mkdir -p */
static int sys_mkdir(lua_State *L) {
  size_t len;
  const char *path = luaL_checklstring(L, 1, &len);
  luaL_argcheck(L, len > 0 && len < 4096, 1, "bad path");
  char buf[4096];
  memcpy(buf, path, len + 1);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/')
      continue;
    *p = '\0';
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
      return sys_fail(L, lua_pushfstring(L, "mkdir %s", buf));
    *p = '/';
  }
  if (mkdir(buf, 0755) != 0 && errno != EEXIST)
    return sys_fail(L, lua_pushfstring(L, "mkdir %s", buf));
  lua_pushboolean(L, 1);
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

/* Creates path with content only if it does not exist: true, or nil, message, "exists". */
static int sys_create_exclusive(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  size_t len;
  const char *content = luaL_checklstring(L, 2, &len);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    if (errno == EEXIST) {
      luaL_pushfail(L);
      lua_pushfstring(L, "%s exists", path);
      lua_pushliteral(L, "exists");
      return 3;
    }
    return sys_fail(L, path);
  }
  ssize_t w = write(fd, content, len);
  int ok = w == (ssize_t)len && fsync(fd) == 0;
  int e = errno;
  close(fd);
  if (!ok) {
    unlink(path);
    errno = e;
    return sys_fail(L, path);
  }
  lua_pushboolean(L, 1);
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

static const luaL_Reg sys_funcs[] = {
    {"pid", sys_pid},
    {"hostname", sys_hostname},
    {"pid_alive", sys_pid_alive},
    {"fsync", sys_fsync},
    {"mkdir", sys_mkdir},
    {"listdir", sys_listdir},
    {"create_exclusive", sys_create_exclusive},
    {"isatty", sys_isatty},
    {"term_width", sys_term_width},
    {NULL, NULL},
};

void host_open_sys(lua_State *L) { luaL_newlib(L, sys_funcs); }
