// src/rollout.cpp: attention rollout (Method::rollout; methods.hpp, docs/methods.md): the model's
// nn.MultiheadAttention modules, their attention recomputed from each call's observed query, and
// the rollout through the layers, read at the grid's tokens.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>

#include <gradcam/error.hpp>

#include "methods.hpp"

namespace gradcam::detail {

namespace {
at::Tensor param(const torch::jit::Module& m, const std::string& name) {
  return m.hasattr(name) && m.attr(name).isTensor() ? m.attr(name).toTensor().detach() : at::Tensor();
}
}  // namespace

std::vector<AttentionModule> find_attention(const torch::jit::Module& module, int64_t heads) {
  std::vector<AttentionModule> out;
  for (const auto& item : module.named_modules()) {
    const auto& type = item.value.type()->name();
    if (!type || type->name() != "MultiheadAttention") continue;
    const torch::jit::Module& m = item.value;
    AttentionModule a;
    a.path = item.name;
    const at::Tensor w = param(m, "in_proj_weight"), b = param(m, "in_proj_bias");
    const int64_t c = w.defined() ? w.size(1) : 0;
    a.q_weight = w.defined() ? w.narrow(0, 0, c) : param(m, "q_proj_weight");
    a.k_weight = w.defined() ? w.narrow(0, c, c) : param(m, "k_proj_weight");
    if (b.defined()) {
      a.q_bias = b.narrow(0, 0, a.q_weight.size(0));
      a.k_bias = b.narrow(0, a.q_weight.size(0), a.k_weight.size(0));
    }
    GRADCAM_CHECK(a.q_weight.defined() && a.k_weight.defined(), "attention rollout: '", a.path,
                  "' has neither in_proj_weight nor q_proj_weight and k_proj_weight");
    if (m.hasattr("batch_first") && m.attr("batch_first").isBool()) a.batch_first = m.attr("batch_first").toBool();
    const int64_t own = m.hasattr("num_heads") && m.attr("num_heads").isInt() ? m.attr("num_heads").toInt() : 0;
    GRADCAM_CHECK(heads == 0 || own == 0 || heads == own, "attention_heads is ", heads, " but '", a.path,
                  "' has num_heads ", own);
    a.heads = heads > 0 ? heads : own;
    GRADCAM_CHECK(a.heads > 0, "attention rollout needs the number of heads of '", a.path, "', which a traced "
                  "model does not keep: script the model, or give attention_heads");
    GRADCAM_CHECK(a.q_weight.size(0) % a.heads == 0, "attention rollout: '", a.path, "' projects to ",
                  a.q_weight.size(0), " channels, which ", a.heads, " heads do not divide");
    out.push_back(std::move(a));
  }
  GRADCAM_CHECK(!out.empty(), "attention rollout reads the model's nn.MultiheadAttention modules, and it has none");
  return out;
}

namespace {

/// The attention weights [N,T,T] of one self-attention call on input x, averaged over heads:
/// softmax(Q K^T / sqrt(d)) per head, Q and K from the module's projections.
at::Tensor attention_weights(const AttentionModule& m, const at::Tensor& x_in, int64_t batch) {
  const bool batch_first = m.batch_first >= 0 ? m.batch_first == 1 : x_in.size(0) == batch;
  const at::Tensor x = batch_first ? x_in : x_in.transpose(0, 1);  // [N, T, C]
  const int64_t n = x.size(0), t = x.size(1), h = m.heads, d = m.q_weight.size(0) / h;
  auto project = [&](const at::Tensor& w, const at::Tensor& b) {
    return at::linear(x, w.to(x.scalar_type()), b.defined() ? b.to(x.scalar_type()) : at::Tensor())
        .view({n, t, h, d})
        .transpose(1, 2);
  };
  const at::Tensor q = project(m.q_weight, m.q_bias), k = project(m.k_weight, m.k_bias);
  return at::softmax(at::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(d)), -1).mean(1);
}

}  // namespace

/// R = prod_l (A_l + I) / 2 (rows renormalised) in call order; the map is the mean of the extra
/// tokens' rows (every row without extra tokens) at the grid's tokens, [N,1,h,w].
Prepared prepare_rollout(const PrepareInputs& in) {
  Prepared p;
  if (in.first != nullptr && in.first->eigen.signed_map.defined()) return *in.first;  // the same for every layer
  c10::NoGradGuard no_grad;
  const auto& calls = in.attention;
  GRADCAM_CHECK(!calls.inputs.empty(), "attention rollout: no nn.MultiheadAttention was called by this forward pass");
  const int64_t n = in.input.size(0);
  at::Tensor r;
  at::Tensor tokens;  // the first call's input, batch first, for the grid
  for (size_t i = 0; i < calls.inputs.size(); ++i) {
    const at::Tensor a = attention_weights(*calls.modules[i], calls.inputs[i], n);
    const at::Tensor eye = at::eye(a.size(1), a.options()).expand_as(a);
    at::Tensor step = (a + eye) / 2;
    step = step / step.sum(-1, /*keepdim=*/true);
    r = r.defined() ? at::matmul(step, r) : step;
    if (i == 0) tokens = calls.inputs[i].size(0) == n ? calls.inputs[i] : calls.inputs[i].transpose(0, 1);
  }
  const Layout l = resolve_layout(in.options.token_layout(), calls.modules[0]->path + " (its input)", tokens.sizes(),
                                  in.input.sizes());
  GRADCAM_CHECK(l.kind == Layout::Kind::tokens, "attention rollout: the input of '", calls.modules[0]->path,
                "' is ", describe(l, tokens.sizes()), ", not tokens [N, T, C]");
  const at::Tensor rows = l.extra > 0 ? r.narrow(1, 0, l.extra).mean(1) : r.mean(1);  // [N, T]
  p.eigen.signed_map = rows.narrow(1, l.extra, l.h * l.w).reshape({n, 1, l.h, l.w});
  return p;
}

Weighted rollout_map(const MethodInputs& in) {
  const at::Tensor& m = in.prepared.eigen.signed_map;
  GRADCAM_CHECK(m.size(2) == in.a.size(2) && m.size(3) == in.a.size(3), "attention rollout gives a ", m.size(2), "x",
                m.size(3), " grid of tokens, but layer '", in.layer, "' is a ", in.a.size(2), "x", in.a.size(3),
                " grid: name a token layer of the same grid (e.g. a block's first norm)");
  return {m.to(in.a.scalar_type()), {}, {}};
}

}  // namespace gradcam::detail
