// SPDX-License-Identifier: MIT
// The user-space delay line of launch/vcluster, in C (vcluster builds it with the host's C compiler on
// first use and falls back to its Python delay line without one).  Same contract as vcluster's
// delayline_main:
//
//   delayline DELAY_US QUEUE_BYTES IN:OUT [IN:OUT ...]       (run inside the switch namespace)
//
// Every frame received on IN is sent on OUT DELAY_US after it reached IN (the kernel's receive
// timestamp).  PACKET_VNET_HDR lets GSO super-packets (up to 64 KiB) pass as one frame.  A constant
// delay keeps FIFO order, so one queue ordered by arrival serves all ports.  At most QUEUE_BYTES are
// held; frames beyond that are dropped (counted).  Prints "ready" on stdout once listening; on SIGTERM
// prints its frame/drop counts on stderr and exits 0.
//
// Why C: the Python line costs about 1/3 of a core per Gbit/s of traffic, CPU that a real wire does not
// take from the ranks of a 2-core host. Measured over a combine benchmark on the 2 x 4 virtual cluster:
// 0.54 s user + 3.64 s system here against 2.57 + 4.38 s for the Python line (the system part is the
// kernel's forwarding, which both pay). VCLUSTER_DELAYLINE_EARLY_US overrides the early wake-up below.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef PACKET_VNET_HDR
#define PACKET_VNET_HDR 15
#endif
#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

enum { MAX_PORTS = 64, MAX_FRAME = 256 * 1024 };
// Wake this long before a frame is due and spin the rest: timer wake-ups come late.
static int64_t early_ns = 30000;

struct port { int rx, tx; };
struct entry { int64_t due_ns; size_t off; uint32_t len; int tx; };

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);   // the clock of SO_TIMESTAMPNS
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what, const char *arg) {
    fprintf(stderr, "delay line: %s %s: %s\n", what, arg ? arg : "", strerror(errno));
    exit(1);
}

