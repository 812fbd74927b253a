// The `duo` command line tool. Subcommands live in cmd_*.cpp.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"duo: long-context LLM inference with DuoAttention"};
  app.require_subcommand(1);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const duo::Error& e) {
    std::fprintf(stderr, "duo: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
