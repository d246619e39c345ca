/*
 * faultfs: a passthrough FUSE filesystem (libfuse3 low-level API) that fails chosen requests
 * with a chosen errno and can add a delay to each request, driven over a Unix socket.
 *
 * Modelled on libfuse's example passthrough_ll.c: each inode the kernel knows is held as an
 * O_PATH descriptor of the backing tree, xattrs go through /proc/self/fd paths, and every
 * request is the matching system call on the backing tree. Files are opened for reading
 * with O_NOATIME, so reads through the mount never move the backing tree's atimes.
 *
 *   faultfs -f -o source=DIR,control=SOCKET[,entry_timeout=S][,attr_timeout=S][,direct_io]
 *           [-o allow_other,default_permissions] MOUNTPOINT
 *
 * The control protocol is in README.md beside this file.
 */

#define _GNU_SOURCE
#define FUSE_USE_VERSION 312

#include <fuse_lowlevel.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(fuse_ino_t) >= sizeof(uintptr_t), "fuse_ino_t cannot hold a pointer");

/* --- request types ------------------------------------------------------------------------ */

#define OPS(X) X(LOOKUP) X(FORGET) X(GETATTR) X(SETATTR) X(READLINK) X(MKNOD) X(MKDIR) \
	X(UNLINK) X(RMDIR) X(SYMLINK) X(RENAME) X(LINK) X(OPEN) X(CREATE) X(READ) X(WRITE) \
	X(FLUSH) X(RELEASE) X(FSYNC) X(OPENDIR) X(READDIR) X(RELEASEDIR) X(FSYNCDIR) \
	X(STATFS) X(SETXATTR) X(GETXATTR) X(LISTXATTR) X(REMOVEXATTR) X(LSEEK) X(FALLOCATE) \
	X(COPY_FILE_RANGE)

#define AS_ENUM(name) OP_##name,
#define AS_NAME(name) #name,
enum op { OPS(AS_ENUM) OP_COUNT };
static const char *const op_names[] = { OPS(AS_NAME) };

/* Data requests; every other type is "metadata" for `delay meta USEC`. */
static bool is_data_op(int op)
{
	return op == OP_READ || op == OP_WRITE || op == OP_COPY_FILE_RANGE;
}

/* --- fault rules and counters ------------------------------------------------------------- */

struct rule {
	struct rule *next;
	int op;
	int err;
	char *path;        /* fnmatch pattern on the path relative to the mount root, or NULL */
	long long offset;  /* READ/WRITE must cover this byte; -1: any */
	long long from;    /* READ/WRITE must reach this byte or beyond; -1: any */
	long long nth;     /* the first matching call that fails (1-based) */
	long long count;   /* how many times it fails; -1: forever */
	long long seen;    /* matching calls so far */
	long long fired;   /* failures injected so far */
};

static pthread_mutex_t rules_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct rule *rules;
static unsigned long long counts[OP_COUNT];
static unsigned long long injected[OP_COUNT];
static long delays_us[OP_COUNT];

/* --- inodes ------------------------------------------------------------------------------- */

struct fs_inode {
	struct fs_inode *next;  /* hash chain, under table_mutex */
	int fd;                 /* O_PATH descriptor of the backing entry */
	ino_t ino;
	dev_t dev;
	uint64_t refcount;      /* kernel lookups; under table_mutex */
};

#define BUCKETS (1u << 18)

struct fs_data {
	const char *source;
	char *root_path;        /* realpath of source: prefix stripped from /proc/self/fd links */
	const char *control;
	double entry_timeout;
	double attr_timeout;
	int direct_io;
	struct fs_inode root;
};

static struct fs_data fs = { .entry_timeout = 0.0, .attr_timeout = 0.0 };
static pthread_mutex_t table_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct fs_inode *table[BUCKETS];

static size_t bucket(dev_t dev, ino_t ino)
{
	return (size_t) ((ino * 0x9E3779B97F4A7C15ull) ^ dev) & (BUCKETS - 1);
}

static struct fs_inode *inode_of(fuse_ino_t ino)
{
	return ino == FUSE_ROOT_ID ? &fs.root : (struct fs_inode *) (uintptr_t) ino;
}

static int fd_of(fuse_ino_t ino)
{
	return inode_of(ino)->fd;
}

static void proc_path(char *buf, size_t size, int fd)
{
	snprintf(buf, size, "/proc/self/fd/%d", fd);
}

/* The entry's path relative to the mount root ("" for the root), from the kernel's own idea
 * of where the O_PATH descriptor is; a removed entry's ends in " (deleted)". */
static void inode_rel_path(fuse_ino_t ino, char *out, size_t size)
{
	char link[64];
	char target[PATH_MAX];
	size_t root_len = strlen(fs.root_path);
	ssize_t n;

	out[0] = '\0';
	if (ino == FUSE_ROOT_ID)
		return;
	proc_path(link, sizeof(link), fd_of(ino));
	n = readlink(link, target, sizeof(target) - 1);
	if (n < 0)
		return;
	target[n] = '\0';
	if (strncmp(target, fs.root_path, root_len) == 0 && target[root_len] == '/')
		snprintf(out, size, "%s", target + root_len + 1);
	else if (strcmp(target, fs.root_path) != 0)
		snprintf(out, size, "%s", target);
}

