/*
 * kvc_api_test: every call of kvc.h against the built libkvcformat, as a C
 * program uses it (compiled with cc, -fsanitize=address,undefined, linked
 * through pkg-config). Known answers where a standard exists, round trips,
 * each failure's status and message, damage refused, and one handle shared
 * by threads. Run by CLibraryTests; prints "kvc_api_test: N checks passed".
 *
 *   kvc_api_test DIR EXPECTED_VERSION
 */
#include <kvc.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <dirent.h>
#include <unistd.h>

static int checks, failures;
#define CHECK(cond, ...) do { checks++; if (!(cond)) { failures++; \
    fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

static const char *dir;

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }

/* A DSV4 payload of n bytes for `tokens` tokens (vocabulary 256). */
static uint8_t *make_payload(size_t n, uint32_t tokens, uint8_t fill) {
    uint8_t *p = malloc(n);
    uint32_t f[13] = { 0x34565344u, 1, 4096, 2048, 4096, 4096, 1024, tokens, 61, 512, 128, 256, tokens };
    for (int i = 0; i < 13; i++) put32(p + 4 * i, f[i]);
    for (size_t i = 52; i < n; i++) p[i] = (uint8_t)(fill + i * 7);
    return p;
}

static kvc_store_params params(uint8_t version, uint8_t reason, uint32_t tokens) {
    kvc_store_params p;
    kvc_store_params_init(&p);
    p.version = version;
    p.reason = reason;
    p.model_id = 1;
    p.quant_bits = 4;
    p.ctx_size = 4096;
    p.tokens = tokens;
    p.created_at = 1700000000;
    return p;
}

static int file_exists(const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

static int leftover_temporaries(void) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) if (strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

static void damage(const char *name, off_t offset) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDWR);
    uint8_t b;
    if (pread(fd, &b, 1, offset) != 1) abort();
    b ^= 0xFF;
    if (pwrite(fd, &b, 1, offset) != 1) abort();
    close(fd);
}

struct collect { uint8_t *buf; size_t len, cap; int fail_after; int calls; };
static int collect_chunk(void *ctx, const void *chunk, size_t len) {
    struct collect *c = ctx;
    if (c->fail_after >= 0 && c->calls++ >= c->fail_after) return 42;
    if (c->len + len > c->cap) return 1;
    memcpy(c->buf + c->len, chunk, len);
    c->len += len;
    return 0;
}

struct fill_ctx { const uint8_t *src; int fail; };
static int fill_from(void *ctx, uint64_t offset, void *buf, size_t len) {
    struct fill_ctx *f = ctx;
    if (f->fail) return 7;
    memcpy(buf, f->src + offset, len);
    return 0;
}

static void test_helpers(const char *expected_version) {
    CHECK(kvc_api_version() == KVC_API_VERSION, "api %d", kvc_api_version());
    CHECK(strcmp(kvc_version(), expected_version) == 0, "version %s, expected %s", kvc_version(), expected_version);
    CHECK(kvc_crc32c(0, "123456789", 9) == 0xE3069283u, "crc %08x", kvc_crc32c(0, "123456789", 9));
    CHECK(kvc_crc32c(kvc_crc32c(0, "1234", 4), "56789", 5) == 0xE3069283u, "chained crc");
    CHECK(kvc_crc32c(0x1234, NULL, 0) == 0x1234, "empty input leaves the crc");
    uint8_t d[20];
    kvc_sha1("abc", 3, d);
    static const uint8_t abc[20] = { 0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81, 0x6a, 0xba, 0x3e,
                                     0x25, 0x71, 0x78, 0x50, 0xc2, 0x6c, 0x9c, 0xd0, 0xd8, 0x9d };
    CHECK(memcmp(d, abc, 20) == 0, "sha1(abc)");
    char name[KVC_NAME_SIZE];
    kvc_checkpoint_name((const uint8_t *)"abc", 3, name);
    CHECK(strcmp(name, "a9993e364706816aba3e25717850c26c9cd0d89d.kv") == 0, "name %s", name);
    CHECK(strcmp(kvc_status_name(KVC_ERR_CORRUPT), "corrupt") == 0, "%s", kvc_status_name(KVC_ERR_CORRUPT));
    CHECK(strcmp(kvc_status_name((kvc_status)99), "unknown status") == 0, "unknown status name");
}

