// The `duo` command line tool. Subcommands live in cmd_*.cpp.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <new>

#include "cli_errors.h"
#include "commands.h"
#include "core/error.h"
#include "engine/backend.h"

#ifndef DUO_VERSION
#define DUO_VERSION "unknown"
#endif

int main(int argc, char** argv) {
  CLI::App app{"duo: long-context LLM inference with DuoAttention", "duo"};
  app.require_subcommand(1);
  // The second line: what the backends run (the CPU kernels' SIMD level, picked at run time)
  // and the build kind.
  app.set_version_flag("--version", [] { return std::string("duo ") + DUO_VERSION + "\n" + duo::backends_summary(); });
  // Every --help shows each option's default; subcommands inherit this from the app.
  app.option_defaults()->always_capture_default();
  duo::cli::add_demo(app);
  duo::cli::add_generate(app);
  duo::cli::add_chat(app);
  duo::cli::add_info(app);
  duo::cli::add_bench(app);
  duo::cli::add_eval(app);
  duo::cli::add_pattern(app);
  duo::cli::add_serve(app);
  duo::cli::add_calibrate(app);
  duo::cli::add_tokenize(app);
  duo::cli::add_logits(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version are ParseErrors too (exit code 0): CLI11 prints those.
    if (e.get_exit_code() == 0) return app.exit(e);
    if (auto better = duo::cli::explain_parse_error(app, argc, argv)) {
      std::fprintf(stderr, "duo: error: %s\n", better->c_str());
      return e.get_exit_code();
    }
    std::fprintf(stderr, "duo: error: %s\nRun with --help for more information.\n",
                 duo::cli::readable_range_message(e.what()).c_str());
    return e.get_exit_code();
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
