/*
 * kvc.h: the KVC checkpoint format of ds4's on-disk KV cache, for C engines.
 *
 * libkvcformat is kvscrubd's format module (Swift, KVCFormat) behind a C
 * API: store a checkpoint (v1, or v2 with the CRC32C fields of ds4 PR #146,
 * computed while the bytes go out), load the longest stored prefix of a
 * prompt with every check done while the payload is read, touch, rewrite
 * the tool-map trailer, verify a file, the engine's eviction score and
 * plan, CRC32C (ISA-L) and SHA-1. The layout is kvc-format.md revision 3;
 * the files are the ones ds4 writes and kvscrubd keeps.
 *
 * Conventions
 *   - Every call that can fail returns a kvc_status (KVC_OK is 0) and takes
 *     a `kvc_error *err` last. When err is not NULL a failure fills it with
 *     the status, errno (0 when no system call failed) and a message that
 *     names the file and what was wrong. err may be NULL.
 *   - Buffers are the caller's: the library never returns memory the caller
 *     must free, apart from the kvc_cache handle (kvc_cache_close).
 *   - Integers are host order here; the library converts to and from the
 *     file's little-endian fields.
 *   - No call takes a lock on a checkpoint file, as ds4 takes none: a store
 *     renames a finished temporary file into place, a touch rewrites the
 *     header in place, and a load refuses whatever does not verify.
 *
 * Thread safety
 *   Every function is reentrant and keeps no global mutable state. A
 *   kvc_cache is immutable after kvc_cache_open and may be used by any
 *   number of threads at once; close it once no call on it is running.
 *   Callbacks run on the calling thread, before the call returns. A load of
 *   8 MiB or more into a buffer reads with a second thread (from a shared
 *   pool) for the length of the call: two cores copy and checksum alternate
 *   pieces, which makes a verified load faster than a plain read().
 *
 * Link with `pkg-config --cflags --libs kvcformat`. kvc.h(3) documents
 * each call; docs/ENGINE.md shows the calls ds4's kvstore makes, in order.
 */
#ifndef KVC_H
#define KVC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The API this header describes; kvc_api_version() says what the library has. */
#define KVC_API_VERSION 1

/* "<40 hex digits>.kv" and its terminating NUL. */
#define KVC_NAME_SIZE 44
/* A message in a kvc_error, NUL included (longer messages are cut). */
#define KVC_MESSAGE_SIZE 512
/* Problems a kvc_verify_result carries in full; problem_count counts them all. */
#define KVC_MAX_PROBLEMS 8

typedef enum kvc_status {
    KVC_OK = 0,
    KVC_ERR_IO = 1,            /* a system call failed (err->sys_errno says which errno) */
    KVC_ERR_NOT_CHECKPOINT = 2,/* no readable v1 or v2 KVC header */
    KVC_ERR_CORRUPT = 3,       /* damaged: a CRC, a length or the structure is wrong; refused */
    KVC_ERR_INCOMPATIBLE = 4,  /* sound but not for this engine (another payload ABI, model, version) */
    KVC_ERR_INVALID = 5,       /* a bad argument: NULL where a value is needed, a length out of range */
    KVC_ERR_NOT_FOUND = 6,     /* no stored checkpoint matches */
    KVC_ERR_BUFFER = 7,        /* the caller's buffer is too small; the size needed is reported */
    KVC_ERR_CANCELED = 8       /* a callback returned non-zero */
} kvc_status;

typedef struct kvc_error {
    kvc_status status;
    int sys_errno;
    char message[KVC_MESSAGE_SIZE];
} kvc_error;

/* Header byte 5 (why the engine stored the checkpoint). */
enum {
    KVC_REASON_UNKNOWN = 0,
    KVC_REASON_COLD = 1,
    KVC_REASON_CONTINUED = 2,
    KVC_REASON_EVICT = 3,
    KVC_REASON_SHUTDOWN = 4,
    KVC_REASON_AGENT_SYSTEM = 5,
    KVC_REASON_AGENT_SESSION = 6
};

/* Header byte 6 (ext flags). KVC_EXT_TOOL_MAP is set and cleared by the library. */
enum {
    KVC_EXT_TOOL_MAP = 1 << 0,
    KVC_EXT_RESPONSES_VISIBLE = 1 << 1,
    KVC_EXT_THINKING_VISIBLE = 1 << 2
};

/* Header byte 20: 2 for the shared-kvstore engine, 0 for upstream ds4 (PR #146). */
enum {
    KVC_PAYLOAD_ABI_PR146 = 0,
    KVC_PAYLOAD_ABI_KVSTORE = 2
};