static void test_open_errors(void) {
    kvc_cache *c = (kvc_cache *)1;
    kvc_error err;
    kvc_status st = kvc_cache_open("/nonexistent/kvc-api-test", &c, &err);
    CHECK(st == KVC_ERR_IO && err.status == KVC_ERR_IO && err.sys_errno == ENOENT, "st %d errno %d", st, err.sys_errno);
    CHECK(c == NULL, "handle cleared on failure");
    CHECK(strstr(err.message, "/nonexistent/kvc-api-test") != NULL, "message names the path: %s", err.message);
    CHECK(kvc_cache_open(NULL, &c, NULL) == KVC_ERR_INVALID, "NULL path, NULL err");
    CHECK(kvc_cache_open(dir, NULL, &err) == KVC_ERR_INVALID, "NULL out");
    kvc_cache_close(NULL);
}

static void test_store_load(kvc_cache *cache) {
    kvc_error err;
    const char *text = "You are a helpful assistant. User: hello";
    size_t tlen = strlen(text);
    size_t plen = 64 << 10;
    uint8_t *payload = make_payload(plen, 10, 3);
    kvc_tool_entry tools[2] = {
        { (const uint8_t *)"call_1", 6, (const uint8_t *)"<dsml>one</dsml>", 16 },
        { (const uint8_t *)"call_2", 6, (const uint8_t *)"<dsml>two</dsml>", 16 },
    };
    kvc_store_params p = params(2, KVC_REASON_COLD, 10);
    p.key_flags = KVC_EXT_THINKING_VISIBLE;
    char name[KVC_NAME_SIZE], expected[KVC_NAME_SIZE];
    kvc_status st = kvc_store(cache, (const uint8_t *)text, tlen, payload, plen, tools, 2, &p, name, &err);
    CHECK(st == KVC_OK, "store: %s", err.message);
    kvc_checkpoint_name((const uint8_t *)text, tlen, expected);
    CHECK(strcmp(name, expected) == 0, "stored as %s", name);
    CHECK(file_exists(name) && leftover_temporaries() == 0, "the file and no temporary");

    /* Into a buffer, verified. */
    uint8_t *back = calloc(1, plen);
    uint8_t tm[256];
    kvc_load_target t = { .payload = back, .payload_cap = plen, .tool_map = tm, .tool_map_cap = sizeof tm };
    kvc_checkpoint cp;
    st = kvc_load(cache, name, -1, &t, &cp, &err);
    CHECK(st == KVC_OK, "load: %s", err.message);
    CHECK(memcmp(back, payload, plen) == 0, "payload round trip");
    CHECK(cp.crc_verified == 1 && cp.header.version == 2, "v2 verified");
    CHECK(cp.header.tokens == 10 && cp.header.reason == KVC_REASON_COLD && cp.header.model_id == 1 && cp.header.quant_bits == 4 &&
          cp.header.ctx_size == 4096 && cp.header.created_at == 1700000000 && cp.header.last_used == 1700000000 &&
          cp.header.payload_bytes == plen && cp.header.text_bytes == tlen && cp.header.payload_abi == KVC_PAYLOAD_ABI_PR146,
          "header fields as stored");
    CHECK(cp.header.ext_flags == (KVC_EXT_THINKING_VISIBLE | KVC_EXT_TOOL_MAP), "ext flags %02x", cp.header.ext_flags);
    CHECK(cp.header.payload_crc == kvc_crc32c(0, payload, plen), "payload CRC field");
    CHECK(strcmp(cp.name, name) == 0, "name in the result");
    kvc_tool_entry got[4];
    size_t n = 0;
    st = kvc_tool_map_decode(tm, cp.tool_map_bytes, got, 4, &n, &err);
    CHECK(st == KVC_OK && n == 2, "decode: %d entries (%s)", (int)n, err.message);
    CHECK(n == 2 && got[1].id_len == 6 && memcmp(got[1].id, "call_2", 6) == 0 && got[1].dsml_len == 16 &&
          memcmp(got[1].dsml, "<dsml>two</dsml>", 16) == 0, "tool entries round trip");
    st = kvc_tool_map_decode(tm, cp.tool_map_bytes, got, 1, &n, &err);
    CHECK(st == KVC_ERR_BUFFER && n == 2, "decode into too few entries");
    CHECK(kvc_tool_map_decode((const uint8_t *)"garbage!!", 9, got, 4, &n, &err) == KVC_ERR_CORRUPT, "garbage tool map");

    /* Buffer too small: nothing read, the sizes needed reported. */
    kvc_load_target small = { .payload = back, .payload_cap = plen - 1 };
    memset(&cp, 0, sizeof cp);
    st = kvc_load(cache, name, -1, &small, &cp, &err);
    CHECK(st == KVC_ERR_BUFFER && cp.header.payload_bytes == plen && cp.tool_map_bytes > 0, "buffer too small: %d", st);
    kvc_load_target small_tm = { .payload = back, .payload_cap = plen, .tool_map = tm, .tool_map_cap = 4 };
    CHECK(kvc_load(cache, name, -1, &small_tm, &cp, &err) == KVC_ERR_BUFFER, "tool-map buffer too small");

    /* Through a read callback. */
    struct collect c = { calloc(1, plen), 0, plen, -1, 0 };
    kvc_load_target cb = { .read_fn = collect_chunk, .read_ctx = &c };
    st = kvc_load(cache, name, -1, &cb, &cp, &err);
    CHECK(st == KVC_OK && c.len == plen && memcmp(c.buf, payload, plen) == 0, "callback load: %s", err.message);
    struct collect stop = { calloc(1, plen), 0, plen, 0, 0 };
    kvc_load_target cbstop = { .read_fn = collect_chunk, .read_ctx = &stop };
    st = kvc_load(cache, name, -1, &cbstop, &cp, &err);
    CHECK(st == KVC_ERR_CANCELED && strstr(err.message, "42") != NULL, "callback cancels: %d %s", st, err.message);

    /* Bad requests. */
    kvc_load_target both = { .payload = back, .payload_cap = plen, .read_fn = collect_chunk, .read_ctx = &c };
    CHECK(kvc_load(cache, name, -1, &both, &cp, &err) == KVC_ERR_INVALID, "payload and read_fn both set");
    CHECK(kvc_load(cache, "../etc/passwd", -1, &t, &cp, &err) == KVC_ERR_INVALID, "a path as name");
    CHECK(kvc_load(cache, "0000000000000000000000000000000000000000.kv", -1, &t, &cp, &err) == KVC_ERR_IO &&
          err.sys_errno == ENOENT, "missing checkpoint");
    CHECK(kvc_load(NULL, name, -1, &t, &cp, &err) == KVC_ERR_INVALID, "NULL cache");
    CHECK(kvc_load(cache, name, 2, &t, &cp, &err) == KVC_ERR_INCOMPATIBLE, "another payload ABI: %s", err.message);

    /* Find and load by prompt. */
    char prompt[256];
    snprintf(prompt, sizeof prompt, "%s and more words", text);
    kvc_compat compat = { .model_id = 1, .quant_bits = 4, .ctx_size = 8192, .payload_abi = -1 };
    kvc_checkpoint found;
    st = kvc_find_prefix(cache, (const uint8_t *)prompt, strlen(prompt), &compat, &found, &err);
    CHECK(st == KVC_OK && strcmp(found.name, name) == 0 && found.header.tokens == 10, "find prefix: %s", err.message);
    CHECK(kvc_find_prefix(cache, (const uint8_t *)text, tlen - 1, &compat, &found, &err) == KVC_ERR_NOT_FOUND,
          "a shorter prompt has no stored prefix");
    kvc_compat other = compat;
    other.model_id = 2;
    CHECK(kvc_find_prefix(cache, (const uint8_t *)prompt, strlen(prompt), &other, &found, &err) == KVC_ERR_NOT_FOUND,
          "another model");
    other = compat;
    other.ctx_size = 1024;
    CHECK(kvc_find_prefix(cache, (const uint8_t *)prompt, strlen(prompt), &other, &found, &err) == KVC_ERR_NOT_FOUND,
          "a larger context than ours");
    memset(back, 0, plen);
    st = kvc_load_prefix(cache, (const uint8_t *)prompt, strlen(prompt), &compat, &t, &cp, &err);
    CHECK(st == KVC_OK && memcmp(back, payload, plen) == 0 && strcmp(cp.name, name) == 0, "load prefix: %s", err.message);

    /* Stat: the header without the body. */
    kvc_checkpoint st_cp;
    st = kvc_stat(cache, name, -1, &st_cp, &err);
    CHECK(st == KVC_OK && st_cp.header.tokens == 10 && st_cp.file_size == cp.file_size && st_cp.tool_map_bytes > 0 &&
          st_cp.crc_verified == 0 && strcmp(st_cp.name, name) == 0, "stat: %s", err.message);
    CHECK(kvc_stat(cache, name, 2, &st_cp, &err) == KVC_ERR_INCOMPATIBLE, "stat, another ABI");
    CHECK(kvc_stat(cache, "0000000000000000000000000000000000000000.kv", -1, &st_cp, &err) == KVC_ERR_IO &&
          err.sys_errno == ENOENT, "stat of a missing file");

    /* Touch: one more hit, new last_used, the header CRC resealed. */
    kvc_header h;
    st = kvc_touch(cache, name, KVC_TOUCH_INCREMENT, 1700000100, &h, &err);
    CHECK(st == KVC_OK && h.hits == 1 && h.last_used == 1700000100, "touch: %s", err.message);
    st = kvc_touch(cache, name, 7, 1700000200, &h, &err);
    CHECK(st == KVC_OK && h.hits == 7, "touch to 7");
    CHECK(kvc_touch(cache, name, 1ull << 33, 1, &h, &err) == KVC_ERR_INVALID, "hits beyond u32");
    kvc_verify_result r;
    st = kvc_verify(cache, name, -1, &r, &err);
    CHECK(st == KVC_OK && r.verdict == KVC_VERDICT_OK && r.crc_verified && r.header.hits == 7, "verify after touch");

    /* Tool-map rewrite in place: one entry, then none. */
    kvc_tool_entry one = { (const uint8_t *)"call_9", 6, (const uint8_t *)"<x/>", 4 };
    st = kvc_rewrite_tool_map(cache, name, &one, 1, 1700000300, &h, &err);
    CHECK(st == KVC_OK && (h.ext_flags & KVC_EXT_TOOL_MAP) && h.last_used == 1700000300, "rewrite: %s", err.message);
    st = kvc_load(cache, name, -1, &t, &cp, &err);
    n = 0;
    CHECK(st == KVC_OK && kvc_tool_map_decode(tm, cp.tool_map_bytes, got, 4, &n, NULL) == KVC_OK && n == 1 &&
          memcmp(got[0].id, "call_9", 6) == 0, "the new map loads");
    st = kvc_rewrite_tool_map(cache, name, NULL, 0, 1700000400, &h, &err);
    CHECK(st == KVC_OK && !(h.ext_flags & KVC_EXT_TOOL_MAP), "tool map removed");
    st = kvc_load(cache, name, -1, &t, &cp, &err);
    CHECK(st == KVC_OK && cp.tool_map_bytes == 0 && cp.file_size == 68 + tlen + plen, "no trailer: size %llu",
          (unsigned long long)cp.file_size);
    CHECK(kvc_verify(cache, name, -1, &r, &err) == KVC_OK && r.verdict == KVC_VERDICT_OK, "verify after rewrite");

    /* Damage is refused whole, with the region and both CRCs. */
    damage(name, 68 + (off_t)tlen + 1000);
    st = kvc_load(cache, name, -1, &t, &cp, &err);
    CHECK(st == KVC_ERR_CORRUPT && strstr(err.message, "payload CRC mismatch"), "damaged payload refused: %s", err.message);
    c.len = 0;
    c.fail_after = -1;
    CHECK(kvc_load(cache, name, -1, &cb, &cp, &err) == KVC_ERR_CORRUPT, "refused through the callback too");
    st = kvc_verify(cache, name, -1, &r, &err);
    CHECK(st == KVC_OK && r.verdict == KVC_VERDICT_CORRUPT && r.problem_count >= 1 &&
          r.problems[0].region == KVC_REGION_PAYLOAD && r.problems[0].severity == KVC_SEVERITY_CORRUPT &&
          r.problems[0].has_crc && r.problems[0].expected_crc == kvc_crc32c(0, payload, plen) &&
          r.problems[0].actual_crc != r.problems[0].expected_crc, "verify says where");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    CHECK(kvc_verify(NULL, path, -1, &r, &err) == KVC_OK && r.verdict == KVC_VERDICT_CORRUPT, "verify by path");
    CHECK(kvc_touch(cache, name, KVC_TOUCH_INCREMENT, 1, &h, &err) == KVC_OK, "touch only needs a sound header");
    damage(name, 9);  /* the header: the touch must not reseal it */
    CHECK(kvc_stat(cache, name, -1, &st_cp, &err) == KVC_ERR_CORRUPT && strstr(err.message, "header CRC"), "stat: %s", err.message);
    CHECK(kvc_touch(cache, name, KVC_TOUCH_INCREMENT, 1, &h, &err) == KVC_ERR_CORRUPT, "no touch of a damaged header: %s",
          err.message);
    free(back); free(c.buf); free(stop.buf); free(payload);
}

