/* A parent that starts a child program and both burn CPU for argv[1] seconds (default 2):
 * the parent in parent_spin; the child re-executes this program as `forker --child`, which
 * spins in child_spin. Tests following descendants across fork and exec. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "common.h"
#include <unistd.h>

volatile unsigned long sink;

__attribute__((noinline)) void parent_spin(double end) {
    SPIN_UNTIL(end, sink);
}

__attribute__((noinline)) void child_spin(double end) {
    SPIN_UNTIL(end, sink);
}

int main(int argc, char **argv) {
    double seconds = 2.0;
    if (argc > 2 && strcmp(argv[1], "--child") == 0) {
        child_spin(now() + atof(argv[2]));
        return 0;
    }
    if (argc > 1) seconds = atof(argv[1]);
    char arg[32];
    snprintf(arg, sizeof arg, "%f", seconds);
    char self[4096] = {0};
    if (readlink("/proc/self/exe", self, sizeof self - 1) < 0) return 2;
    pid_t pid = fork();
    if (pid == 0) {
        execl(self, "forker", "--child", arg, (char *)NULL);
        _exit(127);
    }
    parent_spin(now() + seconds);
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
