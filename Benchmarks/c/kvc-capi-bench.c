/*
 * kvc-capi-bench: libkvcformat's C API against references measured in the
 * same run (Benchmarks/run format runs it after kvc-bench format).
 *
 *   1. CRC32C: kvc_crc32c against ISA-L's crc32_iscsi called directly, on
 *      the same buffer in memory (target: >= 0.95x ISA-L's throughput).
 *   2. Verified load: kvc_load into a caller's buffer (every CRC and length
 *      checked) against the unverified load an engine does today: open, read
 *      the header and the text, read() the payload from its offset into the
 *      same buffer (target: <= 1.05x), page cache warm. Also shown: a read()
 *      of the whole file from offset 0 into a page-aligned buffer, which is
 *      faster than either when the payload's file offset (68 + text bytes) and
 *      the buffer are not aligned alike: the kernel's copy is slower when
 *      source and destination are misaligned to each other, verified or not.
 *   3. Store: kvc_store (CRCs computed while the bytes are written) against
 *      ds4 PR #146's way: write the file, then read the payload and trailer
 *      back to CRC them with a byte-at-a-time table, then write the header
 *      and rename; and against the same read-back with ISA-L, to show what
 *      the read-back itself costs.
 *
 *   kvc-capi-bench DIR [--crc-mib N] [--load-mib N] [--store-mib N] [--runs N]   (default 256, 1024, 512, 11)
 *
 * Each figure is the median of --runs; the two sides alternate which goes
 * first so neither gains from a warm cache or a clock ramp.
 */
#include <kvc.h>
#include <isa-l/crc.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median(double *v, int n) { qsort(v, (size_t)n, sizeof *v, cmp); return v[n / 2]; }

static void report(int ok, const char *what, const char *figures, double ratio, const char *target) {
    printf("%s  %s: %s  ratio %.3f  (target %s)\n", ok ? "PASS" : "MISS", what, figures, ratio, target);
    fflush(stdout);
}

