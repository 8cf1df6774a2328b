#ifndef KVSCRUBD_CSYSTEMD_SHIM_H
#define KVSCRUBD_CSYSTEMD_SHIM_H
/* Without this every journal entry would carry this header's file and line
 * as CODE_FILE/CODE_LINE: the location of the shim, not of the event. */
#define SD_JOURNAL_SUPPRESS_LOCATION 1
#include <sys/uio.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>

/* sd_journal_sendv may be a macro; this is always a callable function. */
static inline int kvs_journal_sendv(const struct iovec *iov, int n) {
    return sd_journal_sendv(iov, n);
}

static inline int kvs_sd_notify(const char *state) {
    return sd_notify(0, state);
}

static inline int kvs_sd_listen_fds(void) {
    return sd_listen_fds(1);
}

static inline int kvs_sd_is_socket_unix(int fd) {
    return sd_is_socket_unix(fd, 1 /* SOCK_STREAM */, 1 /* listening */, NULL, 0);
}

static inline int kvs_sd_watchdog_enabled(uint64_t *usec) {
    return sd_watchdog_enabled(0, usec);
}
#endif
