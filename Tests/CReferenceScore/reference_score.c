/* Test-only: the eviction score of ds4_kvstore.c (antirez/ds4, MIT), copied
 * from shared/reference/ds4_kvstore.c.txt with only the struct types renamed,
 * so KVCFormat's EvictionScore is checked against the engine's own arithmetic,
 * operation for operation. Not linked into any product. */
#include "reference_score.h"
#include <math.h>
#include <string.h>

/* The engine's own guard `text_bytes > SIZE_MAX` is always false for a uint32_t
 * on 64-bit; kept verbatim (it is the engine's code), its warning silenced. */
#pragma clang diagnostic ignored "-Wtautological-constant-out-of-range-compare"

#define DS4_KVSTORE_HIT_HALF_LIFE_SECONDS 21600
#define KV_CACHE_MIN_EFFECTIVE_HITS 0.01
#define KV_CACHE_CONTINUED_PREFIX_MIN_FACTOR 0.05
#define KV_CACHE_CONTINUED_PREFIX_HIT_FACTOR 0.45
#define KV_CACHE_ANCHOR_REASON_SCORE_FACTOR 2.0
#define DS4_KVSTORE_REASON_COLD 1
#define DS4_KVSTORE_REASON_CONTINUED 2
#define DS4_KVSTORE_REASON_EVICT 3
#define DS4_KVSTORE_REASON_SHUTDOWN 4

static bool kv_cache_incoming_supersedes_continued(const ref_entry *e, const ref_incoming *incoming,
                                                   const char *prefix_sha) {
    if (!e || !incoming || !incoming->text) return false;
    if (e->reason != DS4_KVSTORE_REASON_CONTINUED) return false;
    if (e->text_bytes == 0 || e->text_bytes > SIZE_MAX) return false;
    if ((size_t)e->text_bytes >= incoming->text_len) return false;
    if (e->model_id != incoming->model_id) return false;
    if (incoming->reject_different_quant && e->quant_bits != incoming->quant_bits) return false;
    if (incoming->ctx_size > e->ctx_size) return false;
    return prefix_sha && !strcmp(prefix_sha, e->sha);
}

static bool kv_cache_reason_is_anchor(uint8_t reason) {
    return reason == DS4_KVSTORE_REASON_COLD || reason == DS4_KVSTORE_REASON_EVICT ||
           reason == DS4_KVSTORE_REASON_SHUTDOWN;
}

double ref_eviction_score(const ref_entry *e, uint64_t now, const ref_incoming *incoming,
                          const char *prefix_sha) {
    if (!e || e->file_size == 0) return 0.0;
    double effective_hits = (double)e->hits;
    uint64_t used_at = e->last_used ? e->last_used : e->created_at;
    if (used_at == 0) {
        effective_hits = 0.0;
    } else if (now > used_at) {
        double elapsed = (double)(now - used_at);
        effective_hits *= exp2(-elapsed / (double)DS4_KVSTORE_HIT_HALF_LIFE_SECONDS);
        if (effective_hits < KV_CACHE_MIN_EFFECTIVE_HITS) effective_hits = 0.0;
    }
    double score = (effective_hits + 1.0) * (double)e->tokens / (double)e->file_size;
    if (kv_cache_reason_is_anchor(e->reason)) score *= KV_CACHE_ANCHOR_REASON_SCORE_FACTOR;
    if (kv_cache_incoming_supersedes_continued(e, incoming, prefix_sha)) {
        double h = effective_hits > 0.0 ? effective_hits / (effective_hits + 1.0) : 0.0;
        score *= KV_CACHE_CONTINUED_PREFIX_MIN_FACTOR + KV_CACHE_CONTINUED_PREFIX_HIT_FACTOR * h;
    }
    return score;
}
