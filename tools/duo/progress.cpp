#include "progress.h"

#include <fmt/core.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace duo::cli {

ProgressLine::ProgressLine(std::string what, bool enabled)
    : what_(std::move(what)), enabled_(enabled && isatty(2)), t0_(std::chrono::steady_clock::now()) {}

ProgressLine::~ProgressLine() { clear(); }

std::string format_seconds(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const long t = std::lround(s);
  return t >= 60 ? fmt::format("{}m{:02}s", t / 60, t % 60) : fmt::format("{}s", t);
}

void ProgressLine::update(int64_t done, int64_t total) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  // At most ~10 redraws a second: a terminal over ssh should not be the bottleneck.
  if (shown_ && done < total && now - last_ < std::chrono::milliseconds(100)) return;
  // Short work gets no line: it would only flicker.
  if (!shown_ && now - t0_ < std::chrono::milliseconds(500)) return;
  last_ = now;
  const double el = std::chrono::duration<double>(now - t0_).count();
  const double rate = el > 0 ? done / el : 0.0;
  const std::string left = rate > 0 ? format_seconds((total - done) / rate) : "?";
  fmt::print(stderr, "\r\033[K{} {}/{} tokens ({:.0f}%) | {:.1f} tok/s | ~{} left", what_, done, total,
             total > 0 ? 100.0 * done / total : 100.0, rate, left);
  std::fflush(stderr);
  shown_ = true;
}

void ProgressLine::clear() {
  if (!shown_) return;
  fmt::print(stderr, "\r\033[K");
  std::fflush(stderr);
  shown_ = false;
}

}  // namespace duo::cli
