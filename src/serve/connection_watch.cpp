#include "serve/connection_watch.h"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>

namespace duo::serve {

bool ConnectionWatch::peer_gone(bool may_probe) {
  if (fd_ < 0) return false;
  pollfd p{fd_, POLLIN | POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLHUP | POLLERR | POLLNVAL)) return true;  // reset, or closed both ways
  bool eof = (p.revents & POLLRDHUP) != 0;
  if (!eof && (p.revents & POLLIN)) {
    // Readable: either a pipelined next request (alive) or end of stream.
    char c;
    const ssize_t n = recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return true;
    eof = n == 0;
  }
  if (!eof || probed_ || !may_probe || !http11_) return false;
  probed_ = true;
  static const char k100[] = "HTTP/1.1 100 Continue\r\n\r\n";
  const ssize_t n = send(fd_, k100, sizeof(k100) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
  return n < 0 && (errno == EPIPE || errno == ECONNRESET);
}

}  // namespace duo::serve
