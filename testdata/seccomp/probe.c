/* Probes of the system calls Docker's default seccomp profile refuses, for
 * tests/sandbox_seccomp.rs. Built static with gcc so it runs in a busybox image.
 * Each argument names a probe; each prints one line "NAME ok" or "NAME errno=N".
 * Nothing a probe does outlives it: keys go to a new session keyring, children exit at once. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static long child_or_result(long pid) {
    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid((pid_t)pid, NULL, 0);
    return pid;
}

static long probe(const char *name) {
    if (!strcmp(name, "keyctl"))
        return syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, 0);
    if (!strcmp(name, "add_key"))
        return syscall(SYS_add_key, "user", "kiln-probe", "x", 1, KEY_SPEC_PROCESS_KEYRING);
    if (!strcmp(name, "io_uring_setup")) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        long fd = syscall(SYS_io_uring_setup, 1, &p);
        if (fd >= 0)
            close((int)fd);
        return fd;
    }
    if (!strcmp(name, "unshare_user"))
        return syscall(SYS_unshare, CLONE_NEWUSER);
    if (!strcmp(name, "unshare_mount"))
        return syscall(SYS_unshare, CLONE_NEWNS);
    if (!strcmp(name, "clone_newuser"))
        return child_or_result(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0));
    if (!strcmp(name, "clone_fork"))
        return child_or_result(syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0));
    if (!strcmp(name, "clone3")) {
        struct clone_args a;
        memset(&a, 0, sizeof a);
        a.exit_signal = SIGCHLD;
        return child_or_result(syscall(SYS_clone3, &a, sizeof a));
    }
    if (!strcmp(name, "mount_tmpfs"))
        return mount("none", "/tmp", "tmpfs", 0, NULL);
    if (!strcmp(name, "personality_exec"))
        return personality(READ_IMPLIES_EXEC);
    if (!strcmp(name, "socket_vsock"))
        return socket(AF_VSOCK, SOCK_STREAM, 0);
    if (!strcmp(name, "socket_alg"))
        return socket(AF_ALG, SOCK_SEQPACKET, 0);
    if (!strcmp(name, "socket_inet"))
        return socket(AF_INET, SOCK_STREAM, 0);
    if (!strcmp(name, "mkdir"))
        return mkdir("/tmp/kiln-probe-dir", 0755);
    fprintf(stderr, "unknown probe %s\n", name);
    _exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        errno = 0;
        long r = probe(argv[i]);
        if (r < 0)
            printf("%s errno=%d\n", argv[i], errno);
        else
            printf("%s ok\n", argv[i]);
    }
    return 0;
}
