/* ds4-harness: ds4's own disk-cache code as a process the tests run beside
 * kvscrubd. Every store, restore (touch), same-text re-store (tool-map
 * rewrite in place) and eviction goes through ds4_kvstore.c as compiled from
 * ds4's source; only the model under it is a stand-in (standin_model.c) and
 * the server's KTM tool-map trailer hooks are written here after
 * ds4_server.c's (the write, the measure, the lenient load).
 *
 *   ds4-harness corpus DIR        Flash and Pro, quant 2 and 4, every store reason, tool maps,
 *                                 restored (touched), re-stored (tool map rewritten, or left)
 *   ds4-harness churn DIR SECONDS BUDGET_MB SEED
 *                                 a server's life under a small budget: stores, prefix restores,
 *                                 tool-map rewrites and ds4's own eviction, for SECONDS
 *   ds4-harness check DIR         the engine's view of every checkpoint: restore each one through
 *                                 ds4_kvstore_try_load_text and say whether it was restored, refused
 *                                 (and why), or restored with bytes other than those stored
 *   ds4-harness agent DIR [N]     ds4-agent's saves as ds4_agent.c writes them: titled sessions,
 *                                 a legacy session named after its text, a stripped one, sysprompt.kv
 *                                 (and N more titled sessions)
 *   ds4-harness agent-check DIR   load every saved session as ds4-agent does
 *   ds4-harness bench DIR SECONDS BUDGET_MB SEED LATENCY_FILE
 *                                 the churn, timed: operations per second, and every restore's
 *                                 latency in microseconds appended to LATENCY_FILE
 *
 * Every command prints one JSON object on its last line of output. The
 * payload version the engine writes is $DS4_PAYLOAD_VERSION (default 2, as
 * e8e8779). */

#include "ds4_kvstore.h"
#include "standin_model.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CTX 65536

static uint32_t payload_version(void) {
    const char *v = getenv("DS4_PAYLOAD_VERSION");
    return v && *v ? (uint32_t)strtoul(v, NULL, 10) : 2u;
}

/* ---- the log: what ds4's cache code says, counted ---- */

typedef struct {
    int evicted, load_failed, discarded, stored, hits, replaced, skipped;
    char last[512];
} log_counts;

static void on_log(void *ud, ds4_kvstore_log_type type, const char *msg) {
    (void)type;
    log_counts *c = ud;
    snprintf(c->last, sizeof(c->last), "%s", msg);
    if (strstr(msg, "kv cache evicted")) c->evicted++;
    else if (strstr(msg, "kv cache load failed")) c->load_failed++;
    else if (strstr(msg, "discarded")) c->discarded++;
    else if (strstr(msg, "kv cache stored")) c->stored++;
    else if (strstr(msg, "kv cache hit")) c->hits++;
    else if (strstr(msg, "replaced incompatible")) c->replaced++;
    else if (strstr(msg, "skipped")) c->skipped++;
    if (getenv("DS4_HARNESS_VERBOSE")) fprintf(stderr, "ds4: %s\n", msg);
}

/* ---- the server's KTM tool-id map trailer (ds4_server.c) ---- */

typedef struct {
    int entries;  /* how many tool calls the "conversation" has made */
    int seed;
    int loaded;   /* entries the last load read back */
} tool_memory;

static void le32(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24); }

static void tool_entry(const tool_memory *m, int i, char *id, size_t idn, char *dsml, size_t dn) {
    snprintf(id, idn, "call_%d_%d", m->seed, i);
    snprintf(dsml, dn, "<|DSML|invoke name=\"tool%d\"><|DSML|parameter name=\"q\">%d</|DSML|parameter></|DSML|invoke>", i, m->seed);
}

static bool ktm_size(void *ud, const char *text, uint64_t *bytes_out) {
    (void)text;
    const tool_memory *m = ud;
    uint64_t bytes = 8;
    for (int i = 0; i < m->entries; i++) {
        char id[64], dsml[256];
        tool_entry(m, i, id, sizeof(id), dsml, sizeof(dsml));
        bytes += 8 + strlen(id) + strlen(dsml);
    }
    *bytes_out = m->entries ? bytes : 0;
    return true;
}

