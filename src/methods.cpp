// src/methods.cpp: the CAM methods, one function each (and a preparation where a method shares
// work across ranks), and kMethods, the one table of their names and kinds. The methods that run
// the model again on perturbed inputs are in perturbation.cpp, CAM in cam.cpp, FullGrad in
// fullgrad.cpp and attention rollout in rollout.cpp. Adding a method: its functions here (or in a file of their own), its row
// in kMethods, its enum value in <gradcam/grad_cam.hpp>; see docs/architecture.md, "Adding a
// method".
#include "methods.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <memory>

#include <gradcam/error.hpp>

#include "outputs.hpp"
#include "util.hpp"

namespace gradcam::detail {

namespace {

std::vector<int64_t> spatial_dims(const at::Tensor& a) {
  std::vector<int64_t> d;
  for (int64_t i = 2; i < a.dim(); ++i) d.push_back(i);
  return d;
}

}  // namespace

at::Tensor weighted_sum(const at::Tensor& w, const at::Tensor& a) {
  std::vector<int64_t> shape = {a.size(0), a.size(1)};
  shape.resize(static_cast<size_t>(a.dim()), 1);
  return (w.view(shape) * a).sum(1, /*keepdim=*/true);
}

/// A map from channel weights [N,K].
Weighted from_weights(const at::Tensor& w, const at::Tensor& a) { return {weighted_sum(w, a), w, {}}; }

namespace {

/// num / den where den != 0, else 0 (no epsilon: an epsilon would bias small gradients).
at::Tensor safe_div(const at::Tensor& num, const at::Tensor& den) {
  const at::Tensor nz = den != 0;
  return at::where(nz, num / at::where(nz, den, at::ones_like(den)), at::zeros_like(num));
}


// ---- gradient methods: A and g = dy/dA (negated for counterfactual maps) ----

Weighted grad_cam(const MethodInputs& in) { return from_weights(in.g.mean(spatial_dims(in.a)), in.a); }

}  // namespace

Weighted grad_cam_pp_from(const at::Tensor& g, const at::Tensor& g2, const at::Tensor& g3, const at::Tensor& a) {
  const auto sp = spatial_dims(a);
  const at::Tensor sum_a = a.sum(sp, /*keepdim=*/true);
  const at::Tensor alpha = safe_div(g2, 2 * g2 + sum_a * g3);
  return from_weights((alpha * at::relu(g)).sum(sp), a);
}

namespace {

Weighted grad_cam_pp(const MethodInputs& in) {
  const at::Tensor g2 = in.g * in.g;
  return grad_cam_pp_from(in.g, g2, g2 * in.g, in.a);
}

Weighted xgrad_cam(const MethodInputs& in) {
  const auto sp = spatial_dims(in.a);
  return from_weights(safe_div((in.g * in.a).sum(sp), in.a.sum(sp)), in.a);
}

/// The element-wise methods: a map from per-channel terms [N,K,...], which eigen-smoothing reads.
Weighted from_terms(const at::Tensor& terms) { return {terms.sum(1, /*keepdim=*/true), {}, terms}; }

Weighted hires_cam(const MethodInputs& in) { return from_terms(in.g * in.a); }

Weighted layer_cam(const MethodInputs& in) { return from_terms(at::relu(in.g) * in.a); }

// ---- EigenCAM: class-agnostic, computed once per activation ----

/// Per sample: X = A as [positions, K], centred over positions; `project(X)` gives one value per
/// position; its sign is chosen so that it correlates positively with the centred channel sum.
template <typename Project>
Weighted per_sample_projection(const at::Tensor& a, Project project) {
  const int64_t k = a.size(1);
  std::vector<int64_t> shape = {1};
  for (int64_t d = 2; d < a.dim(); ++d) shape.push_back(a.size(d));
  std::vector<at::Tensor> maps;
  for (int64_t i = 0; i < a.size(0); ++i) {
    at::Tensor x = a[i].reshape({k, -1}).t();  // [positions, K]
    x = x - x.mean(0, /*keepdim=*/true);
    at::Tensor proj = project(x);
    if (at::dot(proj, x.sum(1)).item<double>() < 0) proj = -proj;
    maps.push_back(proj.view(shape));
  }
  Weighted out;
  out.signed_map = at::stack(maps, 0);
  return out;
}

/// A (centred over positions) projected on its first principal component, sign towards the channel sum.
Weighted eigen_cam(const at::Tensor& a) {
  return per_sample_projection(a, [](const at::Tensor& x) {
    const at::Tensor vh = std::get<2>(at::linalg_svd(x, /*full_matrices=*/false));
    return at::matmul(x, vh[0]);
  });
}

Prepared prepare_eigen_cam(const PrepareInputs& in) {
  Prepared p;
  p.eigen = eigen_cam(in.a);
  return p;
}

Weighted eigen_cam_map(const MethodInputs& in) { return in.prepared.eigen; }

// ---- KPCA-CAM: EigenCAM with kernel PCA, class-agnostic ----

/// The first kernel principal component of the positions (Karmani et al. 2024, as pytorch-grad-cam
/// runs scikit-learn's KernelPCA): X [positions, K] centred over positions, the sigmoid kernel
/// k(x, y) = tanh(x . y / K + 1) (scikit-learn's defaults: gamma 1/K, coef0 1), the kernel matrix
/// centred in feature space, its top eigenvector u and eigenvalue l; the map is sqrt(l) u, the
/// positions' own projections. The sign, which an eigenvector leaves open, as eigen_cam's:
/// positive correlation with the centred channel sum. (scikit-learn's rule, the largest-magnitude
/// entry positive, can flip a map to its background.)
Weighted kpca_cam(const at::Tensor& a) {
  const double k = static_cast<double>(a.size(1));
  return per_sample_projection(a, [k](const at::Tensor& x) {
    const at::Tensor gram = at::tanh(at::matmul(x, x.t()) / k + 1);
    const at::Tensor centred = gram - gram.mean(0, true) - gram.mean(1, true) + gram.mean();
    const auto [values, vectors] = at::linalg_eigh(centred);  // ascending
    const int64_t top = values.size(0) - 1;
    return vectors.select(1, top) * values[top].clamp_min(0).sqrt();
  });
}

Prepared prepare_kpca_cam(const PrepareInputs& in) {
  Prepared p;
  p.eigen = kpca_cam(in.a);
  return p;
}

/// EigenGradCAM: EigenCAM of the element-wise product g * A, whose principal component follows the
/// class (the sign as eigen_cam chooses it: positive correlation with sum_k g_k A_k, HiResCAM's map).
Weighted eigen_grad_cam(const MethodInputs& in) { return eigen_cam(in.g * in.a); }

/// ShapleyCAM (Cai et al. 2025): Grad-CAM's pooling of g - (H A) / 2, the second-order term of the
/// channels' Shapley values; H A = 0 where y is piecewise linear in A (ReLU and linear layers after it).
Weighted shapley_cam(const MethodInputs& in) {
  return from_weights((in.g - 0.5 * in.hvp).mean(spatial_dims(in.a)), in.a);
}

/// Grad-CAM element-wise: the ReLU inside the channel sum, so that no position's negative products
/// cancel another channel's positive ones.
Weighted grad_cam_elementwise(const MethodInputs& in) { return from_terms(at::relu(in.g * in.a)); }

// ---- RandomCAM: a baseline for the metrics ----

/// Weights uniform in [-1, 1] per sample and channel. The generator is seeded with 0 at every
/// call, so a map is reproducible, and drawn in float64 on the CPU whatever A's dtype and device:
/// the same numbers PyTorch's torch.rand(N, K, generator=torch.Generator().manual_seed(0),
/// dtype=torch.float64) gives (the reference, make_method_refs.py).
Weighted random_cam(const MethodInputs& in) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
  const at::Tensor u = at::rand({in.a.size(0), in.a.size(1)}, gen, at::TensorOptions().dtype(at::kDouble));
  return from_weights((u * 2 - 1).to(in.a.options()), in.a);
}

}  // namespace

