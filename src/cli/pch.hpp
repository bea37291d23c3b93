// src/cli/pch.hpp (private): what every subcommand's file includes (LibTorch, CLI11, JSON, the
// public API), precompiled once for the command's files: parsing these headers was about three
// quarters of compiling a subcommand (merge.cpp: 35 s of 46 s at -O3).
#pragma once
#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <gradcam/gradcam.hpp>
