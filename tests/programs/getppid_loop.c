/* System-call-heavy workload for the bystander benchmark: argv[1] getppid() calls (default
 * 2000000), a call that does no I/O and never blocks, so its time is the system-call path
 * itself and whatever is traced on it. Prints `wall_s=<seconds> cpu_s=<own CPU seconds>
 * calls=<calls>`. */
#include <stdio.h>
#include <stdlib.h>

#include "common.h"

int main(int argc, char **argv) {
    long calls = argc > 1 ? atol(argv[1]) : 2000000;
    double start = now();
    for (long i = 0; i < calls; i++) syscall3(SYS_getppid, 0, 0, 0);
    double wall = now() - start;
    printf("wall_s=%.6f cpu_s=%.6f calls=%ld\n", wall, cpu_seconds(), calls);
    return 0;
}
