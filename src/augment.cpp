// src/augment.cpp: GradCAMOptions::aug_smooth, test-time augmentation as pytorch-grad-cam's
// aug_smooth has it (its ttach transforms: a left-right flip, times the factors 0.9, 1.0 and 1.1).
// The copies go through the model in one pass (Engine::compute_copies, which reads class targets
// on the unaugmented copy); each copy's map is flipped back where the copy was flipped, and the
// maps averaged. Flipping the map at the layer's resolution equals flipping it after upsampling:
// bilinear upsampling (align_corners false) is symmetric.
#include <ATen/ATen.h>

#include <iterator>
#include <memory>

#include <gradcam/error.hpp>

#include "engine.hpp"
#include "outputs.hpp"

namespace gradcam::detail {

namespace {

struct Copy {
  bool flip;
  double factor;
};

// The unaugmented copy first: class targets are read on it.
constexpr Copy kCopies[] = {{false, 1.0}, {false, 0.9}, {false, 1.1}, {true, 1.0}, {true, 0.9}, {true, 1.1}};
constexpr auto kCount = static_cast<int64_t>(std::size(kCopies));

at::Tensor flipped(const at::Tensor& x) { return x.flip({x.dim() - 1}); }

/// The mean over the copies of t [copies * n, ...], each flipped copy flipped back.
at::Tensor mean_of_copies(const at::Tensor& t, int64_t n) {
  at::Tensor sum;
  for (int64_t c = 0; c < kCount; ++c) {
    at::Tensor part = t.narrow(0, c * n, n);
    if (kCopies[c].flip) part = flipped(part);
    sum = sum.defined() ? sum + part : part;
  }
  return sum / static_cast<double>(kCount);
}

/// The unaugmented copy's rows of a tensor of the whole pass (copies * n rows); others unchanged.
at::Tensor first_copy(const at::Tensor& t, int64_t n) {
  return t.defined() && t.dim() >= 1 && t.size(0) == n * kCount ? t.narrow(0, 0, n) : t;
}

}  // namespace

GradCAMResult aug_smoothed(const Engine& engine, const at::Tensor& input, const Target& target) {
  check_input(*engine.forward, input);
  GRADCAM_CHECK(target.kind() == Target::Kind::top_k || target.kind() == Target::Kind::classes,
                "aug_smooth explains class targets (top-k or classes): a Target::score or Target::ranked function "
                "may read places in the image (boxes, masks), which the flipped copies move");
  const int64_t n = input.size(0);
  std::vector<at::Tensor> parts;
  for (const Copy& c : kCopies) parts.push_back((c.flip ? flipped(input) : input) * c.factor);
  GradCAMResult r = engine.compute_copies(at::cat(parts, 0), target, kCount);
  for (LayerMap& m : r.maps) {
    m.map = mean_of_copies(m.map, n);
    if (m.map_signed.defined()) m.map_signed = mean_of_copies(m.map_signed, n);
    m.weights = first_copy(m.weights, n);
    m.activations = first_copy(m.activations, n);
    m.gradients = first_copy(m.gradients, n);
  }
  r.classes = first_copy(r.classes, n);
  r.scores = first_copy(r.scores, n);
  r.logits = first_copy(r.logits, n);
  r.output = std::make_shared<const c10::IValue>(
      map_tensors(*r.output, [n](const at::Tensor& t) { return first_copy(t, n); }));
  return r;
}

}  // namespace gradcam::detail
