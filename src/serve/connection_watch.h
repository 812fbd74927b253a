// Tells whether the client of an HTTP request has gone away while its answer is still being
// generated, so that the work can be cancelled. The socket comes from the front end
// (http_front.h).
//
// A client that shut down only its sending side after a complete request (half-close) and
// one that closed the connection look the same from here: end of stream. The difference
// shows only when something is sent: a closed socket answers with a reset. So, before the
// answer has begun (may_probe), the first end of stream is answered with an interim
// "HTTP/1.1 100 Continue" (RFC 9110 15.2: an HTTP/1.1 client must accept 1xx responses
// before the final one); a client that is gone resets the connection, one that only
// half-closed keeps being served. HTTP/1.0 clients cannot take 1xx answers: they are served
// to the end (the answer's write fails if they left). Once the answer has begun, the writes
// themselves find a client that left.
#pragma once

namespace duo::serve {

class ConnectionWatch {
 public:
  ConnectionWatch(int fd, bool http11) : fd_(fd), http11_(http11) {}
  // True once the peer has reset or fully closed the connection.
  bool peer_gone(bool may_probe);

 private:
  int fd_;
  bool http11_;
  bool probed_ = false;
};

}  // namespace duo::serve
