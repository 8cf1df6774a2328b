/* The stand-in model's types: what ds4.h leaves opaque (ds4_engine,
 * ds4_session), defined here so the harness can build them. */
#ifndef STANDIN_MODEL_H
#define STANDIN_MODEL_H

#include "ds4.h"

struct ds4_engine {
    int model_id;     /* header byte 7: 0 Flash, 1 Pro */
    int quant_bits;   /* 2 or 4 */
    uint32_t payload_version;
    uint32_t layers, head_dim, vocab;
};

struct ds4_session {
    ds4_engine *engine;
    int ctx;
    ds4_tokens checkpoint;
    bool valid;
    /* Restores whose tensor bytes were not what the same token history stores. */
    int wrong_bytes;
};

void standin_engine_init(ds4_engine *e, int model_id, int quant_bits, uint32_t payload_version);
void standin_session_init(ds4_session *s, ds4_engine *e, int ctx);
void standin_session_free(ds4_session *s);
/* The live checkpoint becomes `text`, one token per byte, as if just prefilled. */
void standin_session_set(ds4_session *s, const char *text, size_t len);

#endif
