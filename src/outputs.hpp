// src/outputs.hpp (private): reading a model's output.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>

namespace gradcam::detail {

/// The class-score tensor of a model output (a tensor, the first tensor of a tuple, a dict's
/// "out", the first of a tensor list); throws gradcam::Error naming what the output is.
at::Tensor logits_of(const c10::IValue& out);

}  // namespace gradcam::detail