static void test_store_refusals(kvc_cache *cache) {
    kvc_error err;
    size_t plen = 4096;
    uint8_t *payload = make_payload(plen, 5, 1);
    const uint8_t *text = (const uint8_t *)"refusals";
    kvc_store_params p = params(2, KVC_REASON_CONTINUED, 5);
    char name[KVC_NAME_SIZE];
    kvc_checkpoint_name(text, 8, name);
    kvc_store_params bad = p; bad.quant_bits = 3;
    CHECK(kvc_store(cache, text, 8, payload, plen, NULL, 0, &bad, NULL, &err) == KVC_ERR_INVALID &&
          strstr(err.message, "quant_bits"), "quant bits: %s", err.message);
    bad = p; bad.tokens = 0;
    CHECK(kvc_store(cache, text, 8, payload, plen, NULL, 0, &bad, NULL, &err) == KVC_ERR_INVALID, "0 tokens");
    bad = p; bad.version = 3;
    CHECK(kvc_store(cache, text, 8, payload, plen, NULL, 0, &bad, NULL, NULL) == KVC_ERR_INVALID, "version 3, err NULL");
    bad = p; bad.reason = 9;
    CHECK(kvc_store(cache, text, 8, payload, plen, NULL, 0, &bad, NULL, &err) == KVC_ERR_INVALID, "reason 9");
    bad = p; bad.key_flags = KVC_EXT_TOOL_MAP;
    CHECK(kvc_store(cache, text, 8, payload, plen, NULL, 0, &bad, NULL, &err) == KVC_ERR_INVALID, "tool-map bit by hand");
    CHECK(kvc_store(cache, text, 8, payload, plen, NULL, 1, &p, NULL, &err) == KVC_ERR_INVALID, "NULL tools, ntools 1");
    CHECK(kvc_store(cache, text, 8, payload, plen, NULL, 0, NULL, NULL, &err) == KVC_ERR_INVALID, "NULL params");
    bad = p; bad.tokens = 6;
    CHECK(kvc_store(cache, text, 8, payload, plen, NULL, 0, &bad, NULL, &err) == KVC_ERR_INVALID &&
          strstr(err.message, "corrupt"), "payload prefix disagrees with tokens: %s", err.message);
    payload[0] ^= 1;
    CHECK(kvc_store(cache, text, 8, payload, plen, NULL, 0, &p, NULL, &err) == KVC_ERR_INVALID &&
          strstr(err.message, "DSV4"), "no DSV4 magic: %s", err.message);
    payload[0] ^= 1;
    struct fill_ctx f = { payload, 1 };
    CHECK(kvc_store_stream(cache, text, 8, fill_from, &f, plen, NULL, 0, &p, NULL, &err) == KVC_ERR_CANCELED,
          "a failing fill callback: %s", err.message);
    CHECK(!file_exists(name) && leftover_temporaries() == 0, "nothing stored and no temporary left by the refusals");
    f.fail = 0;
    CHECK(kvc_store_stream(cache, text, 8, fill_from, &f, plen, NULL, 0, &p, name, &err) == KVC_OK && file_exists(name),
          "streamed store: %s", err.message);
    /* Another payload ABI's payload is its own business: no DSV4 prefix needed. */
    kvc_store_params fork = p; fork.payload_abi = 7;
    memset(payload, 0, 52);
    CHECK(kvc_store(cache, (const uint8_t *)"fork", 4, payload, plen, NULL, 0, &fork, NULL, &err) == KVC_OK, "ABI 7");
    free(payload);
}