static bool ktm_write(void *ud, FILE *fp, const char *text, uint64_t *written) {
    const tool_memory *m = ud;
    *written = 0;
    if (m->entries == 0) return true;
    uint8_t h[8] = {'K', 'T', 'M', 1};
    le32(h + 4, (uint32_t)m->entries);
    if (fwrite(h, 1, 8, fp) != 8) return false;
    for (int i = 0; i < m->entries; i++) {
        char id[64], dsml[256];
        tool_entry(m, i, id, sizeof(id), dsml, sizeof(dsml));
        uint8_t lens[8];
        le32(lens, (uint32_t)strlen(id));
        le32(lens + 4, (uint32_t)strlen(dsml));
        if (fwrite(lens, 1, 8, fp) != 8 || fwrite(id, 1, strlen(id), fp) != strlen(id) ||
            fwrite(dsml, 1, strlen(dsml), fp) != strlen(dsml)) return false;
    }
    return ktm_size(ud, text, written);
}

/* kv_tool_map_load_from_pos: lenient, a short or malformed map yields fewer entries. */
static int ktm_load(void *ud, FILE *fp, const void *wanted) {
    (void)wanted;
    tool_memory *m = ud;
    m->loaded = 0;
    uint8_t h[8];
    if (fread(h, 1, 8, fp) != 8 || memcmp(h, "KTM\1", 4) != 0) return 0;
    uint32_t count = ds4_kvstore_le_get32(h + 4);
    for (uint32_t i = 0; i < count && i < 1024; i++) {
        uint8_t lens[8];
        if (fread(lens, 1, 8, fp) != 8) break;
        uint32_t il = ds4_kvstore_le_get32(lens), dl = ds4_kvstore_le_get32(lens + 4);
        if (il == 0 || il > 256 || dl == 0 || dl > (1u << 20)) break;
        char *buf = malloc((size_t)il + dl);
        bool ok = buf && fread(buf, 1, (size_t)il + dl, fp) == (size_t)il + dl;
        free(buf);
        if (!ok) break;
        m->loaded++;
    }
    return m->loaded;
}

static ds4_kvstore_trailer_hooks hooks_for(tool_memory *m) {
    ds4_kvstore_trailer_hooks h = {.ud = m, .ext_flag = DS4_KVSTORE_EXT_TOOL_MAP, .serialized_size = ktm_size,
                                   .write = ktm_write, .load = ktm_load, .load_wanted = NULL};
    return h;
}

/* ---- one engine instance: a ds4-server with its model, its kvstore ---- */

typedef struct {
    ds4_engine engine;
    ds4_session session;
    ds4_kvstore kc;
    log_counts log;
    tool_memory tools;
    ds4_kvstore_trailer_hooks hooks;
} server;

static bool server_open(server *s, const char *dir, int model_id, int quant, uint64_t budget_mb) {
    memset(s, 0, sizeof(*s));
    standin_engine_init(&s->engine, model_id, quant, payload_version());
    standin_session_init(&s->session, &s->engine, CTX);
    ds4_kvstore_options opt = ds4_kvstore_default_options();
    opt.min_tokens = 32; /* texts here are hundreds of bytes, not thousands of tokens */
    s->hooks = hooks_for(&s->tools);
    return ds4_kvstore_open(&s->kc, dir, budget_mb, false, opt, "ds4-harness", on_log, &s->log);
}

static void server_close(server *s) {
    ds4_kvstore_close(&s->kc);
    standin_session_free(&s->session);
}

/* Prefill `text` and store it (ds4_kvstore_store_live_prefix, as the server does). */
static bool server_store(server *s, const char *text, const char *reason, int tool_entries, int tool_seed) {
    size_t len = strlen(text);
    standin_session_set(&s->session, text, len);
    ds4_tokens toks = {0};
    ds4_tokens_copy(&toks, &s->session.checkpoint);
    s->tools.entries = tool_entries;
    s->tools.seed = tool_seed;
    char err[160] = {0};
    bool ok = ds4_kvstore_store_live_prefix(&s->kc, &s->engine, &s->session, &toks, (int)len, reason, &s->hooks, err,
                                            sizeof(err));
    ds4_tokens_free(&toks);
    return ok;
}

/* Look the prompt up and restore the longest stored prefix (ds4_kvstore_try_load_text). */
static int server_restore(server *s, const char *prompt, int *wrong) {
    ds4_session_invalidate(&s->session);
    int before = s->session.wrong_bytes;
    ds4_tokens eff = {0};
    ds4_kvstore_load_result res;
    int n = ds4_kvstore_try_load_text(&s->kc, &s->engine, &s->session, prompt, &eff, &res, &s->hooks, false);
    ds4_tokens_free(&eff);
    ds4_kvstore_load_result_free(&res);
    if (wrong) *wrong += s->session.wrong_bytes - before;
    return n;
}

