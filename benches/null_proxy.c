/* The floor of a proxy's CPU per request on this machine: a relay that does nothing but move
 * bytes. One thread, epoll; each client connection gets its own upstream connection, and
 * whatever one side sends is written to the other as it is: one read and one write per
 * message, as tokengate and nginx make, and no parsing, header, timer or allocation at all.
 * Only for benches/syscalls.py's small GETs (a write the socket cannot take at once is
 * finished with a blocking poll, which such a run never needs).
 *
 *     cc -O2 -o null_proxy benches/null_proxy.c && ./null_proxy LISTEN_PORT UPSTREAM_PORT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FDS 65536

static int peer[MAX_FDS];

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int write_all(int fd, const char *p, ssize_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, (size_t)n);
        if (w > 0) {
            p += w;
            n -= w;
        } else if (w < 0 && errno == EAGAIN) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            poll(&pfd, 1, -1);
        } else {
            return -1;
        }
    }
    return 0;
}

static void close_pair(int fd) {
    int other = peer[fd];
    close(fd);
    if (other >= 0) {
        close(other);
        peer[other] = -1;
    }
    peer[fd] = -1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_PORT\n", argv[0]);
        return 2;
    }
    struct sockaddr_in listen_at = loopback(atoi(argv[1]));
    struct sockaddr_in upstream = loopback(atoi(argv[2]));
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&listen_at, sizeof listen_at) || listen(lfd, 1024)) {
        perror("listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    static struct epoll_event events[256];
    static char buf[65536];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                if (c < 0 || c >= MAX_FDS) {
                    if (c >= 0) close(c);
                    continue;
                }
                int u = socket(AF_INET, SOCK_STREAM, 0);
                if (u < 0 || u >= MAX_FDS || connect(u, (struct sockaddr *)&upstream, sizeof upstream)) {
                    close(c);
                    if (u >= 0) close(u);
                    continue;
                }
                fcntl(u, F_SETFL, O_NONBLOCK);
                nodelay(c);
                nodelay(u);
                peer[c] = u;
                peer[u] = c;
                struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                struct epoll_event ue = {.events = EPOLLIN, .data.fd = u};
                epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                epoll_ctl(ep, EPOLL_CTL_ADD, u, &ue);
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r > 0) {
                if (write_all(peer[fd], buf, r)) close_pair(fd);
            } else if (r == 0 || errno != EAGAIN) {
                close_pair(fd);
            }
        }
    }
}
