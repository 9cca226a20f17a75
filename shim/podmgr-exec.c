/*
 * podmgr-exec: the first process of every app, between systemd and the app.
 *
 * systemd 252 cannot give a service a PID namespace of its own (PrivatePIDs= came in
 * 257), no version yet sets a host name in the UTS namespace it makes, and the image's
 * root holds no Python; so this small static program is bind-mounted read-only into the
 * app's root and runs as the service's command, as root. systemd has already applied
 * the app's confinement (root directory, mounts, cgroup, seccomp filter, no_new_privs,
 * a capability bounding set that also holds what this program needs); this program
 *
 *   -H NAME  makes a UTS namespace and sets the pod's host name in it;
 *   -P       makes a PID namespace and forks the app as its PID 1, in a mount namespace
 *            of its own with a /proc of that PID namespace (hidepid=invisible), the -R
 *            paths read-only and the -I paths empty again on it, and systemd's notify
 *            socket out of reach unless -N (the app sends sd_notify messages); it stays
 *            as the app's parent, passing on signals and its exit status. systemd takes
 *            a grandchild for a service's main process only as an "alien" one, whose
 *            end it does not wait for when it stops the unit; so this process is the
 *            service's main process (docs/pods.md: the trade-off);
 *   -J PID   joins the mount, PID and UTS namespaces of PID (podmgr enter) and stays as
 *            the parent of the command in the same way: a process orphaned inside the
 *            app's PID namespace would be reaped by the app;
 *   -w DIR   changes to DIR after joining;
 *   without -P or -J (systemd made the PID namespace: PrivatePIDs=), the -R and -I paths
 *            and the notify socket are seen to on the /proc systemd mounted, and the
 *            app is executed in place: no process beside it;
 *
 * then drops to the app's credentials: -G groups, -g GID, -u UID, the bounding set -c
 * MASK and, for a non-root user, the ambient set -a MASK; -D syscalls that systemd's
 * filter let through only for this program are denied again (-E errno, 0: SIGSYS, as
 * the app's own filter would); then it executes the app (argv after --).
 *
 * Options are parsed by hand and nothing is looked up: no NSS, no locale, no dlopen in a
 * root that the image controls.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_RAISE 2
#endif

#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#define X32_BIT 0x40000000u
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#elif defined(__powerpc64__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define NATIVE_ARCH AUDIT_ARCH_PPC64LE
#elif defined(__s390x__)
#define NATIVE_ARCH AUDIT_ARCH_S390X
#elif defined(__riscv) && __riscv_xlen == 64
#define NATIVE_ARCH AUDIT_ARCH_RISCV64
#else
#error "podmgr-exec: unknown architecture"
#endif

#define MAX_LIST 64

static const char *prog = "podmgr-exec";

static void die(int code, const char *what, const char *arg) {
    /* One line on stderr, which systemd gives to the journal with the app's fields. */
    if (arg)
        dprintf(2, "%s: %s %s: %s\n", prog, what, arg, strerror(errno));
    else
        dprintf(2, "%s: %s: %s\n", prog, what, strerror(errno));
    _exit(code);
}

static void usage(const char *why) {
    dprintf(2, "%s: %s\n", prog, why);
    _exit(127);
}

static unsigned long long parse_num(const char *s, int base, const char *opt) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, base);
    if (errno || end == s || *end)
        usage(opt);
    return v;
}

struct syscall_name {
    const char *name;
    long nr;
};

/* The calls this program needs that an app's filter may deny: systemd's filter lets
 * them through for this program, and it denies them again before the app runs. */
static const struct syscall_name relaxable[] = {
    {"mount", SYS_mount},     {"umount2", SYS_umount2},   {"unshare", SYS_unshare},
    {"setns", SYS_setns},     {"sethostname", SYS_sethostname},
    {"setgroups", SYS_setgroups}, {"setresuid", SYS_setresuid}, {"setresgid", SYS_setresgid},
    {"setuid", SYS_setuid},   {"setgid", SYS_setgid},     {"capset", SYS_capset},
    {"prctl", SYS_prctl},     {"seccomp", SYS_seccomp},
};

static long syscall_nr(const char *name) {
    for (size_t i = 0; i < sizeof relaxable / sizeof relaxable[0]; i++)
        if (strcmp(relaxable[i].name, name) == 0)
            return relaxable[i].nr;
    usage("-D: a system call this program does not relax");
    return -1;
}

static size_t split(char *s, char **out, size_t max) {
    size_t n = 0;
    for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
        if (n == max)
            usage("list too long");
        out[n++] = tok;
    }
    return n;
}

