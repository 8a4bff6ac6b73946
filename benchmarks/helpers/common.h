/* Shared helpers for the benchmark workloads.
 *
 * Every workload reports to the benchmark through stdout with raw write(2)
 * calls: stdio buffering would delay or merge lines, and the benchmark reads
 * one line per event.
 */
#ifndef PIDBENCH_COMMON_H
#define PIDBENCH_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* CLOCK_MONOTONIC is shared by all PID namespaces (unshare --pid does not
 * create a time namespace), so stamps taken here compare directly with the
 * stamps the benchmark takes on the host. */
static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Write a whole buffer, retrying on EINTR and short writes. */
static inline void write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            _exit(111);
        }
        buf += n;
        len -= (size_t)n;
    }
}

/* Emit "<word> <value>\n" on stdout as a single write. */
static inline void report(const char *word, int64_t value) {
    char line[64];
    int len = snprintf(line, sizeof line, "%s %lld\n", word, (long long)value);
    write_all(STDOUT_FILENO, line, (size_t)len);
}

static inline void die(const char *what) {
    perror(what);
    _exit(112);
}

#endif