static int packet_socket(const char *ifname, int rx) {
    int fd = socket(AF_PACKET, SOCK_RAW, rx ? htons(ETH_P_ALL) : 0);
    if (fd < 0) die("socket for", ifname);
    int one = 1, big = 64 << 20;
    if (setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one)) die("PACKET_VNET_HDR on", ifname);
    if (rx) {
        setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
        if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big))
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
        if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one)) die("SO_TIMESTAMPNS on", ifname);
    } else if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big)) {
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    }
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = rx ? htons(ETH_P_ALL) : 0;
    sll.sll_ifindex = (int)if_nametoindex(ifname);
    if (!sll.sll_ifindex) die("no interface", ifname);
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll)) die("bind to", ifname);
    return fd;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s DELAY_US QUEUE_BYTES IN:OUT [IN:OUT ...]\n", argv[0]);
        return 2;
    }
    const int64_t delay_ns = atoll(argv[1]) * 1000LL;
    const size_t qlimit = (size_t)atoll(argv[2]);
    const char *early = getenv("VCLUSTER_DELAYLINE_EARLY_US");
    if (early) early_ns = atoll(early) * 1000LL;
    int nports = argc - 3;
    if (nports > MAX_PORTS || delay_ns < 0 || qlimit < MAX_FRAME) {
        fprintf(stderr, "delay line: bad arguments (at most %d ports, queue >= %d bytes)\n", MAX_PORTS, MAX_FRAME);
        return 2;
    }
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);    // 1 us: precise short sleeps
    struct port ports[MAX_PORTS];
    struct pollfd pfds[MAX_PORTS];
    for (int i = 0; i < nports; i++) {
        char spec[64];
        snprintf(spec, sizeof spec, "%s", argv[3 + i]);
        char *colon = strchr(spec, ':');
        if (!colon) { fprintf(stderr, "delay line: bad pair %s (IN:OUT)\n", argv[3 + i]); return 2; }
        *colon = 0;
        ports[i].rx = packet_socket(spec, 1);
        ports[i].tx = packet_socket(colon + 1, 0);
        pfds[i].fd = ports[i].rx;
        pfds[i].events = POLLIN;
    }

    // The queue: frame bytes in a ring arena (a frame never wraps), their entries in a ring of their own.
    const size_t arena_size = qlimit + 2 * (size_t)MAX_FRAME;
    const size_t max_entries = qlimit / 42 + 16;            // no frame is shorter than 42 bytes
    unsigned char *arena = malloc(arena_size);
    struct entry *q = malloc(max_entries * sizeof *q);
    unsigned char scratch[512];                              // where a dropped frame is read to
    if (!arena || !q) { fprintf(stderr, "delay line: out of memory\n"); return 1; }
    size_t head = 0, count = 0, wpos = 0, qbytes = 0;
    uint64_t frames = 0, bytes = 0, drops = 0;

    sigset_t blocked, during_poll;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM);
    sigprocmask(SIG_BLOCK, &blocked, &during_poll);        // SIGTERM only interrupts the poll
    sigdelset(&during_poll, SIGTERM);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGINT, SIG_IGN);                               // the parent decides when we stop

    printf("ready\n");
    fflush(stdout);
    char cbuf[CMSG_SPACE(sizeof(struct timespec))];
    while (!stop) {
        struct timespec ts, *tsp = NULL;
        if (count) {
            int64_t wait = q[head].due_ns - now_ns() - early_ns;
            if (wait < 0) wait = 0;
            ts.tv_sec = wait / 1000000000LL;
            ts.tv_nsec = wait % 1000000000LL;
            tsp = &ts;
        }
        int ready = ppoll(pfds, (nfds_t)nports, tsp, &during_poll);
        if (ready < 0 && errno != EINTR) die("poll", NULL);
        if (stop) break;
        if (ready > 0) {
            int64_t now = now_ns();
            for (int i = 0; i < nports; i++) {
                if (!(pfds[i].revents & POLLIN)) continue;
                for (;;) {
                    // Where the next frame goes: after the newest one, or at the arena's start when
                    // that leaves no MAX_FRAME before the end; never over a queued frame.
                    size_t tail_off = 0;
                    int room = 1;
                    if (count) {
                        size_t oldest = q[head].off;
                        if (oldest < wpos) {                // queued bytes in [oldest, wpos)
                            if (wpos + MAX_FRAME <= arena_size) tail_off = wpos;
                            else room = MAX_FRAME <= oldest;
                        } else {                            // wrapped: [oldest, ...) and [0, wpos)
                            tail_off = wpos;
                            room = wpos + MAX_FRAME <= oldest;
                        }
                    }
                    struct iovec iov = {room ? arena + tail_off : scratch, room ? MAX_FRAME : sizeof scratch};
                    struct msghdr mh;
                    memset(&mh, 0, sizeof mh);
                    mh.msg_iov = &iov;
                    mh.msg_iovlen = 1;
                    mh.msg_control = cbuf;
                    mh.msg_controllen = sizeof cbuf;
                    ssize_t n = recvmsg(ports[i].rx, &mh, MSG_DONTWAIT);
                    if (n < 0) break;                       // EAGAIN: drained (or an error: retry later)
                    if (!room || (mh.msg_flags & MSG_TRUNC) || qbytes + (size_t)n > qlimit || count == max_entries) {
                        drops++;
                        continue;
                    }
                    int64_t t = now;
                    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
                        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMPNS) {
                            struct timespec k;
                            memcpy(&k, CMSG_DATA(c), sizeof k);
                            int64_t kt = (int64_t)k.tv_sec * 1000000000LL + k.tv_nsec;
                            if (kt > now - 1000000000LL && kt <= now) t = kt;
                        }
                    }
                    struct entry *e = &q[(head + count) % max_entries];
                    e->due_ns = t + delay_ns;
                    e->off = tail_off;
                    e->len = (uint32_t)n;
                    e->tx = ports[i].tx;
                    count++;
                    qbytes += (size_t)n;
                    wpos = tail_off + (size_t)n;
                }
            }
        }
        if (count) {
            int64_t now = now_ns();
            if (ready <= 0 && q[head].due_ns - now < early_ns)
                while (now < q[head].due_ns) now = now_ns();
            while (count && q[head].due_ns <= now) {
                struct entry *e = &q[head];
                if (send(e->tx, arena + e->off, e->len, 0) == (ssize_t)e->len) {
                    frames++;
                    bytes += e->len;
                } else {
                    drops++;
                }
                qbytes -= e->len;
                head = (head + 1) % max_entries;
                count--;
            }
        }
    }
    uint64_t kdrops = 0;
    for (int i = 0; i < nports; i++) {
        struct tpacket_stats st;
        socklen_t len = sizeof st;
        if (!getsockopt(ports[i].rx, SOL_PACKET, PACKET_STATISTICS, &st, &len)) kdrops += st.tp_drops;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    fprintf(stderr, "delay line: forwarded %llu frames (%llu bytes), dropped %llu (queue full or send error) + "
            "%llu (socket buffer); CPU %.2f s user + %.2f s system\n", (unsigned long long)frames,
            (unsigned long long)bytes, (unsigned long long)drops, (unsigned long long)kdrops,
            ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
    return 0;
}
