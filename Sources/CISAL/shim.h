#ifndef KVSCRUBD_CISAL_SHIM_H
#define KVSCRUBD_CISAL_SHIM_H
/* ISA-L's CRC32C (iSCSI polynomial). crc32_iscsi() neither pre- nor
 * post-inverts: callers seed with 0xFFFFFFFF and xor the result. */
#include <isa-l/crc.h>
#endif
