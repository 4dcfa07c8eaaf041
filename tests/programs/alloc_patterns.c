/* Known allocation behaviour. leak_blocks() leaks exactly 100 blocks of 10000 bytes;
 * churn() mallocs and frees 100000 blocks of 64 bytes; big_temporary() mallocs, touches and
 * frees 64 MiB; odd_allocators() keeps a calloc(1000, 10), a realloc grown from 100 to 5000
 * bytes and a posix_memalign(64, 3000); then it waits argv[1] seconds (default 1) so the leak
 * is old at the end. With argv[2] = N > 0, N threads named "alloc-N" each leak 50 blocks of
 * 1000 bytes from thread_leak() while churning. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"

void *volatile keep[1000];
static int kept;

__attribute__((noinline)) void leak_blocks(void) {
    FORCE_FRAME();
    for (int i = 0; i < 100; i++) keep[kept++] = malloc(10000);
}

__attribute__((noinline)) void churn(int count) {
    FORCE_FRAME();
    for (int i = 0; i < count; i++) {
        void *volatile block = malloc(64);
        free(block);
    }
}

__attribute__((noinline)) void big_temporary(void) {
    FORCE_FRAME();
    char *block = malloc(64 << 20);
    memset(block, 1, 64 << 20);
    /* The block escapes, or the compiler drops the malloc/memset/free triple altogether. */
    __asm__ volatile("" ::"r"(block) : "memory");
    free(block);
}

__attribute__((noinline)) void odd_allocators(void) {
    FORCE_FRAME();
    keep[kept++] = calloc(1000, 10);
    void *grown = malloc(100);
    grown = realloc(grown, 5000);
    keep[kept++] = grown;
    void *aligned = NULL;
    if (posix_memalign(&aligned, 64, 3000) == 0) keep[kept++] = aligned;
}

__attribute__((noinline)) void thread_leak(void **slots) {
    FORCE_FRAME();
    for (int i = 0; i < 50; i++) {
        slots[i] = malloc(1000);
        churn(100);
    }
}

static void *worker(void *arg) {
    char name[16];
    snprintf(name, sizeof name, "alloc-%ld", (long)arg);
    pthread_setname_np(pthread_self(), name);
    static void *slots[64][50];
    thread_leak(slots[(long)arg]);
    return NULL;
}

int main(int argc, char **argv) {
    double wait = argc > 1 ? atof(argv[1]) : 1.0;
    int threads = argc > 2 ? atoi(argv[2]) : 0;
    /* Let the profiler read the memory map before the first allocation worth checking. */
    struct timespec settle = {0, 50 * 1000 * 1000};
    nanosleep(&settle, NULL);
    leak_blocks();
    churn(100000);
    big_temporary();
    odd_allocators();
    pthread_t ids[64];
    for (long i = 0; i < threads && i < 64; i++) pthread_create(&ids[i], NULL, worker, (void *)i);
    for (long i = 0; i < threads && i < 64; i++) pthread_join(ids[i], NULL);
    struct timespec pause = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
    nanosleep(&pause, NULL);
    return 0;
}
