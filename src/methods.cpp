// src/methods.cpp: the CAM methods, one function each (and a preparation where a method shares
// work across ranks), and kMethods, the one table of their names and kinds. Adding a method: its
// functions here, its row in kMethods, its enum value in <gradcam/grad_cam.hpp>; see
// docs/architecture.md, "Adding a method".
#include "methods.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
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

namespace {

/// num / den where den != 0, else 0 (no epsilon: an epsilon would bias small gradients).
at::Tensor safe_div(const at::Tensor& num, const at::Tensor& den) {
  const at::Tensor nz = den != 0;
  return at::where(nz, num / at::where(nz, den, at::ones_like(den)), at::zeros_like(num));
}

/// A map from channel weights [N,K].
Weighted from_weights(const at::Tensor& w, const at::Tensor& a) { return {weighted_sum(w, a), w, {}}; }

// ---- gradient methods: A and g = dy/dA (negated for counterfactual maps) ----

Weighted grad_cam(const MethodInputs& in) { return from_weights(in.g.mean(spatial_dims(in.a)), in.a); }

Weighted grad_cam_pp(const MethodInputs& in) {
  const auto sp = spatial_dims(in.a);
  const at::Tensor g2 = in.g * in.g;
  const at::Tensor g3 = g2 * in.g;
  const at::Tensor sum_a = in.a.sum(sp, /*keepdim=*/true);
  const at::Tensor alpha = safe_div(g2, 2 * g2 + sum_a * g3);
  return from_weights((alpha * at::relu(in.g)).sum(sp), in.a);
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

// ---- perturbation methods: extra forward passes of perturbed inputs ----

/// Ablation-CAM's change of a layer output x [len, ...] whose row i belongs to channel
/// channels[i]: that channel of row i's grid set to zero, in place. In a token layer the extra
/// tokens keep every channel: they are not part of the map. x must be contiguous: the grid is a
/// view of it (layout.hpp), so the zeros land in x's own layout.
void zero_channels(const Layout& layout, at::Tensor& x, const at::Tensor& channels) {
  at::Tensor grid = to_grid(x, layout);
  const at::Tensor rows = at::arange(channels.size(0), channels.options());
  grid.index_put_({rows, channels}, at::zeros({}, x.options()));
}

/// The same, for the capture op to apply to the model's own output: on a copy.
std::function<at::Tensor(const at::Tensor&)> ablation(const Layout& layout, at::Tensor channels) {
  return [layout, channels](const at::Tensor& x) {
    at::Tensor out = x.clone(at::MemoryFormat::Contiguous);
    zero_channels(layout, out, channels);
    return out;
  };
}

/// The channel of each of the perturbed inputs start..start+len-1 (input i: sample i / K,
/// channel i % K).
at::Tensor channels_of(const at::Tensor& a, int64_t start, int64_t len) {
  return at::arange(start, start + len, a.options().dtype(at::kLong)).remainder(a.size(1));
}

/// The class scores of a perturbed batch of `len`, checked.
at::Tensor perturbed_batch_logits(const c10::IValue& out, int64_t len) {
  at::Tensor logits = logits_of(out);
  GRADCAM_CHECK(logits.dim() == 2 && logits.size(0) == len, "the model output has shape ", shape_str(logits.sizes()),
                " on a perturbed batch of ", len, "; Score-CAM and Ablation-CAM need class scores [N, classes]");
  return logits.detach();
}

/// run(start, len) -> logits [len, classes] for perturbed inputs start..start+len-1 of `total`,
/// `batch` at a time; all of them [total, classes].
at::Tensor in_batches(int64_t total, int64_t batch, const std::function<at::Tensor(int64_t, int64_t)>& run) {
  std::vector<at::Tensor> chunks;
  for (int64_t start = 0; start < total; start += batch) chunks.push_back(run(start, std::min(batch, total - start)));
  return at::cat(chunks, 0);
}

/// Ablation-CAM from the layer on: the model before the layer runs once, and only the part after
/// it reruns for each ablated channel (for resnet50's layer4: an average pool and a linear layer
/// instead of the whole network). Undefined where the forward cannot be cut at the layer
/// (SplitForward::make), or where the cut forward does not give the model's own logits back on
/// the batch in reverse order: a check that a value the cut selects by sample really is per
/// sample. Its bound, 1e-4 of the logits' size, is far below what a mixed-up sample changes; the
/// difference measured was 0 (resnet18, the toy model, the ViTs of the tests; float32 and 64).
at::Tensor ablated_after_layer(const PrepareInputs& in, int64_t batch) {
  const at::Tensor& a = in.a;
  auto split = in.call == 0 ? SplitForward::make(in.forward, in.slot) : nullptr;
  if (!split || !in.logits.defined()) return {};
  CaptureContext ctx(in.forward.slots(), CaptureContext::Mode::perturb, in.forward.observe_from());
  const SplitForward::First f = split->first(in.input, ctx);
  const int64_t n = a.size(0);
  if (f.batch != n) return {};
  const at::Tensor reversed = at::arange(n - 1, -1, -1, a.options().dtype(at::kLong));
  CaptureContext check_ctx(in.forward.slots(), CaptureContext::Mode::perturb, in.forward.observe_from());
  const at::Tensor again = perturbed_batch_logits(
      split->second(f, reversed, f.layer_output.index_select(0, reversed), check_ctx), n);
  const at::Tensor expected = in.logits.detach().index_select(0, reversed).to(again.scalar_type());
  const double scale = std::max(1.0, expected.abs().max().item<double>());
  if (again.sizes() != expected.sizes() || (again - expected).abs().max().item<double>() > 1e-4 * scale) return {};
  const int64_t k = a.size(1);
  // One buffer for every batch of ablated outputs: a fresh one of this size (tens of MB) each
  // time cost more in page faults than the layers after layer4 cost in arithmetic.
  const at::Tensor layer_output = f.layer_output.contiguous();
  at::Tensor ablated = at::empty({0}, layer_output.options());
  return in_batches(n * k, batch, [&](int64_t start, int64_t len) {
    const at::Tensor rows = at::arange(start, start + len, a.options().dtype(at::kLong)).div(k, "floor");
    at::index_select_out(ablated, layer_output, 0, rows);
    zero_channels(in.layout, ablated, channels_of(a, start, len));
    CaptureContext c(in.forward.slots(), CaptureContext::Mode::perturb, in.forward.observe_from());
    // a copy: the part after the layer may return (a view of) the buffer the next batch reuses
    return perturbed_batch_logits(split->second(f, rows, ablated, c), len).clone();
  });
}

/// Score-CAM's masks [N*K, 1, H, W]: each A_k upsampled to the input and scaled to [0, 1].
at::Tensor score_cam_masks(const at::Tensor& a, const at::Tensor& input) {
  const int64_t total = a.size(0) * a.size(1);
  at::Tensor up = at::upsample_bilinear2d(a.reshape({total, 1, a.size(2), a.size(3)}), {input.size(2), input.size(3)},
                                          false);
  at::Tensor flat = up.view({total, -1});
  at::Tensor lo = std::get<0>(flat.min(1, true));
  at::Tensor hi = std::get<0>(flat.max(1, true));
  at::Tensor range = hi - lo;
  return at::where(range > 0, (flat - lo) / at::where(range > 0, range, at::ones_like(range)), at::zeros_like(flat))
      .view({total, 1, input.size(2), input.size(3)});
}

/// SS-CAM and IS-CAM: the logits [N,K,classes] of the model on sample i's input times channel k's
/// Score-CAM mask, averaged over S draws (SS-CAM: the mask plus Gaussian noise, draw s from a
/// generator seeded with s) or steps (IS-CAM: the mask times (1 + ... + s) / S, as torchcam
/// integrates). `batch` perturbed inputs per pass, within one sample and draw: the noise of a draw
/// is made once, K masks at a time.
at::Tensor smoothed_score_logits(Method method, const PrepareInputs& in, int64_t batch) {
  const at::Tensor& input = in.input;
  const at::Tensor& a = in.a;
  const int64_t n = a.size(0);
  const int64_t k = a.size(1);
  const int64_t draws = in.options.samples() > 0 ? in.options.samples() : (method == Method::sscam ? 35 : 10);
  const at::Tensor masks = score_cam_masks(a, input).view({n, k, 1, input.size(2), input.size(3)});
  std::vector<at::Tensor> per_sample;
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor x = input.narrow(0, i, 1);
    at::Tensor sum;
    for (int64_t s = 0; s < draws; ++s) {
      at::Tensor m = masks[i];
      if (method == Method::sscam) {
        auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(s));
        const at::Tensor noise = at::randn(m.sizes(), gen, at::TensorOptions().dtype(at::kDouble));
        m = m + (noise * in.options.noise_std()).to(m.options());
      } else {
        m = m * (static_cast<double>((s + 1) * (s + 2)) / 2.0 / static_cast<double>(draws));
      }
      m = m.to(x.scalar_type());
      const at::Tensor logits = in_batches(k, batch, [&](int64_t start, int64_t len) {
        CaptureContext ctx(in.forward.slots(), CaptureContext::Mode::perturb, in.forward.observe_from());
        return perturbed_batch_logits(in.forward.run(x * m.narrow(0, start, len), ctx), len);
      });
      sum = sum.defined() ? sum + logits : logits;
    }
    per_sample.push_back(sum / static_cast<double>(draws));
  }
  return at::stack(per_sample);
}

