/* Known phases: phase_a() for argv[1] seconds, phase_b() for argv[2] seconds, phase_a()
 * again for argv[1] seconds (defaults 2, 7): a stack that goes unused for a while and comes
 * back, in one process (its addresses stay the same). */
#include <stdlib.h>

#include "common.h"

volatile unsigned long sink;

__attribute__((noinline)) void phase_a(double seconds) {
    FORCE_FRAME();
    double end = now() + seconds;
    unsigned long x = 1;
    while (now() < end)
        for (int i = 0; i < 100000; i++) x = x * 6364136223846793005UL + 1;
    sink = x;
}

__attribute__((noinline)) void phase_b(double seconds) {
    FORCE_FRAME();
    double end = now() + seconds;
    unsigned long x = 1;
    while (now() < end)
        for (int i = 0; i < 100000; i++) x = x * 6364136223846793005UL + 3;
    sink = x;
}

int main(int argc, char **argv) {
    double a = argc > 1 ? atof(argv[1]) : 2.0, b = argc > 2 ? atof(argv[2]) : 7.0;
    phase_a(a);
    phase_b(b);
    phase_a(a);
    return 0;
}
