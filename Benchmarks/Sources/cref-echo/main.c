// The reference for the control-socket benchmark: a single-threaded epoll
// server on a Unix socket that answers every request line with a canned
// reply (a real `status` reply captured from the daemon), doing no work at
// all. What it costs is the floor: kernel, scheduling and the client.
//   cref-echo SOCKET REPLY_FILE   (prints "ready" once listening)
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAXC 4096
static char inbuf[MAXC][1024];
static size_t inlen[MAXC];

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: cref-echo SOCKET REPLY_FILE\n"); return 2; }
    FILE *f = fopen(argv[2], "rb");
    if (!f) { perror("reply file"); return 2; }
    static char reply[1 << 20];
    size_t rlen = fread(reply, 1, sizeof reply - 1, f);
    fclose(f);
    if (rlen == 0 || reply[rlen - 1] != '\n') reply[rlen++] = '\n';
    int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    unlink(argv[1]);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 256)) { perror("bind"); return 2; }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("ready\n");
    fflush(stdout);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
                    if (c >= MAXC) { close(c); continue; }
                    inlen[c] = 0;
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
                continue;
            }
            ssize_t r = read(fd, inbuf[fd] + inlen[fd], sizeof inbuf[fd] - inlen[fd]);
            if (r <= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL); close(fd); continue; }
            inlen[fd] += (size_t)r;
            size_t start = 0;
            for (size_t j = 0; j < inlen[fd]; j++) {
                if (inbuf[fd][j] != '\n') continue;
                // Blocking write of the whole reply: the clients always read.
                size_t off = 0;
                while (off < rlen) {
                    ssize_t w = write(fd, reply + off, rlen - off);
                    if (w < 0 && errno == EAGAIN) continue;
                    if (w <= 0) break;
                    off += (size_t)w;
                }
                start = j + 1;
            }
            memmove(inbuf[fd], inbuf[fd] + start, inlen[fd] - start);
            inlen[fd] -= start;
        }
    }
}
