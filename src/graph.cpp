// src/graph.cpp (private): TorchScript graph surgery, in the seven steps graph.hpp lists (one
// function each, numbered the same); the operators it inserts are in graph_ops.cpp.
// docs/architecture.md has the why.
#include "graph.hpp"
#include "graph_ir.hpp"

#include <ATen/ATen.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/runtime/interpreter.h>

#include <algorithm>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <unordered_set>
#include <utility>

#include <gradcam/error.hpp>

#include "util.hpp"

namespace gradcam::detail {

namespace jit = torch::jit;
using jit::Node;
using jit::Value;

namespace {

using ir::all_nodes;
using ir::is_forward_name;
using ir::is_tensor;
using ir::module_path;
using ir::kCapture;
using ir::kGuidedAct;

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

/// Inserts gradcam::capture(v, slot) right before `call`, for this call's arguments only (a
/// self-attention's query, key and value are one value: all three read the capture).
void insert_input_capture(jit::Graph& g, Node* call, Value* v, int64_t slot) {
  jit::WithInsertPoint guard(call);
  Value* out = g.insert(kCapture, {v, slot});
  for (size_t i = 1; i < call->inputs().size(); ++i) {
    if (call->input(i) == v) call->replaceInput(i, out);
  }
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

/// What the seven steps share: the private copy of the graph, and what they find out about it.
struct Rewrite {
  Rewrite(const torch::jit::Module& m, const RewriteSpec& s) : module(m), spec(s) {
    auto method = module.find_method("forward");
    GRADCAM_CHECK(method.has_value(), "the model has no forward method");
    graph = jit::toGraphFunction(method->function()).graph()->copy();
    read_arguments(method->function().getSchema());
    self = graph->inputs()[0];
    paths = module_paths(module);
    path_set.insert(paths.begin(), paths.end());
  }
  /// The forward takes one tensor (a classifier), or a list of image tensors (torchvision's
  /// detectors: forward(images, targets=None)); every further argument needs a default, which
  /// run() passes.
  void read_arguments(const c10::FunctionSchema& schema) {
    const auto& args = schema.arguments();
    GRADCAM_CHECK(args.size() >= 2, "the model's forward takes no input; gradcam explains models whose "
                  "forward takes one tensor or a list of image tensors");
    const c10::TypePtr& type = args[1].type();
    const auto list = type->cast<c10::ListType>();
    facts.list_input = list && list->getElementType()->kind() == c10::TypeKind::TensorType;
    GRADCAM_CHECK(facts.list_input || type->kind() == c10::TypeKind::TensorType, "the model's forward takes '",
                  args[1].name(), "' of type ", type->repr_str(),
                  "; gradcam explains models whose forward takes one tensor or a list of image tensors");
    for (size_t i = 2; i < args.size(); ++i) {
      GRADCAM_CHECK(args[i].default_value().has_value(), "the model's forward takes ", args.size() - 1,
                    " inputs and '", args[i].name(), "' has no default; gradcam explains models whose "
                    "forward takes one tensor (or a list of images) and defaults for the rest");
      facts.trailing.push_back(*args[i].default_value());
    }
  }
  const torch::jit::Module& module;
  const RewriteSpec& spec;
  std::shared_ptr<jit::Graph> graph;
  Value* self = nullptr;
  std::vector<std::string> paths;     ///< every module path of the model
  std::set<std::string> path_set;
  std::vector<size_t> value_targets;  ///< indices of "%name" targets, captured in step 3
  bool any_module_call = false;       ///< probe mode: the forward calls a submodule
  RewriteFacts facts;                 ///< the result, kept by Forward
};

// 1. Resolve targets: every layer named is a module path or a "%value"; an unknown one fails with
//    the closest names.
void resolve_targets(Rewrite& r) {
  if (r.spec.probe_all) return;
  for (size_t i = 0; i < r.spec.layers.size(); ++i) {
    const std::string& layer = r.spec.layers[i];
    if (!layer.empty() && layer[0] == '%') {
      r.value_targets.push_back(i);
      continue;
    }
    if (r.path_set.count(layer)) continue;
    if (r.paths.empty()) {
      fail(concat("layer '", layer,
                  "' not found: the model has no submodules (was it frozen with "
                  "torch.jit.freeze?); use 'auto' or a graph value listed by `gradcam layers "
                  "--model MODEL` (e.g. '%input.5')"));
    }
    std::string hint;
    for (const auto& c : closest(layer, r.paths)) hint += (hint.empty() ? "'" : ", '") + c + "'";
    fail(concat("layer '", layer, "' not found; did you mean ", hint,
                "? (run `gradcam layers --model MODEL` to list every layer)"));
  }
  for (const auto& module : r.spec.inputs) GRADCAM_CHECK(r.path_set.count(module), "module '", module, "' not found");
  r.facts.slot_count = r.spec.layers.size() + r.spec.inputs.size();
  if (!r.spec.inputs.empty()) r.facts.observe_from = r.spec.layers.size();
}

/// Step 2's bookkeeping across its passes over the graph.
struct CallVisit {
  std::map<std::string, size_t> probe_index;  ///< probe mode: the slot of each module path
  std::vector<bool> found;                    ///< target i was captured
  std::vector<bool> found_inputs;             ///< RewriteSpec::inputs[j] was observed
  std::unordered_set<Node*> marked;           ///< calls of target layers already seen
};

// A layer's call is its forward (traced models: forward1, forward2...); other methods of it, such
// as Conv2d._conv_forward called from its own forward, are not separate calls.
bool is_layer_call(Node* n) { return is_forward_name(n->s(c10::attr::name)); }

bool returns_tensor(Node* n) { return n->outputs().size() == 1 && is_tensor(n->output()); }

/// Probe mode: the call of a module's forward gets its module's slot and a capture after it.
/// Every call is inlined afterwards.
void probe_call(Rewrite& r, CallVisit& v, Node* n, const std::string& path) {
  if (!is_layer_call(n)) return;
  r.any_module_call = true;
  auto it = v.probe_index.find(path);
  if (it == v.probe_index.end()) {
    it = v.probe_index.emplace(path, r.facts.probe_slots.size()).first;
    r.facts.probe_slots.push_back({path, type_name(n->input(0)), returns_tensor(n)});
  }
  if (returns_tensor(n)) insert_capture(*r.graph, n, n->output(), static_cast<int64_t>(it->second));
}

/// Target mode: a capture after each call of a target layer. Returns whether the call must be
/// inlined: it is on the path down to a target (a module above it).
bool target_call(Rewrite& r, CallVisit& v, Node* n, const std::string& path) {
  bool on_the_path = false;
  for (size_t i = 0; i < r.spec.layers.size(); ++i) {
    const std::string& layer = r.spec.layers[i];
    if (layer == path && is_layer_call(n) && !v.marked.count(n)) {
      GRADCAM_CHECK(returns_tensor(n), "layer '", layer, "' returns ",
                    n->outputs().size() == 1 ? n->output()->type()->str() : "several values",
                    ", not a tensor; choose one of its submodules (see `gradcam layers`)");
      insert_capture(*r.graph, n, n->output(), static_cast<int64_t>(i));
      v.found[i] = true;
    }
    if (layer.rfind(path + ".", 0) == 0) on_the_path = true;
  }
  for (size_t j = 0; j < r.spec.inputs.size(); ++j) {
    const std::string& module = r.spec.inputs[j];
    if (module == path && is_layer_call(n) && !v.marked.count(n) && n->inputs().size() > 1 && is_tensor(n->input(1))) {
      insert_input_capture(*r.graph, n, n->input(1), static_cast<int64_t>(r.spec.layers.size() + j));
      v.found_inputs[j] = true;
    }
    if (module.rfind(path + ".", 0) == 0) on_the_path = true;
  }
  if (r.path_set.count(path)) v.marked.insert(n);
  return on_the_path;
}

// 2. Inline the calls on the path to each target, capturing after each call of a target; in probe
//    mode every module call gets a slot and is inlined. Inlining creates new calls, so the graph
//    is walked again until a pass inlines nothing.
void inline_to_targets(Rewrite& r) {
  CallVisit v;
  v.found.assign(r.spec.layers.size(), false);
  v.found_inputs.assign(r.spec.inputs.size(), false);
  for (bool again = true; again;) {
    again = false;
    for (Node* n : all_nodes(*r.graph)) {
      if (n->kind() != c10::prim::CallMethod) continue;
      auto path = module_path(n->input(0), r.self);
      if (!path) continue;
      bool inline_it = path->empty();  // other methods of the root (e.g. _forward_impl)
      if (!path->empty() && r.spec.probe_all) {
        probe_call(r, v, n, *path);
        inline_it = true;
      } else if (!path->empty()) {
        inline_it = target_call(r, v, n, *path);
      }
      if (inline_it) {
        v.marked.erase(n);
        inline_call(n);
        again = true;
        break;
      }
    }
  }
  if (r.spec.probe_all) return;
  for (size_t i = 0; i < r.spec.layers.size(); ++i) {
    const std::string& layer = r.spec.layers[i];
    if (layer.empty() || layer[0] == '%') continue;
    GRADCAM_CHECK(v.found[i], "layer '", layer,
                  "' exists in the model but its forward never calls it (unused, or called only "
                  "from another method); choose a layer from `gradcam layers`");
  }
  for (size_t j = 0; j < r.spec.inputs.size(); ++j) {
    GRADCAM_CHECK(v.found_inputs[j], "module '", r.spec.inputs[j], "' is never called with a tensor by the forward pass");
  }
}

// 3. Capture or probe graph values: every remaining call is inlined; then a "%name" target gets
//    its capture after the node that produces it, and in probe mode a frozen model (no module
//    calls) gets a slot for every aten value.
void capture_values(Rewrite& r) {
  jit::Inline(*r.graph);
  r.facts.frozen = r.spec.probe_all ? !r.any_module_call : r.paths.empty();
  auto capturable = [](Node* n) {
    return returns_tensor(n) && n->kind().is_aten() && n->kind() != c10::aten::detach;
  };
  if (r.spec.probe_all && r.facts.frozen) {
    std::vector<Node*> targets;  // collected first: the walk must not see the inserted captures
    for (Node* n : r.graph->block()->nodes()) {
      if (!capturable(n)) continue;
      r.facts.probe_slots.push_back({"%" + n->output()->debugName(), n->kind().toQualString(), true});
      targets.push_back(n);
    }
    int64_t slot = 0;
    for (Node* n : targets) insert_capture(*r.graph, n, n->output(), slot++);
  }
  if (r.spec.probe_all) r.facts.slot_count = r.facts.probe_slots.size();
  for (size_t i : r.value_targets) {
    const std::string name = r.spec.layers[i].substr(1);
    Node* producer = nullptr;
    for (Node* n : all_nodes(*r.graph)) {
      if (n->outputs().size() == 1 && n->output()->debugName() == name) producer = n;
    }
    GRADCAM_CHECK(producer != nullptr, "graph value '", r.spec.layers[i],
                  "' not found; run `gradcam layers --model MODEL` to list the graph values");
    GRADCAM_CHECK(is_tensor(producer->output()), "graph value '", r.spec.layers[i],
                  "' is not a tensor");
    insert_capture(*r.graph, producer, producer->output(), static_cast<int64_t>(i));
  }
}

// 4. Force eval: self.training (and every submodule's) reads as false.
void force_eval(Rewrite& r) {
  for (Node* n : all_nodes(*r.graph)) {
    if (n->kind() == c10::prim::GetAttr && n->s(c10::attr::name) == "training" &&
        n->output()->type()->kind() == c10::TypeKind::BoolType) {
      jit::WithInsertPoint guard(n);
      n->output()->replaceAllUsesWith(r.graph->insertConstant(false));
    }
  }
  jit::ConstantPropagation(r.graph);
  jit::EliminateDeadCode(r.graph);
}

// 5. Detach parameters: parameters, buffers and constant tensors enter the graph detached, so
//    autograd never records anything for them: no parameter gradient, and nothing kept for one.
void detach_parameters(Rewrite& r) {
  for (Node* n : all_nodes(*r.graph)) {
    if ((n->kind() == c10::prim::GetAttr || n->kind() == c10::prim::Constant) && returns_tensor(n)) {
      jit::WithInsertPoint guard(n->next());
      Value* d = r.graph->insert(c10::aten::detach, {n->output()});
      n->output()->replaceAllUsesWith(d);
      d->node()->replaceInput(0, n->output());
    }
  }
}

/// The bounds of a ReLU-like node that guided_act can replace: relu [0, inf), relu6 and
/// hardtanh(0, hi) [0, hi]. Anything else: nullopt, and activations guided backprop would need
/// but cannot replace are added to `untouched`.
std::optional<std::pair<double, double>> relu_bounds(Node* n, std::set<std::string>& untouched) {
  const std::string kind = n->kind().toQualString();
  const double inf = std::numeric_limits<double>::infinity();
  if (kind == "aten::relu" || kind == "aten::relu_") return std::make_pair(0.0, inf);
  if (kind == "aten::relu6" || kind == "aten::relu6_") return std::make_pair(0.0, 6.0);
  if (kind == "aten::hardtanh" || kind == "aten::hardtanh_") {
    auto mn = constant_double(n->input(1));
    auto mx = constant_double(n->input(2));
    if (mn && mx && *mn == 0.0) return std::make_pair(0.0, *mx);
    untouched.insert(kind + " (lower bound not 0)");
    return std::nullopt;
  }
  if (other_activations().count(kind)) untouched.insert(kind);
  return std::nullopt;
}

// 6. Replace activations: for guided gradients, ReLU and ReLU6 get the custom backward.
void replace_activations(Rewrite& r) {
  if (r.spec.guided == GuidedMode::none) return;
  std::set<std::string> untouched;
  for (Node* n : all_nodes(*r.graph)) {
    const auto bounds = relu_bounds(n, untouched);
    if (!bounds) continue;
    const bool in_place = std::string(n->kind().toQualString()).back() == '_';
    jit::WithInsertPoint guard(n);
    Value* x = n->input(0);
    Value* y = r.graph->insert(kGuidedAct, {x, bounds->first, bounds->second});
    if (in_place) x->replaceAllUsesAfterNodeWith(n, y);
    n->output()->replaceAllUsesWith(y);
    n->destroy();
    ++r.facts.replaced;
  }
  r.facts.untouched.assign(untouched.begin(), untouched.end());
}

/// The tensor a convolution's weight input holds: a constant, or a chain of prim::GetAttr from
/// self read off the module. None when it is computed.
c10::IValue conv_weight(const Rewrite& r, Value* w) {
  if (w->node()->kind() == c10::aten::detach) w = w->node()->input(0);
  if (auto iv = jit::toIValue(w)) return *iv;
  std::vector<std::string> names;
  while (w != r.self && w->node()->kind() == c10::prim::GetAttr) {
    names.push_back(w->node()->s(c10::attr::name));
    w = w->node()->input(0);
  }
  if (w != r.self) return {};
  c10::IValue obj = r.module._ivalue();
  for (auto it = names.rbegin(); it != names.rend(); ++it) obj = obj.toObject()->getAttr(*it);
  return obj;
}

// 7. Infer input: the channels and rank the first convolution expects, for clear input errors.
//    Best effort: anything unexpected leaves them unknown (-1).
void infer_input(Rewrite& r) {
  try {
    for (Node* n : r.graph->block()->nodes()) {
      const std::string kind = n->kind().toQualString();
      size_t groups_at = 0;
      if (kind == "aten::conv2d" || kind == "aten::conv1d" || kind == "aten::conv3d") {
        groups_at = 6;
      } else if (kind == "aten::_convolution") {
        groups_at = 8;
      } else {
        continue;
      }
      const c10::IValue weight = conv_weight(r, n->input(1));
      if (!weight.isTensor()) return;
      int64_t groups = 1;
      if (n->inputs().size() > groups_at) {
        if (auto g = jit::toIValue(n->input(groups_at)); g && g->isInt()) groups = g->toInt();
      }
      const at::Tensor t = weight.toTensor();
      r.facts.expected_channels = t.size(1) * groups;
      r.facts.expected_dim = t.dim();
      return;
    }
  } catch (const std::exception&) {
    r.facts.expected_channels = -1;
    r.facts.expected_dim = -1;
  }
}

}  // namespace

Forward::Forward(const torch::jit::Module& module, const RewriteSpec& spec) : module_(module) {
  Rewrite r(module, spec);
  resolve_targets(r);      // 1
  inline_to_targets(r);    // 2
  capture_values(r);       // 3
  force_eval(r);           // 4
  detach_parameters(r);    // 5
  replace_activations(r);  // 6
  infer_input(r);          // 7
  graph_ = r.graph;
  facts_ = std::move(r.facts);
  code_ = std::make_unique<jit::Code>(graph_, "gradcam_forward");
}

Forward::~Forward() = default;

c10::IValue Forward::run(const at::Tensor& input, CaptureContext& ctx) const {
  GRADCAM_ASSERT(ctx.captures.size() == facts_.slot_count);
  ContextScope scope(&ctx);
  jit::Stack stack;
  stack.reserve(2 + facts_.trailing.size());
  stack.emplace_back(module_._ivalue());
  if (facts_.list_input) {
    c10::List<at::Tensor> images;  // one [C, H, W] per sample, views of the batch
    for (const at::Tensor& image : input.unbind(0)) images.push_back(image);
    stack.emplace_back(std::move(images));
  } else {
    stack.emplace_back(input);
  }
  for (const c10::IValue& v : facts_.trailing) stack.emplace_back(v);
  jit::InterpreterState state(*code_);
  state.run(stack);
  GRADCAM_ASSERT(!stack.empty());
  return stack.back();
}

}  // namespace gradcam::detail
