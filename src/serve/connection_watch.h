// Tells whether the client of an HTTP request has gone away while its answer is still being
// generated, so that the work can be cancelled. cpp-httplib 0.11 (Debian bookworm) gives a
// handler the connection's endpoints but not its socket, so the socket is found once by those
// endpoints among this process's descriptors (getpeername/getsockname), then polled: a peer
// that closed or reset the connection shows as POLLRDHUP/POLLHUP/POLLERR or end of stream.
// (A client that half-closes its side after sending the request counts as gone; HTTP
// clients do not do that.)
#pragma once
#include <string>

namespace duo::serve {

class ConnectionWatch {
 public:
  ConnectionWatch(std::string remote_addr, int remote_port, std::string local_addr, int local_port);
  // True once the peer has closed or reset the connection. Cheap after the first call.
  bool peer_gone();
  // Whether the socket was found (false: peer_gone() can only answer false).
  bool found();

 private:
  void locate();
  std::string remote_addr_, local_addr_;
  int remote_port_, local_port_;
  int fd_ = -1;
  bool searched_ = false;
};

}  // namespace duo::serve
