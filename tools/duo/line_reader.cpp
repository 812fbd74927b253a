#include "line_reader.h"

#include <fcntl.h>
#include <fmt/core.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#ifdef DUO_HAVE_LIBEDIT
#include <editline/readline.h>
#endif

namespace duo::cli {

std::atomic<bool> g_interrupted{false};
// A lock-free atomic is what a signal handler may touch (besides volatile sig_atomic_t).
static_assert(std::atomic<bool>::is_always_lock_free);

namespace {

// The self-pipe: [0] is polled beside the terminal, [1] is written by the handler. Both ends
// are non-blocking: a full pipe must never block the handler (one pending byte is enough),
// and clear_interrupt() empties it without waiting. Set once, before the handler exists.
int g_pipe[2] = {-1, -1};

// The terminal opened a second time, non-blocking: poll() saying "input" is no promise, as
// Ctrl-C makes the kernel drop the typed input (ISIG without NOFLSH) between the poll and the
// read, and a blocking read would then wait for the next key with the interrupt pending (the
// handler may even have run just before the read, or on another thread). A second open file
// description keeps O_NONBLOCK away from the shell's. -1: not a terminal, or the open failed
// (then fd 0, blocking, is read).
int g_key_fd = -1;

// Async-signal-safe: an atomic store and write(2), errno kept for the code it interrupted.
void on_sigint(int) {
  const int saved = errno;
  g_interrupted.store(true);
  if (g_pipe[1] >= 0) {
    const char b = 1;
    [[maybe_unused]] const ssize_t n = ::write(g_pipe[1], &b, 1);
  }
  errno = saved;
}

// Waits until `fd` has input or an interrupt is pending. Returns false for an interrupt (and
// leaves g_interrupted set, also where only the pipe told: clear_interrupt() may have cleared
// the flag just before a new signal refilled the pipe).
bool wait_input(int fd) {
  for (;;) {
    if (g_interrupted.load()) return false;
    pollfd p[2] = {{fd, POLLIN, 0}, {g_pipe[0], POLLIN, 0}};
    const int r = ::poll(p, g_pipe[0] >= 0 ? 2 : 1, -1);
    if (r < 0) {
      if (errno == EINTR) continue;  // the flag is checked again at the top
      return true;                   // let the read report the error
    }
    if (g_pipe[0] >= 0 && (p[1].revents & POLLIN)) {
      g_interrupted.store(true);
      return false;
    }
    if (p[0].revents != 0) return true;  // input, end of input or an error: the read tells
  }
}

#ifdef DUO_HAVE_LIBEDIT
// libedit reads keys through this. An interrupt ends the line as end of input would, and
// read() tells the two apart by g_interrupted. Waiting in poll() on the terminal and the pipe
// (not in a bare read()) is what keeps an interrupt that arrives while libedit is busy
// (redrawing a long pasted line, say) from waiting for the next key.
int getc_interruptible(FILE* in) {
  const int fd = g_key_fd >= 0 ? g_key_fd : fileno(in);
  for (;;) {
    if (!wait_input(fd)) return EOF;
    unsigned char c;
    const ssize_t n = ::read(fd, &c, 1);
    if (n == 1) return c;
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    return EOF;
  }
}
#endif

// A line from a terminal without libedit (the kernel's line editing), interruptible the same
// way. Bytes after the newline stay in `pending` for the next call.
std::optional<std::string> read_terminal_line(std::string& pending, bool& interrupted) {
  interrupted = false;
  for (;;) {
    const size_t nl = pending.find('\n');
    if (nl != std::string::npos) {
      std::string line = pending.substr(0, nl);
      pending.erase(0, nl + 1);
      return line;
    }
    const int fd = g_key_fd >= 0 ? g_key_fd : 0;
    if (!wait_input(fd)) {
      interrupted = true;
      pending.clear();  // the kernel drops the typed line on Ctrl-C too
      return std::nullopt;
    }
    char buf[4096];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) {
      if (pending.empty()) return std::nullopt;
      std::string line;
      line.swap(pending);
      return line;
    }
    pending.append(buf, (size_t)n);
  }
}

}  // namespace

void install_interrupt_handler() {
  if (g_pipe[0] < 0 && ::pipe2(g_pipe, O_CLOEXEC | O_NONBLOCK) != 0) g_pipe[0] = g_pipe[1] = -1;
  struct sigaction sa = {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a blocked read or wait returns EINTR at once
  sigaction(SIGINT, &sa, nullptr);
}

void clear_interrupt() {
  // Flag first, pipe second: a signal in between leaves the flag set (or, if it lands after
  // the drain, a byte in the pipe), never neither.
  g_interrupted.store(false);
  if (g_pipe[0] < 0) return;
  char buf[64];
  while (::read(g_pipe[0], buf, sizeof buf) > 0) {
  }
}

LineReader::LineReader() {
  if (isatty(0) && g_key_fd < 0)
    if (const char* tty = ttyname(0)) g_key_fd = ::open(tty, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
#ifdef DUO_HAVE_LIBEDIT
  editing_ = isatty(0) && isatty(1);
  if (editing_) {
    rl_catch_signals = 0;  // SIGINT is ours (install_interrupt_handler), not libedit's
    rl_getc_function = getc_interruptible;
    using_history();
    stifle_history(1000);
  }
#endif
}

LineReader::~LineReader() {
  if (g_key_fd >= 0) ::close(g_key_fd);
  g_key_fd = -1;
}

std::optional<LineReader::Line> LineReader::read(const std::string& prompt) {
  clear_interrupt();
#ifdef DUO_HAVE_LIBEDIT
  if (editing_) {
    char* s = readline(prompt.c_str());
    if (g_interrupted.load()) {
      clear_interrupt();
      std::free(s);
      fmt::print("\n");
      return Line{"", true};
    }
    if (s == nullptr) return std::nullopt;
    Line l{s, false};
    std::free(s);
    return l;
  }
#endif
  if (isatty(0)) {
    fmt::print("{}", prompt), std::fflush(stdout);
    static std::string pending;
    bool interrupted = false;
    auto s = read_terminal_line(pending, interrupted);
    if (interrupted) {
      clear_interrupt();
      fmt::print("\n");
      return Line{"", true};
    }
    if (!s) return std::nullopt;
    return Line{*s, false};
  }
  std::string s;
  if (!std::getline(std::cin, s)) return std::nullopt;
  return Line{s, false};
}

void LineReader::remember(const std::string& line) {
#ifdef DUO_HAVE_LIBEDIT
  if (editing_ && !line.empty()) add_history(line.c_str());
#else
  (void)line;
#endif
}

}  // namespace duo::cli