static void test_v1(kvc_cache *cache) {
    kvc_error err;
    size_t plen = 8192;
    uint8_t *payload = make_payload(plen, 4, 9), *back = malloc(plen);
    kvc_store_params p = params(1, KVC_REASON_SHUTDOWN, 4);
    char name[KVC_NAME_SIZE];
    CHECK(kvc_store(cache, (const uint8_t *)"v1 text", 7, payload, plen, NULL, 0, &p, name, &err) == KVC_OK, "v1 store");
    kvc_load_target t = { .payload = back, .payload_cap = plen };
    kvc_checkpoint cp;
    CHECK(kvc_load(cache, name, -1, &t, &cp, &err) == KVC_OK && cp.crc_verified == 0 && cp.header.version == 1 &&
          cp.header.payload_crc == 0 && memcmp(back, payload, plen) == 0, "v1 loads, structure only");
    kvc_verify_result r;
    CHECK(kvc_verify(cache, name, -1, &r, &err) == KVC_OK && r.verdict == KVC_VERDICT_OK && !r.crc_verified, "v1 verifies");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    CHECK(truncate(path, 52 + 7 + 100) == 0, "truncate");
    CHECK(kvc_load(cache, name, -1, &t, &cp, &err) == KVC_ERR_CORRUPT, "a short v1 file is refused: %s", err.message);
    free(payload); free(back);
}