namespace {

/// One row per method: its name, what it needs, and its functions.
struct MethodRow {
  Method method;
  const char* name;
  bool gradients;     ///< reads dy/dA: needs a backward pass
  bool perturbation;  ///< extra forward passes on perturbed inputs (class targets only)
  Prepared (*prepare)(const PrepareInputs&);  ///< once per activation, for every rank; or nullptr
  Weighted (*map)(const MethodInputs&);
  /// The same map in TorchScript, for `gradcam export` (export.cpp): the body of a method
  /// `(a, g) -> signed map` over the grid A [N,K,h,w] and its gradient, with the helpers
  /// `self._weighted(w, a)` (weighted_sum) and `self._safe_div(num, den)`; nullptr when the
  /// method cannot be exported (it needs more than the layer's gradient). Tested against the
  /// function above on the same input (test_export).
  const char* script;
  bool hessian = false;  ///< reads H A (MethodInputs::hvp): the backward pass records a graph
  bool bias = false;     ///< reads MethodInputs::full: every bias layer's gradient and the input's
};

// The exported forms of the gradient methods, op for op the functions above.
constexpr const char* kGradCamScript = "return self._weighted(g.mean([2, 3]), a)";
constexpr const char* kGradCamPPScript =
    "g2 = g * g\n"
    "g3 = g2 * g\n"
    "sum_a = a.sum([2, 3], keepdim=True)\n"
    "alpha = self._safe_div(g2, 2 * g2 + sum_a * g3)\n"
    "return self._weighted((alpha * torch.relu(g)).sum([2, 3]), a)";
constexpr const char* kXGradCamScript =
    "return self._weighted(self._safe_div((g * a).sum([2, 3]), a.sum([2, 3])), a)";
constexpr const char* kHiResCamScript = "return (g * a).sum(1, keepdim=True)";
constexpr const char* kLayerCamScript = "return (torch.relu(g) * a).sum(1, keepdim=True)";
constexpr const char* kElementWiseScript = "return torch.relu(g * a).sum(1, keepdim=True)";

const MethodRow kMethods[] = {
    {Method::gradcam, "gradcam", true, false, nullptr, grad_cam, kGradCamScript},
    {Method::gradcam_pp, "gradcam++", true, false, nullptr, grad_cam_pp, kGradCamPPScript},
    {Method::xgradcam, "xgradcam", true, false, nullptr, xgrad_cam, kXGradCamScript},
    {Method::hirescam, "hirescam", true, false, nullptr, hires_cam, kHiResCamScript},
    {Method::layercam, "layercam", true, false, nullptr, layer_cam, kLayerCamScript},
    {Method::scorecam, "scorecam", false, true, prepare_perturbed<Method::scorecam>, score_cam_map, nullptr},
    {Method::ablationcam, "ablationcam", false, true, prepare_perturbed<Method::ablationcam>, ablation_cam_map, nullptr},
    {Method::eigencam, "eigencam", false, false, prepare_eigen_cam, eigen_cam_map, nullptr},
    {Method::eigengradcam, "eigengradcam", true, false, nullptr, eigen_grad_cam, nullptr},
    {Method::kpcacam, "kpcacam", false, false, prepare_kpca_cam, eigen_cam_map, nullptr},
    {Method::gradcam_elementwise, "gradcamelementwise", true, false, nullptr, grad_cam_elementwise, kElementWiseScript},
    {Method::randomcam, "randomcam", false, false, nullptr, random_cam, nullptr},
    {Method::sscam, "sscam", false, true, prepare_perturbed<Method::sscam>, score_cam_map, nullptr},
    {Method::iscam, "iscam", false, true, prepare_perturbed<Method::iscam>, score_cam_map, nullptr},
    {Method::smoothgradcam_pp, "smoothgradcam++", false, true, prepare_smooth_grad_cam_pp, smooth_grad_cam_pp_map,
     nullptr},
    {Method::shapleycam, "shapleycam", true, false, nullptr, shapley_cam, nullptr, /*hessian=*/true},
    {Method::fullgrad, "fullgrad", false, false, nullptr, full_grad, nullptr, false, /*bias=*/true},
    {Method::cam, "cam", false, false, prepare_cam, cam_map, nullptr},
    {Method::rollout, "rollout", false, false, prepare_rollout, rollout_map, nullptr},
};

const MethodRow& row(Method method) {
  for (const auto& m : kMethods) {
    if (m.method == method) return m;
  }
  fail(concat("unknown method (enum value ", static_cast<int>(method), ")"));
}

}  // namespace

