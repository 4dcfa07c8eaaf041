/* Spends its time in two functions of libbig_unwind_lib.so (big_unwind_lib.s), a library with
 * more than 3 million unwind rows, one at each end of it. Neither keeps a frame pointer:
 * only the library's unwind table gives `main` as their caller.
 * argv[1]: seconds (default 2). */
#include <stdlib.h>

#include "common.h"

void big_spin_first(long rounds);
void big_spin_last(long rounds);

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 2;
    double end = now() + seconds;
    while (now() < end) {
        big_spin_first(2000000);
        big_spin_last(2000000);
    }
    return 0;
}
