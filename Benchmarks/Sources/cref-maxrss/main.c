/* cref-maxrss CMD ARGS...: runs CMD and prints its peak RSS in KiB on stderr.
 *
 * Why a launcher: Linux carries the parent's memory high-water mark into a
 * child across posix_spawn (vfork shares the parent's mm until exec, and exec
 * records that mm's peak in the child's rusage). Launched from this tiny
 * process, the child's ru_maxrss is its own. */
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>

extern char **environ;

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: cref-maxrss CMD ARGS...\n"); return 2; }
    pid_t pid;
    int rc = posix_spawn(&pid, argv[1], NULL, NULL, argv + 1, environ);
    if (rc != 0) { fprintf(stderr, "cref-maxrss: cannot run %s\n", argv[1]); return 2; }
    int status = 0;
    struct rusage ru;
    while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR) {}
    fprintf(stderr, "maxrss_kib %ld\n", ru.ru_maxrss);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}
