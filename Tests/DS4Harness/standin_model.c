/* A stand-in for ds4's model, so that ds4's own cache code (ds4_kvstore.c,
 * compiled unmodified from ../shared/reference/ds4-e8e8779 or
 * $KVSCRUBD_DS4_SOURCE) can run in the test suite without weights.
 *
 * What it provides is exactly the engine boundary ds4_kvstore.c calls
 * (ds4.h): tokens, a one-token-per-byte "tokenizer", the model id and routed
 * quantization, and a session whose payload is laid out as ds4.c's
 * ds4_session_save_payload writes it on the CPU path: 13 u32 (magic DSV4,
 * payload version, saved context, prefill chunk, raw ring capacity, raw
 * window, compressed capacity, token count, layers, head dim, indexer head
 * dim, vocabulary, live raw rows), the token ids, the logits, per-layer
 * compressed and indexer row counts, then per-layer tensors.
 *
 * Why the tensor bytes are a pure function of the token history: a restore
 * can then tell whether it read what was stored. The real engine cannot; it
 * would run on wrong bytes. The stand-in counts such restores
 * (standin_wrong_bytes) instead, which is the figure the tests hold at 0.
 *
 * The load path makes the checks ds4_session_load_payload makes, in its
 * order, with its messages: magic and version ("unsupported session payload
 * version"), context, layout ("a different DS4 layout"), raw window, counts.
 * The payload version the engine writes and accepts is a parameter: 2 as
 * e8e8779, 1 before it. */

#include "standin_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAYLOAD_MAGIC 0x34565344u /* "DSV4" */
#define PAYLOAD_FIELDS 13u
#define PREFILL_CAP 2048u
#define RAW_CAP 64u
#define INDEXER_HEAD_DIM 4u

/* ---- tokens (ds4.h) ---- */

void ds4_tokens_push(ds4_tokens *tv, int token) {
    if (tv->len == tv->cap) {
        tv->cap = tv->cap ? tv->cap * 2 : 64;
        tv->v = realloc(tv->v, (size_t)tv->cap * sizeof(int));
        if (!tv->v) abort();
    }
    tv->v[tv->len++] = token;
}

void ds4_tokens_free(ds4_tokens *tv) {
    free(tv->v);
    tv->v = NULL;
    tv->len = tv->cap = 0;
}

void ds4_tokens_copy(ds4_tokens *dst, const ds4_tokens *src) {
    dst->len = 0;
    for (int i = 0; src && i < src->len; i++) ds4_tokens_push(dst, src->v[i]);
}

bool ds4_tokens_starts_with(const ds4_tokens *tokens, const ds4_tokens *prefix) {
    if (!tokens || !prefix || prefix->len > tokens->len) return false;
    return prefix->len == 0 || memcmp(tokens->v, prefix->v, (size_t)prefix->len * sizeof(int)) == 0;
}

void ds4_tokenize_rendered_chat(ds4_engine *e, const char *text, ds4_tokens *out) {
    (void)e;
    out->len = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) ds4_tokens_push(out, *p);
}

char *ds4_token_text(ds4_engine *e, int token, size_t *len) {
    (void)e;
    char *s = malloc(2);
    if (!s) abort();
    s[0] = (char)token;
    s[1] = 0;
    *len = 1;
    return s;
}

/* ---- engine ---- */

int ds4_engine_model_id(ds4_engine *e) { return e->model_id; }
int ds4_engine_routed_quant_bits(ds4_engine *e) { return e->quant_bits; }

void standin_engine_init(ds4_engine *e, int model_id, int quant_bits, uint32_t payload_version) {
    memset(e, 0, sizeof(*e));
    e->model_id = model_id;
    e->quant_bits = quant_bits;
    e->payload_version = payload_version;
    /* Flash and Pro differ in shape, as the real models do. */
    e->layers = model_id == 0 ? 2 : 3;
    e->head_dim = model_id == 0 ? 8 : 12;
    e->vocab = model_id == 0 ? 64 : 96;
}

/* ---- session ---- */

void standin_session_init(ds4_session *s, ds4_engine *e, int ctx) {
    memset(s, 0, sizeof(*s));
    s->engine = e;
    s->ctx = ctx;
}

void standin_session_free(ds4_session *s) { ds4_tokens_free(&s->checkpoint); }

void standin_session_set(ds4_session *s, const char *text, size_t len) {
    s->checkpoint.len = 0;
    for (size_t i = 0; i < len; i++) ds4_tokens_push(&s->checkpoint, (unsigned char)text[i]);
    s->valid = true;
}

