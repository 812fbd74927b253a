// The `duo` command line tool. Subcommands live in cmd_*.cpp.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <new>

#include "commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"duo: long-context LLM inference with DuoAttention"};
  app.require_subcommand(1);
  duo::cli::add_demo(app);
  duo::cli::add_generate(app);
  duo::cli::add_chat(app);
  duo::cli::add_info(app);
  duo::cli::add_bench(app);
  duo::cli::add_eval(app);
  duo::cli::add_pattern(app);
  duo::cli::add_serve(app);
  duo::cli::add_calibrate(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const duo::Error& e) {
    std::fprintf(stderr, "duo: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "duo: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    // Anything else is a bug or an unchecked input: still a clear message and exit 1, never an
    // abort by std::terminate.
    std::fprintf(stderr, "duo: error: %s\n", e.what());
    return 1;
  } catch (...) {
    std::fprintf(stderr, "duo: error: unknown exception\n");
    return 1;
  }
  return 0;
}
