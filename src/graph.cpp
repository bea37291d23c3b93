// src/graph.cpp (private): TorchScript graph surgery and the two custom operators it inserts.
// See graph.hpp for the steps; docs/architecture.md for the why.
#include "graph.hpp"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/runtime/interpreter.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <unordered_set>

#include <gradcam/error.hpp>

namespace gradcam::detail {

namespace jit = torch::jit;
using jit::Node;
using jit::Value;

namespace {

thread_local CaptureContext* tl_context = nullptr;

/// Installs a CaptureContext for the current thread, restoring the previous one on exit.
class ContextScope {
 public:
  explicit ContextScope(CaptureContext* ctx) noexcept : previous_(tl_context) { tl_context = ctx; }
  ~ContextScope() { tl_context = previous_; }
  ContextScope(const ContextScope&) = delete;
  ContextScope& operator=(const ContextScope&) = delete;

 private:
  CaptureContext* previous_;
};

// gradcam::capture(Tensor x, int slot) -> Tensor
// Leaf mode: records A = x.detach().requires_grad_() and returns a clone of A, so that the rest of
// the forward pass is recorded by autograd from A on (and only from A on), and in-place ops after
// the layer (out += identity, relu_) act on the clone, never on A.
at::Tensor capture_op(const at::Tensor& x, int64_t slot) {
  CaptureContext* ctx = tl_context;
  if (ctx == nullptr || slot < 0 || slot >= static_cast<int64_t>(ctx->captures.size())) {
    return x.clone();
  }
  if (ctx->mode == CaptureContext::Mode::probe) {
    ctx->shapes.resize(ctx->captures.size());
    ctx->shapes[slot].push_back(x.sizes().vec());
    ctx->captures[slot].emplace_back();
    ctx->order.push_back(static_cast<size_t>(slot));
    return x;
  }
  if (ctx->mode == CaptureContext::Mode::perturb) {
    const auto call = static_cast<int64_t>(ctx->captures[slot].size());
    ctx->captures[slot].emplace_back();
    if (slot == ctx->ablate_slot && call == ctx->ablate_call) {
      std::vector<int64_t> shape = {ctx->ablate_mask.size(0), ctx->ablate_mask.size(1)};
      shape.resize(static_cast<size_t>(x.dim()), 1);
      return x * ctx->ablate_mask.view(shape).to(x.scalar_type());
    }
    return x;
  }
  GRADCAM_CHECK(x.is_floating_point(), "the target layer's output has dtype ", x.scalar_type(),
                "; Grad-CAM needs a floating-point activation");
  if (x.requires_grad()) {
    // Already recorded by autograd (an earlier capture, or guided gradients from the input):
    // gradients are taken with respect to x itself, and the rest of the graph uses a copy.
    ctx->captures[slot].push_back(x);
    return x.clone();
  }
  at::Tensor a = x.detach().requires_grad_(true);
  ctx->captures[slot].push_back(a);
  return a.clone();
}

// gradcam::guided_act(Tensor x, float lo, float hi) -> Tensor
// relu (hi = inf) or hardtanh(lo, hi) whose backward follows the current context's mode.
struct GuidedAct : public torch::autograd::Function<GuidedAct> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, double lo,
                            double hi) {
    ctx->save_for_backward({x});
    ctx->saved_data["lo"] = lo;
    ctx->saved_data["hi"] = hi;
    ctx->saved_data["ctx"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(tl_context));
    return std::isinf(hi) ? at::relu(x) : at::hardtanh(x, lo, hi);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor x = ctx->get_saved_variables()[0];
    const double lo = ctx->saved_data["lo"].toDouble();
    const double hi = ctx->saved_data["hi"].toDouble();
    auto* owner =
        reinterpret_cast<CaptureContext*>(static_cast<intptr_t>(ctx->saved_data["ctx"].toInt()));
    const int mode = owner != nullptr ? owner->backward_mode.load() : 0;
    at::Tensor g = grads[0];
    if (mode == 2) {  // deconvnet: only the sign of the incoming gradient matters
      return {at::relu(g), at::Tensor(), at::Tensor()};
    }
    if (mode == 1) g = at::relu(g);  // guided: positive gradients only...
    // ...through the ordinary mask (input > lo, and < hi for ReLU6), as relu's own backward does
    at::Tensor gin = std::isinf(hi) ? at::threshold_backward(g, x, lo) : at::hardtanh_backward(g, x, lo, hi);
    return {gin, at::Tensor(), at::Tensor()};
  }
};

