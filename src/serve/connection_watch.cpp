#include "serve/connection_watch.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <utility>

namespace duo::serve {

namespace {

// Address and port of a socket address, as cpp-httplib formats them (inet_ntop).
bool endpoint_of(const sockaddr_storage& ss, std::string& addr, int& port) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    if (!inet_ntop(AF_INET, &a->sin_addr, buf, sizeof(buf))) return false;
    port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    if (!inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof(buf))) return false;
    port = ntohs(a->sin6_port);
  } else {
    return false;
  }
  addr = buf;
  return true;
}

bool matches(int fd, const std::string& raddr, int rport, const std::string& laddr, int lport) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  std::string addr;
  int port = -1;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0 || !endpoint_of(ss, addr, port)) return false;
  if (port != rport || addr != raddr) return false;
  len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0 || !endpoint_of(ss, addr, port)) return false;
  return port == lport && (laddr.empty() || addr == laddr);
}

}  // namespace

ConnectionWatch::ConnectionWatch(std::string remote_addr, int remote_port, std::string local_addr, int local_port)
    : remote_addr_(std::move(remote_addr)), local_addr_(std::move(local_addr)), remote_port_(remote_port),
      local_port_(local_port) {}

void ConnectionWatch::locate() {
  searched_ = true;
  if (remote_port_ < 0 || local_port_ < 0) return;
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return;
  while (dirent* e = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || fd == dirfd(dir)) continue;
    struct stat st{};
    if (fstat((int)fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    if (matches((int)fd, remote_addr_, remote_port_, local_addr_, local_port_)) {
      fd_ = (int)fd;
      break;
    }
  }
  closedir(dir);
}

bool ConnectionWatch::found() {
  if (!searched_) locate();
  return fd_ >= 0;
}

bool ConnectionWatch::peer_gone() {
  if (!found()) return false;
  pollfd p{fd_, POLLIN | POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
  if (p.revents & POLLIN) {
    // Readable: either the next pipelined request (alive) or end of stream (gone).
    char c;
    const ssize_t n = recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
  }
  return false;
}

}  // namespace duo::serve
