// Reading the lines of `duo chat`: with line editing and history (libedit) when the input is
// a terminal and libedit was found at build time, plain lines otherwise. Ctrl-C while a line
// is being typed discards that line (the chat goes on), as in a shell.
#pragma once
#include <atomic>
#include <optional>
#include <string>

namespace duo::cli {

// Set by the SIGINT handler that install_interrupt_handler() installs; whoever acts on an
// interrupt clears it.
extern std::atomic<bool> g_interrupted;
// SIGINT sets g_interrupted instead of ending the process (no SA_RESTART: a blocked read
// returns, so a prompt notices at once).
void install_interrupt_handler();

class LineReader {
 public:
  LineReader();
  ~LineReader();
  struct Line {
    std::string text;
    bool interrupted = false;  // Ctrl-C: the line was discarded
  };
  // One line without its newline; nullopt at the end of input (Ctrl-D).
  std::optional<Line> read(const std::string& prompt);
  void remember(const std::string& line);  // adds to the history (Up / Down keys)
  bool editing() const { return editing_; }  // line editing and history available

 private:
  bool editing_ = false;
};

}  // namespace duo::cli