static void rel_path(fuse_ino_t ino, const char *name, char *out, size_t size)
{
	char parent[PATH_MAX];

	if (!name) {
		inode_rel_path(ino, out, size);
		return;
	}
	inode_rel_path(ino, parent, sizeof(parent));
	if (parent[0])
		snprintf(out, size, "%s/%s", parent, name);
	else
		snprintf(out, size, "%s", name);
}

/* One side of a request a path rule can match: an inode, or a name in a directory inode. */
struct side {
	fuse_ino_t ino;
	const char *name;
};

static bool path_matches(const struct rule *r, const struct side *sides, int nsides)
{
	char path[PATH_MAX];

	for (int i = 0; i < nsides; i++) {
		if (!sides[i].ino)
			continue;
		rel_path(sides[i].ino, sides[i].name, path, sizeof(path));
		if (fnmatch(r->path, path, 0) == 0)
			return true;
	}
	return false;
}

static bool range_matches(const struct rule *r, long long off, long long len)
{
	if (r->offset >= 0 && (off < 0 || r->offset < off || r->offset >= off + len))
		return false;
	if (r->from >= 0 && (off < 0 || off + len <= r->from))
		return false;
	return true;
}

/* Count the request, sleep its delay, and return the errno a rule injects (0: none). */
static int enter(int op, const struct side *sides, int nsides, long long off, long long len)
{
	long delay = __atomic_load_n(&delays_us[op], __ATOMIC_RELAXED);
	int err = 0;

	__atomic_fetch_add(&counts[op], 1, __ATOMIC_RELAXED);
	if (delay > 0) {
		struct timespec ts = { delay / 1000000, (delay % 1000000) * 1000 };
		while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
			;
	}
	if (!__atomic_load_n(&rules, __ATOMIC_ACQUIRE))
		return 0;
	pthread_mutex_lock(&rules_mutex);
	for (struct rule *r = rules; r; r = r->next) {
		if (r->op != op || !range_matches(r, off, len))
			continue;
		if (r->path && !path_matches(r, sides, nsides))
			continue;
		r->seen++;
		if (r->seen >= r->nth && (r->count < 0 || r->fired < r->count)) {
			r->fired++;
			err = r->err;
			break;
		}
	}
	pthread_mutex_unlock(&rules_mutex);
	if (err)
		__atomic_fetch_add(&injected[op], 1, __ATOMIC_RELAXED);
	return err;
}

#define ENTER_INODE(req, op, ino) do { \
		struct side s_[1] = { { (ino), NULL } }; \
		int e_ = enter((op), s_, 1, -1, 0); \
		if (e_) { fuse_reply_err((req), e_); return; } \
	} while (0)

#define ENTER_NAME(req, op, parent, name) do { \
		struct side s_[1] = { { (parent), (name) } }; \
		int e_ = enter((op), s_, 1, -1, 0); \
		if (e_) { fuse_reply_err((req), e_); return; } \
	} while (0)

/* --- inode table -------------------------------------------------------------------------- */

/* Find the inode for st, taking a reference, or adopt fd as a new one. Closes fd if found. */
static struct fs_inode *adopt(int fd, const struct stat *st)
{
	size_t b = bucket(st->st_dev, st->st_ino);
	struct fs_inode *inode;

	pthread_mutex_lock(&table_mutex);
	for (inode = table[b]; inode; inode = inode->next)
		if (inode->ino == st->st_ino && inode->dev == st->st_dev)
			break;
	if (inode) {
		inode->refcount++;
		pthread_mutex_unlock(&table_mutex);
		close(fd);
		return inode;
	}
	inode = calloc(1, sizeof(*inode));
	if (inode) {
		inode->fd = fd;
		inode->ino = st->st_ino;
		inode->dev = st->st_dev;
		inode->refcount = 1;
		inode->next = table[b];
		table[b] = inode;
	}
	pthread_mutex_unlock(&table_mutex);
	return inode;
}

static void unref(struct fs_inode *inode, uint64_t n)
{
	struct fs_inode **p;

	if (inode == &fs.root)
		return;
	pthread_mutex_lock(&table_mutex);
	inode->refcount -= n;
	if (inode->refcount) {
		pthread_mutex_unlock(&table_mutex);
		return;
	}
	for (p = &table[bucket(inode->dev, inode->ino)]; *p != inode; p = &(*p)->next)
		;
	*p = inode->next;
	pthread_mutex_unlock(&table_mutex);
	close(inode->fd);
	free(inode);
}

