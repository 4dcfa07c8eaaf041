/* Many distinct stacks: two threads walk pseudo-random call paths through 16 functions, 1 to
 * 64 calls deep, spinning a few microseconds at each path's end, for argv[1] seconds (default
 * 5). Nearly every sample has a stack never seen before: tens of thousands in a few seconds
 * at a high frequency. Built with and without frame pointers, like every `unwind_` program. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "common.h"

volatile unsigned long sink;

struct path {
    uint64_t state;
    int depth;
};

typedef void (*step_fn)(struct path *);
static step_fn steps[16];

static uint64_t next_random(struct path *path) {
    path->state ^= path->state << 13;
    path->state ^= path->state >> 7;
    path->state ^= path->state << 17;
    return path->state;
}

/* The sink update after the call keeps it from being a tail call, so each step is a frame. */
#define STEP(n)                                                       \
    __attribute__((noinline)) void step_##n(struct path *path) {      \
        if (--path->depth <= 0) {                                     \
            for (int i = 0; i < 2000; i++) sink += i;                 \
        } else {                                                      \
            steps[next_random(path) & 15](path);                      \
        }                                                             \
        sink += n;                                                    \
    }
STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)
STEP(8) STEP(9) STEP(10) STEP(11) STEP(12) STEP(13) STEP(14) STEP(15)

static double end_time;

__attribute__((noinline)) void *walker(void *seed) {
    struct path path = {.state = (uint64_t)(uintptr_t)seed * 0x9e3779b97f4a7c15ull + 1};
    while (now() < end_time) {
        path.depth = 1 + (int)(next_random(&path) % 64);
        steps[next_random(&path) & 15](&path);
    }
    return NULL;
}

int main(int argc, char **argv) {
    step_fn all[16] = {step_0, step_1, step_2,  step_3,  step_4,  step_5,  step_6,  step_7,
                       step_8, step_9, step_10, step_11, step_12, step_13, step_14, step_15};
    for (int i = 0; i < 16; i++) steps[i] = all[i];
    end_time = now() + (argc > 1 ? atof(argv[1]) : 5.0);
    pthread_t threads[2];
    for (uintptr_t i = 0; i < 2; i++) pthread_create(&threads[i], NULL, walker, (void *)(i + 1));
    for (int i = 0; i < 2; i++) pthread_join(threads[i], NULL);
    return 0;
}
