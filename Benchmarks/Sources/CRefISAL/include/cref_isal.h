#ifndef KVSCRUBD_CREF_ISAL_H
#define KVSCRUBD_CREF_ISAL_H
#include <stddef.h>
#include <stdint.h>

/* Standard CRC32C of a buffer with ISA-L, the way a C program would call it. */
uint32_t cref_crc32c(const void *buf, size_t len);

/* read() the whole file in `chunk`-byte pieces and CRC32C every byte with
 * ISA-L: the floor any verifier of that file can hope for. Returns 0 or -errno. */
int cref_read_crc_file(const char *path, size_t chunk, uint32_t *crc_out, uint64_t *bytes_out);
#endif