int ds4_session_ctx(ds4_session *s) { return s->ctx; }
const ds4_tokens *ds4_session_tokens(ds4_session *s) { return s->valid ? &s->checkpoint : NULL; }
void ds4_session_invalidate(ds4_session *s) { s->valid = false; s->checkpoint.len = 0; }

static uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t history_hash(const ds4_tokens *t) {
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < t->len; i++) h = mix64(h ^ (uint64_t)(unsigned)t->v[i]);
    return h;
}

static uint32_t raw_live(uint32_t tokens) { return tokens < RAW_CAP ? tokens : RAW_CAP; }
static uint32_t comp_rows(uint32_t tokens) { return tokens / 4; }
static uint32_t index_rows(uint32_t tokens) { return tokens / 16; }

/* $DS4_STANDIN_SCALE multiplies the tensors (benchmarks want checkpoints of megabytes, as real ones are). */
static uint64_t tensor_scale(void) {
    static uint64_t scale = 0;
    if (!scale) {
        const char *v = getenv("DS4_STANDIN_SCALE");
        scale = v && *v ? strtoull(v, NULL, 10) : 1;
        if (!scale) scale = 1;
    }
    return scale;
}

/* Bytes of layer il's tensors: raw rows, compressed rows, indexer rows. */
static uint64_t layer_bytes(const ds4_engine *e, uint32_t tokens) {
    return tensor_scale() * 4ull * ((uint64_t)raw_live(tokens) * e->head_dim + (uint64_t)comp_rows(tokens) * e->head_dim +
                                    (uint64_t)index_rows(tokens) * INDEXER_HEAD_DIM);
}

uint64_t ds4_session_payload_bytes(ds4_session *s) {
    if (!s || !s->valid) return 0;
    const ds4_engine *e = s->engine;
    uint32_t n = (uint32_t)s->checkpoint.len;
    return 4ull * PAYLOAD_FIELDS + 4ull * n + 4ull * e->vocab + 8ull * e->layers + e->layers * layer_bytes(e, n);
}

static float logit(uint64_t h, uint32_t i) { return (float)(mix64(h ^ (0x10000ull + i)) % 20000) / 100.0f - 100.0f; }


/* tensor_byte for k bytes from `off` (a multiple of 8 here: the buffers are 4096 bytes). */
static void fill_tensor(uint8_t *buf, size_t k, uint64_t h, uint32_t layer, uint64_t off) {
    for (size_t j = 0; j < k; j += 8) {
        uint64_t w = mix64(h ^ ((uint64_t)layer << 48) ^ ((off + j) >> 3));
        for (size_t b = 0; b < 8 && j + b < k; b++) buf[j + b] = (uint8_t)(w >> (8 * b));
    }
}

static int put32(FILE *fp, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    return fwrite(b, 1, 4, fp) == 4 ? 0 : 1;
}

static void set_err(char *err, size_t errlen, const char *msg) {
    if (errlen) snprintf(err, errlen, "%s", msg);
}

int ds4_session_save_payload(ds4_session *s, FILE *fp, char *err, size_t errlen) {
    if (!s || !fp || !s->valid) {
        set_err(err, errlen, "session has no valid checkpoint to save");
        return 1;
    }
    const ds4_engine *e = s->engine;
    uint32_t n = (uint32_t)s->checkpoint.len;
    uint64_t h = history_hash(&s->checkpoint);
    uint32_t head[PAYLOAD_FIELDS] = {PAYLOAD_MAGIC, e->payload_version, (uint32_t)s->ctx, PREFILL_CAP, RAW_CAP, RAW_CAP,
                                     (uint32_t)s->ctx / 4, n, e->layers, e->head_dim, INDEXER_HEAD_DIM, e->vocab,
                                     raw_live(n)};
    for (uint32_t i = 0; i < PAYLOAD_FIELDS; i++)
        if (put32(fp, head[i])) goto fail;
    for (uint32_t i = 0; i < n; i++)
        if (put32(fp, (uint32_t)s->checkpoint.v[i])) goto fail;
    for (uint32_t i = 0; i < e->vocab; i++) {
        float f = logit(h, i);
        uint32_t u;
        memcpy(&u, &f, 4);
        if (put32(fp, u)) goto fail;
    }
    for (uint32_t il = 0; il < e->layers; il++)
        if (put32(fp, comp_rows(n))) goto fail;
    for (uint32_t il = 0; il < e->layers; il++)
        if (put32(fp, index_rows(n))) goto fail;
    for (uint32_t il = 0; il < e->layers; il++) {
        uint64_t lb = layer_bytes(e, n);
        uint8_t buf[4096];
        for (uint64_t off = 0; off < lb;) {
            size_t k = lb - off < sizeof(buf) ? (size_t)(lb - off) : sizeof(buf);
            fill_tensor(buf, k, h, il, off);
            if (fwrite(buf, 1, k, fp) != k) goto fail;
            off += k;
        }
    }
    return 0;
fail:
    set_err(err, errlen, "short write of the session payload");
    return 1;
}

