// gradcam/model.hpp: loading TorchScript models with clear errors.
//
// torch::jit::load's own errors for a missing, truncated or non-TorchScript file are long C++
// stack traces; these wrappers turn them into gradcam::Error naming the file and the fix.
#pragma once

#include <c10/core/Device.h>
#include <torch/csrc/jit/api/module.h>

#include <string>

namespace gradcam {

/// Loads a TorchScript model (torch.jit.script / torch.jit.trace output saved with
/// torch.jit.save) onto `device` and puts it in eval mode.
torch::jit::Module load_model(const std::string& path, c10::Device device = c10::Device("cpu"));

/// Loads a TorchScript model from the bytes of a saved file (same checks as load_model).
torch::jit::Module load_model_from_bytes(const std::string& bytes,
                                         c10::Device device = c10::Device("cpu"));

/// Loads a library of custom TorchScript operators into the process, for models that call them:
/// torchvision's detectors call torchvision::nms and torchvision::roi_align, defined by
/// libtorchvision.so (or the _C.so of torchvision's Python package, which needs no Python).
/// Call it before load_model. Throws gradcam::Error naming the file and the loader's reason.
void load_operators(const std::string& path);

}  // namespace gradcam