/* A checkpoint's header, decoded. The CRC fields are 0 in a v1 file. */
typedef struct kvc_header {
    uint8_t version;      /* 1 or 2 */
    uint8_t quant_bits;   /* 2 or 4 */
    uint8_t reason;       /* KVC_REASON_* */
    uint8_t ext_flags;    /* KVC_EXT_* */
    uint8_t model_id;
    uint8_t payload_abi;  /* KVC_PAYLOAD_ABI_* */
    uint32_t tokens;
    uint32_t hits;
    uint32_t ctx_size;
    uint32_t text_bytes;
    uint64_t created_at;  /* Unix seconds */
    uint64_t last_used;   /* Unix seconds */
    uint64_t payload_bytes;
    uint32_t header_crc, text_crc, payload_crc, trailer_crc;
} kvc_header;

/* One tool-map entry: an id and its DSML, neither NUL-terminated. */
typedef struct kvc_tool_entry {
    const uint8_t *id;
    size_t id_len;
    const uint8_t *dsml;
    size_t dsml_len;
} kvc_tool_entry;

/* An open cache directory. */
typedef struct kvc_cache kvc_cache;

/* ---- the library ---------------------------------------------------------- */

int kvc_api_version(void);
/* The library's version, e.g. "0.1.0"; a static string. */
const char *kvc_version(void);
/* A static name for a status, e.g. "corrupt". */
const char *kvc_status_name(kvc_status status);

/* ---- the cache directory -------------------------------------------------- */

/* Opens a directory (it must exist). *out is NULL on failure. */
kvc_status kvc_cache_open(const char *path, kvc_cache **out, kvc_error *err);
void kvc_cache_close(kvc_cache *cache);

/* ---- store ------------------------------------------------------------------ */

/* What the engine knows about the checkpoint it stores. kvc_store_params_init
 * sets version 2, payload ABI KVC_PAYLOAD_ABI_PR146, hits 0, not durable and
 * zeroes the rest; the caller sets reason, model_id, quant_bits, ctx_size,
 * tokens, created_at (last_used 0 means created_at). */
typedef struct kvc_store_params {
    uint8_t version;       /* 1 (what today's ds4 writes) or 2 (PR #146) */
    uint8_t reason;
    uint8_t model_id;
    uint8_t quant_bits;
    uint8_t key_flags;     /* KVC_EXT_RESPONSES_VISIBLE | KVC_EXT_THINKING_VISIBLE */
    uint8_t payload_abi;
    uint32_t ctx_size;
    uint32_t tokens;
    uint32_t hits;
    uint64_t created_at;
    uint64_t last_used;
    int durable;           /* non-zero: fsync the file before the rename (ds4 does not) */
} kvc_store_params;

void kvc_store_params_init(kvc_store_params *params);

/* Fills buf with payload bytes [offset, offset + len). Non-zero aborts the store. */
typedef int (*kvc_fill_fn)(void *ctx, uint64_t offset, void *buf, size_t len);

/* Stores the checkpoint for `text` as <sha1(text)>.kv: writes
 * <name>.tmp.<pid>, then renames it over the name, so readers see the old
 * file or the new one whole. The CRCs are computed while the bytes are
 * written. tools may be NULL when ntools is 0. name_out (may be NULL)
 * receives the file name. */
kvc_status kvc_store(kvc_cache *cache, const uint8_t *text, size_t text_len,
                     const void *payload, uint64_t payload_len,
                     const kvc_tool_entry *tools, size_t ntools,
                     const kvc_store_params *params, char name_out[KVC_NAME_SIZE], kvc_error *err);

/* The same, with the payload pulled through `fill` in chunks of at most 1 MiB. */
kvc_status kvc_store_stream(kvc_cache *cache, const uint8_t *text, size_t text_len,
                            kvc_fill_fn fill, void *fill_ctx, uint64_t payload_len,
                            const kvc_tool_entry *tools, size_t ntools,
                            const kvc_store_params *params, char name_out[KVC_NAME_SIZE], kvc_error *err);

/* ---- find and load ------------------------------------------------------------ */

/* What the engine can restore into its session (ds4_kvstore_find_text_prefix). */
typedef struct kvc_compat {
    uint8_t model_id;
    uint8_t quant_bits;
    uint32_t ctx_size;
    int reject_different_quant;  /* ds4's --kv-cache-reject-different-quant */
    int payload_abi;             /* the byte-20 value this engine reads, or -1 for any (upstream ds4) */
} kvc_compat;

