// src/grad_cam.cpp: targets, the result's look-up, GradCAM over the engine (engine.hpp), and the
// map helpers.
#include <gradcam/grad_cam.hpp>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/api/module.h>

#include <algorithm>

#include <gradcam/error.hpp>

#include "engine.hpp"
#include "methods.hpp"
#include "util.hpp"

namespace gradcam {

using detail::concat;
using detail::shape_str;

Target Target::topk(int64_t k) {
  GRADCAM_CHECK(k >= 1, "top-k needs k >= 1, got ", k);
  Target t;
  t.kind_ = Kind::top_k;
  t.k_ = k;
  return t;
}

Target Target::classes(std::vector<int64_t> indices) {
  GRADCAM_CHECK(!indices.empty(), "Target::classes needs at least one class index");
  Target t;
  t.kind_ = Kind::classes;
  t.indices_ = std::move(indices);
  return t;
}

Target Target::score(ScoreFn fn) {
  GRADCAM_CHECK(static_cast<bool>(fn), "Target::score needs a callable");
  Target t;
  t.kind_ = Kind::score;
  t.fn_ = std::move(fn);
  return t;
}

Target Target::ranked(RankedFn fn) {
  GRADCAM_CHECK(static_cast<bool>(fn), "Target::ranked needs a callable");
  Target t;
  t.kind_ = Kind::ranked;
  t.ranked_fn_ = std::move(fn);
  return t;
}

const LayerMap& GradCAMResult::get(const std::string& layer, int64_t rank, int64_t call,
                                   Method method) const {
  for (const auto& m : maps) {
    if (m.layer == layer && m.rank == rank && m.call == call && m.method == method) return m;
  }
  std::string have;
  for (const auto& m : maps) {
    have += concat(have.empty() ? "" : ", ", m.layer, " (", method_name(m.method), ", rank ",
                   m.rank, ", call ", m.call, ")");
  }
  fail(concat("no ", method_name(method), " map for layer '", layer, "' rank ", rank, " call ",
              call, "; the result has: ", have));
}

struct GradCAM::Impl : detail::Engine {
  using Engine::Engine;
};

GradCAM::GradCAM(const torch::jit::Module& module, GradCAMOptions options)
    : impl_(std::make_unique<Impl>(module, std::move(options))) {}
GradCAM::~GradCAM() = default;
GradCAM::GradCAM(GradCAM&&) noexcept = default;
GradCAM& GradCAM::operator=(GradCAM&&) noexcept = default;

const std::vector<std::string>& GradCAM::layers() const { return impl_->layers; }
const GradCAMOptions& GradCAM::options() const { return impl_->options; }

GradCAMResult GradCAM::compute(const at::Tensor& input, const Target& target) const {
  return impl_->compute(input, target);
}

at::Tensor fuse(const std::vector<at::Tensor>& maps, Fusion fusion, std::vector<int64_t> size) {
  GRADCAM_CHECK(!maps.empty(), "fuse needs at least one map");
  std::vector<at::Tensor> up;
  for (const auto& m : maps) {
    GRADCAM_CHECK(m.defined() && m.dim() == 4 && m.size(1) == 1, "fuse needs maps [N,1,h,w]",
                  m.defined() ? concat(", got shape ", shape_str(m.sizes())) : std::string());
    GRADCAM_CHECK(m.size(0) == maps.front().size(0), "fuse: maps of batch ", m.size(0), " and ",
                  maps.front().size(0), " cannot be combined");
    up.push_back(normalize(upsample(m.to(maps.front().scalar_type()), size)));
  }
  at::Tensor all = at::stack(up, 0);
  return fusion == Fusion::mean ? all.mean(0) : std::get<0>(all.max(0));
}

at::Tensor upsample(const at::Tensor& map, std::vector<int64_t> size) {
  GRADCAM_CHECK(size.size() == 2 && size[0] > 0 && size[1] > 0,
                "upsample needs a size {H, W} with positive entries, got ", shape_str(size));
  GRADCAM_CHECK(map.defined(), "upsample: the map is undefined");
  if (map.dim() == 2) return upsample(map.unsqueeze(0).unsqueeze(0), size).squeeze(0).squeeze(0);
  GRADCAM_CHECK(map.dim() == 4, "upsample needs a map [N,1,h,w] or [h,w], got shape ",
                shape_str(map.sizes()));
  return at::upsample_bilinear2d(map, size, /*align_corners=*/false);
}

at::Tensor normalize(const at::Tensor& map) {
  GRADCAM_CHECK(map.defined() && map.dim() >= 2, "normalize needs a map [h,w] or [N,...]");
  if (map.dim() == 2) return normalize(map.unsqueeze(0)).squeeze(0);
  at::Tensor flat = map.reshape({map.size(0), -1});
  at::Tensor lo = std::get<0>(flat.min(1, true));
  at::Tensor hi = std::get<0>(flat.max(1, true));
  at::Tensor range = hi - lo;
  at::Tensor out = at::where(range > 0, (flat - lo) / range.clamp_min(1e-30), at::zeros_like(flat));
  return out.view(map.sizes());
}

}  // namespace gradcam
