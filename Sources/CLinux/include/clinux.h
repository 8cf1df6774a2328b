#ifndef KVSCRUBD_CLINUX_H
#define KVSCRUBD_CLINUX_H
#include <stdint.h>
#include <stddef.h>

/* Puts the calling thread in the idle I/O scheduling class (ioprio_set(2)):
 * it then gets disk time only when no other process wants it. Returns 0 or -errno. */
int kvs_ioprio_set_idle_self(void);

/* The calling thread's I/O priority class (1 rt, 2 best-effort, 3 idle), or -errno. */
int kvs_ioprio_class_self(void);

/* Sets the calling thread's nice value (on Linux nice is per thread: setpriority(2)
 * with PRIO_PROCESS and the thread's id). Raising it needs no privilege. Returns 0 or -errno. */
int kvs_set_thread_nice(int nice);

/* Fills `resident` (one byte per page) with whether each page of
 * [offset, offset+length) of `fd` is in the page cache, via mmap + mincore.
 * Returns the number of pages, or -errno. */
long kvs_resident_pages(int fd, uint64_t offset, uint64_t length, unsigned char *resident, size_t capacity);

long kvs_page_size(void);

/* A non-blocking, close-on-exec eventfd (sys/eventfd.h is not in Swift's Glibc module). */
int kvs_eventfd(void);

/* struct ucred as getsockopt(SO_PEERCRED) fills it. <sys/socket.h> shows
 * struct ucred only under _GNU_SOURCE, which Swift's Glibc module does not
 * set; clinux.c (which does) proves at compile time that this struct has the
 * kernel's size and field offsets, so it can be handed to getsockopt. */
typedef struct {
    int32_t pid;
    uint32_t uid;
    uint32_t gid;
} kvs_peer_credentials;

/* Names the calling thread (at most 15 bytes are kept), as ps -L and /proc show it. */
int kvs_set_thread_name(const char *name);
#endif
