/* The C reference for `kvscrubd verify`: read() + ISA-L CRC32C over every
 * byte of each file named, 1 MiB at a time. Prints the CRC so the work
 * cannot be optimised away. */
#include <stdio.h>
#include <string.h>
#include "cref_isal.h"

int main(int argc, char **argv) {
    int rc = 0;
    for (int i = 1; i < argc; i++) {
        uint32_t crc = 0;
        uint64_t bytes = 0;
        int r = cref_read_crc_file(argv[i], 1 << 20, &crc, &bytes);
        if (r != 0) { fprintf(stderr, "%s: %s\n", argv[i], strerror(-r)); rc = 2; continue; }
        printf("%08x %llu %s\n", crc, (unsigned long long)bytes, argv[i]);
    }
    return rc;
}
