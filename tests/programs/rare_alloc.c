/* Allocator functions the profiler itself never calls: memalign(64, 5000) and valloc(7000) in
 * rare_allocators(), kept live, then a wait of 300 ms so the run sees them at its end. */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdlib.h>
#include <unistd.h>

void *volatile keep[2];

__attribute__((noinline)) void rare_allocators(void) {
    keep[0] = memalign(64, 5000);
    keep[1] = valloc(7000);
}

int main(void) {
    rare_allocators();
    usleep(300000);
    return 0;
}