Prepared prepare_method(Method method, const PrepareInputs& in) {
  const MethodRow& m = row(method);
  return m.prepare != nullptr ? m.prepare(in) : Prepared{};
}

Weighted method_map(Method method, const MethodInputs& in) { return row(method).map(in); }

Weighted eigen_smoothed(const Weighted& w, const at::Tensor& a) {
  if (!w.terms.defined() && !w.weights.defined()) return w;
  std::vector<int64_t> shape = {a.size(0), a.size(1)};
  shape.resize(static_cast<size_t>(a.dim()), 1);
  const at::Tensor terms = w.terms.defined() ? w.terms : w.weights.view(shape) * a;
  Weighted out = eigen_cam(terms);  // its sign: positive correlation with the terms' sum
  out.weights = w.weights;
  return out;
}

bool is_perturbation(Method method) { return row(method).perturbation; }

bool uses_hessian(Method method) { return row(method).hessian; }

bool uses_bias_gradients(Method method) { return row(method).bias; }

const char* method_script(Method method) { return row(method).script; }

}  // namespace gradcam::detail

namespace gradcam {

using detail::concat;
using detail::kMethods;
using detail::row;

const char* method_name(Method method) {
  for (const auto& m : kMethods) {
    if (m.method == method) return m.name;
  }
  return "unknown";
}

Method method_from_name(const std::string& name) {
  std::string low;
  for (char c : name) {
    if (c != '-' && c != '_') low += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  if (low == "gradcampp" || low == "gradcamplusplus") return Method::gradcam_pp;
  if (low == "smoothgradcampp") return Method::smoothgradcam_pp;
  for (const auto& m : kMethods) {
    if (low == m.name) return m.method;
  }
  std::string names;
  for (const auto& m : kMethods) names += concat(names.empty() ? "" : ", ", m.name);
  fail(concat("unknown method '", name, "'; the methods are: ", names));
}

std::vector<Method> all_methods() {
  std::vector<Method> out;
  for (const auto& m : kMethods) out.push_back(m.method);
  return out;
}

bool uses_gradients(Method method) { return row(method).gradients; }

}  // namespace gradcam