/* Look up name in parent and fill e; returns 0 or an errno. */
static int do_lookup(fuse_ino_t parent, const char *name, struct fuse_entry_param *e)
{
	struct fs_inode *inode;
	int fd, err;

	memset(e, 0, sizeof(*e));
	e->attr_timeout = fs.attr_timeout;
	e->entry_timeout = fs.entry_timeout;
	fd = openat(fd_of(parent), name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd == -1)
		return errno;
	if (fstatat(fd, "", &e->attr, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == -1) {
		err = errno;
		close(fd);
		return err;
	}
	inode = adopt(fd, &e->attr);
	if (!inode) {
		close(fd);
		return ENOMEM;
	}
	e->ino = (uintptr_t) inode;
	return 0;
}

static void reply_entry(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	int err = do_lookup(parent, name, &e);

	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_entry(req, &e);
}

/* Entries are created as the caller (fsuid/fsgid are per thread), so a non-root caller's new
 * files are its own, as on a local filesystem. */
static void as_caller(fuse_req_t req)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);

	setfsgid(ctx->gid);
	setfsuid(ctx->uid);
}

static void as_daemon(void)
{
	setfsuid(0);
	setfsgid(0);
}

/* --- requests ----------------------------------------------------------------------------- */

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	ENTER_NAME(req, OP_LOOKUP, parent, name);
	reply_entry(req, parent, name);
}

static void fs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	enter(OP_FORGET, NULL, 0, -1, 0);
	unref(inode_of(ino), nlookup);
	fuse_reply_none(req);
}

static void fs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	enter(OP_FORGET, NULL, 0, -1, 0);
	for (size_t i = 0; i < count; i++)
		unref(inode_of(forgets[i].ino), forgets[i].nlookup);
	fuse_reply_none(req);
}

static void reply_attr(fuse_req_t req, fuse_ino_t ino)
{
	struct stat st;

	if (fstatat(fd_of(ino), "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == -1)
		fuse_reply_err(req, errno);
	else
		fuse_reply_attr(req, &st, fs.attr_timeout);
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void) fi;
	ENTER_INODE(req, OP_GETATTR, ino);
	reply_attr(req, ino);
}

static int set_times(int ifd, const struct stat *attr, int valid, struct fuse_file_info *fi)
{
	struct timespec tv[2] = { { 0, UTIME_OMIT }, { 0, UTIME_OMIT } };

	if (valid & FUSE_SET_ATTR_ATIME_NOW)
		tv[0].tv_nsec = UTIME_NOW;
	else if (valid & FUSE_SET_ATTR_ATIME)
		tv[0] = attr->st_atim;
	if (valid & FUSE_SET_ATTR_MTIME_NOW)
		tv[1].tv_nsec = UTIME_NOW;
	else if (valid & FUSE_SET_ATTR_MTIME)
		tv[1] = attr->st_mtim;
	if (fi)
		return futimens(fi->fh, tv);
	return utimensat(ifd, "", tv, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
}

static void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int valid,
		       struct fuse_file_info *fi)
{
	char path[64];
	int ifd = fd_of(ino);
	int res = 0;

	ENTER_INODE(req, OP_SETATTR, ino);
	proc_path(path, sizeof(path), ifd);
	if (valid & FUSE_SET_ATTR_MODE)
		res = fi ? fchmod(fi->fh, attr->st_mode) : chmod(path, attr->st_mode);
	if (res == 0 && (valid & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))) {
		uid_t uid = (valid & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t) -1;
		gid_t gid = (valid & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t) -1;
		res = fchownat(ifd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
	}
	if (res == 0 && (valid & FUSE_SET_ATTR_SIZE))
		res = fi ? ftruncate(fi->fh, attr->st_size) : truncate(path, attr->st_size);
	if (res == 0 && (valid & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)))
		res = set_times(ifd, attr, valid, fi);
	if (res == -1)
		fuse_reply_err(req, errno);
	else
		reply_attr(req, ino);
}

static void fs_readlink(fuse_req_t req, fuse_ino_t ino)
{
	char buf[PATH_MAX + 1];
	ssize_t n;

	ENTER_INODE(req, OP_READLINK, ino);
	n = readlinkat(fd_of(ino), "", buf, sizeof(buf));
	if (n == -1)
		return (void) fuse_reply_err(req, errno);
	if (n == sizeof(buf))
		return (void) fuse_reply_err(req, ENAMETOOLONG);
	buf[n] = '\0';
	fuse_reply_readlink(req, buf);
}

static void fs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     dev_t rdev)
{
	int res;

	ENTER_NAME(req, OP_MKNOD, parent, name);
	as_caller(req);
	res = mknodat(fd_of(parent), name, mode, rdev);
	as_daemon();
	if (res == -1)
		return (void) fuse_reply_err(req, errno);
	reply_entry(req, parent, name);
}

static void fs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	int res;

	ENTER_NAME(req, OP_MKDIR, parent, name);
	as_caller(req);
	res = mkdirat(fd_of(parent), name, mode);
	as_daemon();
	if (res == -1)
		return (void) fuse_reply_err(req, errno);
	reply_entry(req, parent, name);
}

static void fs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	int res;

	ENTER_NAME(req, OP_SYMLINK, parent, name);
	as_caller(req);
	res = symlinkat(link, fd_of(parent), name);
	as_daemon();
	if (res == -1)
		return (void) fuse_reply_err(req, errno);
	reply_entry(req, parent, name);
}

static void fs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	ENTER_NAME(req, OP_UNLINK, parent, name);
	fuse_reply_err(req, unlinkat(fd_of(parent), name, 0) == -1 ? errno : 0);
}

