// src/scores.cpp: the scores a Target selects from a model's output (outputs.hpp): class targets
// (top-k, explicit classes) read from the logits, a score function's [N], a ranked function's
// [N, R]. Engine::compute_copies calls it once per forward pass.
#include <ATen/ATen.h>

#include <gradcam/error.hpp>

#include "outputs.hpp"
#include "util.hpp"

namespace gradcam::detail {

namespace {

Scores ranked_scores(const Target& target, const c10::IValue& out, int64_t n) {
  const Target::Ranked v = target.ranked_fn()(out);
  GRADCAM_CHECK(v.scores.defined() && v.scores.dim() == 2 && v.scores.size(0) == n && v.scores.size(1) >= 1,
                "the ranked score function returned scores of shape ",
                v.scores.defined() ? shape_str(v.scores.sizes()) : std::string("(undefined)"),
                "; expected [N, R] with N = ", n, " and R >= 1");
  Scores s;
  for (int64_t r = 0; r < v.scores.size(1); ++r) s.per_rank.push_back(v.scores.select(1, r));
  if (v.classes.defined()) {
    GRADCAM_CHECK(v.classes.sizes() == v.scores.sizes(), "the ranked score function returned classes of shape ",
                  shape_str(v.classes.sizes()), " for scores of shape ", shape_str(v.scores.sizes()));
    s.classes = v.classes.to(at::kLong);
  } else {
    s.classes = at::full(v.scores.sizes(), -1, at::TensorOptions().dtype(at::kLong));
  }
  return s;
}

}  // namespace

Scores resolve_target(const Target& target, const c10::IValue& out, int64_t n, int64_t copies,
                      const at::Tensor& classes) {
  Scores s;
  if (target.kind() == Target::Kind::ranked) return ranked_scores(target, out, n);
  if (target.kind() == Target::Kind::score) {
    at::Tensor v = target.fn()(out);
    GRADCAM_CHECK(v.defined(), "the score function returned an undefined tensor");
    GRADCAM_CHECK(v.numel() == n, "the score function returned shape ", shape_str(v.sizes()),
                  "; expected one score per sample, [", n, "]");
    s.per_rank.push_back(v.reshape({n}));
    s.classes = at::full({n, 1}, -1, at::TensorOptions().dtype(at::kLong));
    return s;
  }
  at::Tensor logits = logits_of(out);
  GRADCAM_CHECK(logits.dim() == 2 && logits.size(0) == n, "the model output has shape ",
                shape_str(logits.sizes()), "; class targets need [N, classes] with N = ", n,
                " (use Target::score for other outputs)");
  const int64_t num_classes = logits.size(1);
  const int64_t own = n / copies;  // the images explained: the first block
  at::Tensor idx;
  if (classes.defined()) {
    idx = classes.to(logits.device());
  } else if (target.kind() == Target::Kind::top_k) {
    GRADCAM_CHECK(target.k() <= num_classes, "top-", target.k(), " requested but the model has ",
                  num_classes, " classes");
    idx = std::get<1>(logits.detach().narrow(0, 0, own).topk(target.k(), 1));
  } else {
    const auto& ind = target.indices();
    GRADCAM_CHECK(ind.size() == 1 || static_cast<int64_t>(ind.size()) == own, "got ", ind.size(),
                  " class indices for a batch of ", own, "; give one per sample or one for all");
    for (int64_t c : ind) {
      GRADCAM_CHECK(c >= 0 && c < num_classes, "class index ", c,
                    " is out of range: the model has ", num_classes, " classes (0..",
                    num_classes - 1, ")");
    }
    idx = at::tensor(ind, at::TensorOptions().dtype(at::kLong)).to(logits.device());
    idx = idx.view({-1, 1}).expand({own, 1}).contiguous();
  }
  if (copies > 1) idx = idx.repeat({copies, 1});
  for (int64_t r = 0; r < idx.size(1); ++r) {
    s.per_rank.push_back(logits.gather(1, idx.narrow(1, r, 1)).squeeze(1));
  }
  s.classes = idx;
  s.logits = logits.detach();
  return s;
}

}  // namespace gradcam::detail