static void test_eviction(void) {
    char sub[4096];
    snprintf(sub, sizeof sub, "%s/evict", dir);
    mkdir(sub, 0755);
    kvc_cache *cache;
    kvc_error err;
    CHECK(kvc_cache_open(sub, &cache, &err) == KVC_OK, "open: %s", err.message);
    size_t plen = 16384;
    uint8_t *payload = make_payload(plen, 100, 2);
    /* cold (anchor, x2), continued, continued with hits: */
    const char *texts[3] = { "eviction A", "eviction B", "eviction B continued further" };
    uint8_t reasons[3] = { KVC_REASON_COLD, KVC_REASON_CONTINUED, KVC_REASON_CONTINUED };
    char names[3][KVC_NAME_SIZE];
    uint64_t total = 0;
    for (int i = 0; i < 3; i++) {
        kvc_store_params p = params(2, reasons[i], 100);
        p.created_at = p.last_used = 1700000000;
        p.hits = i == 2 ? 5 : 0;
        CHECK(kvc_store(cache, (const uint8_t *)texts[i], strlen(texts[i]), payload, plen, NULL, 0, &p, names[i], &err) == KVC_OK,
              "store %d", i);
        total += 68 + strlen(texts[i]) + plen;
    }
    kvc_header h = { .version = 2, .quant_bits = 4, .reason = KVC_REASON_COLD, .tokens = 100, .created_at = 1000, .last_used = 1000 };
    double s = kvc_eviction_score(&h, NULL, 1000, 1000, NULL);
    CHECK(s == 2.0 * 100 / 1000, "cold anchor score %g", s);
    h.reason = KVC_REASON_CONTINUED;
    h.hits = 1;
    s = kvc_eviction_score(&h, NULL, 1000, 1000 + 21600, NULL);  /* one half-life: 0.5 hits */
    CHECK(s == 1.5 * 100 / 1000, "decayed hit score %g", s);
    /* Superseded: continued "eviction B" is a strict prefix of the incoming text. */
    h.hits = 0;
    h.text_bytes = (uint32_t)strlen(texts[1]);
    h.model_id = 1; h.ctx_size = 4096;
    char sha[41];
    memcpy(sha, names[1], 40); sha[40] = 0;
    kvc_incoming inc = { (const uint8_t *)"eviction B and then", 19, 1, 4, 4096, 0 };
    s = kvc_eviction_score(&h, sha, 1000, 1000, &inc);
    CHECK(s == (1.0 * 100 / 1000) * 0.05, "superseded waypoint score %g", s);  /* the engine's order of operations */

    kvc_victim v[3];
    kvc_plan plan;
    CHECK(kvc_plan_eviction(cache, total - 1, 0, 1700000000, NULL, -1, v, 3, &plan, &err) == KVC_OK, "plan: %s", err.message);
    CHECK(plan.total_bytes == total && plan.victim_count == 1 && strcmp(v[0].name, names[1]) == 0,
          "the lowest score goes: %zu victims, first %s", plan.victim_count, v[0].name);
    CHECK(plan.remaining_bytes == total - v[0].file_size, "remaining bytes");
    CHECK(kvc_plan_eviction(cache, total - 1, 0, 1700000000, NULL, -1, v, 0, &plan, &err) == KVC_ERR_BUFFER &&
          plan.victim_count == 1, "victim_cap 0");
    CHECK(kvc_plan_eviction(cache, 0, 0, 1700000000, NULL, -1, v, 3, &plan, &err) == KVC_OK && plan.victim_count == 0,
          "budget 0: no budget");
    CHECK(kvc_plan_eviction(cache, total, 0, 1700000000, NULL, -1, v, 3, &plan, &err) == KVC_OK && plan.victim_count == 0,
          "under budget");
    CHECK(kvc_plan_eviction(cache, total, 1, 1700000000, NULL, -1, v, 3, &plan, &err) == KVC_OK && plan.victim_count == 1,
          "room for an incoming checkpoint");
    CHECK(file_exists("evict/") && plan.total_bytes == total, "plan removes nothing");
    kvc_cache_close(cache);
    free(payload);
}