/// The logits [N,K,classes] of the model on perturbed inputs, one per (sample, channel):
/// Score-CAM: input * normalised upsampled A_k; Ablation-CAM: input with channel k of the capture
/// (slot, call) set to zero, from the layer on where the forward can be cut there, else the whole
/// forward again. Runs `batch` perturbed inputs per pass.
at::Tensor perturbed_logits(Method method, const PrepareInputs& in, int64_t batch) {
  const Forward& forward = in.forward;
  const at::Tensor& input = in.input;
  const at::Tensor& a = in.a;
  if (batch == 0) batch = input.is_cuda() ? 32 : 1;  // automatic (GradCAMOptions::perturbation_batch)
  GRADCAM_CHECK(a.dim() == 4, "Score-CAM, SS-CAM, IS-CAM and Ablation-CAM need a 4-D activation [N,K,h,w]");
  c10::NoGradGuard no_grad;
  if (method == Method::sscam || method == Method::iscam) return smoothed_score_logits(method, in, batch);
  const int64_t n = a.size(0);
  const int64_t k = a.size(1);
  at::Tensor all = method == Method::ablationcam ? ablated_after_layer(in, batch) : at::Tensor();
  if (!all.defined()) {
    const at::Tensor masks = method == Method::scorecam ? score_cam_masks(a, input) : at::Tensor();
    all = in_batches(n * k, batch, [&](int64_t start, int64_t len) {
      const at::Tensor rows = at::arange(start, start + len, input.options().dtype(at::kLong)).div(k, "floor");
      at::Tensor x = input.index_select(0, rows);
      CaptureContext ctx(forward.slots(), CaptureContext::Mode::perturb, forward.observe_from());
      if (method == Method::scorecam) {
        x = x * masks.narrow(0, start, len).to(x.scalar_type());
      } else {
        ctx.ablate_slot = static_cast<int64_t>(in.slot);
        ctx.ablate_call = in.call;
        ctx.ablate = ablation(in.layout, channels_of(a, start, len));
      }
      return perturbed_batch_logits(forward.run(x, ctx), len);
    });
  }
  return all.view({n, k, all.size(1)});
}

