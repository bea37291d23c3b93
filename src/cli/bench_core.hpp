// src/cli/bench_core.hpp: the one implementation of the benchmark, behind `gradcam bench`
// (src/cli/bench.cpp) and the development program bench/gradcam_bench (bench/bench.cpp). It needs
// neither OpenCV nor CLI11 nor a JSON library, so that the GPU check (scripts/gpu_check.sh) builds
// it on a machine that has only LibTorch. Public API only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace gradcam_bench {

/// What to measure. Defaults are the command's (`gradcam bench --help`).
struct Options {
  std::string model;
  std::string layer = "auto";       ///< a module path or auto (the library's choice)
  int64_t batch = 1;
  int64_t size = 224;               ///< the input is [batch, channels, size, size], standard normal noise
  int64_t channels = 3;
  int repeat = 20;                  ///< timed calls of each mode, interleaved with the forward
  int warmup = 3;                   ///< untimed calls of each mode first
  std::string device = "cpu";
  bool guided = true;               ///< time Guided Grad-CAM too
  std::vector<std::string> methods; ///< CAM methods, one row each (names as --method takes them)
  int64_t perturbation_batch = 0;   ///< Score-/Ablation-CAM's batch (0: the library's default)
  std::vector<int64_t> boxes;       ///< a torchvision detector: Grad-CAM of its K best boxes, per K
  bool memory = true;               ///< measure each mode's peak memory in a child process of its own
  /// How to start this program again for a memory child: the program's argv up to its options
  /// ({"bench"} for `gradcam bench`, {} for gradcam_bench); /proc/self/exe is run with it.
  std::vector<std::string> relaunch;
  std::string malloc_policy;        ///< what the program did to malloc (malloc_policy.hpp), reported
};

/// Every CAM method name a benchmark can time (all but attention rollout, which needs a transformer).
std::vector<std::string> all_method_names();

/// One measured mode: its median time, the median of the plain forward timed between its calls,
/// and its peak memory (negative when not measured).
struct Row {
  std::string mode;         ///< forward, gradcam, guided_gradcam, a method name, all_gradient_methods, boxes:K
  double ms = 0;
  double forward_ms = 0;
  double peak_mib = -1;     ///< peak resident memory (CPU), or GPU memory in use after the calls (CUDA)
  double before_mib = -1;   ///< the same just before its first call (model and input loaded)
};

struct Report {
  Options options;          ///< with the layer resolved (auto replaced by the library's choice)
  std::string memory_kind;  ///< "rss" (CPU), "cuda_in_use", or "" when not measured
  std::string memory_note;  ///< why memory was not measured, if it was not
  std::vector<Row> rows;    ///< rows[0] is the forward
};

/// Checks the options (a gradcam::Error naming the bad value), runs the benchmark; `progress`
/// (may be null) gets each row as it is finished.
Report run(const Options& options, void (*progress)(const Row& row) = nullptr);

/// The report as one JSON object (the keys scripts/gpu_check.sh and docs/performance.md read:
/// forward_ms, gradcam_ms, ratio, gradcam_images_per_s, guided_gradcam_ms, guided_ratio, methods,
/// boxes, memory).
std::string to_json(const Report& report);

/// The report as a Markdown table, for people.
std::string to_table(const Report& report);

/// The memory child: loads the model, runs `mode` (forward, gradcam, guided_gradcam, a method
/// name, or boxes:K) and prints "before_bytes peak_bytes" on stdout. The hidden option
/// --memory-child MODE of both programs calls it.
int memory_child(const Options& options, const std::string& mode);

}  // namespace gradcam_bench