/* A deny filter for the given calls, for the native ABI (and x32's numbering of it).
 * Other ABIs are systemd's filter's business (SystemCallArchitectures=native for native
 * images). */
static void deny_syscalls(long *nrs, size_t n, int err) {
    if (n == 0)
        return;
    struct sock_filter f[8 + 2 * MAX_LIST];
    size_t i = 0;
    uint32_t deny = err ? (SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA)) : SECCOMP_RET_KILL_PROCESS;
    f[i++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    f[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_ARCH, 1, 0);
    f[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    f[i++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
#ifdef X32_BIT
    f[i++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_AND | BPF_K, ~X32_BIT);
#endif
    for (size_t k = 0; k < n; k++) {
        /* Jump to the deny at the end: over the remaining compares and the allow. */
        size_t remaining = n - k - 1;
        f[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)nrs[k], (uint8_t)(remaining + 1), 0);
    }
    f[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    f[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, deny);
    struct sock_fprog prog_ = {.len = (unsigned short)i, .filter = f};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog_) < 0)
        die(127, "installing the seccomp filter", NULL);
}

static void protect_proc(char **ro, size_t nro, char **hide, size_t nhide);

static void remount_proc(char **ro, size_t nro, char **hide, size_t nhide) {
    /* The /proc systemd mounted shows the host's PID namespace: replace it, with its
     * read-only submounts, by one of this namespace. Our mount namespace is a slave, so
     * nothing of this reaches systemd's or the host's. */
    if (mount(NULL, "/", NULL, MS_SLAVE | MS_REC, NULL) < 0)
        die(127, "making / a slave mount", NULL);
    if (umount2("/proc", MNT_DETACH) < 0 && errno != EINVAL)
        die(127, "unmounting", "/proc");
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible") < 0)
        die(127, "mounting", "/proc");
    protect_proc(ro, nro, hide, nhide);
}

