// src/factorization.cpp: Deep Feature Factorization (gradcam/factorization.hpp): non-negative
// matrix factorisation of a batch's activations by Lee & Seung's multiplicative updates.
#include <gradcam/factorization.hpp>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include <gradcam/error.hpp>

#include "util.hpp"

namespace gradcam {

using detail::shape_str;

namespace {

// Keeps the updates' denominators away from 0 (a factor entry that reaches 0 stays there).
constexpr double kEps = 1e-12;

void check(const at::Tensor& a, const FactorizationOptions& o) {
  GRADCAM_CHECK(a.defined() && a.dim() == 4, "factorize needs activations [N, K, h, w], got ",
                a.defined() ? shape_str(a.sizes()) : std::string("an undefined tensor"));
  GRADCAM_CHECK(o.components() >= 1 && o.components() <= a.size(1), "components must be from 1 to the ", a.size(1),
                " channels, got ", o.components());
  GRADCAM_CHECK(o.iterations() >= 1, "iterations must be >= 1, got ", o.iterations());
  const int64_t bad = (~at::isfinite(a)).sum().item<int64_t>();
  GRADCAM_CHECK(bad == 0, "the activations contain ", bad, " NaN or Inf value", bad == 1 ? "" : "s");
}

}  // namespace

Factorization factorize(const at::Tensor& activations, const FactorizationOptions& options) {
  check(activations, options);
  const int64_t n = activations.size(0), k = activations.size(1), h = activations.size(2), w = activations.size(3);
  const int64_t c = options.components();
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  at::Tensor x = activations.detach().to(at::kCPU, at::kDouble).transpose(0, 1).reshape({k, -1});
  const at::Tensor offset = std::get<0>(x.min(1, /*keepdim=*/true));
  x = x - offset;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(options.seed());
  const double scale = std::sqrt(x.mean().item<double>() / static_cast<double>(c));
  at::Tensor wf = at::rand({k, c}, gen, f64) * scale;
  at::Tensor hf = at::rand({c, x.size(1)}, gen, f64) * scale;
  for (int64_t it = 0; it < options.iterations(); ++it) {
    hf = hf * at::matmul(wf.t(), x) / (at::matmul(at::matmul(wf.t(), wf), hf) + kEps);
    wf = wf * at::matmul(x, hf.t()) / (at::matmul(wf, at::matmul(hf, hf.t())) + kEps);
  }
  Factorization out;
  const double norm = x.norm().item<double>();
  out.residual = norm > 0 ? (x - at::matmul(wf, hf)).norm().item<double>() / norm : 0.0;
  const auto dtype = activations.scalar_type();
  out.concepts = (wf + offset).t().contiguous().to(activations.device(), dtype);
  out.maps = hf.view({c, n, h, w}).transpose(0, 1).contiguous().to(activations.device(), dtype);
  return out;
}

at::Tensor concept_scores(const Factorization& f, const at::Tensor& weight, const at::Tensor& bias) {
  GRADCAM_CHECK(f.concepts.defined(), "concept_scores needs a factorisation (factorize)");
  GRADCAM_CHECK(weight.defined() && weight.dim() == 2 && weight.size(1) == f.concepts.size(1),
                "the linear head's weight must be [classes, ", f.concepts.size(1), "] for concepts of ",
                f.concepts.size(1), " channels, got ", weight.defined() ? shape_str(weight.sizes()) : std::string("none"));
  const at::Tensor wt = weight.to(f.concepts.device(), f.concepts.scalar_type());
  at::Tensor scores = at::matmul(f.concepts, wt.t());
  if (bias.defined()) scores = scores + bias.to(scores.device(), scores.scalar_type());
  return scores;
}

}  // namespace gradcam
