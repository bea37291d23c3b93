// src/impute.cpp: ROAD's linear imputation (gradcam::linear_impute, gradcam/faithfulness.hpp):
// the sparse system solved by preconditioned conjugate gradients, coarse to fine.
#include <gradcam/faithfulness.hpp>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>

#include <gradcam/error.hpp>

#include "util.hpp"

namespace gradcam {

using detail::concat;
using detail::shape_str;

namespace {

/// The weighted sum of each pixel's 8 neighbours (1/6 edge, 1/12 diagonal; out-of-image
/// neighbours count 0), into buffers made once: the conjugate gradients below call it every
/// iteration, and a fresh image-sized tensor per operation cost more than the arithmetic (under
/// AddressSanitizer, whose allocator maps every large block anew, 60 times the arithmetic).
class Neighbours {
 public:
  explicit Neighbours(const at::Tensor& like)
      : h_(like.size(2)), w_(like.size(3)),
        pad_(at::zeros({like.size(0), like.size(1), h_ + 2, w_ + 2}, like.options())),
        edge_(at::empty_like(like)), corner_(at::empty_like(like)) {}

  /// out = W(x); x and out [N,C,H,W], out not aliasing x.
  void operator()(const at::Tensor& x, at::Tensor& out) {
    at_(0, 0).copy_(x);  // the border stays 0
    at::add_out(edge_, at_(-1, 0), at_(1, 0));
    edge_.add_(at_(0, -1)).add_(at_(0, 1));
    at::add_out(corner_, at_(-1, -1), at_(-1, 1));
    corner_.add_(at_(1, -1)).add_(at_(1, 1));
    at::add_out(out, edge_.mul_(1.0 / 6), corner_, 1.0 / 12);
  }

 private:
  at::Tensor at_(int64_t dy, int64_t dx) const { return pad_.narrow(2, 1 + dy, h_).narrow(3, 1 + dx, w_); }
  int64_t h_, w_;
  at::Tensor pad_, edge_, corner_;
};

/// Preconditioned conjugate gradients for linear_impute on float64 v [N,C,H,W] with removed mask
/// m (1 = removed, expanded to v's shape), from the initial guess x0 (used on removed pixels).
/// Every image-sized tensor is made before the loop and updated in place.
at::Tensor impute_cg(const at::Tensor& v, const at::Tensor& m, const at::Tensor& x0, double tolerance,
                     int64_t max_iterations) {
  Neighbours neighbours(v);
  at::Tensor diag = at::empty_like(v), nb = at::empty_like(v), prod = at::empty_like(v);
  neighbours(at::ones_like(v), diag);  // sum of in-image neighbour weights
  // Unknowns x on removed pixels: diag * x - W(m * x) = W((1 - m) * v), on removed pixels only.
  auto apply = [&](const at::Tensor& x, at::Tensor& out) {
    at::mul_out(prod, m, x);
    neighbours(prod, nb);
    at::mul_out(out, diag, x);
    out.sub_(nb).mul_(m);
  };
  auto dot = [&](const at::Tensor& a, const at::Tensor& b2) { return at::mul_out(prod, a, b2).sum({2, 3}, true); };
  at::Tensor b = at::empty_like(v);
  neighbours((1 - m) * v, b);
  b.mul_(m);
  at::Tensor x = x0 * m;
  at::Tensor r = at::empty_like(v), ap = at::empty_like(v);
  apply(x, ap);
  at::sub_out(r, b, ap);
  at::Tensor z = r / diag;
  at::Tensor p = z.clone();
  at::Tensor rz = dot(r, z);
  const at::Tensor bnorm = dot(b, b).sqrt();
  for (int64_t it = 0; it < max_iterations; ++it) {
    const at::Tensor rnorm = dot(r, r).sqrt();
    if ((rnorm <= tolerance * bnorm).all().item<bool>()) break;
    apply(p, ap);
    const at::Tensor pap = dot(p, ap);
    const at::Tensor alpha = at::where(pap > 0, rz / at::where(pap > 0, pap, at::ones_like(pap)),
                                       at::zeros_like(pap));
    x.addcmul_(p, alpha);
    r.addcmul_(ap, alpha, -1);
    at::div_out(z, r, diag);
    const at::Tensor rz_new = dot(r, z);
    const at::Tensor beta = at::where(rz > 0, rz_new / at::where(rz > 0, rz, at::ones_like(rz)),
                                      at::zeros_like(rz));
    p.mul_(beta).add_(z);
    rz = rz_new;
  }
  return x;
}

/// Coarse-to-fine: the same problem on a 2x smaller grid (a coarse pixel is known if any of its
/// fine pixels is; its value is their mean), solved loosely and upsampled, is the initial guess.
/// Large holes then need a few dozen fine iterations instead of hundreds.
at::Tensor impute_solve(const at::Tensor& v, const at::Tensor& m, double tolerance, int64_t max_iterations) {
  at::Tensor x0 = at::zeros_like(v);
  if (v.size(2) >= 16 && v.size(3) >= 16) {
    const at::Tensor known = 1 - m;
    const std::vector<int64_t> two = {2, 2};
    const std::vector<int64_t> zero = {0, 0};
    const at::Tensor kv = at::avg_pool2d(v * known, two, two, zero, /*ceil_mode=*/true);
    const at::Tensor kc = at::avg_pool2d(known, two, two, zero, /*ceil_mode=*/true);
    const at::Tensor coarse_m = (kc == 0).to(v.scalar_type());
    const at::Tensor coarse_v = kv / at::where(kc > 0, kc, at::ones_like(kc));
    const at::Tensor coarse = impute_solve(coarse_v, coarse_m, std::max(tolerance, 1e-4), max_iterations);
    x0 = at::upsample_bilinear2d(coarse, {v.size(2), v.size(3)}, false);
  }
  return impute_cg(v, m, x0, tolerance, max_iterations);
}

}  // namespace

at::Tensor linear_impute(const at::Tensor& image, const at::Tensor& removed, double tolerance,
                         int64_t max_iterations) {
  GRADCAM_CHECK(image.defined() && image.dim() == 4, "linear_impute: image must be [N,C,H,W]");
  GRADCAM_CHECK(removed.defined() && removed.dim() == 4 && removed.size(1) == 1 &&
                    removed.size(0) == image.size(0) && removed.size(2) == image.size(2) &&
                    removed.size(3) == image.size(3),
                "linear_impute: the mask must be [N,1,H,W] matching the image ",
                shape_str(image.sizes()),
                removed.defined() ? concat(", got ", shape_str(removed.sizes())) : std::string());
  GRADCAM_CHECK(tolerance > 0 && max_iterations >= 1, "linear_impute: tolerance must be > 0 and "
                "max_iterations >= 1");
  c10::NoGradGuard no_grad;
  const at::Tensor v = image.detach().to(at::kDouble);
  const at::Tensor m = removed.to(v.device(), at::kDouble).expand_as(v).contiguous();
  const at::Tensor x = impute_solve(v, m, tolerance, max_iterations);
  return (v * (1 - m) + x * m).to(image.scalar_type());
}

}  // namespace gradcam
