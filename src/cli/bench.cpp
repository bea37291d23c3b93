// src/cli/bench.cpp: `gradcam bench`: how much an explanation costs on one's own model, against
// the model's plain forward timed in the same run, and each mode's peak memory. The measurement
// is bench_core.cpp's (shared with bench/gradcam_bench); this file declares the flags and prints.
#include <ATen/Parallel.h>
#include <torch/csrc/jit/api/module.h>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>
#include <memory>

#include <gradcam/gradcam.hpp>

#include "batches.hpp"
#include "bench_core.hpp"
#include "commands.hpp"
#include "common.hpp"
#include "malloc_policy.hpp"

namespace gradcam_cli {

namespace {

struct BenchArgs {
  Common common;  ///< --model, --layer, --device, --threads, --ops-library; the rest is unused here
  gradcam_bench::Options bench;
  std::vector<std::string> methods;
  bool no_guided = false;
  bool no_memory = false;
  bool as_json = false;
  std::string memory_child;  ///< hidden: this process is one mode's memory child
  std::string images;        ///< --images: plain inference over a folder instead (the baseline of explain's speed)
};

/// --images: the plain-inference loop an application would run over a folder, with explain's
/// reader (the next batch decoded on another thread), preprocessing and batch, and no
/// explanation: the baseline that scripts/folder_throughput.sh sets explain's images/s against.
int plain_inference(const BenchArgs& a) {
  Common c = a.common;
  c.batch = static_cast<int>(a.bench.batch);
  const c10::Device device(c.device);
  auto module = gradcam::load_model(c.model, device);
  const std::vector<std::string> paths = list_images(a.images);
  InterruptGuard interrupt_guard;
  Progress progress(paths.size(), !c.quiet && !a.as_json);
  size_t unreadable = 0, done = 0;
  for_each_batch(paths, c, "skipping ", unreadable, done, progress, [&](const ImageBatch& batch) {
    c10::NoGradGuard no_grad;
    const c10::IValue out = module.forward({batch.inputs(device)});
    if (out.isTensor()) (void)out.toTensor().argmax(1).cpu();  // the classes an application reads
    done += batch.images.size();
  });
  const double s = progress.seconds(), rate = static_cast<double>(done - unreadable) / s;
  if (a.as_json) {
    std::printf("{\"mode\": \"plain_inference\", \"images\": %zu, \"unreadable\": %zu, \"batch\": %d, "
                "\"seconds\": %.3f, \"images_per_s\": %.2f}\n", done - unreadable, unreadable, c.batch, s, rate);
  } else {
    std::printf("plain inference: %zu image(s) %s\n", done - unreadable, progress.rate_str(done - unreadable).c_str());
  }
  return 0;
}

void print_row(const gradcam_bench::Row& row) {
  char line[160];
  std::snprintf(line, sizeof line, "%s: %.2f ms, forward %.2f ms, ratio %.3f\n", row.mode.c_str(), row.ms,
                row.forward_ms, row.ms / row.forward_ms);
  say() << line;
}

int run_bench(BenchArgs& a) {
  gradcam_bench::Options o = a.bench;
  o.model = a.common.model;
  o.layer = a.common.layer;
  o.device = a.common.device;
  o.guided = !a.no_guided;
  o.memory = !a.no_memory;
  for (const auto& m : a.methods) {
    if (m == "all") {
      const auto all = gradcam_bench::all_method_names();
      o.methods.insert(o.methods.end(), all.begin(), all.end());
    } else {
      o.methods.push_back(m);
    }
  }
  o.relaunch = {"bench"};
  o.malloc_policy = apply_malloc_policy();  // already applied by gradcam_main: this reads the choice
  for (const auto& library : a.common.ops_libraries) {
    o.relaunch.push_back("--ops-library");
    o.relaunch.push_back(library);
  }
  if (!a.memory_child.empty()) return gradcam_bench::memory_child(o, a.memory_child);
  if (!a.images.empty()) return plain_inference(a);
  const auto report = gradcam_bench::run(o, a.common.quiet || a.as_json ? nullptr : print_row);
  std::cout << (a.as_json ? gradcam_bench::to_json(report) : "\n" + gradcam_bench::to_table(report));
  return 0;
}

}  // namespace

Subcommand add_bench(CLI::App* sub) {
  auto a = std::make_shared<BenchArgs>();
  Common& c = a->common;
  gradcam_bench::Options& o = a->bench;
  sub->add_option("--model", c.model, "TorchScript model file")->required()->check(CLI::ExistingFile);
  sub->add_option("--layer", c.layer, "target layer: a module path, or auto")->capture_default_str();
  sub->add_option("--device", c.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  sub->add_option("--batch", o.batch, "images per call")->check(whole_number(1))->capture_default_str();
  sub->add_option("--size", o.size, "input height and width (noise images)")->check(whole_number(1))->capture_default_str();
  sub->add_option("--channels", o.channels, "input channels")->check(whole_number(1))->capture_default_str();
  sub->add_option("--threads", c.threads, "intra-op threads (default: all cores)")->check(whole_number(1));
  sub->add_option("--repeat", o.repeat, "timed calls of each mode, interleaved with the forward")
      ->check(whole_number(1))->capture_default_str();
  sub->add_option("--warmup", o.warmup, "untimed calls of each mode first")->check(whole_number(0))->capture_default_str();
  sub->add_option("--methods", a->methods, "CAM methods to time, one row each, and all gradient methods together; "
                  "all: every method (Score-CAM and Ablation-CAM take minutes on a CPU)")
      ->delimiter(',')->check(CLI::IsMember([] {
        auto names = gradcam_bench::all_method_names();
        names.emplace_back("all");
        return names;
      }()));
  sub->add_option("--perturbation-batch", o.perturbation_batch,
                  "Score-/Ablation-CAM: perturbed inputs per forward pass (0: 1 on the CPU, 32 on a GPU)")
      ->check(whole_number(0))->capture_default_str();
  sub->add_option("--boxes", o.boxes, "a torchvision detector: Grad-CAM of its K best boxes, for each K given")
      ->delimiter(',')->check(whole_number(1));
  sub->add_option("--ops-library", c.ops_libraries, "a library of TorchScript operators the model calls, loaded first")
      ->expected(1, -1)->check(CLI::ExistingFile);
  sub->add_option("--images", a->images, "instead: time plain inference over the images of a folder, as explain reads "
                  "them (--batch, --resize, --crop), and print images/s")->check(CLI::ExistingDirectory);
  sub->add_option("--resize", c.resize, "--images: resize the shorter side to S pixels (0: keep)")
      ->check(whole_number(0))->capture_default_str();
  sub->add_option("--crop", c.crop, "--images: centre crop C x C (0: none)")->check(whole_number(0))->capture_default_str();
  sub->add_flag("--no-guided", a->no_guided, "leave out Guided Grad-CAM");
  sub->add_flag("--no-memory", a->no_memory, "leave out the peak memory (one child process per mode)");
  sub->add_flag("--json", a->as_json, "print the report as JSON");
  sub->add_flag("--quiet,-q", c.quiet, "no progress lines");
  sub->add_option("--memory-child", a->memory_child)->group("");  // hidden: see bench_core.hpp
  return {&a->common, [a] { return run_bench(*a); }};
}

}  // namespace gradcam_cli
