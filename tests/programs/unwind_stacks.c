/* Stacks that frame-pointer walking gets wrong, built twice by build.rs: with frame pointers
 * (unwind_stacks_fp) and without (unwind_stacks_nofp).
 *
 *   unwind_stacks leaf SECONDS    main -> outer_call -> middle_call -> leaf_spin (a leaf: no frame)
 *   unwind_stacks deep SECONDS    main -> recurse x DEEP_FRAMES -> leaf_spin
 *   unwind_stacks qsort SECONDS   main -> sort_rounds -> qsort (libc) -> ... -> compare_slowly
 *   unwind_stacks thread SECONDS  start_thread -> thread_body -> middle_call -> leaf_spin
 *   unwind_stacks dlopen SECONDS  main -> run_mode -> call_library -> cos (libm, opened after
 *                                 the profiler attached)
 *
 * An optional third argument runs leaf, deep or qsort in that many threads at once (the
 * benchmark keeps every CPU busy with one process). */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define DEEP_FRAMES 300

static volatile unsigned long sink;
static double end_time;

/* Keeps calls from becoming jumps (a tail call would drop its caller from every stack). */
#define NO_TAIL() __asm__ volatile("" ::: "memory")

__attribute__((noinline)) void leaf_spin(void) {
    /* A true leaf: calls nothing, so gcc gives it no frame even with frame pointers. */
    unsigned long local = 0;
    for (int round = 0; round < 200000; round++) local += round ^ (local >> 3);
    sink += local;
}

__attribute__((noinline)) void middle_call(void) {
    while (now() < end_time) leaf_spin();
    NO_TAIL();
}

__attribute__((noinline)) void outer_call(void) {
    middle_call();
    NO_TAIL();
}

__attribute__((noinline)) void recurse(int depth) {
    if (depth > 1)
        recurse(depth - 1);
    else
        middle_call();
    NO_TAIL();
}

__attribute__((noinline)) int compare_slowly(const void *a, const void *b) {
    unsigned long local = 0;
    for (int round = 0; round < 2000; round++) local += round ^ (local >> 3);
    sink += local;
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

__attribute__((noinline)) void sort_rounds(void) {
    enum { N = 4096 };
    static int values[N];
    while (now() < end_time) {
        for (int i = 0; i < N; i++) values[i] = (i * 7919) % N;
        qsort(values, N, sizeof values[0], compare_slowly);
    }
    NO_TAIL();
}

__attribute__((noinline)) void *thread_body(void *arg) {
    (void)arg;
    middle_call();
    NO_TAIL();
    return NULL;
}

/* Calls libm's cos, from a library opened now (after the profiler attached), until the end. */
__attribute__((noinline)) void call_library(void) {
    void *libm = dlopen("libm.so.6", RTLD_NOW);
    double (*cosine)(double) = libm ? (double (*)(double))dlsym(libm, "cos") : NULL;
    if (!cosine) {
        fprintf(stderr, "no libm: %s\n", dlerror());
        exit(3);
    }
    double x = 0;
    while (now() < end_time)
        for (int i = 0; i < 100000; i++) x += cosine(x + i);
    sink += (unsigned long)x;
    NO_TAIL();
}

/* Runs one of the single-threaded modes; 0 if the mode is unknown. */
static int run_mode(const char *mode) {
    if (strcmp(mode, "leaf") == 0) {
        outer_call();
    } else if (strcmp(mode, "deep") == 0) {
        recurse(DEEP_FRAMES);
    } else if (strcmp(mode, "qsort") == 0) {
        sort_rounds();
    } else if (strcmp(mode, "dlopen") == 0) {
        call_library();
    } else {
        return 0;
    }
    NO_TAIL();
    return 1;
}

static void *run_mode_thread(void *mode) {
    run_mode(mode);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s leaf|deep|qsort|dlopen|thread SECONDS [THREADS]\n", argv[0]);
        return 2;
    }
    end_time = now() + atof(argv[2]);
    if (strcmp(argv[1], "thread") == 0) {
        pthread_t thread;
        pthread_create(&thread, NULL, thread_body, NULL);
        pthread_join(thread, NULL);
        return 0;
    }
    int threads = argc == 4 ? atoi(argv[3]) : 1;
    pthread_t extra[64];
    int started = 0;
    for (; started < threads - 1 && started < 64; started++)
        pthread_create(&extra[started], NULL, run_mode_thread, argv[1]);
    int known = run_mode(argv[1]);
    for (int i = 0; i < started; i++) pthread_join(extra[i], NULL);
    NO_TAIL();
    return known ? 0 : 2;
}
