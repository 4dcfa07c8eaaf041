/* System-call-heavy workload for the I/O benchmark: argv[1] reads (default 1000000) of 64 bytes
 * from /dev/zero. Prints `wall_s=<seconds> cpu_s=<own CPU seconds> calls=<reads>`. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

int main(int argc, char **argv) {
    long calls = argc > 1 ? atol(argv[1]) : 1000000;
    int fd = open("/dev/zero", O_RDONLY);
    if (fd < 0) return 1;
    char buffer[64];
    double start = now();
    for (long i = 0; i < calls; i++) {
        if (read(fd, buffer, sizeof buffer) != sizeof buffer) return 2;
    }
    double wall = now() - start;
    printf("wall_s=%.6f cpu_s=%.6f calls=%ld\n", wall, cpu_seconds(), calls);
    return 0;
}