static void fs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	ENTER_NAME(req, OP_RMDIR, parent, name);
	fuse_reply_err(req, unlinkat(fd_of(parent), name, AT_REMOVEDIR) == -1 ? errno : 0);
}

static void fs_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		      fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	struct side sides[2] = { { parent, name }, { newparent, newname } };
	int err = enter(OP_RENAME, sides, 2, -1, 0);
	int res;

	if (err)
		return (void) fuse_reply_err(req, err);
	res = renameat2(fd_of(parent), name, fd_of(newparent), newname, flags);
	fuse_reply_err(req, res == -1 ? errno : 0);
}

static void fs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	struct side sides[2] = { { ino, NULL }, { newparent, newname } };
	int err = enter(OP_LINK, sides, 2, -1, 0);

	if (err)
		return (void) fuse_reply_err(req, err);
	if (linkat(fd_of(ino), "", fd_of(newparent), newname, AT_EMPTY_PATH) == -1)
		return (void) fuse_reply_err(req, errno);
	reply_entry(req, newparent, newname);
}

/* Open flags for the backing file: the caller's, never following a symlink the kernel
 * already resolved, and O_NOATIME whenever the file can be read. */
static int backing_flags(int flags)
{
	flags &= ~O_NOFOLLOW;
	if ((flags & O_ACCMODE) != O_WRONLY)
		flags |= O_NOATIME;
	return flags | O_CLOEXEC;
}

static int open_noatime(int dirfd, const char *name, int flags, mode_t mode)
{
	int fd = openat(dirfd, name, flags, mode);

	if (fd == -1 && errno == EPERM && (flags & O_NOATIME))
		fd = openat(dirfd, name, flags & ~O_NOATIME, mode);
	return fd;
}

static void set_open_flags(struct fuse_file_info *fi)
{
	fi->direct_io = fs.direct_io;
	fi->keep_cache = 0;
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	char path[64];
	int fd;

	ENTER_INODE(req, OP_OPEN, ino);
	proc_path(path, sizeof(path), fd_of(ino));
	fd = open_noatime(AT_FDCWD, path, backing_flags(fi->flags), 0);
	if (fd == -1)
		return (void) fuse_reply_err(req, errno);
	fi->fh = fd;
	set_open_flags(fi);
	if (fuse_reply_open(req, fi) != 0)
		close(fd);
}

static void fs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	struct fuse_entry_param e;
	int fd, err;

	ENTER_NAME(req, OP_CREATE, parent, name);
	as_caller(req);
	fd = open_noatime(fd_of(parent), name, backing_flags(fi->flags | O_CREAT), mode);
	err = errno;
	as_daemon();
	if (fd == -1)
		return (void) fuse_reply_err(req, err);
	err = do_lookup(parent, name, &e);
	if (err) {
		close(fd);
		return (void) fuse_reply_err(req, err);
	}
	fi->fh = fd;
	set_open_flags(fi);
	if (fuse_reply_create(req, &e, fi) != 0) {
		close(fd);
		unref(inode_of(e.ino), 1);
	}
}

static int enter_range(int op, fuse_ino_t ino, off_t off, size_t len)
{
	struct side sides[1] = { { ino, NULL } };

	return enter(op, sides, 1, off, (long long) len);
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
	int err = enter_range(OP_READ, ino, off, size);

	if (err)
		return (void) fuse_reply_err(req, err);
	buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	buf.buf[0].fd = fi->fh;
	buf.buf[0].pos = off;
	fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

static void fs_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in_buf,
			 off_t off, struct fuse_file_info *fi)
{
	struct fuse_bufvec out = FUSE_BUFVEC_INIT(fuse_buf_size(in_buf));
	int err = enter_range(OP_WRITE, ino, off, fuse_buf_size(in_buf));
	ssize_t res;

	if (err)
		return (void) fuse_reply_err(req, err);
	out.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	out.buf[0].fd = fi->fh;
	out.buf[0].pos = off;
	res = fuse_buf_copy(&out, in_buf, 0);
	if (res < 0)
		fuse_reply_err(req, (int) -res);
	else
		fuse_reply_write(req, (size_t) res);
}

static void fs_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
			       struct fuse_file_info *fi_in, fuse_ino_t ino_out, off_t off_out,
			       struct fuse_file_info *fi_out, size_t len, int flags)
{
	struct side sides[2] = { { ino_in, NULL }, { ino_out, NULL } };
	int err = enter(OP_COPY_FILE_RANGE, sides, 2, off_out, (long long) len);
	ssize_t res;

	if (err)
		return (void) fuse_reply_err(req, err);
	res = copy_file_range(fi_in->fh, &off_in, fi_out->fh, &off_out, len, flags);
	if (res < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_write(req, (size_t) res);
}

static void fs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	ENTER_INODE(req, OP_FLUSH, ino);
	fuse_reply_err(req, close(dup(fi->fh)) == -1 ? errno : 0);
}

static void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct side sides[1] = { { ino, NULL } };
	int err = enter(OP_RELEASE, sides, 1, -1, 0);

	close(fi->fh);  /* the kernel has let go of the file, whatever we answer */
	fuse_reply_err(req, err);
}

