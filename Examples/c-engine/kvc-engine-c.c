/*
 * kvc-engine-c: a C engine that keeps its KV checkpoints through
 * libkvcformat (kvc.h), the way ds4's kvstore does: on each request it
 * restores the longest stored prefix of the prompt (verified load), touches
 * what it used, stores a checkpoint of the new prompt (write a temporary
 * file, rename it into place), and now and then rewrites a checkpoint's
 * tool-map trailer in place. No locks, as ds4: the daemon next to it must
 * cope on its own.
 *
 *   kvc-engine-c DIR run [--steps N] [--seed S] [--v1-every K] [--payload-bytes B]
 *                       [--tool-rewrite-every R] [--conversations C] [--budget-bytes X]
 *       the workload; prints "stored NAME vN", "loaded NAME", "touched NAME",
 *       "rewrote NAME", "evicted NAME" lines and a summary line.
 *   kvc-engine-c DIR load NAME...
 *       a verified load of each (into a buffer and again through a read
 *       callback); prints "ok NAME crc32c|structure" or "refused NAME STATUS: why";
 *       exit 1 if any was refused.
 *   kvc-engine-c DIR verify NAME...
 *       kvc_verify of each: "NAME VERDICT" and its problems.
 *
 * Build: cc kvc-engine-c.c $(pkg-config --cflags --libs kvcformat)
 */
#include <kvc.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *dir;

static void die(const char *what, kvc_status st, const kvc_error *err) {
    fprintf(stderr, "kvc-engine-c: %s: %s: %s\n", what, kvc_status_name(st), err ? err->message : "");
    exit(2);
}