/* A stored checkpoint, as found or loaded. */
typedef struct kvc_checkpoint {
    char name[KVC_NAME_SIZE];
    kvc_header header;
    uint64_t file_size;
    size_t tool_map_bytes;   /* the encoded tool-map trailer's length (0: none) */
    int crc_verified;        /* 1: v2, all four CRC32C fields checked; 0: v1, structure only */
} kvc_checkpoint;

/* The longest stored checkpoint whose text is a prefix of prompt and that
 * compat allows, found by SHA-1 of each candidate length and confirmed byte
 * by byte; KVC_ERR_NOT_FOUND when none. Reads headers only. */
kvc_status kvc_find_prefix(kvc_cache *cache, const uint8_t *prompt, size_t prompt_len,
                           const kvc_compat *compat, kvc_checkpoint *found, kvc_error *err);

/* One checkpoint's header and size, without reading its text or payload
 * (ds4_kvstore_read_entry_file): what a store checks before deciding to
 * only rewrite the tool map of an existing compatible checkpoint.
 * KVC_ERR_CORRUPT when the v2 header CRC does not match or the file is
 * shorter than its header says; KVC_ERR_INCOMPATIBLE for another payload ABI
 * than expected_abi (-1: any). crc_verified is 0: the body was not read. */
kvc_status kvc_stat(kvc_cache *cache, const char *name, int expected_abi,
                    kvc_checkpoint *out, kvc_error *err);

/* Receives the payload in order, in chunks; non-zero cancels the load. */
typedef int (*kvc_read_fn)(void *ctx, const void *chunk, size_t len);

/* Where a load puts what it reads. Exactly one of payload (with payload_cap)
 * and read_fn is set. tool_map may be NULL: the trailer is still verified. */
typedef struct kvc_load_target {
    void *payload;           /* the caller's buffer, at least header.payload_bytes */
    uint64_t payload_cap;
    kvc_read_fn read_fn;     /* or chunks handed over as they are read */
    void *read_ctx;
    uint8_t *tool_map;       /* receives the encoded tool map (decode with kvc_tool_map_decode) */
    size_t tool_map_cap;
} kvc_load_target;

/* Loads the checkpoint `name` verified: header CRC, text CRC and SHA-1
 * against the name, payload CRC (computed as each chunk arrives, while it
 * is still in cache), trailer CRC, the DSV4 payload prefix and every length.
 * A damaged file is refused whole (KVC_ERR_CORRUPT) and, with a buffer, the
 * buffer's contents are then unspecified; with read_fn, chunks already handed
 * over must be discarded: only KVC_OK says they were good. expected_abi: the
 * byte-20 value this engine reads, or -1 for any; an engine of ABI 2 reads
 * payload version 2 and of ABI 0 version 1 (its generation), so a file of
 * another generation is KVC_ERR_INCOMPATIBLE, never KVC_ERR_CORRUPT. With
 * kvc_verify, -1 learns the generation from the file itself, as
 * `kvscrubd verify FILE` does.
 * KVC_ERR_BUFFER when payload_cap or tool_map_cap is too small: out->header
 * and out->tool_map_bytes then say what is needed and nothing was read. */
kvc_status kvc_load(kvc_cache *cache, const char *name, int expected_abi,
                    const kvc_load_target *target, kvc_checkpoint *out, kvc_error *err);

/* kvc_find_prefix then kvc_load of what it found: the engine's restore. */
kvc_status kvc_load_prefix(kvc_cache *cache, const uint8_t *prompt, size_t prompt_len,
                           const kvc_compat *compat, const kvc_load_target *target,
                           kvc_checkpoint *out, kvc_error *err);

/* Decodes an encoded tool map into entries that point into buf. count
 * receives the number of entries (also when cap is too small: KVC_ERR_BUFFER). */
kvc_status kvc_tool_map_decode(const uint8_t *buf, size_t len, kvc_tool_entry *entries,
                               size_t cap, size_t *count, kvc_error *err);

/* ---- update in place ---------------------------------------------------------- */

/* Hits to KVC_TOUCH_INCREMENT means one more (saturating), as the engine's touch. */
#define KVC_TOUCH_INCREMENT UINT64_MAX

/* Sets hits and last_used = now and rewrites the header (v2: with a new
 * header CRC). Refuses a file whose header does not verify. header_out may be NULL. */
kvc_status kvc_touch(kvc_cache *cache, const char *name, uint64_t hits, uint64_t now,
                     kvc_header *header_out, kvc_error *err);

/* Replaces the tool-map trailer in place (truncate, write, then the header
 * with the new trailer CRC), as the engine does; ntools 0 removes it. */