static void fs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	ENTER_INODE(req, OP_FSYNC, ino);
	fuse_reply_err(req, (datasync ? fdatasync(fi->fh) : fsync(fi->fh)) == -1 ? errno : 0);
}

struct fs_dir {
	DIR *dp;
	struct dirent *entry;  /* read but not yet handed to the kernel */
	off_t offset;
};

static struct fs_dir *dir_of(struct fuse_file_info *fi)
{
	return (struct fs_dir *) (uintptr_t) fi->fh;
}

static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs_dir *d;
	int fd, err;

	ENTER_INODE(req, OP_OPENDIR, ino);
	d = calloc(1, sizeof(*d));
	if (!d)
		return (void) fuse_reply_err(req, ENOMEM);
	fd = open_noatime(fd_of(ino), ".", O_RDONLY | O_DIRECTORY | O_NOATIME | O_CLOEXEC, 0);
	if (fd == -1 || !(d->dp = fdopendir(fd))) {
		err = errno;
		if (fd != -1)
			close(fd);
		free(d);
		return (void) fuse_reply_err(req, err);
	}
	fi->fh = (uintptr_t) d;
	if (fuse_reply_open(req, fi) != 0) {
		closedir(d->dp);
		free(d);
	}
}

static bool is_dot(const char *name)
{
	return name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'));
}

/* Add d's current entry to buf; returns its size (more than rem: it did not fit). */
static size_t add_entry(fuse_req_t req, fuse_ino_t ino, struct fs_dir *d, char *p, size_t rem,
			int plus, int *err)
{
	const char *name = d->entry->d_name;
	off_t next = d->entry->d_off;
	struct fuse_entry_param e;
	size_t size;

	if (!plus) {
		struct stat st = { .st_ino = d->entry->d_ino, .st_mode = d->entry->d_type << 12 };
		return fuse_add_direntry(req, p, rem, name, &st, next);
	}
	if (is_dot(name)) {
		memset(&e, 0, sizeof(e));
		e.attr.st_ino = d->entry->d_ino;
		e.attr.st_mode = d->entry->d_type << 12;
	} else if ((*err = do_lookup(ino, name, &e)) != 0) {
		return 0;
	}
	size = fuse_add_direntry_plus(req, p, rem, name, &e, next);
	if (size > rem && e.ino)
		unref(inode_of(e.ino), 1);
	return size;
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
		       struct fuse_file_info *fi, int plus)
{
	struct fs_dir *d = dir_of(fi);
	char *buf = calloc(1, size);
	size_t rem = size;
	int err = 0;

	if (!buf)
		return (void) fuse_reply_err(req, ENOMEM);
	if (offset != d->offset) {
		seekdir(d->dp, offset);
		d->entry = NULL;
		d->offset = offset;
	}
	for (;;) {
		size_t used;

		if (!d->entry) {
			errno = 0;
			d->entry = readdir(d->dp);
			if (!d->entry) {
				err = errno;
				break;
			}
		}
		used = add_entry(req, ino, d, buf + size - rem, rem, plus, &err);
		if (err || used > rem)
			break;
		rem -= used;
		d->offset = d->entry->d_off;
		d->entry = NULL;
	}
	/* An error is only told when nothing was added: the kernel has counted the lookups of
	 * the entries already in the buffer. */
	if (err && rem == size)
		fuse_reply_err(req, err);
	else
		fuse_reply_buf(req, buf, size - rem);
	free(buf);
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
		       struct fuse_file_info *fi)
{
	ENTER_INODE(req, OP_READDIR, ino);
	do_readdir(req, ino, size, offset, fi, 0);
}

static void fs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
			   struct fuse_file_info *fi)
{
	ENTER_INODE(req, OP_READDIR, ino);
	do_readdir(req, ino, size, offset, fi, 1);
}

static void fs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct side sides[1] = { { ino, NULL } };
	int err = enter(OP_RELEASEDIR, sides, 1, -1, 0);
	struct fs_dir *d = dir_of(fi);

	closedir(d->dp);
	free(d);
	fuse_reply_err(req, err);
}

static void fs_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync,
			struct fuse_file_info *fi)
{
	int fd = dirfd(dir_of(fi)->dp);

	ENTER_INODE(req, OP_FSYNCDIR, ino);
	fuse_reply_err(req, (datasync ? fdatasync(fd) : fsync(fd)) == -1 ? errno : 0);
}

static void fs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs st;

	ENTER_INODE(req, OP_STATFS, ino);
	if (fstatvfs(fd_of(ino), &st) == -1)
		fuse_reply_err(req, errno);
	else
		fuse_reply_statfs(req, &st);
}

static void fs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
			 struct fuse_file_info *fi)
{
	int err = enter_range(OP_FALLOCATE, ino, off, (size_t) len);

	if (err)
		return (void) fuse_reply_err(req, err);
	fuse_reply_err(req, fallocate(fi->fh, mode, off, len) == -1 ? errno : 0);
}

