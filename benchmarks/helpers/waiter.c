/* Idle app that exits at once on SIGTERM.
 *
 * It installs a handler instead of relying on the default action because an
 * app running as PID 1 of a namespace (the python-floor case) ignores signals
 * whose action is SIG_DFL.  Used for the idle (RSS / wake-up) and the stop
 * latency workloads.
 */
#include <signal.h>

#include "common.h"

static void on_term(int sig) {
    (void)sig;
    _exit(0);
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    if (sigaction(SIGTERM, &sa, NULL) != 0)
        die("sigaction");
    report("ready", getpid());
    for (;;)
        pause();
}
