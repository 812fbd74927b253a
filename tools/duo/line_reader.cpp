#include "line_reader.h"

#include <fmt/core.h>
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

namespace {
void on_sigint(int) { g_interrupted.store(true); }

#ifdef DUO_HAVE_LIBEDIT
// libedit reads keys through this: a read cut short by Ctrl-C ends the line as end of input
// would, and read() tells the two apart by g_interrupted.
int getc_interruptible(FILE* in) {
  unsigned char c;
  for (;;) {
    const ssize_t n = ::read(fileno(in), &c, 1);
    if (n == 1) return c;
    if (n < 0 && errno == EINTR && !g_interrupted.load()) continue;  // another signal (SIGWINCH)
    return EOF;
  }
}
#endif
}  // namespace

void install_interrupt_handler() {
  struct sigaction sa = {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART
  sigaction(SIGINT, &sa, nullptr);
}

LineReader::LineReader() {
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

LineReader::~LineReader() = default;

std::optional<LineReader::Line> LineReader::read(const std::string& prompt) {
  g_interrupted.store(false);
#ifdef DUO_HAVE_LIBEDIT
  if (editing_) {
    char* s = readline(prompt.c_str());
    if (g_interrupted.exchange(false)) {
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
  if (isatty(0)) fmt::print("{}", prompt), std::fflush(stdout);
  std::string s;
  if (!std::getline(std::cin, s)) {
    if (g_interrupted.exchange(false) && isatty(0)) {
      std::cin.clear();
      fmt::print("\n");
      return Line{"", true};
    }
    return std::nullopt;
  }
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