/* ---- texts ---- */

static uint64_t rng_state;
static uint64_t rnd(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void append_words(char *buf, size_t cap, int words) {
    static const char *w[] = {"the", "cache", "engine", "prompt", "tool", "scrub", "token", "layer", "checkpoint",
                              "<｜User｜>", "<｜Assistant｜>", "disk", "restore", "prefix", "budget", "\n"};
    size_t len = strlen(buf);
    for (int i = 0; i < words && len + 32 < cap; i++) {
        const char *x = w[rnd() % (sizeof(w) / sizeof(w[0]))];
        len += (size_t)snprintf(buf + len, cap - len, "%s ", x);
    }
}

static const char *reasons[] = {"cold", "continued", "evict", "shutdown", "agent-system", "agent-session", "other"};

/* ---- commands ---- */

static int cmd_corpus(const char *dir) {
    rng_state = 146;
    int stores = 0, touched = 0, rewritten = 0, kept_map = 0, files_expected = 0;
    for (int model = 0; model <= 1; model++) {
        for (int q = 2; q <= 4; q += 2) {
            server s;
            if (!server_open(&s, dir, model, q, 1 << 20)) return 2;
            char texts[7][4096];
            for (int r = 0; r < 7; r++) {
                snprintf(texts[r], sizeof(texts[r]), "[model %d quant %d reason %s] ", model, q, reasons[r]);
                append_words(texts[r], sizeof(texts[r]), 40 + (int)(rnd() % 200));
                int tools = r % 2 ? 0 : 1 + (int)(rnd() % 3);
                if (server_store(&s, texts[r], reasons[r], tools, r)) stores++, files_expected++;
            }
            /* Restores touch (hits + 1, last_used); a prompt that extends the text finds it by prefix. */
            for (int r = 0; r < 7; r += 2) {
                char prompt[4200];
                snprintf(prompt, sizeof(prompt), "%.4096s and then the user asks more", texts[r]);
                int wrong = 0;
                if (server_restore(&s, prompt, &wrong) > 0 && !wrong) touched++;
            }
            /* The same text stored again: the tool map is rewritten in place (or, when the map
             * measured empty, the old trailer stays). */
            for (int r = 1; r < 7; r += 2) {
                if (server_store(&s, texts[r], reasons[r], 2, 100 + r)) rewritten++;
            }
            if (server_store(&s, texts[0], reasons[0], 0, 0)) kept_map++;
            server_close(&s);
        }
    }
    printf("{\"stores\":%d,\"touched\":%d,\"rewritten\":%d,\"empty_map_restores\":%d,\"files\":%d}\n", stores, touched,
           rewritten, kept_map, files_expected);
    return 0;
}

static double now_sec(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmd_churn(const char *dir, double seconds, uint64_t budget_mb, uint64_t seed, const char *latency_file) {
    FILE *lat = latency_file ? fopen(latency_file, "a") : NULL;
    rng_state = seed;
    server s;
    if (!server_open(&s, dir, 1, 4, budget_mb)) return 2;
    enum { CONVS = 8 };
    static char conv[CONVS][16384];
    int stored_len[CONVS] = {0};
    for (int c = 0; c < CONVS; c++) {
        snprintf(conv[c], sizeof(conv[c]), "<｜begin｜>system %d: ", c);
        append_words(conv[c], sizeof(conv[c]), 30);
    }
    int ops = 0, stores = 0, restores = 0, hits = 0, misses = 0, rewrites = 0, wrong = 0, fresh = 0;
    double t0 = now_sec();
    while (now_sec() - t0 < seconds) {
        int c = (int)(rnd() % CONVS);
        uint64_t roll = rnd() % 10;
        ops++;
        if (roll < 4) {
            /* The conversation goes on: a turn is appended and the new prefix stored. */
            if (strlen(conv[c]) > sizeof(conv[c]) - 600) {
                snprintf(conv[c], sizeof(conv[c]), "<｜begin｜>system %d fresh %d: ", c, ops);
                append_words(conv[c], sizeof(conv[c]), 30);
                stored_len[c] = 0;
                fresh++;
            }
            append_words(conv[c], sizeof(conv[c]), 20 + (int)(rnd() % 60));
            const char *reason = stored_len[c] == 0 ? "cold" : (rnd() % 5 == 0 ? "evict" : "continued");
            if (server_store(&s, conv[c], reason, (int)(rnd() % 3), ops)) stores++;
            stored_len[c] = (int)strlen(conv[c]);
        } else if (roll < 8) {
            /* A request whose prompt extends the conversation: restore its longest stored prefix. */
            char prompt[17000];
            snprintf(prompt, sizeof(prompt), "%s<｜User｜>next question %d", conv[c], ops);
            restores++;
            double r0 = now_sec();
            int got = server_restore(&s, prompt, &wrong);
            if (lat && got > 0) fprintf(lat, "%.1f\n", (now_sec() - r0) * 1e6);
            if (got > 0) hits++; else misses++;
        } else if (stored_len[c] > 0) {
            /* The same text stored again with the tool calls made since: rewritten in place. */
            char again[16384];
            memcpy(again, conv[c], (size_t)stored_len[c]);
            again[stored_len[c]] = 0;
            if (server_store(&s, again, "continued", 1 + (int)(rnd() % 4), ops)) rewrites++;
        }
    }
    double elapsed = now_sec() - t0;
    if (lat) fclose(lat);
    printf("{\"seconds\":%.3f,\"operations\":%d,\"stores\":%d,\"restores\":%d,\"hits\":%d,\"misses\":%d,\"rewrites\":%d,"
           "\"engine_evictions\":%d,\"load_failures\":%d,\"engine_discards\":%d,\"wrong_byte_restores\":%d,"
           "\"fresh_conversations\":%d}\n",
           elapsed, ops, stores, restores, hits, misses, rewrites, s.log.evicted, s.log.load_failed, s.log.discarded, wrong, fresh);
    server_close(&s);
    return 0;
}

static char *read_text(const char *path, uint32_t *len_out) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    ds4_kvstore_entry e = {0};
    uint32_t tb = 0;
    char *text = NULL;
    if (ds4_kvstore_read_header(fp, &e, &tb)) {
        text = malloc((size_t)tb + 1);
        if (text && fread(text, 1, tb, fp) == tb) {
            text[tb] = 0;
            *len_out = tb;
        } else {
            free(text);
            text = NULL;
        }
    }
    fclose(fp);
    return text;
}

/* The engine's view of every checkpoint: restored, refused (why), not indexed, wrong bytes. */
static int cmd_check(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 2;
    int files = 0, restored = 0, refused = 0, not_indexed = 0, wrong = 0, deleted = 0;
    struct dirent *de;
    char names[4096][48];
    int n = 0;
    while ((de = readdir(d)) && n < 4096) {
        char sha[41];
        if (ds4_kvstore_sha_hex_name(de->d_name, sha)) snprintf(names[n++], 48, "%.43s", de->d_name);
    }
    closedir(d);
    for (int i = 0; i < n; i++) {
        files++;
        char *path = ds4_kvstore_path_join(dir, names[i]);
        char sha[41];
        ds4_kvstore_sha_hex_name(names[i], sha);
        ds4_kvstore_entry e = {0};
        if (!ds4_kvstore_read_entry_file(path, sha, &e)) {
            printf("%s not-indexed\n", names[i]);
            not_indexed++;
            free(path);
            continue;
        }
        uint32_t tl = 0;
        char *text = read_text(path, &tl);
        server s;
        server_open(&s, dir, e.model_id, e.quant_bits, 1 << 20);
        int w = 0;
        int got = text && strlen(text) == tl ? server_restore(&s, text, &w) : 0;
        bool gone = access(path, F_OK) != 0;
        if (got > 0 && w == 0) {
            printf("%s restored tokens=%d tools=%d\n", names[i], got, s.tools.loaded);
            restored++;
        } else if (got > 0) {
            printf("%s WRONG-BYTES tokens=%d\n", names[i], got);
            wrong++;
        } else {
            printf("%s refused: %s%s\n", names[i], s.log.last, gone ? " (the engine deleted it)" : "");
            refused++;
            if (gone) deleted++;
        }
        server_close(&s);
        free(text);
        free(path);
        ds4_kvstore_entry_free(&e);
    }
    printf("{\"files\":%d,\"restored\":%d,\"refused\":%d,\"not_indexed\":%d,\"wrong_bytes\":%d,\"engine_deleted\":%d}\n",
           files, restored, refused, not_indexed, wrong, deleted);
    return 0;
}

/* ---- ds4-agent's saved sessions (ds4_agent.c, excerpted in the reference) ---- */

static void identity_sha(const char *title, uint64_t created_at, char out[41]) {
    size_t tl = strlen(title);
    uint8_t *b = malloc(tl + 8);
    memcpy(b, title, tl);
    for (int i = 0; i < 8; i++) b[tl + i] = (uint8_t)(created_at >> (8 * i));
    ds4_kvstore_sha1_bytes_hex(b, tl + 8, out);
    free(b);
}

/* agent_kv_save_path: header, text, payload, title trailer; mkstemp, rename. strip: payload 0. */
static bool agent_save(const char *dir, const char *name, const char *text, const char *reason, const char *title,
                       uint64_t created_at, bool strip) {
    ds4_engine eng;
    standin_engine_init(&eng, 1, 4, payload_version());
    ds4_session s;
    standin_session_init(&s, &eng, CTX);
    standin_session_set(&s, text, strlen(text));
    char *path = ds4_kvstore_path_join(dir, name);
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    FILE *fp = fd >= 0 ? fdopen(fd, "wb") : NULL;
    bool ok = fp != NULL;
    uint64_t payload = strip ? 0 : ds4_session_payload_bytes(&s);
    uint8_t h[DS4_KVSTORE_FIXED_HEADER];
    ds4_kvstore_fill_header(h, 1, 4, ds4_kvstore_reason_code(reason), title ? DS4_KVSTORE_EXT_SESSION_TITLE : 0,
                            (uint32_t)strlen(text), 0, CTX, created_at, (uint64_t)time(NULL), payload);
    uint8_t tb[4];
    ds4_kvstore_le_put32(tb, (uint32_t)strlen(text));
    char err[160];
    ok = ok && fwrite(h, 1, sizeof(h), fp) == sizeof(h) && fwrite(tb, 1, 4, fp) == 4 &&
         fwrite(text, 1, strlen(text), fp) == strlen(text) &&
         (strip || ds4_session_save_payload(&s, fp, err, sizeof(err)) == 0);
    if (ok && title) {
        uint8_t lb[4];
        ds4_kvstore_le_put32(lb, (uint32_t)strlen(title));
        ok = fwrite(lb, 1, 4, fp) == 4 && fwrite(title, 1, strlen(title), fp) == strlen(title);
    }
    if (fp && fclose(fp) != 0) ok = false;
    if (ok && rename(tmp, path) != 0) ok = false;
    if (!ok) unlink(tmp);
    free(path);
    standin_session_free(&s);
    return ok;
}

static int cmd_agent(const char *dir, int extra) {
    mkdir(dir, 0700);
    rng_state = 6;
    int saved = 0;
    /* More titled sessions, for a directory of many saves. */
    for (int i = 0; i < extra; i++) {
        char title[64], text[4096] = "<｜begin｜>a saved session: ";
        snprintf(title, sizeof(title), "session %d", i);
        append_words(text, sizeof(text), 200);
        uint64_t created = 1771000000ull + (uint64_t)i * 60;
        char sha[41], name[48];
        identity_sha(title, created, sha);
        snprintf(name, sizeof(name), "%s.kv", sha);
        saved += agent_save(dir, name, text, "agent-session", title, created, false);
    }
    const char *titles[] = {"Refactor the cache loader", "Why is the scrub slow?", "plan the release"};
    for (int i = 0; i < 3; i++) {
        char text[4096] = "<｜begin｜>agent transcript: ";
        append_words(text, sizeof(text), 60 + 20 * i);
        uint64_t created = 1770000000ull + (uint64_t)i * 3600;
        char sha[41], name[48];
        identity_sha(titles[i], created, sha);
        snprintf(name, sizeof(name), "%s.kv", sha);
        saved += agent_save(dir, name, text, "agent-session", titles[i], created, i == 2);
    }
    /* A session saved before titles existed: named after its text. */
    char legacy[4096] = "<｜begin｜>an older agent session ";
    append_words(legacy, sizeof(legacy), 50);
    char sha[41], name[48];
    ds4_kvstore_sha1_bytes_hex(legacy, strlen(legacy), sha);
    snprintf(name, sizeof(name), "%s.kv", sha);
    saved += agent_save(dir, name, legacy, "agent-session", NULL, 1760000000ull, false);
    char sys[4096] = "<｜begin｜>You are ds4-agent. Tools: ";
    append_words(sys, sizeof(sys), 80);
    saved += agent_save(dir, "sysprompt.kv", sys, "agent-system", NULL, 1770000000ull, false);
    printf("{\"saved\":%d}\n", saved);
    return 0;
}

/* agent_kv_load_path for each saved session: identity (or nothing for sysprompt.kv), model,
 * quant, then the payload (or, stripped, a rebuild from the text). */
static int cmd_agent_check(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 2;
    int files = 0, loaded = 0, refused = 0, wrong = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t nl = strlen(de->d_name);
        if (nl < 4 || strcmp(de->d_name + nl - 3, ".kv")) continue;
        files++;
        char *path = ds4_kvstore_path_join(dir, de->d_name);
        FILE *fp = fopen(path, "rb");
        ds4_kvstore_entry hdr = {0};
        uint32_t tl = 0;
        const char *why = NULL;
        char *text = NULL, *title = NULL;
        if (!fp || !ds4_kvstore_read_header(fp, &hdr, &tl)) why = "invalid KV header";
        if (!why) {
            text = malloc((size_t)tl + 1);
            if (fread(text, 1, tl, fp) != tl) why = "truncated cached text"; else text[tl] = 0;
        }
        long payload_pos = fp ? ftell(fp) : 0;
        if (!why && (hdr.ext_flags & DS4_KVSTORE_EXT_SESSION_TITLE)) {
            uint8_t lb[4];
            if (fseek(fp, payload_pos + (long)hdr.payload_bytes, SEEK_SET) != 0 || fread(lb, 1, 4, fp) != 4) {
                why = "missing agent session title trailer";
            } else {
                uint32_t n = ds4_kvstore_le_get32(lb);
                title = malloc((size_t)n + 1);
                if (fread(title, 1, n, fp) != n) why = "truncated agent session title trailer"; else title[n] = 0;
            }
            fseek(fp, payload_pos, SEEK_SET);
        }
        if (!why && strcmp(de->d_name, "sysprompt.kv") != 0) {
            char sha[41];
            if (title) identity_sha(title, hdr.created_at, sha); else ds4_kvstore_sha1_bytes_hex(text, tl, sha);
            if (strncmp(sha, de->d_name, 40) != 0) why = "cached session identity does not match file name";
        }
        if (!why && hdr.payload_bytes != 0) {
            ds4_engine eng;
            standin_engine_init(&eng, hdr.model_id, hdr.quant_bits, payload_version());
            ds4_session s;
            standin_session_init(&s, &eng, CTX);
            char err[160] = {0};
            if (ds4_session_load_payload(&s, fp, hdr.payload_bytes, err, sizeof(err)) != 0) why = "failed to load KV payload";
            else if (s.checkpoint.len != (int)hdr.tokens) why = "KV payload token count mismatch";
            else if (s.wrong_bytes) wrong++;
            standin_session_free(&s);
        }
        if (why) { printf("%s refused: %s\n", de->d_name, why); refused++; }
        else { printf("%s loaded%s\n", de->d_name, hdr.payload_bytes ? "" : " (stripped: rebuilt from its text)"); loaded++; }
        if (fp) fclose(fp);
        free(text);
        free(title);
        free(path);
    }
    closedir(d);
    printf("{\"files\":%d,\"loaded\":%d,\"refused\":%d,\"wrong_bytes\":%d}\n", files, loaded, refused, wrong);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "corpus")) return cmd_corpus(argv[2]);
    if (argc >= 6 && !strcmp(argv[1], "churn"))
        return cmd_churn(argv[2], atof(argv[3]), strtoull(argv[4], NULL, 10), strtoull(argv[5], NULL, 10), NULL);
    if (argc >= 7 && !strcmp(argv[1], "bench"))
        return cmd_churn(argv[2], atof(argv[3]), strtoull(argv[4], NULL, 10), strtoull(argv[5], NULL, 10), argv[6]);
    if (argc >= 3 && !strcmp(argv[1], "check")) return cmd_check(argv[2]);
    if (argc >= 3 && !strcmp(argv[1], "agent")) return cmd_agent(argv[2], argc >= 4 ? atoi(argv[3]) : 0);
    if (argc >= 3 && !strcmp(argv[1], "agent-check")) return cmd_agent_check(argv[2]);
    fprintf(stderr, "usage: ds4-harness corpus DIR | churn DIR SECONDS BUDGET_MB SEED | check DIR | agent DIR | agent-check DIR\n");
    return 2;
}
