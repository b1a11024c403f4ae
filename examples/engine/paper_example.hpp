#pragma once

// What the paper examples (examples/<paper>.cpp) share: the command line (--short for CI, --model, --text), the bundled
// model and text, language modelling over a few windows with a cache the example builds, and the printed verdict.

#include <cstdio>
#include <string>
#include <vector>

#include "engine/cli.hpp"
#include "engine/tasks.hpp"
#include "engine/tinylm_gqa.hpp"
#include "kvcache/kvcache.hpp"

namespace engine {

struct PaperExample {
  bool short_mode = false;  ///< --short: a smaller run that CI can afford; the numbers are noisier
  TinyLmGqa model;
  std::string text;

  /// The command line every paper example takes (--short, --model FILE, --text FILE; --help lists them), and the
  /// model and text it names. `description` is the example's one-line summary, printed by --help.
  static PaperExample from_args(const char* description, int argc, char** argv) {
    bool short_mode = false;
    std::string model = KVCACHE_EXAMPLES_DIR "/models/tinylm-gqa.safetensors";
    std::string text = KVCACHE_EXAMPLES_DIR "/data/val-dev.txt";
    CLI::App app{description};
    add_short_flag(app, short_mode);
    app.add_option("--model", model, "a tinylm-gqa model file")->check(CLI::ExistingFile)->capture_default_str();
    app.add_option("--text", text, "the evaluation text")->check(CLI::ExistingFile)->capture_default_str();
    parse_command_line(app, argc, argv);
    return PaperExample{short_mode, TinyLmGqa(model), read_text(text)};
  }

  /// n windows of `length` bytes drawn from the text with a fixed seed (the same for every cache of an example).
  [[nodiscard]] std::vector<std::vector<int>> windows(int n, std::int64_t length, unsigned seed = 7) const {
    std::vector<std::vector<int>> out;
    for (std::size_t at : draw_offsets(text, length, n, seed)) out.push_back(byte_window(text, at, length));
    return out;
  }

  /// Bits per byte of teacher-forced decoding after `prefix` bytes over the windows, one fresh cache per window from
  /// make_cache(); also prints a progress line on stderr.
  template <class MakeCache>
  TaskStats language_model(const std::vector<std::vector<int>>& windows, std::int64_t prefix, const char* label,
                           MakeCache&& make_cache) {
    TaskStats s;
    for (const auto& w : windows) {
      auto cache = make_cache();
      engine::language_model(model, cache, w, prefix, s);
    }
    std::fprintf(stderr, "  %-40s %.4f bits/byte\n", label, s.bits_per_byte());
    return s;
  }
};

/// The paper and its claim, printed first.
inline void print_claim(const char* paper, const char* claim) { std::printf("%s\nClaim: %s\n\n", paper, claim); }

/// The verdict, printed last: whether what was measured supports the claim on this model, and a sentence on why.
inline void print_verdict(bool holds, const std::string& why) {
  std::printf("\nOn tinylm-gqa, as the paper sets it up: %s. %s\n",
              holds ? "the claim holds" : "the claim does not hold", why.c_str());
}

}  // namespace engine
