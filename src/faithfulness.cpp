// src/faithfulness.cpp: deletion/insertion, Average Drop / Increase in Confidence, ROAD (its
// imputation in impute.cpp), ADCC, the
// parameter-randomisation check, and their helpers (see gradcam/faithfulness.hpp).
#include <gradcam/faithfulness.hpp>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/jit/api/module.h>

#include <algorithm>
#include <cmath>
#include <map>

#include <gradcam/error.hpp>
#include <gradcam/grad_cam.hpp>

#include "outputs.hpp"
#include "util.hpp"

namespace gradcam {

using detail::concat;
using detail::shape_str;

ScoreModel score_model(const torch::jit::Module& module) {
  return [module](const at::Tensor& input) {
    c10::NoGradGuard no_grad;
    auto m = module;  // forward is non-const on the handle; the module object is shared
    return detail::logits_of(m.forward({input})).detach();
  };
}

namespace {

void check_args(const at::Tensor& input, const at::Tensor& saliency, const at::Tensor& classes,
                const char* what) {
  GRADCAM_CHECK(input.defined() && input.dim() == 4, what, ": input must be [N,C,H,W]",
                input.defined() ? concat(", got ", shape_str(input.sizes())) : std::string());
  GRADCAM_CHECK(saliency.defined() && saliency.dim() == 4 && saliency.size(1) == 1 &&
                    saliency.size(0) == input.size(0),
                what, ": saliency must be [N,1,h,w] with N = ", input.size(0),
                saliency.defined() ? concat(", got ", shape_str(saliency.sizes())) : std::string());
  GRADCAM_CHECK(classes.defined() && classes.dim() == 1 && classes.size(0) == input.size(0),
                what, ": classes must be [N] with N = ", input.size(0),
                classes.defined() ? concat(", got ", shape_str(classes.sizes())) : std::string());
  GRADCAM_CHECK(at::isfinite(saliency).all().item<bool>(), what, ": the saliency map has NaN or Inf");
}

/// Saliency at input resolution, [N, H*W].
at::Tensor saliency_at_input(const at::Tensor& saliency, const at::Tensor& input) {
  at::Tensor s = saliency.detach().to(input.device(), at::kDouble);
  if (s.size(2) != input.size(2) || s.size(3) != input.size(3)) {
    s = upsample(s, {input.size(2), input.size(3)});
  }
  return s.reshape({s.size(0), -1});
}

/// Rank of every pixel in decreasing saliency (0 = most salient; ties: lower index first).
at::Tensor descending_rank(const at::Tensor& flat) {
  at::Tensor order = std::get<1>(at::sort(flat, /*stable=*/true, /*dim=*/1, /*descending=*/true));
  at::Tensor rank = at::empty_like(order);
  rank.scatter_(1, order, at::arange(flat.size(1), order.options()).expand_as(order).contiguous());
  return rank;
}

/// Scores of the class of each row: `rows` index the sample of each perturbed image.
at::Tensor class_scores(const ScoreModel& model, const at::Tensor& images, const at::Tensor& classes,
                        bool probabilities) {
  at::Tensor out = model(images);
  GRADCAM_CHECK(out.defined() && out.dim() == 2 && out.size(0) == images.size(0),
                "the model returned shape ", out.defined() ? shape_str(out.sizes()) : "undefined",
                " for a batch of ", images.size(0), "; expected class scores [N, classes]");
  const int64_t hi = classes.max().item<int64_t>();
  GRADCAM_CHECK(classes.min().item<int64_t>() >= 0 && hi < out.size(1), "class index ", hi,
                " is out of range: the model has ", out.size(1), " classes");
  if (probabilities) out = at::softmax(out.to(at::kDouble), 1);
  return out.to(at::kDouble).gather(1, classes.to(out.device()).view({-1, 1})).squeeze(1);
}

/// Runs `make(start, len)` -> (images, classes) over `total` perturbed images in chunks.
template <typename Make>
at::Tensor batched_scores(const ScoreModel& model, int64_t total, int64_t batch, bool probabilities,
                          Make make) {
  GRADCAM_CHECK(batch >= 1, "batch must be >= 1, got ", batch);
  c10::NoGradGuard no_grad;
  std::vector<at::Tensor> parts;
  for (int64_t start = 0; start < total; start += batch) {
    const int64_t len = std::min(batch, total - start);
    auto [images, classes] = make(start, len);
    parts.push_back(class_scores(model, images, classes, probabilities).cpu());
  }
  return at::cat(parts, 0);
}

at::Tensor gaussian_blur(const at::Tensor& x, int64_t kernel, double sigma) {
  GRADCAM_CHECK(kernel >= 1 && kernel % 2 == 1 && sigma > 0, "blur needs an odd kernel >= 1 and "
                "sigma > 0, got kernel ", kernel, ", sigma ", sigma);
  at::Tensor t = at::arange(kernel, x.options().dtype(at::kDouble)) - static_cast<double>(kernel / 2);
  at::Tensor k1 = at::exp(-(t * t) / (2 * sigma * sigma));
  k1 = (k1 / k1.sum()).to(x.scalar_type());
  const int64_t c = x.size(1);
  at::Tensor kh = k1.view({1, 1, 1, kernel}).expand({c, 1, 1, kernel}).contiguous();
  at::Tensor kv = k1.view({1, 1, kernel, 1}).expand({c, 1, kernel, 1}).contiguous();
  const std::vector<int64_t> one = {1, 1};
  const std::vector<int64_t> pad_w = {0, kernel / 2};
  const std::vector<int64_t> pad_h = {kernel / 2, 0};
  at::Tensor y = at::conv2d(x, kh, at::Tensor(), one, pad_w, one, c);
  return at::conv2d(y, kv, at::Tensor(), one, pad_h, one, c);
}

Curve curve(bool insertion, const ScoreModel& model, const at::Tensor& input_,
            const at::Tensor& saliency, const at::Tensor& classes, const CurveOptions& opt) {
  check_args(input_, saliency, classes, insertion ? "insertion" : "deletion");
  GRADCAM_CHECK(opt.steps() >= 1, "steps must be >= 1, got ", opt.steps());
  const at::Tensor input = input_.detach();
  const int64_t n = input.size(0);
  const int64_t hw = input.size(2) * input.size(3);
  const int64_t points = opt.steps() + 1;
  const at::Tensor rank = descending_rank(saliency_at_input(saliency, input));  // [N, HW]
  const at::Tensor start_image =
      insertion ? gaussian_blur(input, opt.blur_kernel(), opt.blur_sigma())
                : at::full_like(input, opt.baseline());
  const at::Tensor cls = classes.to(input.device(), at::kLong);
  at::Tensor scores = batched_scores(model, n * points, opt.batch(), opt.probabilities(),
                                     [&](int64_t start, int64_t len) {
    at::Tensor idx = at::arange(start, start + len, cls.options());
    at::Tensor sample = at::div(idx, points, "floor");
    at::Tensor step = idx - sample * points;
    at::Tensor count = at::div(step * hw, opt.steps(), "floor").view({-1, 1});
    at::Tensor changed = (rank.index_select(0, sample) < count)
                             .view({len, 1, input.size(2), input.size(3)})
                             .to(input.scalar_type());
    at::Tensor x = input.index_select(0, sample);
    at::Tensor s = start_image.index_select(0, sample);
    at::Tensor images = insertion ? s * (1 - changed) + x * changed : x * (1 - changed) + s * changed;
    return std::make_pair(images, cls.index_select(0, sample));
  });
  Curve c;
  c.scores = scores.view({n, points});
  c.auc = (c.scores.sum(1) - (c.scores.select(1, 0) + c.scores.select(1, points - 1)) / 2) /
          static_cast<double>(opt.steps());
  return c;
}

}  // namespace

Curve deletion_curve(const ScoreModel& model, const at::Tensor& input, const at::Tensor& saliency,
                     const at::Tensor& classes, const CurveOptions& options) {
  return curve(false, model, input, saliency, classes, options);
}

Curve insertion_curve(const ScoreModel& model, const at::Tensor& input, const at::Tensor& saliency,
                      const at::Tensor& classes, const CurveOptions& options) {
  return curve(true, model, input, saliency, classes, options);
}

namespace {

/// L(x): the saliency min-max normalised per sample, upsampled to the input, in its type.
at::Tensor map_at_input(const at::Tensor& saliency, const at::Tensor& input) {
  const at::Tensor map = normalize(saliency.detach().to(input.device(), at::kDouble));
  return upsample(map, {input.size(2), input.size(3)}).to(input.scalar_type());
}

/// Pearson correlation of each sample's values, a and b [N,...]; 0 where either is constant.
at::Tensor pearson(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.reshape({a.size(0), -1}).to(at::kDouble);
  const at::Tensor y = b.reshape({b.size(0), -1}).to(at::kDouble);
  const at::Tensor xc = x - x.mean(1, true);
  const at::Tensor yc = y - y.mean(1, true);
  const at::Tensor den = (xc.pow(2).sum(1) * yc.pow(2).sum(1)).sqrt();
  return at::where(den > 0, (xc * yc).sum(1) / den.clamp_min(1e-300), at::zeros_like(den));
}

}  // namespace

ConfidenceChange confidence_change(const ScoreModel& model, const at::Tensor& input_,
                                   const at::Tensor& saliency, const at::Tensor& classes) {
  check_args(input_, saliency, classes, "confidence_change");
  const at::Tensor input = input_.detach();
  const at::Tensor cls = classes.to(input.device(), at::kLong);
  const at::Tensor map = map_at_input(saliency, input);
  c10::NoGradGuard no_grad;
  ConfidenceChange r;
  r.full = class_scores(model, input, cls, true).cpu();
  r.explained = class_scores(model, input * map, cls, true).cpu();
  r.drop = (r.full - r.explained).clamp_min(0) / r.full.clamp_min(1e-300) * 100.0;
  r.increase = r.explained > r.full;
  r.change = r.explained - r.full;
  return r;
}

Adcc adcc(const ScoreModel& model, const at::Tensor& input_, const at::Tensor& saliency,
          const at::Tensor& classes, const MapFn& explain) {
  check_args(input_, saliency, classes, "adcc");
  GRADCAM_CHECK(static_cast<bool>(explain), "adcc: no explain function given");
  const at::Tensor input = input_.detach();
  const at::Tensor cls = classes.to(input.device(), at::kLong);
  const at::Tensor map = map_at_input(saliency, input);
  const at::Tensor masked = input * map;
  at::Tensor again;
  {
    at::Tensor m = explain(masked, cls);
    GRADCAM_CHECK(m.defined() && m.dim() == 4 && m.size(0) == input.size(0) && m.size(1) == 1,
                  "adcc: the explain function returned ", m.defined() ? shape_str(m.sizes()) : "undefined",
                  " for a batch of ", input.size(0), "; expected maps [N,1,h,w]");
    GRADCAM_CHECK(at::isfinite(m).all().item<bool>(), "adcc: the map of the masked input has NaN or Inf");
    again = map_at_input(m, input);
  }
  c10::NoGradGuard no_grad;
  Adcc r;
  const at::Tensor full = class_scores(model, input, cls, true).cpu();
  const at::Tensor explained = class_scores(model, masked, cls, true).cpu();
  r.average_drop = (full - explained).clamp_min(0) / full.clamp_min(1e-300);
  r.coherency = ((pearson(map, again) + 1) / 2).cpu();
  r.complexity = map.to(at::kDouble).reshape({map.size(0), -1}).mean(1).cpu();
  // the harmonic mean of coherency, 1 - complexity and 1 - drop; 0 when any of them is 0
  const at::Tensor terms = at::stack({r.coherency, 1 - r.complexity, 1 - r.average_drop}, 1);
  const at::Tensor positive = (terms > 0).all(1);
  r.adcc = at::where(positive, 3 / (1 / terms.clamp_min(1e-300)).sum(1), at::zeros_like(r.coherency));
  return r;
}

RoadResult road(const ScoreModel& model, const at::Tensor& input_, const at::Tensor& saliency,
                const at::Tensor& classes, const RoadOptions& opt) {
  check_args(input_, saliency, classes, "road");
  GRADCAM_CHECK(!opt.fractions().empty(), "road needs at least one fraction");
  for (double f : opt.fractions()) {
    GRADCAM_CHECK(f >= 0 && f <= 1, "road: fraction ", f, " is outside [0, 1]");
  }
  GRADCAM_CHECK(opt.noise() >= 0, "road: noise must be >= 0, got ", opt.noise());
  const at::Tensor input = input_.detach();
  const int64_t n = input.size(0);
  const int64_t hw = input.size(2) * input.size(3);
  const auto nf = static_cast<int64_t>(opt.fractions().size());
  const at::Tensor rank = descending_rank(saliency_at_input(saliency, input));
  const at::Tensor cls = classes.to(input.device(), at::kLong);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(opt.seed());
  RoadResult res;
  {
    c10::NoGradGuard no_grad;
    res.full = class_scores(model, input, cls, opt.probabilities()).cpu();
  }
  for (int order = 0; order < 2; ++order) {  // 0: most relevant first, 1: least relevant first
    // Perturbed images: (sample, fraction) pairs, imputed chunk by chunk.
    at::Tensor scores = batched_scores(model, n * nf, opt.batch(), opt.probabilities(),
                                       [&](int64_t start, int64_t len) {
      std::vector<at::Tensor> masks;
      std::vector<int64_t> samples;
      for (int64_t i = start; i < start + len; ++i) {
        const int64_t s = i / nf;
        const double f = opt.fractions()[static_cast<size_t>(i % nf)];
        const auto count = static_cast<int64_t>(std::llround(f * static_cast<double>(hw)));
        at::Tensor rk = rank[s];
        masks.push_back(order == 0 ? rk < count : rk >= hw - count);
        samples.push_back(s);
      }
      at::Tensor sample = at::tensor(samples, cls.options());
      at::Tensor removed = at::stack(masks).view({len, 1, input.size(2), input.size(3)});
      at::Tensor x = input.index_select(0, sample);
      // 1e-5 relative residual: imputation error ~1e-4 of the pixel range, far below the noise.
      at::Tensor imputed = linear_impute(x, removed, 1e-5);
      if (opt.noise() > 0) {
        at::Tensor noise = at::empty(imputed.sizes(), imputed.options().device(at::kCPU))
                               .normal_(0.0, opt.noise(), gen)
                               .to(imputed.device());
        imputed = imputed + noise * removed.to(imputed.scalar_type());
      }
      return std::make_pair(imputed, cls.index_select(0, sample));
    });
    (order == 0 ? res.most_relevant_first : res.least_relevant_first) = scores.view({n, nf});
  }
  return res;
}

namespace {

/// Average ranks (ties share the mean of their positions) of each row of [N, M].
at::Tensor average_ranks(const at::Tensor& x) {
  const int64_t n = x.size(0);
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kDouble));
  for (int64_t i = 0; i < n; ++i) {
    auto [sorted, order] = at::sort(x[i], /*stable=*/true, 0, false);
    auto [unique, inverse, counts] = at::unique_consecutive(sorted, true, true);
    at::Tensor ends = counts.cumsum(0).to(at::kDouble);
    at::Tensor mean_rank = ends - (counts.to(at::kDouble) + 1) / 2;  // 0-based mean position
    out[i].index_put_({order}, mean_rank.index_select(0, inverse));
  }
  return out;
}

}  // namespace

