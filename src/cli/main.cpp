// src/cli/main.cpp: the `gradcam` command: the table of subcommands (one file each, commands.hpp)
// and the entry point. Built only on the public API.
//
//   gradcam explain    --model M --image a.png [b.png ...] | --images DIR  [--method ...] [--json]
//   gradcam layers     --model M [--size H W] [--json]
//   gradcam eval-loc   --model M --annotations CSV|DIR [--sweep]
//   gradcam eval-faith --model M --annotations CSV|DIR | --images DIR [--method ...] [--sanity N]
//   gradcam diagnose   --model M (--annotations CSV|DIR | --images CLASS_FOLDERS) --out DIR
//   gradcam compare    --model A --model B (--image P... | --images DIR | --annotations ...) --out DIR
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <gradcam/gradcam.hpp>

#include "commands.hpp"
#include "malloc_policy.hpp"
#include "common.hpp"

namespace gradcam_cli {
namespace {

/// The subcommands, in --help order: the one list of their names.
struct CommandRow {
  const char* name;
  const char* help;
  AddFlags add;
};
const CommandRow kCommands[] = {
    {"explain", "explain images: heatmap overlays, maps as .npy, boxes, JSON records", add_explain},
    {"layers", "list the layers of a model with their output shapes; * marks the auto choice", add_layers},
    {"eval-loc", "weakly supervised localization accuracy against ground-truth boxes", add_eval_loc},
    {"eval-faith",
     "faithfulness of explanations: deletion/insertion AUC, Average Drop, Increase in Confidence, ROAD, "
     "parameter-randomisation sanity check",
     add_eval_faith},
    {"diagnose",
     "find misclassified images and explain them: panels of the predicted and the true class, an HTML report "
     "and a JSON summary",
     add_diagnose},
    {"concepts",
     "Deep Feature Factorization: the concepts a layer finds across images, their top classes, and where each "
     "concept is in each image",
     add_concepts},
    {"compare",
     "two models' Grad-CAM side by side for the same class, with their rank correlation and the IoU of their "
     "localization boxes",
     add_compare},
    {"bench",
     "time Grad-CAM and the other methods against the model's plain forward, interleaved, with each mode's peak "
     "memory",
     add_bench},
    {"merge", "combine the reports of a run's shards (--shard I/N) into the report of the whole run", add_merge},
    {"export",
     "write an explaining TorchScript model: forward(x) returns the scores, the top classes' maps and the "
     "classes, with standard operators only (Triton, TorchServe, LibTorch, Python)",
     add_export},
};

/// Runs the parsed subcommand with its thread count; errors become one "gradcam: error:" line.
int run_parsed(const Subcommand& cmd) {
  try {
    // more intra-op threads than cores only adds contention (1000 made one small image take 56 s)
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const int threads = cmd.common->threads;
    if (threads > cores) {
      std::cerr << "gradcam: warning: --threads " << threads << " is more than this machine's " << cores
                << " cores; using " << cores << "\n";
    }
    at::set_num_threads(threads > 0 ? std::min(threads, cores) : cores);
    for (const auto& library : cmd.common->ops_libraries) gradcam::load_operators(library);
    return cmd.run();
  } catch (const gradcam::Error& e) {
    say() << "error: " << for_the_command(e.what()) << "\n";
    return 1;
  } catch (const std::exception& e) {
    say() << "error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace

int gradcam_main(int argc, char** argv, bool parse_only) {
  if (!parse_only) apply_malloc_policy();  // malloc_policy.hpp says why
  CLI::App app{"gradcam: Grad-CAM, Guided Grad-CAM and friends for TorchScript models (version " +
               std::string(gradcam::version) + ")"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(gradcam::version));
  if (argc > 1 && argv[1][0] != '-' &&
      std::none_of(std::begin(kCommands), std::end(kCommands),
                   [&](const CommandRow& c) { return std::strcmp(argv[1], c.name) == 0; })) {
    std::string names;
    for (const auto& c : kCommands) names += (names.empty() ? "" : ", ") + std::string(c.name);
    std::cerr << "gradcam: unknown command '" << argv[1] << "'; the commands are: " << names << " (see --help)\n";
    return 2;
  }
  std::vector<std::pair<CLI::App*, Subcommand>> commands;
  for (const auto& c : kCommands) {
    CLI::App* sub = app.add_subcommand(c.name, c.help);
    commands.emplace_back(sub, c.add(sub));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (parse_only) return 0;
  CommandWarnings::install();
  for (const auto& [sub, cmd] : commands)
    if (sub->parsed()) return run_parsed(cmd);
  return 2;  // require_subcommand(1) makes this unreachable
}

}  // namespace gradcam_cli