static void fs_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		     struct fuse_file_info *fi)
{
	off_t res;

	ENTER_INODE(req, OP_LSEEK, ino);
	res = lseek(fi->fh, off, whence);
	if (res == -1)
		fuse_reply_err(req, errno);
	else
		fuse_reply_lseek(req, res);
}

/* Reply to a getxattr/listxattr-style call: the size when asked for it, else the value. */
static void reply_xattr(fuse_req_t req, size_t size, ssize_t (*call)(const char *, const char *,
			char *, size_t), fuse_ino_t ino, const char *name)
{
	char path[64];
	char *value = NULL;
	ssize_t n;

	proc_path(path, sizeof(path), fd_of(ino));
	if (size && !(value = malloc(size)))
		return (void) fuse_reply_err(req, ENOMEM);
	n = call(path, name, value, size);
	if (n == -1)
		fuse_reply_err(req, errno);
	else if (!size)
		fuse_reply_xattr(req, (size_t) n);
	else
		fuse_reply_buf(req, value, (size_t) n);
	free(value);
}

static ssize_t get_call(const char *path, const char *name, char *value, size_t size)
{
	return getxattr(path, name, value, size);
}

static ssize_t list_call(const char *path, const char *name, char *value, size_t size)
{
	(void) name;
	return listxattr(path, value, size);
}

static void fs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	ENTER_INODE(req, OP_GETXATTR, ino);
	reply_xattr(req, size, get_call, ino, name);
}

static void fs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	ENTER_INODE(req, OP_LISTXATTR, ino);
	reply_xattr(req, size, list_call, ino, NULL);
}

static void fs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			size_t size, int flags)
{
	char path[64];

	ENTER_INODE(req, OP_SETXATTR, ino);
	proc_path(path, sizeof(path), fd_of(ino));
	fuse_reply_err(req, setxattr(path, name, value, size, flags) == -1 ? errno : 0);
}

static void fs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	char path[64];

	ENTER_INODE(req, OP_REMOVEXATTR, ino);
	proc_path(path, sizeof(path), fd_of(ino));
	fuse_reply_err(req, removexattr(path, name) == -1 ? errno : 0);
}

static const struct fuse_lowlevel_ops fs_ops = {
	.lookup = fs_lookup,
	.forget = fs_forget,
	.forget_multi = fs_forget_multi,
	.getattr = fs_getattr,
	.setattr = fs_setattr,
	.readlink = fs_readlink,
	.mknod = fs_mknod,
	.mkdir = fs_mkdir,
	.symlink = fs_symlink,
	.unlink = fs_unlink,
	.rmdir = fs_rmdir,
	.rename = fs_rename,
	.link = fs_link,
	.open = fs_open,
	.create = fs_create,
	.read = fs_read,
	.write_buf = fs_write_buf,
	.copy_file_range = fs_copy_file_range,
	.flush = fs_flush,
	.release = fs_release,
	.fsync = fs_fsync,
	.opendir = fs_opendir,
	.readdir = fs_readdir,
	.readdirplus = fs_readdirplus,
	.releasedir = fs_releasedir,
	.fsyncdir = fs_fsyncdir,
	.statfs = fs_statfs,
	.fallocate = fs_fallocate,
	.lseek = fs_lseek,
	.getxattr = fs_getxattr,
	.listxattr = fs_listxattr,
	.setxattr = fs_setxattr,
	.removexattr = fs_removexattr,
};

/* --- control socket ----------------------------------------------------------------------- */

#define ERRNOS(X) X(EPERM) X(ENOENT) X(EIO) X(ENXIO) X(E2BIG) X(EBADF) X(EAGAIN) X(ENOMEM) \
	X(EACCES) X(EFAULT) X(EBUSY) X(EEXIST) X(EXDEV) X(ENODEV) X(ENOTDIR) X(EISDIR) \
	X(EINVAL) X(ENFILE) X(EMFILE) X(ETXTBSY) X(EFBIG) X(ENOSPC) X(ESPIPE) X(EROFS) \
	X(EMLINK) X(ERANGE) X(ENAMETOOLONG) X(ENOSYS) X(ENOTEMPTY) X(ELOOP) X(EWOULDBLOCK) \
	X(ENODATA) X(EOVERFLOW) X(EOPNOTSUPP) X(ENOTSUP) X(ETIMEDOUT) X(ESTALE) X(EDQUOT) \
	X(EINTR) X(ENOTCONN) X(ECONNRESET) X(EREMOTEIO) X(ENOLINK) X(EBADMSG)

#define AS_ERRNO_ENTRY(name) { #name, name },
static const struct { const char *name; int value; } errno_names[] = { ERRNOS(AS_ERRNO_ENTRY) };

static int parse_errno(const char *text)
{
	char *end;
	long n;

	for (size_t i = 0; i < sizeof(errno_names) / sizeof(errno_names[0]); i++)
		if (strcmp(text, errno_names[i].name) == 0)
			return errno_names[i].value;
	n = strtol(text, &end, 10);
	return (*text && !*end && n > 0 && n < 4096) ? (int) n : -1;
}

static int parse_op(const char *text)
{
	for (int i = 0; i < OP_COUNT; i++)
		if (strcasecmp(text, op_names[i]) == 0)
			return i;
	return -1;
}