struct worker { kvc_cache *cache; int id; int ok; };
static void *work(void *arg) {
    struct worker *w = arg;
    size_t plen = 8192;
    uint8_t *payload = make_payload(plen, 3, (uint8_t)w->id), *back = malloc(plen);
    for (int i = 0; i < 40; i++) {
        char text[64];
        snprintf(text, sizeof text, "thread %d text %d", w->id, i);
        kvc_store_params p = params(i % 2 ? 1 : 2, KVC_REASON_CONTINUED, 3);
        char name[KVC_NAME_SIZE];
        kvc_error err;
        kvc_load_target t = { .payload = back, .payload_cap = plen };
        kvc_checkpoint cp;
        kvc_verify_result r;
        if (kvc_store(w->cache, (const uint8_t *)text, strlen(text), payload, plen, NULL, 0, &p, name, &err) == KVC_OK &&
            kvc_load(w->cache, name, -1, &t, &cp, &err) == KVC_OK && memcmp(back, payload, plen) == 0 &&
            kvc_touch(w->cache, name, KVC_TOUCH_INCREMENT, 1700000001, NULL, &err) == KVC_OK &&
            kvc_verify(w->cache, name, -1, &r, &err) == KVC_OK && r.verdict == KVC_VERDICT_OK)
            w->ok++;
    }
    free(payload); free(back);
    return NULL;
}

static void test_threads(kvc_cache *cache) {
    pthread_t th[4];
    struct worker w[4];
    for (int i = 0; i < 4; i++) { w[i] = (struct worker){ cache, i, 0 }; pthread_create(&th[i], NULL, work, &w[i]); }
    int ok = 0;
    for (int i = 0; i < 4; i++) { pthread_join(th[i], NULL); ok += w[i].ok; }
    CHECK(ok == 160, "%d of 160 store/load/touch/verify rounds on one shared handle", ok);
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: kvc_api_test DIR EXPECTED_VERSION\n"); return 2; }
    dir = argv[1];
    kvc_cache *cache;
    kvc_error err;
    if (kvc_cache_open(dir, &cache, &err) != KVC_OK) { fprintf(stderr, "open: %s\n", err.message); return 2; }
    test_helpers(argv[2]);
    test_open_errors();
    test_store_load(cache);
    test_store_refusals(cache);
    test_v1(cache);
    test_eviction();
    test_threads(cache);
    kvc_cache_close(cache);
    printf("kvc_api_test: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