static int get32(FILE *fp, uint64_t *remaining, uint32_t *out) {
    uint8_t b[4];
    if (*remaining < 4 || fread(b, 1, 4, fp) != 4) return 1;
    *remaining -= 4;
    *out = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    return 0;
}

int ds4_session_load_payload(ds4_session *s, FILE *fp, uint64_t payload_bytes, char *err, size_t errlen) {
    if (!s || !fp) {
        set_err(err, errlen, "invalid session payload load");
        return 1;
    }
    const ds4_engine *e = s->engine;
    uint64_t remaining = payload_bytes;
    uint32_t h[PAYLOAD_FIELDS];
    for (uint32_t i = 0; i < PAYLOAD_FIELDS; i++) {
        if (get32(fp, &remaining, &h[i])) {
            set_err(err, errlen, "truncated session payload");
            return 1;
        }
    }
    if (h[0] != PAYLOAD_MAGIC || h[1] != e->payload_version) {
        set_err(err, errlen, "unsupported session payload version");
        return 1;
    }
    uint32_t saved_ctx = h[2], tokens = h[7];
    if (saved_ctx > (uint32_t)s->ctx || tokens >= (uint32_t)s->ctx) {
        set_err(err, errlen, "KV checkpoint does not fit current context");
        return 1;
    }
    if (h[8] != e->layers || h[9] != e->head_dim || h[10] != INDEXER_HEAD_DIM || h[11] != e->vocab) {
        set_err(err, errlen, "KV checkpoint was written for a different DS4 layout");
        return 1;
    }
    if (h[5] != RAW_CAP || h[12] != raw_live(tokens)) {
        set_err(err, errlen, "KV checkpoint raw ring layout does not match current context");
        return 1;
    }
    ds4_tokens loaded = {0};
    for (uint32_t i = 0; i < tokens; i++) {
        uint32_t t;
        if (get32(fp, &remaining, &t)) {
            ds4_tokens_free(&loaded);
            set_err(err, errlen, "truncated session payload");
            return 1;
        }
        ds4_tokens_push(&loaded, (int)t);
    }
    /* From here on the real engine copies bytes into its tensors without looking at them;
     * the stand-in compares them with what the same history would have stored. */
    uint64_t hh = history_hash(&loaded);
    bool wrong = false;
    for (uint32_t i = 0; i < e->vocab; i++) {
        uint32_t u;
        float f = logit(hh, i);
        uint32_t want;
        memcpy(&want, &f, 4);
        if (get32(fp, &remaining, &u)) goto truncated;
        if (u != want) wrong = true;
    }
    for (uint32_t k = 0; k < 2 * e->layers; k++) {
        uint32_t c;
        if (get32(fp, &remaining, &c)) goto truncated;
        uint32_t want = k < e->layers ? comp_rows(tokens) : index_rows(tokens);
        if (c != want) {
            ds4_tokens_free(&loaded);
            set_err(err, errlen, "KV checkpoint has invalid compressed row count");
            return 1;
        }
    }
    for (uint32_t il = 0; il < e->layers; il++) {
        uint64_t lb = layer_bytes(e, tokens);
        uint8_t buf[4096];
        for (uint64_t off = 0; off < lb;) {
            size_t k = lb - off < sizeof(buf) ? (size_t)(lb - off) : sizeof(buf);
            if (remaining < k || fread(buf, 1, k, fp) != k) goto truncated;
            remaining -= k;
            uint8_t want[4096];
            fill_tensor(want, k, hh, il, off);
            if (memcmp(buf, want, k) != 0) wrong = true;
            off += k;
        }
    }
    ds4_tokens_copy(&s->checkpoint, &loaded);
    ds4_tokens_free(&loaded);
    s->valid = true;
    if (wrong) s->wrong_bytes++;
    return 0;
truncated:
    ds4_tokens_free(&loaded);
    set_err(err, errlen, "truncated session payload");
    return 1;
}
