/*
 * lockfile.c: lock files whose holder is alive exactly as long as it keeps an flock(2) on
 * them. The file's content is a record naming the holder (JSON written by lock.lua); it is
 * written before the file appears under its name (link or rename of a private temporary
 * file that is already flocked) and never changed in place, so a reader sees a whole record
 * or none. Taking over a lock whose holder died needs that holder's flock first, and the
 * new record replaces the file only while it is held: of two contenders, one wins.
 *
 * Over NFS, Linux turns flock into a POSIX lock, which a process loses when it closes any
 * descriptor of the file: the holder never opens its own lock file again.
 *
 * Exposed through tug.sys (runtime/sys.c) as lock_create and lock_probe, which return a
 * tug.lockfile userdata: the open, flocked descriptor of the file its path names. The
 * policy (whose lock may be taken over) is in runtime/lua/lock.lua.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "host.h"

#define LOCKFILE_MT "tug.lockfile"
#define RECORD_MAX 65536
#define PATH_MAX_LEN 4096

typedef struct {
  int fd; /* flocked with LOCK_EX while >= 0 */
} lockfile;

/* nil, "what: strerror", errno; errno is read first. */
static int lockfile_fail(lua_State *L, const char *what) {
  int e = errno;
  luaL_pushfail(L);
  lua_pushfstring(L, "%s: %s", what, strerror(e));
  lua_pushinteger(L, e);
  return 3;
}

/* true if fd is still the file path names (same device and inode). */
static int same_file(int fd, const char *path) {
  struct stat a, b;
  if (fstat(fd, &a) != 0 || stat(path, &b) != 0)
    return 0;
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* PATH.HOST.PID.tmp: private to this process, even when hosts share the directory. */
static int temp_name(char *out, size_t size, const char *path) {
  char host[256];
  if (gethostname(host, sizeof host) != 0)
    strcpy(host, "host");
  host[sizeof host - 1] = '\0';
  int n = snprintf(out, size, "%s.%s.%ld.tmp", path, host, (long)getpid());
  if (n < 0 || (size_t)n >= size) {
    errno = ENAMETOOLONG;
    return -1;
  }
  return 0;
}

static int write_all(int fd, const char *data, size_t len) {
  while (len > 0) {
    ssize_t w = write(fd, data, len);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return -1;
    data += w;
    len -= (size_t)w;
  }
  return 0;
}

/* Creates tmp owner-only (whatever the umask), flocks it and writes record to disk.
   Returns the descriptor, or -1 with errno set and nothing left behind. */
static int locked_temp(const char *tmp, const char *record, size_t len) {
  unlink(tmp); /* a leftover of an earlier process with this pid on this host */
  int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0)
    return -1;
  if (fchmod(fd, 0600) != 0 || flock(fd, LOCK_EX | LOCK_NB) != 0 ||
      write_all(fd, record, len) != 0 || fsync(fd) != 0) {
    int e = errno;
    close(fd);
    unlink(tmp);
    errno = e;
    return -1;
  }
  return fd;
}

/* Puts a new flocked file holding record at path: with link(2), which fails with EEXIST
   when path exists, or with rename(2), which replaces it. Returns the descriptor, or -1
   with errno set, *doing saying what failed, and nothing left behind. */
static int publish(const char *path, const char *record, size_t len, int replace,
                   const char **doing) {
  char tmp[PATH_MAX_LEN];
  *doing = "cannot name a temporary file for";
  if (temp_name(tmp, sizeof tmp, path) != 0)
    return -1;
  *doing = "cannot write a temporary file for";
  int fd = locked_temp(tmp, record, len);
  if (fd < 0)
    return -1;
  *doing = replace ? "cannot replace" : "cannot create";
  if ((replace ? rename(tmp, path) : link(tmp, path)) != 0) {
    int e = errno;
    close(fd);
    unlink(tmp);
    errno = e;
    return -1;
  }
  if (!replace)
    unlink(tmp);
  return fd;
}

/* Pushes the record of an open lock file (at most RECORD_MAX bytes); on a read error
   pushes nothing and returns -1 with errno set. */
static int push_record(lua_State *L, int fd) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  off_t at = 0;
  while (at < RECORD_MAX) {
    char *p = luaL_prepbuffer(&b);
    ssize_t n = pread(fd, p, LUAL_BUFFERSIZE, at);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      int e = errno;
      luaL_pushresult(&b); /* leaves the stack as it was */
      lua_pop(L, 1);
      errno = e;
      return -1;
    }
    if (n == 0)
      break;
    luaL_addsize(&b, (size_t)n);
    at += n;
  }
  luaL_pushresult(&b);
  return 0;
}

/* Pushes a tug.lockfile holding fd, remembering path as its user value. */
static void push_lockfile(lua_State *L, int fd, int path_index) {
  lockfile *lf = lua_newuserdatauv(L, sizeof *lf, 1);
  lf->fd = fd;
  luaL_setmetatable(L, LOCKFILE_MT);
  lua_pushvalue(L, path_index);
  lua_setiuservalue(L, -2, 1);
}

static const char *check_path(lua_State *L, int arg) {
  size_t len;
  const char *path = luaL_checklstring(L, arg, &len);
  luaL_argcheck(L, len > 0 && len < PATH_MAX_LEN - 300, arg, "bad path");
  return path;
}

/* tug.sys.lock_create(path, record) -> lockfile, or nil, message, "exists" when the path
   exists, or nil, message, errno. The file appears whole and already flocked (link(2)
   of a private temporary file), owner-only. */
