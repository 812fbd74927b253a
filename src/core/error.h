// duo::Error is the one exception type the engine throws for bad input or bad state.
// Messages are written for the user: they say what was wrong and where.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace duo {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace duo

// DUO_CHECK(cond, "format {}", args...) throws duo::Error when cond is false.
#define DUO_CHECK(cond, ...)        \
  do {                              \
    if (!(cond)) ::duo::fail(__VA_ARGS__); \
  } while (0)
