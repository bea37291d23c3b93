// src/perturbation.cpp: the methods that run the model again on perturbed inputs, rows of kMethods
// (methods.cpp): Score-CAM and its smoothed (SS-CAM) and integrated (IS-CAM) forms, which mask
// the input with each channel's upsampled activation, and Ablation-CAM, which zeroes a channel of
// the layer's output. Their passes are batched (GradCAMOptions::perturbation_batch), run through
// the same rewritten graph with the capture context in perturb mode, and made once per activation
// for every rank (their preparation); the map then reads the explained class's column.
// SmoothGrad-CAM++ runs the whole batch again on noisy copies of the input, with captures and a
// backward pass per rank, once for every capture.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include <gradcam/error.hpp>

#include "methods.hpp"
#include "outputs.hpp"
#include "util.hpp"

namespace gradcam::detail {

namespace {

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
        m = m + (noise * in.options.noise_std().value_or(2.0)).to(m.options());
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

/// [N,K]: the explained class's logit for each perturbed input.
at::Tensor perturbed_class_logit(const MethodInputs& in) {
  const at::Tensor& all = in.prepared.perturbed;
  const int64_t n = in.a.size(0);
  return all.gather(2, in.classes.view({n, 1, 1}).expand({n, all.size(1), 1}))
      .squeeze(2)
      .to(in.a.scalar_type());
}

}  // namespace

/// The Score-CAM family and Ablation-CAM: the perturbed logits, computed once for every rank.
template <Method M>
Prepared prepare_perturbed(const PrepareInputs& in) {
  Prepared p;
  p.perturbed = perturbed_logits(M, in, in.options.perturbation_batch());
  return p;
}

template Prepared prepare_perturbed<Method::scorecam>(const PrepareInputs&);
template Prepared prepare_perturbed<Method::ablationcam>(const PrepareInputs&);
template Prepared prepare_perturbed<Method::sscam>(const PrepareInputs&);
template Prepared prepare_perturbed<Method::iscam>(const PrepareInputs&);

/// Score-CAM: the softmax over channels of the class logit with the input masked by each channel
/// (SS-CAM and IS-CAM: that logit averaged over their draws or steps).
Weighted score_cam_map(const MethodInputs& in) {
  return from_weights(at::softmax(perturbed_class_logit(in), 1), in.a);
}

/// Ablation-CAM: the relative drop of the class score when a channel is zeroed (the absolute drop
/// where the score is 0).
Weighted ablation_cam_map(const MethodInputs& in) {
  const at::Tensor base = in.score.to(in.a.scalar_type()).view({in.a.size(0), 1});
  const at::Tensor drop = base - perturbed_class_logit(in);
  return from_weights(
      at::where(base != 0, drop / at::where(base != 0, base, at::ones_like(base)), drop), in.a);
}


namespace {

/// Draw s of the input noise: [C,H,W] (one for every image of the batch), N(0, std^2), from a
/// generator seeded with s, in float64 on the CPU, then cast: the numbers PyTorch's
/// torch.randn(C, H, W, generator=torch.Generator().manual_seed(s), dtype=torch.float64) gives.
at::Tensor input_noise(const at::Tensor& input, int64_t s, double std) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(s));
  const at::Tensor noise = at::randn(input.sizes().slice(1), gen, at::TensorOptions().dtype(at::kDouble));
  return (noise * std).to(input.options());
}

/// The sums over the noisy copies of g, g^2 and g^3 for every capture and rank.
using MomentSums = std::map<std::pair<size_t, int64_t>, std::vector<GradientMoments>>;

