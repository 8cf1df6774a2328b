#include "cref_isal.h"
#include <errno.h>
#include <fcntl.h>
#include <isa-l/crc.h>
#include <stdlib.h>
#include <unistd.h>

uint32_t cref_crc32c(const void *buf, size_t len) {
    const unsigned char *p = buf;
    uint32_t crc = 0xFFFFFFFFu;
    while (len > 0) {
        int n = len > (1u << 30) ? (1 << 30) : (int)len;
        crc = crc32_iscsi((unsigned char *)p, n, crc);
        p += n;
        len -= (size_t)n;
    }
    return crc ^ 0xFFFFFFFFu;
}

int cref_read_crc_file(const char *path, size_t chunk, uint32_t *crc_out, uint64_t *bytes_out) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    unsigned char *buf = aligned_alloc(4096, chunk);
    if (!buf) { close(fd); return -ENOMEM; }
    uint32_t crc = 0xFFFFFFFFu;
    uint64_t total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, chunk);
        if (n < 0) { if (errno == EINTR) continue; int e = errno; free(buf); close(fd); return -e; }
        if (n == 0) break;
        crc = crc32_iscsi(buf, (int)n, crc);
        total += (uint64_t)n;
    }
    free(buf);
    close(fd);
    *crc_out = crc ^ 0xFFFFFFFFu;
    *bytes_out = total;
    return 0;
}
