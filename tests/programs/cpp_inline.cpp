// Demangling and inlining: for argv[1] seconds (default 2), main calls the C++ method
// demo::Worker::crunch, whose time is spent in demo::mix, a function always inlined into it.
#include <cstdlib>
#include <ctime>

namespace demo {

volatile unsigned long sink;

static inline __attribute__((always_inline)) unsigned long mix(unsigned long x, int rounds) {
    for (int i = 0; i < rounds; i++) x = x * 6364136223846793005UL + 1;
    return x;
}

struct Worker {
    __attribute__((noinline)) unsigned long crunch(unsigned long x) {
        // A dynamic allocation keeps a frame pointer in this leaf.
        void *frame = __builtin_alloca(16);
        __asm__ volatile("" ::"r"(frame));
        return mix(x, 100000);
    }
};

}  // namespace demo

static double now() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double end = now() + (argc > 1 ? std::atof(argv[1]) : 2.0);
    demo::Worker worker;
    while (now() < end) demo::sink = worker.crunch(demo::sink);
    return 0;
}
