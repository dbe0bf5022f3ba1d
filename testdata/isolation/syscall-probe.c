/* Syscall probes for probes.sh's seccomp group: `syscall-probe NAME` makes the call and exits 0
 * when the kernel allowed it, or prints strerror (as busybox does) and exits 1 when it did not.
 * Built static by record-docker.sh and by tests/isolation_probes.rs. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int fail(const char *what) {
    fprintf(stderr, "%s: %s\n", what, strerror(errno));
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: syscall-probe add_key|keyctl|io_uring_setup\n");
        return 2;
    }
    const char *p = argv[1];
    if (strcmp(p, "add_key") == 0) {
        /* A key in the session keyring; the keyring of a container's root is the host root's
         * when keyrings are not namespaced. */
        long id = syscall(SYS_add_key, "user", "kiln-probe", "x", 1, -3 /* session */);
        return id < 0 ? fail("add_key") : 0;
    }
    if (strcmp(p, "keyctl") == 0) {
        /* KEYCTL_GET_KEYRING_ID of the user keyring (-4), without creating it (0). */
        long id = syscall(SYS_keyctl, 0, -4, 0);
        return id < 0 ? fail("keyctl") : 0;
    }
    if (strcmp(p, "io_uring_setup") == 0) {
        unsigned char params[120];
        memset(params, 0, sizeof params);
        long fd = syscall(SYS_io_uring_setup, 1, params);
        if (fd < 0) return fail("io_uring_setup");
        close((int)fd);
        return 0;
    }
    fprintf(stderr, "syscall-probe: unknown probe %s\n", p);
    return 2;
}
