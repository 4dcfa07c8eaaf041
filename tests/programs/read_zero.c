/* System-call-heavy workload for the I/O benchmark: argv[1] reads (default 1000000) of 64 bytes
 * from /dev/zero. Prints `wall_s=<seconds> cpu_s=<own CPU seconds> calls=<reads>`. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static double seconds(struct timespec ts) { return ts.tv_sec + ts.tv_nsec / 1e9; }

int main(int argc, char **argv) {
    long calls = argc > 1 ? atol(argv[1]) : 1000000;
    int fd = open("/dev/zero", O_RDONLY);
    if (fd < 0) return 1;
    char buffer[64];
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < calls; i++) {
        if (read(fd, buffer, sizeof buffer) != sizeof buffer) return 2;
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    printf("wall_s=%.6f cpu_s=%.6f calls=%ld\n", seconds(end) - seconds(start),
           usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec +
               usage.ru_stime.tv_usec / 1e6,
           calls);
    return 0;
}
