/* Short-lived forks: the parent forks argv[1] children (default 100) one after another; each
 * spins 4 ms in child_work() called from main, without exec, and exits. The first samples of
 * each child come before the profiler has read its memory map. Built with and without frame
 * pointers, like every `unwind_` program. */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

volatile unsigned long sink;

__attribute__((noinline)) void child_work(double end) {
    SPIN_UNTIL(end, sink);
}

int main(int argc, char **argv) {
    int children = argc > 1 ? atoi(argv[1]) : 100;
    for (int i = 0; i < children; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            child_work(now() + 0.004);
            _exit(0);
        }
        if (pid < 0) return 2;
        waitpid(pid, NULL, 0);
    }
    return 0;
}