/* The kernel's writable interfaces in /proc read-only, its secrets empty. */
static void protect_proc(char **ro, size_t nro, char **hide, size_t nhide) {
    for (size_t i = 0; i < nro; i++) {
        if (mount(ro[i], ro[i], NULL, MS_BIND | MS_REC, NULL) < 0) {
            if (errno == ENOENT)
                continue; /* the kernel has no such entry: nothing to protect */
            die(127, "binding", ro[i]);
        }
        if (mount(NULL, ro[i], NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
            die(127, "making read-only", ro[i]);
    }
    for (size_t i = 0; i < nhide; i++) {
        if (mount("/dev/null", hide[i], NULL, MS_BIND, NULL) < 0 && errno != ENOENT)
            die(127, "hiding", hide[i]);
    }
}

static void take_terminal(void) {
    /* A terminal on stdin (podmgr run --interactive, enter) stays the controlling
     * terminal of the app's own session: the session of this process ends with it. */
    if (setsid() < 0 && errno != EPERM)
        die(127, "setsid", NULL);
    if (isatty(0))
        (void)ioctl(0, TIOCSCTTY, 1);
}

static volatile pid_t child_pid;

static void forward(int sig) {
    if (child_pid > 0)
        kill(child_pid, sig);
}

/* Before the fork, so that no signal meant for the app is lost meanwhile; the app's
 * exec resets them. */
static void forward_signals(void) {
    struct sigaction sa = {.sa_handler = forward};
    sigemptyset(&sa.sa_mask);
    int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaction(sigs[i], &sa, NULL);
}

static void wait_and_exit(pid_t pid) {
    child_pid = pid;
    /* Not to be read or traced through /proc while it holds CAP_SYS_ADMIN, nor to dump
     * a core of its own when it dies of the app's signal. */
    (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    /* While it waits: no privilege but passing signals on to an app of another user. */
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    data[0].effective = data[0].permitted = 1u << CAP_KILL;
    (void)syscall(SYS_capset, &hdr, data);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            die(127, "waitpid", NULL);
    if (WIFEXITED(status))
        _exit(WEXITSTATUS(status));
    /* Die of the same signal, so that systemd reports it as the command's. */
    int sig = WTERMSIG(status);
    signal(sig, SIG_DFL);
    sigset_t all;
    sigemptyset(&all);
    sigaddset(&all, sig);
    sigprocmask(SIG_UNBLOCK, &all, NULL);
    kill(getpid(), sig);
    _exit(128 + sig);
}

/* The bounding set, while CAP_SETPCAP is still effective. */
static void drop_bounding(uint64_t bounding) {
    for (int cap = 0; cap <= 63; cap++) {
        if (bounding & (1ULL << cap))
            continue;
        if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) < 0)
            break; /* past the kernel's last capability */
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
            die(127, "dropping a capability from the bounding set", NULL);
    }
}

/* The calls that drop privileges: denied only once they are done. */
static int drops_privileges(long nr) {
    return nr == SYS_setgroups || nr == SYS_setresuid || nr == SYS_setresgid || nr == SYS_setuid ||
           nr == SYS_setgid || nr == SYS_capset || nr == SYS_prctl || nr == SYS_seccomp;
}

struct config {
    const char *hostname, *workdir;
    int new_pidns, notify, deny_errno;
    pid_t join;
    int have_uid, have_gid, have_groups, have_ambient, have_bounding;
    uid_t uid;
    gid_t gid;
    uint64_t bounding, ambient;
    char *ro[MAX_LIST], *hide[MAX_LIST];
    size_t nro, nhide, ngroups, ndeny;
    gid_t groups[MAX_LIST];
    long deny[MAX_LIST];
    char **cmd;
};

static void parse(struct config *c, int argc, char **argv) {
    char *groups_s[MAX_LIST], *deny_s[MAX_LIST];
    c->bounding = ~0ULL;
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (a[0] != '-' || !a[1] || a[2])
            usage("bad option");
        int flag = a[1] == 'P' || a[1] == 'N';
        if (!flag && i + 1 >= argc)
            usage("option needs a value");
        char *v = flag ? NULL : argv[++i];
        switch (a[1]) {
        case 'H': c->hostname = v; break;
        case 'P': c->new_pidns = 1; break;
        case 'N': c->notify = 1; break;
        case 'J': c->join = (pid_t)parse_num(v, 10, "-J"); break;
        case 'w': c->workdir = v; break;
        case 'u': c->uid = (uid_t)parse_num(v, 10, "-u"); c->have_uid = 1; break;
        case 'g': c->gid = (gid_t)parse_num(v, 10, "-g"); c->have_gid = 1; break;
        case 'G':
            c->ngroups = *v ? split(v, groups_s, MAX_LIST) : 0;
            for (size_t k = 0; k < c->ngroups; k++)
                c->groups[k] = (gid_t)parse_num(groups_s[k], 10, "-G");
            c->have_groups = 1;
            break;
        case 'c': c->bounding = parse_num(v, 16, "-c"); c->have_bounding = 1; break;
        case 'a': c->ambient = parse_num(v, 16, "-a"); c->have_ambient = 1; break;
        case 'R': if (c->nro == MAX_LIST) usage("too many -R"); c->ro[c->nro++] = v; break;
        case 'I': if (c->nhide == MAX_LIST) usage("too many -I"); c->hide[c->nhide++] = v; break;
        case 'D':
            c->ndeny = *v ? split(v, deny_s, MAX_LIST) : 0;
            for (size_t k = 0; k < c->ndeny; k++)
                c->deny[k] = syscall_nr(deny_s[k]);
            break;
        case 'E': c->deny_errno = (int)parse_num(v, 10, "-E"); break;
        default: usage("unknown option");
        }
    }
    if (i >= argc)
        usage("no command after --");
    c->cmd = argv + i;
}

static void join_namespaces(const struct config *c) {
    /* Open all three first: once in the app's mount namespace, /proc is its own. */
    static const char *kinds[] = {"uts", "pid", "mnt"};
    int fds[3];
    for (int k = 0; k < 3; k++) {
        char p[64];
        snprintf(p, sizeof p, "/proc/%d/ns/%s", (int)c->join, kinds[k]);
        fds[k] = open(p, O_RDONLY | O_CLOEXEC);
        if (fds[k] < 0)
            die(127, "opening", p);
    }
    for (int k = 0; k < 3; k++) {
        if (setns(fds[k], 0) < 0)
            die(127, "joining the app's namespace", kinds[k]);
        close(fds[k]);
    }
}

