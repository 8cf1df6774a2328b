#ifndef KVSCRUBD_REFERENCE_SCORE_H
#define KVSCRUBD_REFERENCE_SCORE_H
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

/* The fields of ds4_kvstore_entry that ds4_kvstore_entry_eviction_score reads. */
typedef struct {
    char sha[41];
    uint8_t quant_bits, reason, model_id;
    uint32_t tokens, hits, ctx_size, text_bytes;
    uint64_t created_at, last_used, file_size;
} ref_entry;

typedef struct {
    const char *text;
    size_t text_len;
    uint8_t model_id, quant_bits;
    uint32_t ctx_size;
    bool reject_different_quant;
} ref_incoming;

/* ds4_kvstore_entry_eviction_score, verbatim but for the struct names; the
 * SHA-1 of the incoming prefix is supplied by the caller (the engine's own
 * hand-written SHA-1 is not what is under test). */
double ref_eviction_score(const ref_entry *e, uint64_t now, const ref_incoming *incoming,
                          const char *incoming_prefix_sha /* of text[0..e->text_bytes) or NULL */);
#endif
