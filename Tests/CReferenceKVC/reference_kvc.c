/* See reference_kvc.h. Written from kvc-format.md revision 2 only. */
#define _GNU_SOURCE
#include "reference_kvc.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uint32_t table[256];
static int table_ready;

static void make_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[i] = c;
    }
    table_ready = 1;
}

uint32_t ref_crc32c(uint32_t crc, const void *data, size_t len) {
    if (!table_ready) make_table();
    const uint8_t *p = data;
    crc = ~crc;
    while (len--) crc = table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t get64(const uint8_t *p) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = v << 8 | p[i]; return v; }

/* The 48 bytes every version shares. */
static void fill48(uint8_t h[48], const ref_kvc_fields *f, uint64_t payload_len) {
    memset(h, 0, 48);
    h[0] = 'K'; h[1] = 'V'; h[2] = 'C';
    h[3] = f->version; h[4] = f->quant_bits; h[5] = f->reason; h[6] = f->ext_flags; h[7] = f->model_id;
    put32(h + 8, f->tokens); put32(h + 12, f->hits); put32(h + 16, f->ctx_size);
    h[20] = f->payload_abi;
    put64(h + 24, f->created_at); put64(h + 32, f->last_used); put64(h + 40, payload_len);
}

/* header_crc: CRC32C of bytes 0..63 with 48..51 zero, continued over text_bytes (64..67). */
static uint32_t header_crc(const uint8_t p[68]) {
    uint8_t copy[64];
    memcpy(copy, p, 64);
    memset(copy + 48, 0, 4);
    return ref_crc32c(ref_crc32c(0, copy, 64), p + 64, 4);
}

static int write_all(int fd, const void *buf, size_t len, off_t at) {
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = pwrite(fd, p, len, at);
        if (n < 0) { if (errno == EINTR) continue; return -1; }
        p += n; len -= (size_t)n; at += n;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t len, off_t at) {
    uint8_t *p = buf;
    while (len) {
        ssize_t n = pread(fd, p, len, at);
        if (n < 0) { if (errno == EINTR) continue; return -1; }
        if (n == 0) { errno = EIO; return -1; }
        p += n; len -= (size_t)n; at += n;
    }
    return 0;
}

/* CRC of `len` bytes of fd from `at`, read back in chunks as PR #146 does. */
static int crc_range(int fd, uint64_t at, uint64_t len, uint32_t *out) {
    uint8_t buf[65536];
    uint32_t crc = 0;
    while (len) {
        size_t n = len < sizeof buf ? (size_t)len : sizeof buf;
        if (read_all(fd, buf, n, (off_t)at) != 0) return -1;
        crc = ref_crc32c(crc, buf, n);
        at += n; len -= n;
    }
    *out = crc;
    return 0;
}

int ref_kvc_store(const char *dir, const char *name, const ref_kvc_fields *f,
                  const uint8_t *text, uint32_t text_len,
                  const uint8_t *payload, uint64_t payload_len,
                  const uint8_t *trailer, uint64_t trailer_len) {
    char tmp[4096], final[4096];
    snprintf(tmp, sizeof tmp, "%s/%s.tmp.%d", dir, name, (int)getpid());
    snprintf(final, sizeof final, "%s/%s", dir, name);
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return -1;
    ref_kvc_fields g = *f;
    g.ext_flags = (uint8_t)(trailer_len ? (f->ext_flags | 1) : (f->ext_flags & ~1));
    uint8_t h[68] = {0};
    fill48(h, &g, payload_len);
    size_t pro = g.version == 2 ? 68 : 52;
    put32(h + (g.version == 2 ? 64 : 48), text_len);
    int rc = write_all(fd, h, pro, 0);
    if (!rc) rc = write_all(fd, text, text_len, (off_t)pro);
    if (!rc) rc = write_all(fd, payload, payload_len, (off_t)(pro + text_len));
    if (!rc && trailer_len) rc = write_all(fd, trailer, trailer_len, (off_t)(pro + text_len + payload_len));
    if (!rc && g.version == 2) {
        uint32_t pc = 0, tc = 0;
        rc = crc_range(fd, pro + text_len, payload_len, &pc);
        if (!rc && trailer_len) rc = crc_range(fd, pro + text_len + payload_len, trailer_len, &tc);
        put32(h + 52, ref_crc32c(0, text, text_len));
        put32(h + 56, pc);
        put32(h + 60, tc);
        put32(h + 48, header_crc(h));
        if (!rc) rc = write_all(fd, h, 64, 0);
    }
    if (close(fd) != 0) rc = -1;
    if (!rc) rc = rename(tmp, final);
    if (rc) unlink(tmp);
    return rc;
}