at::Tensor spearman(const at::Tensor& a, const at::Tensor& b) {
  GRADCAM_CHECK(a.defined() && b.defined() && a.sizes() == b.sizes() && a.dim() >= 2,
                "spearman needs two tensors [N,...] of the same shape, got ",
                a.defined() ? shape_str(a.sizes()) : "undefined", " and ",
                b.defined() ? shape_str(b.sizes()) : "undefined");
  const at::Tensor ra = average_ranks(a.detach().reshape({a.size(0), -1}).to(at::kDouble).cpu());
  const at::Tensor rb = average_ranks(b.detach().reshape({b.size(0), -1}).to(at::kDouble).cpu());
  const at::Tensor ca = ra - ra.mean(1, true);
  const at::Tensor cb = rb - rb.mean(1, true);
  const at::Tensor den = (ca.pow(2).sum(1) * cb.pow(2).sum(1)).sqrt();
  return at::where(den > 0, (ca * cb).sum(1) / at::where(den > 0, den, at::ones_like(den)),
                   at::zeros_like(den));
}

std::vector<RandomizationStep> randomization_check(const torch::jit::Module& module,
                                                   const at::Tensor& input, const at::Tensor& classes,
                                                   const ExplainFn& explain,
                                                   const RandomizationOptions& options) {
  GRADCAM_CHECK(static_cast<bool>(explain), "randomization_check needs an explain function");
  auto prepare = [&](at::Tensor m) {
    GRADCAM_CHECK(m.defined() && m.dim() >= 2 && m.size(0) == input.size(0),
                  "the explain function returned ", m.defined() ? shape_str(m.sizes()) : "undefined",
                  "; expected maps [N,...] with N = ", input.size(0));
    m = m.detach().to(at::kDouble);
    return options.absolute() ? m.abs() : m;
  };
  const at::Tensor original = prepare(explain(module, input, classes));
  // Modules that own parameters, in definition order; randomised from the last one up.
  std::vector<std::string> owners;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) {
    const auto dot = p.name.rfind('.');
    std::string owner = dot == std::string::npos ? std::string() : p.name.substr(0, dot);
    if (std::find(owners.begin(), owners.end(), owner) == owners.end()) owners.push_back(owner);
  }
  GRADCAM_CHECK(!owners.empty(), "randomization_check: the model has no named parameters (a frozen "
                "model keeps its weights as constants); use the unfrozen model");
  torch::jit::Module copy = module.clone();  // deep copy: the caller's weights are never touched
  auto gen = at::make_generator<at::CPUGeneratorImpl>(options.seed());
  std::vector<RandomizationStep> steps;
  for (auto it = owners.rbegin(); it != owners.rend(); ++it) {
    const std::string prefix = it->empty() ? std::string() : *it + ".";
    {
      c10::NoGradGuard no_grad;
      for (const auto& p : copy.named_parameters(/*recurse=*/true)) {
        if (p.name.compare(0, prefix.size(), prefix) != 0) continue;
        if (p.name.find('.', prefix.size()) != std::string::npos) continue;  // a child's parameter
        at::Tensor t = p.value;
        const double rms = t.to(at::kDouble).pow(2).mean().sqrt().item<double>();
        if (rms == 0) continue;
        at::Tensor noise = at::empty(t.sizes(), t.options().device(at::kCPU)).normal_(0.0, rms, gen);
        t.copy_(noise);
      }
    }
    RandomizationStep step;
    step.module = it->empty() ? std::string("(root)") : *it;
    step.correlation = spearman(prepare(explain(copy, input, classes)), original);
    steps.push_back(std::move(step));
  }
  return steps;
}

}  // namespace gradcam