at::Tensor guided_act_op(const at::Tensor& x, double lo, double hi) {
  return GuidedAct::apply(x, lo, hi);
}

TORCH_LIBRARY(gradcam, m) {
  m.def("capture(Tensor x, int slot) -> Tensor", &capture_op);
  m.def("guided_act(Tensor x, float lo, float hi) -> Tensor", &guided_act_op);
}

const c10::Symbol kCapture = c10::Symbol::fromQualString("gradcam::capture");
const c10::Symbol kGuidedAct = c10::Symbol::fromQualString("gradcam::guided_act");

void collect_nodes(jit::Block* block, std::vector<Node*>& out) {
  for (Node* n : block->nodes()) {
    out.push_back(n);
    for (jit::Block* b : n->blocks()) collect_nodes(b, out);
  }
}

std::vector<Node*> all_nodes(jit::Graph& g) {
  std::vector<Node*> out;
  collect_nodes(g.block(), out);
  return out;
}

/// The module path of a module-typed value: the chain of prim::GetAttr from `self`.
std::optional<std::string> module_path(Value* v, Value* self) {
  std::vector<std::string> parts;
  while (v != self) {
    Node* n = v->node();
    if (n->kind() != c10::prim::GetAttr) return std::nullopt;
    parts.push_back(n->s(c10::attr::name));
    v = n->input(0);
  }
  std::string path;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
    if (!path.empty()) path += '.';
    path += *it;
  }
  return path;
}

bool is_forward_name(const std::string& name) {
  if (name.rfind("forward", 0) != 0) return false;
  return std::all_of(name.begin() + 7, name.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool is_tensor(Value* v) { return v->type()->isSubtypeOf(*c10::TensorType::get()); }

/// Replaces a prim::CallMethod node by the body of the method it calls (unoptimised graph, so the
/// calls inside stay visible as calls).
void inline_call(Node* call) {
  auto cls = call->input(0)->type()->cast<c10::ClassType>();
  GRADCAM_ASSERT(cls != nullptr);
  auto& fn = jit::toGraphFunction(cls->getMethod(call->s(c10::attr::name)));
  jit::inlineCallTo(call, &fn, fn.graph().get());
}

/// Inserts gradcam::capture(v, slot) right after `after`, and routes every other use of v to it.
void insert_capture(jit::Graph& g, Node* after, Value* v, int64_t slot) {
  jit::WithInsertPoint guard(after->next());
  Value* out = g.insert(kCapture, {v, slot});
  v->replaceAllUsesWith(out);
  out->node()->replaceInput(0, v);
}

std::string type_name(Value* module_value) {
  auto cls = module_value->type()->cast<c10::ClassType>();
  if (!cls || !cls->name()) return "?";
  return cls->name()->name();
}

std::optional<double> constant_double(Value* v) {
  auto iv = jit::toIValue(v);
  if (!iv) return std::nullopt;
  if (iv->isDouble()) return iv->toDouble();
  if (iv->isInt()) return static_cast<double>(iv->toInt());
  return std::nullopt;
}

const std::set<std::string>& other_activations() {
  static const std::set<std::string> kinds = {
      "aten::gelu",      "aten::silu",       "aten::silu_",       "aten::hardswish",
      "aten::hardswish_", "aten::hardsigmoid", "aten::hardsigmoid_", "aten::leaky_relu",
      "aten::leaky_relu_", "aten::elu",        "aten::elu_",        "aten::selu",
      "aten::selu_",     "aten::celu",       "aten::celu_",       "aten::prelu",
      "aten::mish",      "aten::mish_",      "aten::softplus",    "aten::sigmoid",
      "aten::sigmoid_",  "aten::tanh",       "aten::tanh_",       "aten::threshold",
      "aten::threshold_", "aten::rrelu",      "aten::glu"};
  return kinds;
}

}  // namespace

std::string shape_str(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(sizes[i]);
  }
  return s + "]";
}

