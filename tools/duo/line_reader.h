// Reading the lines of `duo chat`: with line editing and history (libedit) when the input is
// a terminal and libedit was found at build time, plain lines otherwise. Ctrl-C while a line
// is being typed discards that line (the chat goes on), as in a shell.
//
// Ctrl-C reaches the program as SIGINT at any moment: while libedit redraws a pasted line,
// while the model runs on other threads, between two prompts. The handler only sets a flag and
// writes a byte to a pipe (a self-pipe); whoever waits for keys waits on the terminal and that
// pipe together, so an interrupt that lands outside a blocking read() is not lost.
#pragma once
#include <atomic>
#include <optional>
#include <string>

namespace duo::cli {

// Set by the SIGINT handler that install_interrupt_handler() installs; whoever acts on an
// interrupt clears it (clear_interrupt()).
extern std::atomic<bool> g_interrupted;
// SIGINT sets g_interrupted (and wakes interrupt_fd()) instead of ending the process.
void install_interrupt_handler();
// Forgets interrupts that came before now: clears the flag and empties the pipe.
void clear_interrupt();

class LineReader {
 public:
  LineReader();
  ~LineReader();
  struct Line {
    std::string text;
    bool interrupted = false;  // Ctrl-C: the line was discarded
  };
  // One line without its newline; nullopt at the end of input (Ctrl-D). An interrupt from
  // before the call is forgotten: the prompt is new.
  std::optional<Line> read(const std::string& prompt);
  void remember(const std::string& line);  // adds to the history (Up / Down keys)
  bool editing() const { return editing_; }  // line editing and history available

 private:
  bool editing_ = false;
};

}  // namespace duo::cli
