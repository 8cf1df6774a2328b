#define _GNU_SOURCE
#include "clinux.h"
#include <errno.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

_Static_assert(sizeof(kvs_peer_credentials) == sizeof(struct ucred), "kvs_peer_credentials is not struct ucred's size");
_Static_assert(offsetof(kvs_peer_credentials, pid) == offsetof(struct ucred, pid), "pid offset");
_Static_assert(offsetof(kvs_peer_credentials, uid) == offsetof(struct ucred, uid), "uid offset");
_Static_assert(offsetof(kvs_peer_credentials, gid) == offsetof(struct ucred, gid), "gid offset");
_Static_assert(sizeof(pid_t) == sizeof(int32_t) && sizeof(uid_t) == sizeof(uint32_t) && sizeof(gid_t) == sizeof(uint32_t),
               "pid_t, uid_t and gid_t widths");

#define KVS_IOPRIO_WHO_PROCESS 1
#define KVS_IOPRIO_CLASS_SHIFT 13
#define KVS_IOPRIO_CLASS_IDLE 3

int kvs_ioprio_set_idle_self(void) {
    /* who = 0 with IOPRIO_WHO_PROCESS is the calling thread. */
    long r = syscall(SYS_ioprio_set, KVS_IOPRIO_WHO_PROCESS, 0, KVS_IOPRIO_CLASS_IDLE << KVS_IOPRIO_CLASS_SHIFT);
    return r < 0 ? -errno : 0;
}

int kvs_ioprio_class_self(void) {
    long r = syscall(SYS_ioprio_get, KVS_IOPRIO_WHO_PROCESS, 0);
    return r < 0 ? -errno : (int)(r >> KVS_IOPRIO_CLASS_SHIFT);
}

int kvs_set_thread_nice(int nice) {
    return setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), nice) == 0 ? 0 : -errno;
}

long kvs_page_size(void) { return sysconf(_SC_PAGESIZE); }

long kvs_resident_pages(int fd, uint64_t offset, uint64_t length, unsigned char *resident, size_t capacity) {
    long page = sysconf(_SC_PAGESIZE);
    uint64_t start = offset - offset % (uint64_t)page;
    uint64_t span = length + (offset - start);
    size_t pages = (size_t)((span + (uint64_t)page - 1) / (uint64_t)page);
    if (pages > capacity || length == 0) return -EINVAL;
    void *map = mmap(NULL, span, PROT_READ, MAP_SHARED, fd, (off_t)start);
    if (map == MAP_FAILED) return -errno;
    int r = mincore(map, span, resident);
    int e = errno;
    munmap(map, span);
    return r == 0 ? (long)pages : -e;
}

#include <sys/eventfd.h>
int kvs_eventfd(void) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

#include <pthread.h>
int kvs_set_thread_name(const char *name) {
    return pthread_setname_np(pthread_self(), name);
}