static void die(const char *what, const kvc_error *err) {
    fprintf(stderr, "kvc-capi-bench: %s: %s\n", what, err ? err->message : strerror(errno));
    exit(2);
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

static uint8_t *random_buffer(size_t n) {
    uint8_t *b = aligned_alloc(4096, (n + 4095) / 4096 * 4096);
    if (!b) die("alloc", NULL);
    for (size_t i = 0; i + 8 <= n; i += 8) { uint64_t v = next(); memcpy(b + i, &v, 8); }
    return b;
}

/* A DSV4 prefix for one token (vocabulary 256), then the random bytes. */
static void dsv4_prefix(uint8_t *p) {
    uint32_t f[13] = { 0x34565344u, 1, 65536, 2048, 4096, 4096, 16384, 1, 61, 512, 128, 256, 1 };
    for (int i = 0; i < 13; i++) for (int j = 0; j < 4; j++) p[4 * i + j] = (uint8_t)(f[i] >> (8 * j));
}

/* ---- 1. CRC32C -------------------------------------------------------------------- */

static void bench_crc(size_t mib, int runs) {
    size_t n = mib << 20;
    uint8_t *b = random_buffer(n);
    double *ours = calloc((size_t)runs, sizeof(double)), *ref = calloc((size_t)runs, sizeof(double));
    uint32_t a = 0, c = 0;
    for (int i = 0; i < runs; i++) {
        for (int side = 0; side < 2; side++) {
            int mine = (side == 0) == (i % 2 == 0);
            double t0 = now();
            if (mine) a = kvc_crc32c(0, b, n);
            else {
                uint32_t s = 0xFFFFFFFFu;
                for (size_t off = 0; off < n; off += 1u << 30) {
                    size_t len = n - off < (1u << 30) ? n - off : (1u << 30);
                    s = crc32_iscsi(b + off, (int)len, s);
                }
                c = s ^ 0xFFFFFFFFu;
            }
            (mine ? ours : ref)[i] = now() - t0;
        }
    }
    if (a != c) { fprintf(stderr, "kvc-capi-bench: CRC mismatch %08x vs %08x\n", a, c); exit(2); }
    double go = (double)n / median(ours, runs) / 1e9, gr = (double)n / median(ref, runs) / 1e9;
    char f[160];
    snprintf(f, sizeof f, "kvc_crc32c %.2f GB/s, ISA-L crc32_iscsi %.2f GB/s", go, gr);
    char what[64];
    snprintf(what, sizeof what, "C API CRC32C, %zu MiB in memory", mib);
    report(go / gr >= 0.95, what, f, go / gr, ">= 0.95x ISA-L throughput");
    free(b); free(ours); free(ref);
}

/* ---- 2. verified load ------------------------------------------------------------------- */

static void bench_load(kvc_cache *cache, const char *dir, size_t mib, int runs) {
    size_t plen = mib << 20;
    uint8_t *payload = random_buffer(plen);
    dsv4_prefix(payload);
    static const uint8_t text[] = "benchmark checkpoint for the C API's verified load";
    kvc_store_params p;
    kvc_store_params_init(&p);
    p.reason = KVC_REASON_COLD; p.model_id = 1; p.quant_bits = 4; p.ctx_size = 65536; p.tokens = 1; p.created_at = 1;
    kvc_tool_entry tool = { (const uint8_t *)"call_1", 6, (const uint8_t *)"<dsml/>", 7 };
    char name[KVC_NAME_SIZE], path[4096];
    kvc_error err;
    if (kvc_store(cache, text, sizeof text - 1, payload, plen, &tool, 1, &p, name, &err) != KVC_OK) die("store", &err);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    uint8_t *dest = aligned_alloc(4096, plen), *raw = aligned_alloc(4096, plen + (1 << 20));
    uint8_t tm[256];
    double *ours = calloc((size_t)runs, sizeof(double)), *ref = calloc((size_t)runs, sizeof(double)),
           *whole = calloc((size_t)runs, sizeof(double));
    memset(dest, 0, plen); memset(raw, 0, plen + (1 << 20));    /* fault the pages in before timing */
    kvc_load_target t = { .payload = dest, .payload_cap = plen, .tool_map = tm, .tool_map_cap = sizeof tm };
    kvc_checkpoint cp;
    for (int i = -1; i < runs; i++) {                           /* run -1 warms the page cache */
        for (int k = 0; k < 3; k++) {
            int which = (k + (i < 0 ? 0 : i)) % 3;
            double t0 = now();
            if (which == 0) {
                if (kvc_load(cache, name, -1, &t, &cp, &err) != KVC_OK) die("load", &err);
            } else if (which == 1) {
                /* The engine's unverified load: header, text, then the payload from its offset into the buffer. */
                int fd = open(path, O_RDONLY | O_CLOEXEC);
                uint8_t h[68], txt[256];
                if (pread(fd, h, 68, 0) != 68 || pread(fd, txt, sizeof text - 1, 68) != (ssize_t)(sizeof text - 1)) die("read", NULL);
                size_t got = 0;
                off_t at = 68 + (off_t)(sizeof text - 1);
                while (got < plen) {
                    size_t want = plen - got < (1u << 20) ? plen - got : (1u << 20);
                    ssize_t r = pread(fd, dest + got, want, at + (off_t)got);
                    if (r <= 0) die("read", NULL);
                    got += (size_t)r;
                }
                close(fd);
            } else {
                int fd = open(path, O_RDONLY | O_CLOEXEC);
                size_t got = 0;
                for (ssize_t r; (r = read(fd, raw + got, 1 << 20)) > 0;) got += (size_t)r;
                close(fd);
                if (got < plen) die("read", NULL);
            }
            if (i >= 0) (which == 0 ? ours : which == 1 ? ref : whole)[i] = now() - t0;
        }
    }
    if (kvc_load(cache, name, -1, &t, &cp, &err) != KVC_OK) die("load", &err);
    if (memcmp(dest, payload, plen) != 0 || !cp.crc_verified) { fprintf(stderr, "kvc-capi-bench: load mismatch\n"); exit(2); }
    double mo = median(ours, runs), mr = median(ref, runs), mw = median(whole, runs);
    char f[240], what[80];
    snprintf(f, sizeof f, "kvc_load (verified) %.3f s, the engine's unverified load %.3f s (%.2f GB/s)", mo, mr, (double)plen / mr / 1e9);
    snprintf(what, sizeof what, "C API verified load, %zu MiB v2 checkpoint, page cache", mib);
    report(mo / mr <= 1.05, what, f, mo / mr, "<= 1.05x the unverified load");
    printf("      (a read() of the whole file from offset 0 into an aligned buffer: %.3f s, %.2f GB/s; ratio to it %.3f)\n",
           mw, (double)plen / mw / 1e9, mo / mw);
    unlink(path);
    free(payload); free(dest); free(raw); free(ours); free(ref); free(whole);
}

/* ---- 3. store ---------------------------------------------------------------------------------- */

/* PR #146's CRC32C: a 256-entry table, one byte at a time. */
static uint32_t table[256];
static void table_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[i] = c;
    }
}
static uint32_t table_crc(uint32_t crc, const uint8_t *b, size_t n) {
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = table[(crc ^ b[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }

/* The store as PR #146 does it: prologue with zero CRCs, text, payload, trailer; then read the
 * payload and trailer back to CRC them; then the 64 header bytes again; rename. */
static void ds4_store(const char *dir, const uint8_t *text, size_t tlen, const uint8_t *payload, size_t plen,
                      const uint8_t *trailer, size_t trlen, int isal) {
    char tmp[4096], final[4096], name[KVC_NAME_SIZE];
    kvc_checkpoint_name(text, tlen, name);
    snprintf(tmp, sizeof tmp, "%s/%s.tmp.%d", dir, name, (int)getpid());
    snprintf(final, sizeof final, "%s/%s", dir, name);
    uint8_t h[68] = { 'K', 'V', 'C', 2, 4, 1, 1, 1 };
    put32(h + 8, 1); put32(h + 16, 65536); put64(h + 24, 1); put64(h + 32, 1); put64(h + 40, plen); put32(h + 64, (uint32_t)tlen);
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || pwrite(fd, h, 68, 0) != 68 || pwrite(fd, text, tlen, 68) != (ssize_t)tlen) die("ds4 store write", NULL);
    for (size_t off = 0; off < plen; off += 1 << 20) {
        size_t n = plen - off < (1u << 20) ? plen - off : (1u << 20);
        if (pwrite(fd, payload + off, n, (off_t)(68 + tlen + off)) != (ssize_t)n) die("ds4 store write", NULL);
    }
    if (pwrite(fd, trailer, trlen, (off_t)(68 + tlen + plen)) != (ssize_t)trlen) die("ds4 store write", NULL);
    /* The read-back. */
    uint8_t *chunk = malloc(1 << 20);
    uint32_t pcrc = 0;
    for (size_t off = 0; off < plen; off += 1 << 20) {
        size_t n = plen - off < (1u << 20) ? plen - off : (1u << 20);
        if (pread(fd, chunk, n, (off_t)(68 + tlen + off)) != (ssize_t)n) die("ds4 read back", NULL);
        pcrc = isal ? ~crc32_iscsi(chunk, (int)n, ~pcrc) : table_crc(pcrc, chunk, n);
    }
    if (pread(fd, chunk, trlen, (off_t)(68 + tlen + plen)) != (ssize_t)trlen) die("ds4 read back", NULL);
    uint32_t tcrc = isal ? ~crc32_iscsi(chunk, (int)trlen, ~0u) : table_crc(0, chunk, trlen);
    uint32_t xcrc = isal ? ~crc32_iscsi((uint8_t *)text, (int)tlen, ~0u) : table_crc(0, text, tlen);
    free(chunk);
    put32(h + 52, xcrc); put32(h + 56, pcrc); put32(h + 60, tcrc);
    put32(h + 48, table_crc(0, h, 68));              /* over the 68 prologue bytes, header_crc as zero */
    if (pwrite(fd, h, 68, 0) != 68) die("ds4 store header", NULL);
    close(fd);
    if (rename(tmp, final) != 0) die("rename", NULL);
}

static void bench_store(kvc_cache *cache, const char *dir, size_t mib, int runs) {
    size_t plen = mib << 20;
    uint8_t *payload = random_buffer(plen);
    dsv4_prefix(payload);
    static const uint8_t text[] = "benchmark checkpoint for the store path";
    static const uint8_t trailer[] = { 'K', 'T', 'M', 1, 1, 0, 0, 0, 6, 0, 0, 0, 7, 0, 0, 0,
                                       'c', 'a', 'l', 'l', '_', '1', '<', 'd', 's', 'm', 'l', '/', '>' };
    kvc_tool_entry tool = { (const uint8_t *)"call_1", 6, (const uint8_t *)"<dsml/>", 7 };
    kvc_store_params p;
    kvc_store_params_init(&p);
    p.reason = KVC_REASON_COLD; p.model_id = 1; p.quant_bits = 4; p.ctx_size = 65536; p.tokens = 1; p.created_at = 1;
    char name[KVC_NAME_SIZE], path[4096];
    kvc_checkpoint_name(text, sizeof text - 1, name);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    double *ours = calloc((size_t)runs, sizeof(double)), *table_ref = calloc((size_t)runs, sizeof(double)),
           *isal_ref = calloc((size_t)runs, sizeof(double));
    kvc_error err;
    for (int i = 0; i < runs; i++) {
        for (int k = 0; k < 3; k++) {
            int which = (k + i) % 3;
            sync();                                  /* writeback of the last run stays out of this one */
            double t0 = now();
            if (which == 0) {
                if (kvc_store(cache, text, sizeof text - 1, payload, plen, &tool, 1, &p, NULL, &err) != KVC_OK) die("store", &err);
            } else {
                ds4_store(dir, text, sizeof text - 1, payload, plen, trailer, sizeof trailer, which == 2);
            }
            double t = now() - t0;
            (which == 0 ? ours : which == 1 ? table_ref : isal_ref)[i] = t;
            kvc_verify_result r;
            if (kvc_verify(cache, name, -1, &r, &err) != KVC_OK || r.verdict != KVC_VERDICT_OK) {
                fprintf(stderr, "kvc-capi-bench: the %s store does not verify: %s\n", which == 0 ? "C API" : "ds4-style",
                        r.problem_count ? r.problems[0].detail : err.message);
                exit(2);
            }
            unlink(path);
        }
    }
    double mo = median(ours, runs), mt = median(table_ref, runs), mi = median(isal_ref, runs);
    char f[200], what[80];
    snprintf(what, sizeof what, "C API store, %zu MiB v2 checkpoint", mib);
    snprintf(f, sizeof f, "kvc_store %.3f s, ds4 PR #146 (write, read back, table CRC) %.3f s", mo, mt);
    report(mo / mt <= 1.0, what, f, mo / mt, "<= 1.0x ds4's store with its read-back");
    snprintf(f, sizeof f, "kvc_store %.3f s, write + read back with ISA-L %.3f s", mo, mi);
    report(mo / mi <= 1.0, what, f, mo / mi, "<= 1.0x the same read-back with ISA-L (the read-back's own cost)");
    free(payload); free(ours); free(table_ref); free(isal_ref);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: kvc-capi-bench DIR [--crc-mib N] [--load-mib N] [--store-mib N] [--runs N]\n"); return 2; }
    size_t crc_mib = 256, load_mib = 1024, store_mib = 512;
    int runs = 11;
    for (int i = 2; i + 1 < argc; i += 2) {
        long v = strtol(argv[i + 1], NULL, 10);
        if (v <= 0) { fprintf(stderr, "kvc-capi-bench: %s needs a positive number\n", argv[i]); return 2; }
        if (!strcmp(argv[i], "--crc-mib")) crc_mib = (size_t)v;
        else if (!strcmp(argv[i], "--load-mib")) load_mib = (size_t)v;
        else if (!strcmp(argv[i], "--store-mib")) store_mib = (size_t)v;
        else if (!strcmp(argv[i], "--runs")) runs = (int)v;
        else { fprintf(stderr, "kvc-capi-bench: unknown option %s\n", argv[i]); return 2; }
    }
    table_init();
    kvc_cache *cache;
    kvc_error err;
    if (kvc_cache_open(argv[1], &cache, &err) != KVC_OK) die("open", &err);
    printf("kvc-capi-bench (libkvcformat %s): %d runs each, medians\n", kvc_version(), runs);
    bench_crc(crc_mib, runs);
    bench_load(cache, argv[1], load_mib, runs);
    bench_store(cache, argv[1], store_mib, runs);
    kvc_cache_close(cache);
    return 0;
}
