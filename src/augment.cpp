// src/augment.cpp: GradCAMOptions::aug_smooth, test-time augmentation as pytorch-grad-cam's
// aug_smooth has it (its ttach transforms: a left-right flip, times the factors 0.9, 1.0 and 1.1).
// The copies go through the model in one pass (Engine::compute_copies, which reads class targets
// on the unaugmented copy); each copy's map is flipped back where the copy was flipped, and the
// maps averaged. Flipping the map at the layer's resolution equals flipping it after upsampling:
// bilinear upsampling (align_corners false) is symmetric. With aug_scales, the input resized by each
// factor makes one more pass of six copies, explaining the classes read at the input's own size;
// its maps are resized to the first pass's and averaged with them.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <memory>

#include <gradcam/error.hpp>

#include "engine.hpp"
#include "outputs.hpp"
#include "util.hpp"

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

/// The six copies of `input` in one pass (Engine::compute_copies), each copy's maps flipped back
/// and the six averaged; the rest of the result is the whole pass's.
GradCAMResult six_copies(const Engine& engine, const at::Tensor& input, const Target& target,
                         const at::Tensor& classes) {
  const int64_t n = input.size(0);
  std::vector<at::Tensor> parts;
  for (const Copy& c : kCopies) parts.push_back((c.flip ? flipped(input) : input) * c.factor);
  GradCAMResult r = engine.compute_copies(at::cat(parts, 0), target, kCount, classes);
  for (LayerMap& m : r.maps) {
    m.map = mean_of_copies(m.map, n);
    if (m.map_signed.defined()) m.map_signed = mean_of_copies(m.map_signed, n);
  }
  return r;
}

/// GradCAMOptions::aug_scales: the six copies of the input resized by each factor, one pass per
/// factor explaining r's classes (the input's own), their maps resized to r's; r's maps become the
/// mean over every size, r's own included.
void average_sizes(const Engine& engine, const at::Tensor& input, const Target& target, GradCAMResult& r) {
  int64_t sizes = 1;
  for (double f : engine.options.aug_scales()) {
    if (f == 1.0) continue;
    const int64_t h = std::max<int64_t>(1, std::lround(f * static_cast<double>(input.size(2))));
    const int64_t w = std::max<int64_t>(1, std::lround(f * static_cast<double>(input.size(3))));
    GradCAMResult s;
    try {
      s = six_copies(engine, upsample(input, {h, w}), target, r.classes);
    } catch (const Error& e) {
      fail(concat("aug_smooth at scale ", f, " (the input resized to ", h, "x", w, "): ", e.what()));
    }
    for (size_t i = 0; i < r.maps.size(); ++i) {
      LayerMap& m = r.maps[i];
      m.map = m.map + upsample(s.maps[i].map, {m.map.size(2), m.map.size(3)});
      if (m.map_signed.defined()) {
        m.map_signed = m.map_signed + upsample(s.maps[i].map_signed, {m.map_signed.size(2), m.map_signed.size(3)});
      }
    }
    ++sizes;
  }
  if (sizes == 1) return;
  for (LayerMap& m : r.maps) {
    m.map = m.map / static_cast<double>(sizes);
    if (m.map_signed.defined()) m.map_signed = m.map_signed / static_cast<double>(sizes);
  }
}

}  // namespace

GradCAMResult aug_smoothed(const Engine& engine, const at::Tensor& input, const Target& target) {
  check_input(*engine.forward, input);
  GRADCAM_CHECK(target.kind() == Target::Kind::top_k || target.kind() == Target::Kind::classes,
                "aug_smooth explains class targets (top-k or classes): a Target::score or Target::ranked function "
                "may read places in the image (boxes, masks), which the flipped copies move");
  const int64_t n = input.size(0);
  GradCAMResult r = six_copies(engine, input, target, {});
  for (LayerMap& m : r.maps) {
    m.weights = first_copy(m.weights, n);
    m.activations = first_copy(m.activations, n);
    m.gradients = first_copy(m.gradients, n);
  }
  r.classes = first_copy(r.classes, n);
  r.scores = first_copy(r.scores, n);
  r.logits = first_copy(r.logits, n);
  r.output = std::make_shared<const c10::IValue>(
      map_tensors(*r.output, [n](const at::Tensor& t) { return first_copy(t, n); }));
  average_sizes(engine, input, target, r);
  return r;
}

}  // namespace gradcam::detail
