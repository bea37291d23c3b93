// src/cli/commands.hpp: the subcommands of `gradcam`, one file each, and the entry point that
// main.cpp builds from their table. Adding a subcommand: a file with its add_ function, and one
// row in kCommands (main.cpp). docs/architecture.md has the steps.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

#include "common.hpp"
#include "entry.hpp"

namespace gradcam_cli {

/// A registered subcommand: its flags live in the state `run` holds, and `run` runs it once the
/// command line is parsed.
struct Subcommand {
  const Common* common = nullptr;  ///< its shared flags (threads), inside `run`'s state
  std::function<int()> run;
};

/// Adds a subcommand's flags to `sub`, which main.cpp made with the table's name and help.
using AddFlags = Subcommand (*)(CLI::App* sub);

Subcommand add_explain(CLI::App* sub);     // explain.cpp
Subcommand add_layers(CLI::App* sub);      // layers.cpp
Subcommand add_eval_loc(CLI::App* sub);    // eval_loc.cpp
Subcommand add_eval_faith(CLI::App* sub);  // eval_faith.cpp
Subcommand add_diagnose(CLI::App* sub);    // diagnose.cpp
Subcommand add_compare(CLI::App* sub);     // compare.cpp
Subcommand add_bench(CLI::App* sub);       // bench.cpp
Subcommand add_merge(CLI::App* sub);       // merge.cpp
Subcommand add_export(CLI::App* sub);      // export.cpp
Subcommand add_concepts(CLI::App* sub);    // concepts.cpp

}  // namespace gradcam_cli
