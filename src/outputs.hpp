// src/outputs.hpp (private): reading a model's output.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <gradcam/grad_cam.hpp>

namespace gradcam::detail {

/// The class-score tensor of a model output (a tensor, the first tensor of a tuple, a dict's
/// "out", the first of a tensor list); throws gradcam::Error naming what the output is.
at::Tensor logits_of(const c10::IValue& out);

/// One image's detections as a torchvision detector returns them: boxes [D, 4], scores [D],
/// labels [D].
struct DetectorImage {
  at::Tensor boxes, scores, labels;
};

/// The detections of a torchvision detector's output (a list of dicts with "boxes", "scores" and
/// "labels", alone or second in a (losses, detections) tuple), one per image. For any other
/// output: nullopt, and why in *why when given. The one reader of that format (detect(), the
/// detection targets, auto's detector probe, and logits_of's advice all use it).
std::optional<std::vector<DetectorImage>> torchvision_detections(const c10::IValue& out, std::string* why = nullptr);

/// The output with every tensor t in it (alone, in tuples, lists and dicts, nested) replaced by
/// fn(t); anything else kept.
c10::IValue map_tensors(const c10::IValue& v, const std::function<at::Tensor(const at::Tensor&)>& fn);

/// The scores a target selects from one forward pass (scores.cpp): per rank a [N] tensor, the class
/// explained per sample and rank [N,R] (-1 for function targets), and for class targets the logits.
struct Scores {
  std::vector<at::Tensor> per_rank;
  at::Tensor classes;
  at::Tensor logits;
};

/// The target's scores in the output of a pass over `copies` blocks of n / copies images: class
/// targets are read on the first block (the images themselves) and explain the same classes in
/// every block (Engine::compute_copies, aug_smooth). Throws gradcam::Error for a class out of
/// range, a wrong count of classes, or a function returning the wrong shape.
/// `classes` [n / copies, R], when defined, replaces the classes a class target would read
/// (aug_smooth's other input sizes explain the classes read at the input's own).
Scores resolve_target(const Target& target, const c10::IValue& out, int64_t n, int64_t copies,
                      const at::Tensor& classes = {});

}  // namespace gradcam::detail
