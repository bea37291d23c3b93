// src/outputs.hpp (private): reading a model's output.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>

#include <vector>

namespace gradcam::detail {

/// The class-score tensor of a model output (a tensor, the first tensor of a tuple, a dict's
/// "out", the first of a tensor list); throws gradcam::Error naming what the output is.
at::Tensor logits_of(const c10::IValue& out);

/// Each image's detection scores when the output is a torchvision detector's (a list of dicts
/// with "scores", alone or second in a (losses, detections) tuple); empty for any other output.
std::vector<at::Tensor> detection_scores(const c10::IValue& out);

}  // namespace gradcam::detail