kvc_status kvc_rewrite_tool_map(kvc_cache *cache, const char *name, const kvc_tool_entry *tools,
                                size_t ntools, uint64_t now, kvc_header *header_out, kvc_error *err);

/* ---- verify ----------------------------------------------------------------- */

enum { KVC_VERDICT_OK = 0, KVC_VERDICT_CORRUPT = 1, KVC_VERDICT_INCOMPATIBLE = 2, KVC_VERDICT_IGNORED = 3 };
enum { KVC_REGION_HEADER = 0, KVC_REGION_TEXT = 1, KVC_REGION_PAYLOAD = 2, KVC_REGION_TRAILER = 3,
       KVC_REGION_NAME = 4, KVC_REGION_SIZE = 5 };
enum { KVC_SEVERITY_CORRUPT = 0, KVC_SEVERITY_INCOMPATIBLE = 1, KVC_SEVERITY_WARNING = 2 };

typedef struct kvc_problem {
    int region;              /* KVC_REGION_* */
    int severity;            /* KVC_SEVERITY_* */
    int has_crc;             /* expected_crc and actual_crc are set */
    uint32_t expected_crc;
    uint32_t actual_crc;
    char detail[256];
} kvc_problem;

typedef struct kvc_verify_result {
    int verdict;             /* KVC_VERDICT_* */
    int crc_verified;        /* the CRC32C fields were checked (v2) */
    int has_header;
    kvc_header header;
    uint64_t file_size;
    size_t problem_count;    /* all problems; the first KVC_MAX_PROBLEMS are in problems */
    kvc_problem problems[KVC_MAX_PROBLEMS];
} kvc_verify_result;

/* Verifies one file (a name in the cache or, with cache NULL, a path) as
 * kvscrubd's scrub does. A damaged file is KVC_OK with verdict
 * KVC_VERDICT_CORRUPT: the status is about the call, the verdict about the
 * file. expected_abi as for kvc_load. */
kvc_status kvc_verify(kvc_cache *cache, const char *name_or_path, int expected_abi,
                      kvc_verify_result *out, kvc_error *err);

/* ---- eviction ----------------------------------------------------------------- */

/* A checkpoint about to be stored: continued checkpoints whose text is a
 * strict prefix of it score lower (ds4_kvstore_eviction_context). */
typedef struct kvc_incoming {
    const uint8_t *text;
    size_t text_len;
    uint8_t model_id;
    uint8_t quant_bits;
    uint32_t ctx_size;
    int reject_different_quant;
} kvc_incoming;

/* ds4_kvstore_entry_eviction_score, to the bit. sha: the file name's 40 hex
 * digits (needed only with incoming; may be NULL otherwise). */
double kvc_eviction_score(const kvc_header *header, const char *sha, uint64_t file_size,
                          uint64_t now, const kvc_incoming *incoming);

typedef struct kvc_victim {
    char name[KVC_NAME_SIZE];
    uint64_t file_size;
    double score;
} kvc_victim;

typedef struct kvc_plan {
    uint64_t total_bytes;     /* every checkpoint in the directory */
    uint64_t target_bytes;    /* budget - extra */
    uint64_t remaining_bytes; /* after the victims are gone */
    size_t victim_count;      /* all victims; the first victim_cap are in victims */
} kvc_plan;

/* ds4_kvstore_evict's victims to bring the directory to budget_bytes - extra_bytes
 * (room for a checkpoint about to be stored), lowest score first. Removes
 * nothing. budget 0 means no budget. KVC_ERR_BUFFER when victim_cap is too small. */
kvc_status kvc_plan_eviction(kvc_cache *cache, uint64_t budget_bytes, uint64_t extra_bytes,
                             uint64_t now, const kvc_incoming *incoming, int expected_abi,
                             kvc_victim *victims, size_t victim_cap, kvc_plan *plan, kvc_error *err);

/* ---- helpers ------------------------------------------------------------------ */

/* CRC32C (Castagnoli) of buf, continuing from crc (0 to start), zlib-style:
 * kvc_crc32c(kvc_crc32c(0, a, n), b, m) is the CRC of a then b. ISA-L inside. */
uint32_t kvc_crc32c(uint32_t crc, const void *buf, size_t len);
/* SHA-1 of buf, as 20 bytes. */
void kvc_sha1(const void *buf, size_t len, uint8_t digest[20]);
/* The checkpoint file name of a text: "<sha1 hex>.kv". */
void kvc_checkpoint_name(const uint8_t *text, size_t len, char name[KVC_NAME_SIZE]);

#ifdef __cplusplus
}
#endif
#endif /* KVC_H */
