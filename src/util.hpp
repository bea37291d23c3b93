// src/util.hpp (private): small helpers for messages and module trees, with no graph in them.
// (The graph rewrite is graph.hpp's alone.)
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/csrc/jit/api/module.h>

#include <exception>
#include <string>
#include <vector>

namespace gradcam::detail {

/// "[1, 3, 224, 224]"
std::string shape_str(at::IntArrayRef sizes);

/// The up-to-three names in `choices` closest to `name` (edit distance), for error messages.
std::vector<std::string> closest(const std::string& name, const std::vector<std::string>& choices);

/// The message of a LibTorch exception without its C++ backtrace and TorchScript call stack.
std::string torch_message(const std::exception& e);

/// A backward pass that LibTorch refused, as a gradcam::Error: its message, and what to do about
/// it where we know (a model traced under no_grad records nn.MultiheadAttention's fused
/// inference kernel, which has no backward).
[[noreturn]] void backward_failed(const std::string& what, const std::exception& e);

/// Every module path of `module` ("layer4", "layer4.0.conv1", ...), root excluded.
std::vector<std::string> module_paths(const torch::jit::Module& module);

/// Whether the module or a submodule has `training` set. A frozen module (torch.jit.freeze) has no
/// such attribute: it is not in training mode, although Module::is_training() says it is, because
/// it reads a missing attribute as true.
bool in_training_mode(const torch::jit::Module& module);

}  // namespace gradcam::detail