static bool parse_number(const char *text, long long min, long long *out)
{
	char *end;
	long long n = strtoll(text, &end, 10);

	if (!*text || *end || n < min)
		return false;
	*out = n;
	return true;
}

/* "key=value" options of a fail command; returns NULL or what is wrong. */
static const char *parse_rule_option(struct rule *r, char *word)
{
	char *eq = strchr(word, '=');

	if (!eq)
		return "expected key=value";
	*eq = '\0';
	if (strcmp(word, "path") == 0)
		return (r->path = strdup(eq + 1)) ? NULL : "out of memory";
	if (strcmp(word, "offset") == 0)
		return parse_number(eq + 1, 0, &r->offset) ? NULL : "bad offset";
	if (strcmp(word, "from") == 0)
		return parse_number(eq + 1, 0, &r->from) ? NULL : "bad from";
	if (strcmp(word, "nth") == 0)
		return parse_number(eq + 1, 1, &r->nth) ? NULL : "bad nth";
	if (strcmp(word, "count") == 0)
		return parse_number(eq + 1, 1, &r->count) ? NULL : "bad count";
	return "unknown option";
}

static void free_rules(struct rule *r)
{
	while (r) {
		struct rule *next = r->next;
		free(r->path);
		free(r);
		r = next;
	}
}

/* Words are separated by single spaces; a path with spaces is written with \x20-style
 * escapes: "\\" and "\xHH" are decoded in every word, so any byte string can be named. */
static void unescape(char *word)
{
	char *out = word;

	for (char *in = word; *in; in++) {
		if (in[0] == '\\' && in[1] == 'x' && in[2] && in[3]) {
			char hex[3] = { in[2], in[3], '\0' };
			*out++ = (char) strtol(hex, NULL, 16);
			in += 3;
		} else if (in[0] == '\\' && in[1] == '\\') {
			*out++ = '\\';
			in++;
		} else {
			*out++ = *in;
		}
	}
	*out = '\0';
}

static const char *cmd_fail(char **words, int n)
{
	struct rule *r;
	const char *err = NULL;

	if (n < 3)
		return "usage: fail OP ERRNO [path=P] [offset=N] [from=N] [nth=N] [count=N]";
	r = calloc(1, sizeof(*r));
	if (!r)
		return "out of memory";
	*r = (struct rule) { .op = parse_op(words[1]), .err = parse_errno(words[2]),
			     .offset = -1, .from = -1, .nth = 1, .count = -1 };
	if (r->op < 0)
		err = "unknown request type";
	else if (r->err < 0)
		err = "unknown errno";
	for (int i = 3; i < n && !err; i++)
		err = parse_rule_option(r, words[i]);
	if (err) {
		free_rules(r);
		return err;
	}
	pthread_mutex_lock(&rules_mutex);
	{
		struct rule **tail = &rules;
		while (*tail)
			tail = &(*tail)->next;
		*tail = r;  /* rules are tried in the order given */
	}
	pthread_mutex_unlock(&rules_mutex);
	return NULL;
}

static const char *cmd_delay(char **words, int n)
{
	long long usec;
	int op;

	if (n != 3 || !parse_number(words[2], 0, &usec))
		return "usage: delay OP|*|meta USEC";
	for (op = 0; op < OP_COUNT; op++) {
		bool all = strcmp(words[1], "*") == 0;
		bool meta = strcasecmp(words[1], "meta") == 0 && !is_data_op(op);
		if (all || meta || strcasecmp(words[1], op_names[op]) == 0)
			__atomic_store_n(&delays_us[op], (long) usec, __ATOMIC_RELAXED);
	}
	if (strcmp(words[1], "*") && strcasecmp(words[1], "meta") && parse_op(words[1]) < 0)
		return "unknown request type";
	return NULL;
}

static void write_counters(FILE *out)
{
	unsigned long long total = 0;

	fputc('{', out);
	for (int op = 0; op < OP_COUNT; op++)
		fprintf(out, "%s\"%s\": %llu", op ? ", " : "", op_names[op],
			__atomic_load_n(&counts[op], __ATOMIC_RELAXED));
	for (int op = 0; op < OP_COUNT; op++) {
		unsigned long long n = __atomic_load_n(&injected[op], __ATOMIC_RELAXED);
		total += n;
		if (n)
			fprintf(out, ", \"injected.%s\": %llu", op_names[op], n);
	}
	fprintf(out, ", \"injected\": %llu}\n", total);
}

