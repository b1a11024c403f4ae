#pragma once

// The examples' command lines, parsed by CLI11: `--help` lists every option with its default; an unknown option or a
// value that does not parse prints CLI11's message and a pointer to --help, and exits with a non-zero status.

#include <CLI/CLI.hpp>
#include <cstdlib>

namespace engine {

/// Parses argv into app's options. Returns when the program should go on; --help prints the options and exits 0, a
/// parse error prints its message and exits with CLI11's (non-zero) status.
inline void parse_command_line(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e));
  }
}

/// `--short`: the smaller run that CI affords (every paper and architecture example has it).
inline void add_short_flag(CLI::App& app, bool& short_mode) {
  app.add_flag("--short", short_mode, "a smaller run (what CI runs); its numbers are noisier");
}

/// A command line of --short alone, for the architecture examples; returns whether it was given.
inline bool short_flag_only(const char* description, int argc, char** argv) {
  CLI::App app{description};
  bool short_mode = false;
  add_short_flag(app, short_mode);
  parse_command_line(app, argc, argv);
  return short_mode;
}

}  // namespace engine
