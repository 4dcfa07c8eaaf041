/* Helpers shared by the test programs. */
#ifndef PROFILER_TEST_COMMON_H
#define PROFILER_TEST_COMMON_H

#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* A system call issued inline, in the calling function: libc's wrappers set up no frame
 * pointer and would hide their caller from frame-pointer stacks. */
static inline long syscall3(long number, long a, long b, long c) {
#if defined(__x86_64__)
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(number), "D"(a), "S"(b), "d"(c)
                     : "rcx", "r11", "memory");
    return ret;
#else
    return syscall(number, a, b, c);
#endif
}

/* gcc sets up no frame in leaf functions even with -fno-omit-frame-pointer, which hides the
 * caller from frame-pointer unwinding; a dynamic stack allocation forces a frame. */
#define FORCE_FRAME()                               \
    do {                                            \
        void *frame_ = __builtin_alloca(16);        \
        __asm__ volatile("" ::"r"(frame_));         \
    } while (0)

/* CLOCK_MONOTONIC in seconds. */
static inline double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* CPU time this process used so far, user plus system, in seconds: the benchmark workloads
 * report it so a tool's own CPU time can be told from theirs. */
static inline double cpu_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec +
           usage.ru_stime.tv_usec / 1e6;
}

/* Spins until `end` (a now() value), in the calling function. */
#define SPIN_UNTIL(end, sink)                                   \
    while (now() < (end))                                       \
        for (int i_ = 0; i_ < 10000; i_++) (sink) += i_

#endif