static int read_prologue(int fd, uint8_t h[68], int *version, uint32_t *text_len) {
    memset(h, 0, 68);
    ssize_t n = pread(fd, h, 68, 0);
    if (n < 52 || memcmp(h, "KVC", 3) != 0 || (h[3] != 1 && h[3] != 2)) return -1;
    if (h[3] == 2 && n < 68) return -1;
    *version = h[3];
    *text_len = get32(h + (h[3] == 2 ? 64 : 48));
    return 0;
}

static int rewrite_header(int fd, uint8_t h[68], int version, uint32_t hits, uint64_t now) {
    put32(h + 12, hits);
    put64(h + 32, now);
    if (version == 2) put32(h + 48, header_crc(h));
    return write_all(fd, h, version == 2 ? 64 : 48, 0);
}

int ref_kvc_touch(const char *path, uint32_t hits, uint64_t now) {
    int fd = open(path, O_RDWR);
    if (fd < 0) return -1;
    uint8_t h[68]; int version; uint32_t tl;
    int rc = read_prologue(fd, h, &version, &tl);
    if (!rc) rc = rewrite_header(fd, h, version, hits, now);
    close(fd);
    return rc;
}

int ref_kvc_rewrite_toolmap(const char *path, const uint8_t *map, uint64_t map_len, uint64_t now) {
    int fd = open(path, O_RDWR);
    if (fd < 0) return -1;
    uint8_t h[68]; int version; uint32_t tl;
    int rc = read_prologue(fd, h, &version, &tl);
    uint64_t end = (version == 2 ? 68 : 52) + (uint64_t)tl + get64(h + 40);
    if (!rc) rc = ftruncate(fd, (off_t)end);
    if (!rc && map_len) rc = write_all(fd, map, map_len, (off_t)end);
    if (!rc) {
        h[6] = (uint8_t)(map_len ? (h[6] | 1) : (h[6] & ~1));
        if (version == 2) put32(h + 60, map_len ? ref_crc32c(0, map, map_len) : 0);
        rc = rewrite_header(fd, h, version, get32(h + 12), now);
    }
    close(fd);
    return rc;
}

#define REFUSE(...) do { snprintf(why, why_len, __VA_ARGS__); rc = 1; goto out; } while (0)

int ref_kvc_check(const char *path, char *why, size_t why_len) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    int rc = 0;
    uint8_t *buf = NULL;
    struct stat st;
    if (fstat(fd, &st) != 0) { rc = -1; goto out; }
    uint8_t h[68]; int version; uint32_t tl;
    if (read_prologue(fd, h, &version, &tl) != 0) REFUSE("no v1/v2 prologue");
    if (version == 2 && header_crc(h) != get32(h + 48)) REFUSE("header CRC");
    if (get32(h + 8) == 0 || (h[4] != 2 && h[4] != 4)) REFUSE("tokens or quant_bits");
    uint64_t pro = version == 2 ? 68 : 52, pl = get64(h + 40);
    if (pl > (uint64_t)st.st_size || pro + tl + pl > (uint64_t)st.st_size) REFUSE("file shorter than prologue + text + payload");
    uint64_t end = pro + tl + pl, tr = (uint64_t)st.st_size - end;
    if (version == 2) {
        uint32_t c;
        if (crc_range(fd, pro, tl, &c) || c != get32(h + 52)) REFUSE("text CRC");
        if (crc_range(fd, pro + tl, pl, &c) || c != get32(h + 56)) REFUSE("payload CRC");
        if (crc_range(fd, end, tr, &c) || c != get32(h + 60)) REFUSE("tool-map CRC");
    }
    if (h[6] & 1) {
        if (tr < 8) REFUSE("tool map shorter than its header");
        buf = malloc(tr);
        if (!buf || read_all(fd, buf, tr, (off_t)end)) { rc = -1; goto out; }
        if (memcmp(buf, "KTM", 3) != 0 || buf[3] != 1) REFUSE("tool map magic");
        uint64_t off = 8, count = get32(buf + 4);
        for (uint64_t i = 0; i < count; i++) {
            if (tr - off < 8) REFUSE("tool map entry header past the end");
            uint64_t a = get32(buf + off), b = get32(buf + off + 4);
            off += 8;
            if (a + b > tr - off) REFUSE("tool map entry past the end");
            off += a + b;
        }
        if (off != tr) REFUSE("tool map does not end at end of file");
    }
out:
    free(buf);
    close(fd);
    return rc;
}
