/* Blocks at once: main starts a thread that sleeps argv[1] seconds (default 2) and joins it
 * straight away, within a millisecond of the exec, before the profiler can have read the
 * process's memory map. The whole wait must be walked back to main. Built with and without
 * frame pointers, like every `unwind_` program. */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

static void *sleeper(void *seconds) {
    usleep((useconds_t)(*(double *)seconds * 1e6));
    return NULL;
}

__attribute__((noinline)) void wait_for_sleeper(double seconds) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, sleeper, &seconds) != 0) exit(2);
    pthread_join(thread, NULL);
}

int main(int argc, char **argv) {
    wait_for_sleeper(argc > 1 ? atof(argv[1]) : 2.0);
    return 0;
}