/// One noisy copy of the batch: its forward pass with captures, then per rank the backward pass
/// of the rank's class scores to every capture, added to `sums`.
void add_noisy_copy(const PrepareInputs& in, const at::Tensor& x, MomentSums& sums) {
  CaptureContext ctx(in.forward.slots(), CaptureContext::Mode::leaf, in.forward.observe_from());
  const at::Tensor logits = logits_of(in.forward.run(x, ctx));
  GRADCAM_CHECK(logits.dim() == 2 && logits.size(0) == x.size(0), "the model output has shape ",
                shape_str(logits.sizes()), " on a noisy copy of the batch; SmoothGrad-CAM++ needs class scores [N, classes]");
  std::vector<at::Tensor> leaves;
  std::vector<std::pair<size_t, int64_t>> where;
  for (size_t slot = 0; slot < std::min(ctx.captures.size(), in.forward.observe_from()); ++slot) {
    for (size_t call = 0; call < ctx.captures[slot].size(); ++call) {
      leaves.push_back(ctx.captures[slot][call]);
      where.emplace_back(slot, static_cast<int64_t>(call));
    }
  }
  const int64_t ranks = in.classes.size(1);
  for (int64_t r = 0; r < ranks; ++r) {
    const at::Tensor score = logits.gather(1, in.classes.narrow(1, r, 1).to(logits.device())).sum();
    const std::vector<at::Tensor> g = torch::autograd::grad({score}, leaves, {}, r + 1 < ranks, false, true);
    for (size_t i = 0; i < leaves.size(); ++i) {
      const at::Tensor gi = g[i].defined() ? g[i] : at::zeros_like(leaves[i]);
      auto& per_rank = sums[where[i]];
      if (per_rank.size() < static_cast<size_t>(ranks)) per_rank.resize(static_cast<size_t>(ranks));
      GradientMoments& m = per_rank[static_cast<size_t>(r)];
      const at::Tensor g2 = gi * gi;
      m.g = m.g.defined() ? m.g + gi : gi;
      m.g2 = m.g2.defined() ? m.g2 + g2 : g2;
      m.g3 = m.g3.defined() ? m.g3 + g2 * gi : g2 * gi;
    }
  }
}

/// The means over S noisy copies of the input of g, g^2 and g^3, for every capture and rank.
std::shared_ptr<const NoisyGradients> noisy_gradients(const PrepareInputs& in) {
  const int64_t draws = in.options.samples() > 0 ? in.options.samples() : 4;
  const double std = in.options.noise_std().value_or(0.3);
  GRADCAM_CHECK(in.classes.defined(), "SmoothGrad-CAM++ explains class targets (top-k or classes)");
  c10::AutoGradMode grad_on(true);
  MomentSums sums;
  for (int64_t s = 0; s < draws; ++s) add_noisy_copy(in, in.input + input_noise(in.input, s, std), sums);
  auto out = std::make_shared<NoisyGradients>();
  for (auto& [where, per_rank] : sums) {
    for (GradientMoments& m : per_rank) {
      m = {m.g / static_cast<double>(draws), m.g2 / static_cast<double>(draws), m.g3 / static_cast<double>(draws)};
    }
    out->raw[where] = std::move(per_rank);
  }
  return out;
}

}  // namespace

/// The noisy copies run once, at the first capture's preparation, for every capture; each capture
/// then reads its own moments as a grid.
Prepared prepare_smooth_grad_cam_pp(const PrepareInputs& in) {
  Prepared p;
  p.noisy = in.first != nullptr && in.first->noisy ? in.first->noisy : noisy_gradients(in);
  const auto it = p.noisy->raw.find({in.slot, in.call});
  GRADCAM_CHECK(it != p.noisy->raw.end(), "SmoothGrad-CAM++: the noisy copies of the input did not reach the layer's call ",
                in.call, " (the forward pass took another branch)");
  for (const GradientMoments& m : it->second) {
    p.moments.push_back({to_grid(m.g, in.layout), to_grid(m.g2, in.layout), to_grid(m.g3, in.layout)});
  }
  return p;
}

/// SmoothGrad-CAM++: Grad-CAM++'s weights from the moments, on the clean input's activations.
Weighted smooth_grad_cam_pp_map(const MethodInputs& in) {
  const GradientMoments& m = in.prepared.moments.at(static_cast<size_t>(in.rank));
  return grad_cam_pp_from(m.g, m.g2, m.g3, in.a);
}

}  // namespace gradcam::detail
