#ifndef REFERENCE_KVC_H
#define REFERENCE_KVC_H
/* An independent C reference of the KVC v1/v2 file operations, written from
 * shared/kvc-format.md revision 2 alone (not from the Swift module), the way
 * ds4 with PR #146 does them: a software CRC32C, the v2 header CRC, store
 * (temporary file, CRCs read back, header rewritten, rename), touch, tool-map
 * rewrite (truncate, write, header) and the load-time checks. The tests
 * cross-check the Swift format module against it in both directions. */
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t version, quant_bits, reason, ext_flags, model_id, payload_abi;
    uint32_t tokens, hits, ctx_size;
    uint64_t created_at, last_used;
} ref_kvc_fields;

/* CRC32C (Castagnoli, reflected 0x82F63B78), continuing from `crc` (0 to start). */
uint32_t ref_crc32c(uint32_t crc, const void *data, size_t len);

/* Stores a checkpoint at dir/name as the engine does. ext bit 0 is set from trailer_len > 0.
 * Returns 0, or -1 with errno. */
int ref_kvc_store(const char *dir, const char *name, const ref_kvc_fields *f,
                  const uint8_t *text, uint32_t text_len,
                  const uint8_t *payload, uint64_t payload_len,
                  const uint8_t *trailer, uint64_t trailer_len);

/* One write of the first 48 (v1) or 64 (v2) bytes: hits and last_used. Returns 0, or -1. */
int ref_kvc_touch(const char *path, uint32_t hits, uint64_t now);

/* Truncate at the payload's end, write the map (may be empty), rewrite the header. Returns 0, or -1. */
int ref_kvc_rewrite_toolmap(const char *path, const uint8_t *map, uint64_t map_len, uint64_t now);

/* The engine's checks on load: 0 ok; 1 refused (why says which); -1 cannot read. */
int ref_kvc_check(const char *path, char *why, size_t why_len);
#endif
