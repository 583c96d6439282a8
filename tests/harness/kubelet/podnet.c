/* A pod's own network address on a shared loopback (LD_PRELOAD; see podnet.py).
 *
 * Stand-in pods share the machine's network namespace, so two pods binding 0.0.0.0:8080 or
 * 127.0.0.1:3500 would collide. With QO_POD_IP set, bind() of the wildcard or 127.0.0.1 binds
 * the pod's own 127.x.y.z instead, and connect() to 127.0.0.1 reaches the pod's own address:
 * "localhost" means the pod, as it does in a pod's network namespace.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static in_addr_t pod_ip(void) {
    const char *text = getenv("QO_POD_IP");
    return text ? inet_addr(text) : 0;
}

/* IPv6 wildcard and loopback binds would collide across pods: refused (redis's "-::*" is optional). */
static int refuse_v6(const struct sockaddr *addr, socklen_t len) {
    if (!pod_ip() || !addr || addr->sa_family != AF_INET6 || len < sizeof(struct sockaddr_in6)) return 0;
    const struct in6_addr *ip = &((const struct sockaddr_in6 *)addr)->sin6_addr;
    return IN6_IS_ADDR_UNSPECIFIED(ip) || IN6_IS_ADDR_LOOPBACK(ip);
}

static int rewrite(const struct sockaddr *addr, socklen_t len, struct sockaddr_in *out, int binding) {
    in_addr_t ip = pod_ip();
    if (!ip || !addr || addr->sa_family != AF_INET || len < sizeof(struct sockaddr_in)) return 0;
    memcpy(out, addr, sizeof *out);
    uint32_t host = ntohl(out->sin_addr.s_addr);
    if (host == INADDR_LOOPBACK || (binding && host == INADDR_ANY)) {
        out->sin_addr.s_addr = ip;
        return 1;
    }
    return 0;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (!real) real = dlsym(RTLD_NEXT, "bind");
    struct sockaddr_in own;
    if (refuse_v6(addr, len)) {
        errno = EADDRNOTAVAIL;
        return -1;
    }
    if (rewrite(addr, len, &own, 1)) return real(fd, (const struct sockaddr *)&own, sizeof own);
    return real(fd, addr, len);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (!real) real = dlsym(RTLD_NEXT, "connect");
    struct sockaddr_in own;
    if (rewrite(addr, len, &own, 0)) return real(fd, (const struct sockaddr *)&own, sizeof own);
    return real(fd, addr, len);
}