/// The Score-CAM family and Ablation-CAM: the perturbed logits, computed once for every rank.
template <Method M>
Prepared prepare_perturbed(const PrepareInputs& in) {
  Prepared p;
  p.perturbed = perturbed_logits(M, in, in.options.perturbation_batch());
  return p;
}

/// [N,K]: the explained class's logit for each perturbed input.
at::Tensor perturbed_class_logit(const MethodInputs& in) {
  const at::Tensor& all = in.prepared.perturbed;
  const int64_t n = in.a.size(0);
  return all.gather(2, in.classes.view({n, 1, 1}).expand({n, all.size(1), 1}))
      .squeeze(2)
      .to(in.a.scalar_type());
}

/// Score-CAM: the softmax over channels of the class logit with the input masked by each channel
/// (SS-CAM and IS-CAM: that logit averaged over their draws or steps).
Weighted score_cam(const MethodInputs& in) {
  return from_weights(at::softmax(perturbed_class_logit(in), 1), in.a);
}

/// Ablation-CAM: the relative drop of the class score when a channel is zeroed (the absolute drop
/// where the score is 0).
Weighted ablation_cam(const MethodInputs& in) {
  const at::Tensor base = in.score.to(in.a.scalar_type()).view({in.a.size(0), 1});
  const at::Tensor drop = base - perturbed_class_logit(in);
  return from_weights(
      at::where(base != 0, drop / at::where(base != 0, base, at::ones_like(base)), drop), in.a);
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
    {Method::scorecam, "scorecam", false, true, prepare_perturbed<Method::scorecam>, score_cam, nullptr},
    {Method::ablationcam, "ablationcam", false, true, prepare_perturbed<Method::ablationcam>, ablation_cam, nullptr},
    {Method::eigencam, "eigencam", false, false, prepare_eigen_cam, eigen_cam_map, nullptr},
    {Method::eigengradcam, "eigengradcam", true, false, nullptr, eigen_grad_cam, nullptr},
    {Method::kpcacam, "kpcacam", false, false, prepare_kpca_cam, eigen_cam_map, nullptr},
    {Method::gradcam_elementwise, "gradcamelementwise", true, false, nullptr, grad_cam_elementwise, kElementWiseScript},
    {Method::randomcam, "randomcam", false, false, nullptr, random_cam, nullptr},
    {Method::sscam, "sscam", false, true, prepare_perturbed<Method::sscam>, score_cam, nullptr},
    {Method::iscam, "iscam", false, true, prepare_perturbed<Method::iscam>, score_cam, nullptr},
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