static void handle_line(char *line, FILE *out)
{
	char *words[16];
	int n = 0;
	const char *err = NULL;
	char *save = NULL;

	for (char *w = strtok_r(line, " \t\r\n", &save); w && n < 16;
	     w = strtok_r(NULL, " \t\r\n", &save)) {
		unescape(w);
		words[n++] = w;
	}
	if (n == 0)
		err = "empty command";
	else if (strcmp(words[0], "fail") == 0)
		err = cmd_fail(words, n);
	else if (strcmp(words[0], "delay") == 0)
		err = cmd_delay(words, n);
	else if (strcmp(words[0], "counters") == 0)
		return write_counters(out);
	else if (strcmp(words[0], "reset") == 0) {
		for (int op = 0; op < OP_COUNT; op++) {
			__atomic_store_n(&counts[op], 0, __ATOMIC_RELAXED);
			__atomic_store_n(&injected[op], 0, __ATOMIC_RELAXED);
		}
	} else if (strcmp(words[0], "clear") == 0) {
		pthread_mutex_lock(&rules_mutex);
		free_rules(rules);
		rules = NULL;
		pthread_mutex_unlock(&rules_mutex);
	} else {
		err = "unknown command";
	}
	if (err)
		fprintf(out, "error %s\n", err);
	else
		fputs("ok\n", out);
}

static void *serve_client(void *arg)
{
	int fd = (int) (intptr_t) arg;
	FILE *in = fdopen(fd, "r");
	FILE *out = fdopen(dup(fd), "w");
	char line[8192];

	if (in && out) {
		setvbuf(out, NULL, _IOLBF, 0);
		while (fgets(line, sizeof(line), in)) {
			handle_line(line, out);
			fflush(out);
		}
	}
	if (in)
		fclose(in);
	if (out)
		fclose(out);
	return NULL;
}

static void *serve_control(void *arg)
{
	int sock = (int) (intptr_t) arg;

	for (;;) {
		pthread_t thread;
		int fd = accept4(sock, NULL, NULL, SOCK_CLOEXEC);

		if (fd == -1) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return NULL;
		}
		if (pthread_create(&thread, NULL, serve_client, (void *) (intptr_t) fd) != 0)
			close(fd);
		else
			pthread_detach(thread);
	}
}

static int start_control(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	pthread_t thread;
	int sock;

	if (strlen(path) >= sizeof(addr.sun_path)) {
		fprintf(stderr, "faultfs: control socket path too long: %s\n", path);
		return -1;
	}
	strcpy(addr.sun_path, path);
	unlink(path);
	sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock == -1 || bind(sock, (struct sockaddr *) &addr, sizeof(addr)) == -1 ||
	    listen(sock, 16) == -1) {
		perror("faultfs: control socket");
		return -1;
	}
	chmod(path, 0600);
	if (pthread_create(&thread, NULL, serve_control, (void *) (intptr_t) sock) != 0) {
		fprintf(stderr, "faultfs: cannot start the control thread\n");
		return -1;
	}
	pthread_detach(thread);
	return 0;
}

/* --- main --------------------------------------------------------------------------------- */

static const struct fuse_opt fs_opts[] = {
	{ "source=%s", offsetof(struct fs_data, source), 0 },
	{ "control=%s", offsetof(struct fs_data, control), 0 },
	{ "entry_timeout=%lf", offsetof(struct fs_data, entry_timeout), 0 },
	{ "attr_timeout=%lf", offsetof(struct fs_data, attr_timeout), 0 },
	{ "direct_io", offsetof(struct fs_data, direct_io), 1 },
	FUSE_OPT_END
};

static int usage(const char *argv0)
{
	fprintf(stderr, "usage: %s -f -o source=DIR,control=SOCKET[,entry_timeout=S]"
		"[,attr_timeout=S][,direct_io] [-o FUSE options] MOUNTPOINT\n", argv0);
	return 2;
}

static int open_root(void)
{
	struct stat st;

	fs.root_path = realpath(fs.source, NULL);
	if (!fs.root_path || stat(fs.root_path, &st) == -1 || !S_ISDIR(st.st_mode)) {
		fprintf(stderr, "faultfs: source is not a directory: %s\n", fs.source);
		return -1;
	}
	fs.root.fd = open(fs.root_path, O_PATH | O_CLOEXEC);
	fs.root.refcount = 2;
	if (fs.root.fd == -1) {
		perror("faultfs: open source");
		return -1;
	}
	return 0;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts opts;
	struct fuse_loop_config *config;
	struct fuse_session *se;
	int ret = 1;

	umask(0);  /* the kernel already applied the caller's umask */
	if (fuse_parse_cmdline(&args, &opts) != 0)
		return 2;
	if (opts.show_help || !opts.mountpoint)
		return usage(argv[0]);
	if (fuse_opt_parse(&args, &fs, fs_opts, NULL) == -1 || !fs.source || !fs.control ||
	    fs.entry_timeout < 0 || fs.attr_timeout < 0)
		return usage(argv[0]);
	if (open_root() != 0 || start_control(fs.control) != 0)
		return 1;

	se = fuse_session_new(&args, &fs_ops, sizeof(fs_ops), &fs);
	if (!se)
		goto out;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_session;
	if (fuse_session_mount(se, opts.mountpoint) != 0)
		goto out_signals;
	fuse_daemonize(opts.foreground);
	config = fuse_loop_cfg_create();
	fuse_loop_cfg_set_max_threads(config, 64);
	fuse_loop_cfg_set_idle_threads(config, 16);
	ret = fuse_session_loop_mt(se, config) != 0;
	fuse_loop_cfg_destroy(config);
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out:
	unlink(fs.control);
	free(opts.mountpoint);
	fuse_opt_free_args(&args);
	return ret;
}
