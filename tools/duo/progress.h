// Progress of long work (a long prompt's pre-fill) as one line on stderr, redrawn in place:
// tokens done / total, tokens a second and the time left. Shown only when stderr is a
// terminal, so logs and pipes get no carriage-return clutter.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace duo::cli {

class ProgressLine {
 public:
  // `enabled` false (or stderr not a terminal) makes every call a no-op.
  ProgressLine(std::string what, bool enabled);
  ~ProgressLine();
  void update(int64_t done, int64_t total);
  void clear();  // erases the line (before other output follows on stderr or stdout)
  bool active() const { return enabled_; }

 private:
  std::string what_;
  bool enabled_, shown_ = false;
  std::chrono::steady_clock::time_point t0_, last_;
};

// "1m05s" / "42s": a duration for humans.
std::string format_seconds(double s);

}  // namespace duo::cli
