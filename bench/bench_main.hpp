#pragma once

// Shared main() pieces: our own flags, removed before Google Benchmark sees argv.
//   --quick        1 repetition of 0.05 s per case (a smoke run); default: 5 repetitions of 0.3 s, medians reported
//   --threads=LIST threads to run, e.g. --threads=1 (default 1,2)

#include <benchmark/benchmark.h>

#include <cstring>
#include <string>
#include <vector>

namespace kvbench {

struct Options {
  bool quick = false;
  std::vector<int> threads = {1, 2};
  int repetitions() const { return quick ? 1 : 5; }
  double min_time() const { return quick ? 0.05 : 0.3; }
};

inline Options parse_options(int& argc, char** argv) {
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
