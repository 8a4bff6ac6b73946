/* Readiness target for the "pidone + probes" workloads: a tiny HTTP server.
 *
 * Listens on 127.0.0.1 (port chosen by the kernel), reports "port N", then
 * answers every connection with "200 OK" and closes it, one at a time.  It
 * runs on the host, beside the namespace (unshare --pid does not create a
 * network namespace), so pidone's HTTP probe reaches it over loopback.  A
 * client that stalls is given up on after one second (SO_RCVTIMEO), so the
 * server can never wedge.  SIGTERM (default action) ends it.
 */
#include "common.h" /* first: it defines _GNU_SOURCE (accept4) */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

static const char RESPONSE[] = "HTTP/1.1 200 OK\r\n"
                               "Content-Type: text/plain\r\n"
                               "Content-Length: 3\r\n"
                               "Connection: close\r\n"
                               "\r\n"
                               "ok\n";

static void serve(int fd) {
    struct timeval limit = {.tv_sec = 1, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    char buf[4096];
    size_t used = 0;
    /* Read until the end of the request headers (or a full buffer). */
    while (used < sizeof buf - 1) {
        ssize_t n = recv(fd, buf + used, sizeof buf - 1 - used, 0);
        if (n <= 0)
            return;
        used += (size_t)n;
        buf[used] = '\0';
        if (strstr(buf, "\r\n\r\n") != NULL || strstr(buf, "\n\n") != NULL)
            break;
    }
    send(fd, RESPONSE, sizeof RESPONSE - 1, MSG_NOSIGNAL);
}

int main(void) {
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0)
        die("socket");
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0)
        die("bind");
    if (listen(listener, 64) != 0)
        die("listen");
    socklen_t len = sizeof addr;
    if (getsockname(listener, (struct sockaddr *)&addr, &len) != 0)
        die("getsockname");
    report("port", ntohs(addr.sin_port));
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            die("accept4");
        }
        serve(fd);
        close(fd);
    }
}