/* Drop to the app's credentials, ready to execute it. */
static void become_app(struct config *c) {
    /* Without no_new_privs (the manifest turned it off) a filter can only be installed
     * while CAP_SYS_ADMIN is effective, so before the drop, and without the calls that
     * the drop itself makes: those stay allowed. With no_new_privs, after it. */
    if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1) {
        size_t n = 0;
        for (size_t k = 0; k < c->ndeny; k++)
            if (!drops_privileges(c->deny[k]))
                c->deny[n++] = c->deny[k];
        deny_syscalls(c->deny, n, c->deny_errno);
        c->ndeny = 0;
    }
    int root = c->have_uid ? c->uid == 0 : getuid() == 0;
    if (c->have_bounding)
        drop_bounding(c->bounding);
    if (c->have_groups && setgroups(c->ngroups, c->groups) < 0)
        die(127, "setgroups", NULL);
    if (c->have_gid && setresgid(c->gid, c->gid, c->gid) < 0)
        die(127, "setresgid", NULL);
    if (c->have_uid) {
        if (c->have_ambient && c->uid != 0 && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
            die(127, "keepcaps", NULL);
        if (setresuid(c->uid, c->uid, c->uid) < 0)
            die(127, "setresuid", NULL);
    }
    /* The final sets, as systemd gives them: root the bounding set as its effective and
     * permitted sets; another user none, or its ambient set, raised so that it survives
     * the exec. */
    if (c->have_bounding && (root || c->have_ambient)) {
        struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
        struct __user_cap_data_struct data[2];
        if (syscall(SYS_capget, &hdr, data) < 0)
            die(127, "capget", NULL);
        /* Never more than systemd gave (it takes CAP_MKNOD away for PrivateDevices=). */
        uint64_t have = data[0].permitted | ((uint64_t)data[1].permitted << 32);
        uint64_t keep = (root ? c->bounding : c->ambient & c->bounding) & have;
        memset(data, 0, sizeof data);
        data[0].effective = data[0].permitted = (uint32_t)keep;
        data[1].effective = data[1].permitted = (uint32_t)(keep >> 32);
        if (!root) {
            data[0].inheritable = (uint32_t)keep;
            data[1].inheritable = (uint32_t)(keep >> 32);
        }
        if (syscall(SYS_capset, &hdr, data) < 0)
            die(127, "capset", NULL);
        for (int cap = 0; !root && cap <= 63; cap++)
            if ((keep & (1ULL << cap)) && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0)
                die(127, "raising an ambient capability", NULL);
    }
    deny_syscalls(c->deny, c->ndeny, c->deny_errno);
    if (c->workdir && chdir(c->workdir) < 0)
        die(127, "changing to", c->workdir);
}

static void exec_app(const struct config *c) {
    execvp(c->cmd[0], c->cmd);
    die(errno == ENOENT ? 127 : 126, "executing", c->cmd[0]);
}

/* Socket activation: systemd passed the fds to its main process, this one's parent;
 * they are the app's (sd_listen_fds checks LISTEN_PID against its own PID). */
static void adopt_listen_fds(pid_t parent) {
    const char *v = getenv("LISTEN_PID");
    char *end;
    if (!v || strtol(v, &end, 10) != parent || *end)
        return;
    char mine[16];
    snprintf(mine, sizeof mine, "%d", (int)getpid());
    setenv("LISTEN_PID", mine, 1);
}

/* Where systemd takes notifications: out of reach of an app that sends none, so that
 * nothing in the app can talk to systemd as the service. */
static void hide_notify_socket(void) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (path && path[0] == '/')
        (void)umount2(path, MNT_DETACH);
    unsetenv("NOTIFY_SOCKET");
}

int main(int argc, char **argv) {
    struct config c;
    memset(&c, 0, sizeof c);
    parse(&c, argc, argv);
    if (c.join > 0)
        join_namespaces(&c);
    if (c.hostname) {
        if (unshare(CLONE_NEWUTS) < 0)
            die(127, "making a UTS namespace", NULL);
        if (sethostname(c.hostname, strlen(c.hostname)) < 0)
            die(127, "setting the host name", c.hostname);
    }
    if (c.new_pidns) {
        if (unshare(CLONE_NEWPID) < 0)
            die(127, "making a PID namespace", NULL);
        forward_signals();
        pid_t parent = getpid();
        pid_t pid = fork();
        if (pid < 0)
            die(127, "fork", NULL);
        if (pid > 0)
            wait_and_exit(pid);
        adopt_listen_fds(parent);
        /* Should this process be killed, its app goes with it. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
            die(127, "PR_SET_PDEATHSIG", NULL);
        /* A mount namespace of the app's own, for its /proc. */
        if (unshare(CLONE_NEWNS) < 0)
            die(127, "making a mount namespace", NULL);
        take_terminal();
        remount_proc(c.ro, c.nro, c.hide, c.nhide);
        if (!c.notify)
            hide_notify_socket();
    } else if (c.join == 0) {
        /* systemd made the PID namespace and its /proc (PrivatePIDs=, systemd 257). */
        protect_proc(c.ro, c.nro, c.hide, c.nhide);
        if (!c.notify)
            hide_notify_socket();
    } else {
        forward_signals();
        pid_t pid = fork();
        if (pid < 0)
            die(127, "fork", NULL);
        if (pid > 0)
            wait_and_exit(pid);
        take_terminal();
    }
    become_app(&c);
    exec_app(&c);
    return 127;
}