static int lock_create(lua_State *L) {
  const char *path = check_path(L, 1);
  size_t len;
  const char *record = luaL_checklstring(L, 2, &len);
  const char *doing;
  int fd = publish(path, record, len, 0, &doing);
  if (fd < 0 && errno == EEXIST) {
    luaL_pushfail(L);
    lua_pushfstring(L, "%s exists", path);
    lua_pushliteral(L, "exists");
    return 3;
  }
  if (fd < 0)
    return lockfile_fail(L, lua_pushfstring(L, "%s %s", doing, path));
  push_lockfile(L, fd, 1);
  return 1;
}

/* tug.sys.lock_probe(path) -> what the lock file at path says about its holder:
     lockfile, record    nobody holds its flock (the holder is gone): the caller now does,
                         and may take it over (lockfile:replace) or let go (lockfile:close)
     nil, record, "held" its holder is alive
     nil, message, "gone" the file went or was replaced meanwhile: try again
     nil, message, errno  it cannot be opened or read */
static int lock_probe(lua_State *L) {
  const char *path = check_path(L, 1);
  /* read-write: over NFS an exclusive flock is a write lock and needs it */
  int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENOENT) {
      luaL_pushfail(L);
      lua_pushfstring(L, "%s is gone", path);
      lua_pushliteral(L, "gone");
      return 3;
    }
    return lockfile_fail(L, lua_pushfstring(L, "cannot open %s", path));
  }
  if (push_record(L, fd) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return lockfile_fail(L, lua_pushfstring(L, "cannot read %s", path));
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    if (e == EWOULDBLOCK && !same_file(fd, path)) {
      /* taken over meanwhile: name the holder the path names now, if it can be read */
      int now = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
      if (now >= 0 && push_record(L, now) == 0)
        lua_remove(L, -2);
      if (now >= 0)
        close(now);
    }
    close(fd);
    if (e == EWOULDBLOCK) {
      luaL_pushfail(L);
      lua_insert(L, -2);
      lua_pushliteral(L, "held");
      return 3;
    }
    errno = e;
    return lockfile_fail(L, lua_pushfstring(L, "cannot flock %s", path));
  }
  if (!same_file(fd, path)) {
    close(fd);
    luaL_pushfail(L);
    lua_pushfstring(L, "%s was replaced meanwhile", path);
    lua_pushliteral(L, "gone");
    return 3;
  }
  push_lockfile(L, fd, 1);
  lua_insert(L, -2);
  return 2;
}

static lockfile *check_lockfile(lua_State *L) {
  return (lockfile *)luaL_checkudata(L, 1, LOCKFILE_MT);
}

static const char *lockfile_path(lua_State *L) {
  lua_getiuservalue(L, 1, 1);
  const char *path = lua_tostring(L, -1);
  lua_pop(L, 1); /* the user value keeps the string alive */
  return path;
}

/* lockfile:replace(record) -> true, or nil, message, errno: the path now names a new file
   holding record, flocked by this handle; the old one is let go. Atomic for readers and
   contenders alike (rename(2) while the old file's flock is held). */
static int lockfile_replace(lua_State *L) {
  lockfile *lf = check_lockfile(L);
  size_t len;
  const char *record = luaL_checklstring(L, 2, &len);
  luaL_argcheck(L, lf->fd >= 0, 1, "lock file is closed");
  const char *path = lockfile_path(L);
  if (!same_file(lf->fd, path)) {
    errno = ESTALE;
    return lockfile_fail(L, lua_pushfstring(L, "%s was replaced meanwhile", path));
  }
  const char *doing;
  int fd = publish(path, record, len, 1, &doing);
  if (fd < 0)
    return lockfile_fail(L, lua_pushfstring(L, "%s %s", doing, path));
  close(lf->fd);
  lf->fd = fd;
  lua_pushboolean(L, 1);
  return 1;
}

/* lockfile:release() -> true, or nil, message, errno: removes the file if the path still
   names it, then lets go of the flock. Idempotent; also what `<close>` does. */
static int lockfile_release(lua_State *L) {
  lockfile *lf = check_lockfile(L);
  if (lf->fd < 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  const char *path = lockfile_path(L);
  int failed = same_file(lf->fd, path) && unlink(path) != 0 && errno != ENOENT;
  int e = errno;
  close(lf->fd);
  lf->fd = -1;
  if (failed) {
    errno = e;
    return lockfile_fail(L, lua_pushfstring(L, "cannot remove %s", path));
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* lockfile:close(): lets go of the flock and leaves the file. Idempotent; also __gc. */
static int lockfile_close(lua_State *L) {
  lockfile *lf = check_lockfile(L);
  if (lf->fd >= 0)
    close(lf->fd);
  lf->fd = -1;
  return 0;
}

static int lockfile_tostring(lua_State *L) {
  lockfile *lf = check_lockfile(L);
  lua_pushfstring(L, "tug.lockfile %s (%s)", lockfile_path(L), lf->fd >= 0 ? "held" : "closed");
  return 1;
}

static const luaL_Reg lockfile_methods[] = {
    {"replace", lockfile_replace},
    {"release", lockfile_release},
    {"close", lockfile_close},
    {NULL, NULL},
};

static const luaL_Reg lockfile_meta[] = {
    {"__gc", lockfile_close},
    {"__close", lockfile_release},
    {"__tostring", lockfile_tostring},
    {NULL, NULL},
};

static const luaL_Reg lockfile_funcs[] = {
    {"lock_create", lock_create},
    {"lock_probe", lock_probe},
    {NULL, NULL},
};

void host_open_lockfile(lua_State *L) {
  luaL_checktype(L, -1, LUA_TTABLE);
  luaL_setfuncs(L, lockfile_funcs, 0);
  luaL_newmetatable(L, LOCKFILE_MT);
  luaL_setfuncs(L, lockfile_meta, 0);
  luaL_newlib(L, lockfile_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