std::vector<std::string> module_paths(const torch::jit::Module& module) {
  std::vector<std::string> names;
  for (const auto& item : module.named_modules()) {
    if (!item.name.empty()) names.push_back(item.name);
  }
  return names;
}

std::vector<std::string> closest(const std::string& name, const std::vector<std::string>& choices) {
  auto distance = [](const std::string& a, const std::string& b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
      size_t diag = row[0];
      row[0] = i;
      for (size_t j = 1; j <= b.size(); ++j) {
        size_t up = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
        diag = up;
      }
    }
    return row[b.size()];
  };
  std::vector<std::pair<size_t, std::string>> scored;
  for (const auto& c : choices) scored.emplace_back(distance(name, c), c);
  std::stable_sort(scored.begin(), scored.end(),
                   [](const auto& x, const auto& y) { return x.first < y.first; });
  std::vector<std::string> best;
  for (size_t i = 0; i < scored.size() && i < 3; ++i) best.push_back(scored[i].second);
  return best;
}

Forward::Forward(const torch::jit::Module& module, const RewriteSpec& spec) : module_(module) {
  auto method = module.find_method("forward");
  GRADCAM_CHECK(method.has_value(), "the model has no forward method");
  auto& fn = jit::toGraphFunction(method->function());
  graph_ = fn.graph()->copy();
  GRADCAM_CHECK(graph_->inputs().size() == 2, "the model's forward takes ",
                graph_->inputs().size() - 1,
                " inputs; gradcam explains models whose forward takes one tensor");
  Value* self = graph_->inputs()[0];

  const std::vector<std::string> paths = module_paths(module);
  const std::set<std::string> path_set(paths.begin(), paths.end());
  std::vector<size_t> value_targets;  // indices of "%name" targets, resolved after inlining
  if (!spec.probe_all) {
    for (size_t i = 0; i < spec.layers.size(); ++i) {
      const std::string& layer = spec.layers[i];
      if (!layer.empty() && layer[0] == '%') {
        value_targets.push_back(i);
        continue;
      }
      if (path_set.count(layer)) continue;
      if (paths.empty()) {
        fail(concat("layer '", layer,
                    "' not found: the model has no submodules (was it frozen with "
                    "torch.jit.freeze?); use 'auto' or a graph value listed by `gradcam layers "
                    "--model MODEL` (e.g. '%input.5')"));
      }
      std::string hint;
      for (const auto& c : closest(layer, paths)) hint += (hint.empty() ? "'" : ", '") + c + "'";
      fail(concat("layer '", layer, "' not found; did you mean ", hint,
                  "? (run `gradcam layers --model MODEL` to list every layer)"));
    }
    slot_count_ = spec.layers.size();
  }

  // 1. Inline the calls on the path to each target, capturing after each call of a target. In
  //    probe_all mode every module call gets a slot and is inlined.
  std::map<std::string, size_t> probe_index;
  std::vector<bool> found(spec.layers.size(), false);
  std::unordered_set<Node*> marked;
  bool any_module_call = false;
  for (bool again = true; again;) {
    again = false;
    for (Node* n : all_nodes(*graph_)) {
      if (n->kind() != c10::prim::CallMethod) continue;
      auto path = module_path(n->input(0), self);
      if (!path) continue;
      bool inline_it = path->empty();  // other methods of the root (e.g. _forward_impl)
      // A layer's call is its forward (traced models: forward1, forward2...); other methods of it,
      // such as Conv2d._conv_forward called from its own forward, are not separate calls.
      const bool is_forward = is_forward_name(n->s(c10::attr::name));
      if (spec.probe_all && !path->empty() && !is_forward) {
        inline_it = true;
      } else if (spec.probe_all && !path->empty()) {
        any_module_call = true;
        if (!marked.count(n)) {
          auto it = probe_index.find(*path);
          if (it == probe_index.end()) {
            it = probe_index.emplace(*path, probe_slots_.size()).first;
            probe_slots_.push_back({*path, type_name(n->input(0)),
                                    n->outputs().size() == 1 && is_tensor(n->output())});
          }
          if (n->outputs().size() == 1 && is_tensor(n->output())) {
            insert_capture(*graph_, n, n->output(), static_cast<int64_t>(it->second));
          }
          marked.insert(n);
        }
        inline_it = true;
      } else if (!spec.probe_all) {
        for (size_t i = 0; i < spec.layers.size(); ++i) {
          const std::string& layer = spec.layers[i];
          if (layer == *path && is_forward && !marked.count(n)) {
            GRADCAM_CHECK(n->outputs().size() == 1 && is_tensor(n->output()), "layer '", layer,
                          "' returns ", n->outputs().size() == 1 ? n->output()->type()->str() : "several values",
                          ", not a tensor; choose one of its submodules (see `gradcam layers`)");
            insert_capture(*graph_, n, n->output(), static_cast<int64_t>(i));
            found[i] = true;
          }
          if (layer.rfind(*path + ".", 0) == 0) inline_it = true;
        }
        if (path_set.count(*path)) marked.insert(n);
      }
      if (inline_it) {
        marked.erase(n);
        inline_call(n);
        again = true;
        break;
      }
    }
  }
  if (!spec.probe_all) {
    for (size_t i = 0; i < spec.layers.size(); ++i) {
      const std::string& layer = spec.layers[i];
      if (layer.empty() || layer[0] == '%') continue;
      GRADCAM_CHECK(found[i], "layer '", layer,
                    "' exists in the model but its forward never calls it (unused, or called only "
                    "from another method); choose a layer from `gradcam layers`");
    }
  }

  // 2. Inline everything else.
  jit::Inline(*graph_);
  frozen_ = spec.probe_all ? !any_module_call : paths.empty();

  auto value_is_capturable = [](Node* n) {
    if (n->outputs().size() != 1 || !is_tensor(n->output())) return false;
    const auto kind = n->kind();
    return kind.is_aten() && kind != c10::aten::detach;
  };
  if (spec.probe_all && frozen_) {
    for (Node* n : graph_->block()->nodes()) {
      if (!value_is_capturable(n)) continue;
      probe_slots_.push_back({"%" + n->output()->debugName(), n->kind().toQualString(), true});
    }
    // second pass: insert (the loop above must not see the inserted nodes)
    size_t slot = 0;
    std::vector<Node*> targets;
    for (Node* n : graph_->block()->nodes())
      if (value_is_capturable(n)) targets.push_back(n);
    for (Node* n : targets) insert_capture(*graph_, n, n->output(), static_cast<int64_t>(slot++));
  }
  if (spec.probe_all) slot_count_ = probe_slots_.size();
  for (size_t i : value_targets) {
    const std::string name = spec.layers[i].substr(1);
    Node* producer = nullptr;
    for (Node* n : all_nodes(*graph_)) {
      if (n->outputs().size() == 1 && n->output()->debugName() == name) producer = n;
    }
    GRADCAM_CHECK(producer != nullptr, "graph value '", spec.layers[i],
                  "' not found; run `gradcam layers --model MODEL` to list the graph values");
    GRADCAM_CHECK(is_tensor(producer->output()), "graph value '", spec.layers[i],
                  "' is not a tensor");
    insert_capture(*graph_, producer, producer->output(), static_cast<int64_t>(i));
  }

  // 3. Eval semantics: self.training (and every submodule's) reads as false.
  for (Node* n : all_nodes(*graph_)) {
    if (n->kind() == c10::prim::GetAttr && n->s(c10::attr::name) == "training" &&
        n->output()->type()->kind() == c10::TypeKind::BoolType) {
      jit::WithInsertPoint guard(n);
      n->output()->replaceAllUsesWith(graph_->insertConstant(false));
    }
  }
  jit::ConstantPropagation(graph_);
  jit::EliminateDeadCode(graph_);

  // 4. Parameters, buffers and constant tensors enter the graph detached: autograd never records
  //    anything for them, so no parameter gradient is computed and nothing is kept for one.
  for (Node* n : all_nodes(*graph_)) {
    if ((n->kind() == c10::prim::GetAttr || n->kind() == c10::prim::Constant) &&
        n->outputs().size() == 1 && is_tensor(n->output())) {
      jit::WithInsertPoint guard(n->next());
      Value* d = graph_->insert(c10::aten::detach, {n->output()});
      n->output()->replaceAllUsesWith(d);
      d->node()->replaceInput(0, n->output());
    }
  }

  // 5. Guided gradients: ReLU and ReLU6 get the custom backward.
  if (spec.guided != GuidedMode::none) {
    std::set<std::string> untouched;
    for (Node* n : all_nodes(*graph_)) {
      const std::string kind = n->kind().toQualString();
      double lo = 0, hi = std::numeric_limits<double>::infinity();
      bool in_place = kind.back() == '_';
      if (kind == "aten::relu" || kind == "aten::relu_") {
      } else if (kind == "aten::relu6" || kind == "aten::relu6_") {
        hi = 6;
      } else if (kind == "aten::hardtanh" || kind == "aten::hardtanh_") {
        auto mn = constant_double(n->input(1));
        auto mx = constant_double(n->input(2));
        if (!mn || !mx || *mn != 0.0) {
          untouched.insert(kind + " (lower bound not 0)");
          continue;
        }
        hi = *mx;
      } else {
        if (other_activations().count(kind)) untouched.insert(kind);
        continue;
      }
      jit::WithInsertPoint guard(n);
      Value* x = n->input(0);
      Value* y = graph_->insert(kGuidedAct, {x, lo, hi});
      if (in_place) x->replaceAllUsesAfterNodeWith(n, y);
      n->output()->replaceAllUsesWith(y);
      n->destroy();
      ++replaced_;
    }
    untouched_.assign(untouched.begin(), untouched.end());
  }

  // 6. What the first convolution expects, for clear input errors.
  try {
    for (Node* n : graph_->block()->nodes()) {
      const std::string kind = n->kind().toQualString();
      size_t groups_at = 0;
      if (kind == "aten::conv2d" || kind == "aten::conv1d" || kind == "aten::conv3d") {
        groups_at = 6;
      } else if (kind == "aten::_convolution") {
        groups_at = 8;
      } else {
        continue;
      }
      Value* w = n->input(1);
      if (w->node()->kind() == c10::aten::detach) w = w->node()->input(0);
      c10::IValue weight;
      if (auto iv = jit::toIValue(w)) {
        weight = *iv;
      } else {
        std::vector<std::string> names;
        Value* v = w;
        while (v != self && v->node()->kind() == c10::prim::GetAttr) {
          names.push_back(v->node()->s(c10::attr::name));
          v = v->node()->input(0);
        }
        if (v != self) break;
        c10::IValue obj = module_._ivalue();
        for (auto it = names.rbegin(); it != names.rend(); ++it) obj = obj.toObject()->getAttr(*it);
        weight = obj;
      }
      if (!weight.isTensor()) break;
      int64_t groups = 1;
      if (n->inputs().size() > groups_at) {
        if (auto g = jit::toIValue(n->input(groups_at)); g && g->isInt()) groups = g->toInt();
      }
      const at::Tensor t = weight.toTensor();
      expected_channels_ = t.size(1) * groups;
      expected_dim_ = t.dim();
      break;
    }
  } catch (const std::exception&) {
    expected_channels_ = -1;
    expected_dim_ = -1;
  }

  code_ = std::make_unique<jit::Code>(graph_, "gradcam_forward");
}

Forward::~Forward() = default;

c10::IValue Forward::run(const at::Tensor& input, CaptureContext& ctx) const {
  GRADCAM_ASSERT(ctx.captures.size() == slot_count_);
  ContextScope scope(&ctx);
  jit::Stack stack;
  stack.reserve(2);
  stack.emplace_back(module_._ivalue());
  stack.emplace_back(input);
  jit::InterpreterState state(*code_);
  state.run(stack);
  GRADCAM_ASSERT(!stack.empty());
  return stack.back();
}

}  // namespace gradcam::detail