/* splitmix64: the workload is a function of its seed. */
static uint64_t rng_state;
static uint64_t next_random(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

/* A DSV4-shaped payload: the 13-field prefix the checker reads, then bytes. */
enum { VOCAB = 256, PREFIX = 52 };
static uint32_t tokens_for(uint64_t payload_bytes, size_t text_len) {
    uint64_t room = (payload_bytes - PREFIX - 4u * VOCAB) / 4;
    uint64_t want = text_len / 4 + 1;
    return (uint32_t)(want < room ? want : room);
}

static void make_prefix(uint8_t *p, uint32_t tokens, uint32_t ctx) {
    uint32_t f[13] = { 0x34565344u, 1, ctx, 2048, 4096, 4096, ctx / 4, tokens, 61, 512, 128, VOCAB,
                       tokens < 4096 ? tokens : 4096 };
    for (int i = 0; i < 13; i++) put32(p + 4 * i, f[i]);
}

struct stream_payload { uint64_t seed; uint32_t tokens; uint32_t ctx; };

/* kvc_fill_fn: bytes as a function of (seed, offset), so nothing is held whole. */
static int fill_payload(void *ctx, uint64_t offset, void *buf, size_t len) {
    const struct stream_payload *s = ctx;
    uint8_t *b = buf;
    uint8_t prefix[PREFIX];
    make_prefix(prefix, s->tokens, s->ctx);
    for (size_t i = 0; i < len; i++) {
        uint64_t at = offset + i;
        b[i] = at < PREFIX ? prefix[at] : (uint8_t)((s->seed * 31 + at * 2654435761u) >> 13);
    }
    return 0;
}

/* ---- loading ------------------------------------------------------------------ */

struct crc_check { uint32_t crc; uint64_t bytes; };
static int read_chunk(void *ctx, const void *chunk, size_t len) {
    struct crc_check *c = ctx;
    c->crc = kvc_crc32c(c->crc, chunk, len);
    c->bytes += len;
    return 0;
}

/* The engine's restore: into a buffer sized from the header (grown on KVC_ERR_BUFFER). */
static kvc_status load_into_buffer(kvc_cache *cache, const char *name, kvc_checkpoint *cp, kvc_error *err) {
    size_t cap = 1 << 16, tcap = 256;
    for (;;) {
        uint8_t *payload = malloc(cap), *tools = malloc(tcap);
        if (!payload || !tools) { perror("malloc"); exit(2); }
        kvc_load_target t = { .payload = payload, .payload_cap = cap, .tool_map = tools, .tool_map_cap = tcap };
        kvc_status st = kvc_load(cache, name, -1, &t, cp, err);
        if (st == KVC_OK && cp->tool_map_bytes > 0) {
            kvc_tool_entry entries[16];
            size_t n = 0;
            st = kvc_tool_map_decode(tools, cp->tool_map_bytes, entries, 16, &n, err);
        }
        free(payload);
        free(tools);
        if (st != KVC_ERR_BUFFER) return st;
        cap = cp->header.payload_bytes;
        tcap = cp->tool_map_bytes;
    }
}

static int cmd_load(kvc_cache *cache, int argc, char **argv) {
    int refused = 0;
    for (int i = 0; i < argc; i++) {
        kvc_checkpoint cp;
        kvc_error err;
        kvc_status st = load_into_buffer(cache, argv[i], &cp, &err);
        if (st == KVC_OK) {
            /* Again through a read callback; the chunks' CRC must be the header's (v2). */
            struct crc_check c = { 0, 0 };
            kvc_load_target t = { .read_fn = read_chunk, .read_ctx = &c };
            st = kvc_load(cache, argv[i], -1, &t, &cp, &err);
            if (st == KVC_OK && cp.header.version == 2 && c.crc != cp.header.payload_crc) {
                printf("refused %s callback: CRC of the chunks %08x, header %08x\n", argv[i], c.crc, cp.header.payload_crc);
                refused++;
                continue;
            }
        }
        if (st == KVC_OK) {
            printf("ok %s %s\n", argv[i], cp.crc_verified ? "crc32c" : "structure");
        } else {
            printf("refused %s %s: %s\n", argv[i], kvc_status_name(st), err.message);
            refused++;
        }
    }
    return refused ? 1 : 0;
}

static int cmd_verify(kvc_cache *cache, int argc, char **argv) {
    static const char *verdicts[] = { "ok", "corrupt", "incompatible", "ignored" };
    int bad = 0;
    for (int i = 0; i < argc; i++) {
        kvc_verify_result r;
        kvc_error err;
        kvc_status st = kvc_verify(cache, argv[i], -1, &r, &err);
        if (st != KVC_OK) { printf("%s error %s: %s\n", argv[i], kvc_status_name(st), err.message); bad++; continue; }
        printf("%s %s\n", argv[i], verdicts[r.verdict]);
        for (size_t p = 0; p < r.problem_count && p < KVC_MAX_PROBLEMS; p++) printf("  %s\n", r.problems[p].detail);
        if (r.verdict == KVC_VERDICT_CORRUPT) bad++;
    }
    return bad ? 1 : 0;
}

/* ---- the workload ----------------------------------------------------------------- */

struct options {
    long steps, v1_every, tool_rewrite_every, conversations;
    uint64_t seed, payload_bytes, budget_bytes;
};

static void extend_text(uint8_t **text, size_t *len, size_t add) {
    *text = realloc(*text, *len + add);
    if (!*text) { perror("realloc"); exit(2); }
    for (size_t i = 0; i < add; i++) (*text)[*len + i] = (uint8_t)(' ' + next_random() % 94);
    *len += add;
}

static int cmd_run(kvc_cache *cache, const struct options *o) {
    uint8_t **texts = calloc((size_t)o->conversations, sizeof *texts);
    size_t *lens = calloc((size_t)o->conversations, sizeof *lens);
    uint8_t *payload = malloc(o->payload_bytes);
    if (!texts || !lens || !payload) { perror("calloc"); return 2; }
    long stored = 0, loaded = 0, touched = 0, rewrote = 0, evicted = 0, refused = 0;
    kvc_compat compat = { .model_id = 1, .quant_bits = 4, .ctx_size = 65536, .reject_different_quant = 0, .payload_abi = -1 };
    for (long step = 0; step < o->steps; step++) {
        long c = (long)(next_random() % (uint64_t)o->conversations);
        extend_text(&texts[c], &lens[c], 200 + next_random() % 600);
        uint64_t now = (uint64_t)time(NULL);
        kvc_error err;

        /* Restore the longest stored prefix, verified, then touch it. */
        kvc_checkpoint found;
        kvc_status st = kvc_find_prefix(cache, texts[c], lens[c], &compat, &found, &err);
        if (st == KVC_OK) {
            st = load_into_buffer(cache, found.name, &found, &err);
            if (st == KVC_OK) {
                loaded++;
                printf("loaded %s\n", found.name);
                st = kvc_touch(cache, found.name, KVC_TOUCH_INCREMENT, now, NULL, &err);
                if (st == KVC_OK) { touched++; printf("touched %s\n", found.name); }
                else if (st != KVC_ERR_IO) die("touch", st, &err); /* gone meanwhile (evicted): fine */
                if (o->tool_rewrite_every > 0 && step % o->tool_rewrite_every == 0) {
                    char id[32], dsml[96];
                    snprintf(id, sizeof id, "call_%ld", step);
                    snprintf(dsml, sizeof dsml, "<tool_call name=\"step\">%ld</tool_call>", step);
                    kvc_tool_entry e = { (const uint8_t *)id, strlen(id), (const uint8_t *)dsml, strlen(dsml) };
                    st = kvc_rewrite_tool_map(cache, found.name, &e, 1, now, NULL, &err);
                    if (st == KVC_OK) { rewrote++; printf("rewrote %s\n", found.name); }
                    else if (st != KVC_ERR_IO) die("rewrite tool map", st, &err);
                }
            } else if (st == KVC_ERR_CORRUPT || st == KVC_ERR_INCOMPATIBLE) {
                refused++;
                printf("refused %s %s: %s\n", found.name, kvc_status_name(st), err.message);
            } else if (st != KVC_ERR_IO) {
                die("load", st, &err);
            }
        } else if (st != KVC_ERR_NOT_FOUND) {
            die("find prefix", st, &err);
        }

        /* Make room as the engine would, then store the new prompt's checkpoint. */
        if (o->budget_bytes > 0) {
            kvc_incoming inc = { texts[c], lens[c], compat.model_id, compat.quant_bits, compat.ctx_size, 0 };
            kvc_victim victims[64];
            kvc_plan plan;
            st = kvc_plan_eviction(cache, o->budget_bytes, o->payload_bytes + lens[c] + 4096, now, &inc, -1,
                                   victims, 64, &plan, &err);
            if (st != KVC_OK && st != KVC_ERR_BUFFER) die("plan eviction", st, &err);
            for (size_t v = 0; v < plan.victim_count && v < 64; v++) {
                char path[4096];
                snprintf(path, sizeof path, "%s/%s", dir, victims[v].name);
                if (unlink(path) == 0) { evicted++; printf("evicted %s\n", victims[v].name); }
            }
        }
        kvc_store_params p;
        kvc_store_params_init(&p);
        p.version = (o->v1_every > 0 && stored % o->v1_every == o->v1_every - 1) ? 1 : 2;
        p.reason = KVC_REASON_CONTINUED;
        p.model_id = compat.model_id;
        p.quant_bits = compat.quant_bits;
        p.ctx_size = compat.ctx_size;
        p.tokens = tokens_for(o->payload_bytes, lens[c]);
        p.created_at = now;
        char id[32], dsml[64];
        snprintf(id, sizeof id, "call_%ld_0", step);
        snprintf(dsml, sizeof dsml, "<tool_call name=\"first\">%ld</tool_call>", step);
        kvc_tool_entry tool = { (const uint8_t *)id, strlen(id), (const uint8_t *)dsml, strlen(dsml) };
        char name[KVC_NAME_SIZE];
        if (step % 2 == 0) {
            struct stream_payload sp = { o->seed ^ (uint64_t)step, p.tokens, p.ctx_size };
            st = kvc_store_stream(cache, texts[c], lens[c], fill_payload, &sp, o->payload_bytes, &tool, 1, &p, name, &err);
        } else {
            make_prefix(payload, p.tokens, p.ctx_size);
            for (uint64_t i = PREFIX; i < o->payload_bytes; i++) payload[i] = (uint8_t)next_random();
            st = kvc_store(cache, texts[c], lens[c], payload, o->payload_bytes, &tool, 1, &p, name, &err);
        }
        if (st != KVC_OK) die("store", st, &err);
        stored++;
        printf("stored %s v%d\n", name, p.version);
        fflush(stdout);
    }
    printf("summary stored=%ld loaded=%ld touched=%ld rewrote=%ld evicted=%ld refused=%ld\n",
           stored, loaded, touched, rewrote, evicted, refused);
    for (long c = 0; c < o->conversations; c++) free(texts[c]);
    free(texts); free(lens); free(payload);
    return refused ? 1 : 0;
}

static uint64_t number(const char *flag, const char *v) {
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v ? v : "", &end, 10);
    if (!v || errno || *end) { fprintf(stderr, "kvc-engine-c: %s needs a number, got '%s'\n", flag, v ? v : ""); exit(2); }
    return n;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: kvc-engine-c DIR run|load|verify [...] (see the comment at the top of kvc-engine-c.c)\n");
        return 2;
    }
    dir = argv[1];
    kvc_cache *cache;
    kvc_error err;
    kvc_status st = kvc_cache_open(dir, &cache, &err);
    if (st != KVC_OK) die("open", st, &err);
    int rc;
    if (strcmp(argv[2], "run") == 0) {
        struct options o = { .steps = 40, .v1_every = 4, .tool_rewrite_every = 3, .conversations = 4,
                             .seed = 1, .payload_bytes = 256 << 10, .budget_bytes = 0 };
        for (int i = 3; i < argc; i++) {
            const char *v = i + 1 < argc ? argv[i + 1] : NULL;
            if (strcmp(argv[i], "--steps") == 0) o.steps = (long)number(argv[i], v);
            else if (strcmp(argv[i], "--seed") == 0) o.seed = number(argv[i], v);
            else if (strcmp(argv[i], "--v1-every") == 0) o.v1_every = (long)number(argv[i], v);
            else if (strcmp(argv[i], "--payload-bytes") == 0) o.payload_bytes = number(argv[i], v);
            else if (strcmp(argv[i], "--tool-rewrite-every") == 0) o.tool_rewrite_every = (long)number(argv[i], v);
            else if (strcmp(argv[i], "--conversations") == 0) o.conversations = (long)number(argv[i], v);
            else if (strcmp(argv[i], "--budget-bytes") == 0) o.budget_bytes = number(argv[i], v);
            else { fprintf(stderr, "kvc-engine-c: unknown option %s\n", argv[i]); return 2; }
            i++;
        }
        if (o.payload_bytes < PREFIX + 4 * VOCAB + 4 || o.conversations < 1) {
            fprintf(stderr, "kvc-engine-c: --payload-bytes must be at least %d and --conversations at least 1\n", PREFIX + 4 * VOCAB + 4);
            return 2;
        }
        rng_state = o.seed;
        rc = cmd_run(cache, &o);
    } else if (strcmp(argv[2], "load") == 0) {
        rc = cmd_load(cache, argc - 3, argv + 3);
    } else if (strcmp(argv[2], "verify") == 0) {
        rc = cmd_verify(cache, argc - 3, argv + 3);
    } else {
        fprintf(stderr, "kvc-engine-c: unknown command %s\n", argv[2]);
        rc = 2;
    }
    kvc_cache_close(cache);
    return rc;
}
