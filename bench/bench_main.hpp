#pragma once

// Shared main() pieces: our own flags, removed before Google Benchmark sees argv.
//   --quick        1 repetition of 0.05 s per case (a smoke run); default: 5 repetitions of 0.3 s, medians reported
//   --threads=LIST threads to run, e.g. --threads=1 (default 1,2)

#include <benchmark/benchmark.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace kvbench {

struct Options {
  bool quick = false;
  std::vector<int> threads = {1, 2};
  int repetitions() const { return quick ? 1 : 5; }
  double min_time() const { return quick ? 0.05 : 0.3; }
};

// The CPU as Linux names it: "model name (family F, model M)" from /proc/cpuinfo, or "unknown". Tables from different
// machines differ by more than noise (docs/performance.md has Sapphire Rapids and Zen 5), so every run records it.
inline std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string name, family, model;
  auto value = [](const std::string& line) {
    const std::size_t c = line.find(':');
    const std::size_t b = c == std::string::npos ? line.size() : line.find_first_not_of(' ', c + 1);
    return b == std::string::npos ? std::string() : line.substr(b);
  };
  for (std::string line; std::getline(in, line) && line.size() > 0;) {
    if (line.rfind("model name", 0) == 0) name = value(line);
    if (line.rfind("cpu family", 0) == 0) family = value(line);
    if (line.rfind("model\t", 0) == 0) model = value(line);
  }
  if (name.empty()) return "unknown";
  return family.empty() ? name : name + " (family " + family + ", model " + model + ")";
}

inline Options parse_options(int& argc, char** argv) {
  benchmark::AddCustomContext("cpu_model", cpu_model());  // printed with the run's context, kept in JSON output
  Options o;
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      o.quick = true;
    } else if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      o.threads.clear();
      std::string list = argv[i] + 10;
      for (std::size_t p = 0; p < list.size();) {
        const std::size_t q = list.find(',', p);
        o.threads.push_back(std::stoi(list.substr(p, q - p)));
        p = q == std::string::npos ? list.size() : q + 1;
      }
    } else {
      argv[out++] = argv[i];
    }
  }
  argc = out;
  return o;
}

inline void configure(benchmark::internal::Benchmark* b, const Options& o) {
  b->UseRealTime()->Unit(benchmark::kMicrosecond)->MinTime(o.min_time())->Repetitions(o.repetitions());
  if (o.repetitions() > 1) b->ReportAggregatesOnly(true);
}

}  // namespace kvbench
