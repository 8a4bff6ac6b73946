/* Launch-latency probe: report the clock as the very first thing main does. */
#include "common.h"

int main(void) {
    report("stamp", now_ns());
    return 0;
}
