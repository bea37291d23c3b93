// src/graph_split.cpp (private): the rewritten forward cut in two at a layer's capture, so that
// Ablation-CAM reruns only what comes after the layer (graph.hpp, docs/architecture.md). Part of
// the graph surgery: graph.cpp makes the rewritten graph, this file cuts a copy of it.
#include <ATen/ATen.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/runtime/interpreter.h>

#include <algorithm>
#include <map>
#include <set>

#include <gradcam/error.hpp>

#include "graph.hpp"
#include "graph_ir.hpp"

namespace gradcam::detail {

namespace jit = torch::jit;
using jit::Node;
using jit::Value;

namespace {

bool is_capture_of(Node* n, size_t slot) {
  if (n->kind() != ir::kCapture) return false;
  const auto s = jit::constant_as<int64_t>(n->input(1));
  return s.has_value() && *s == static_cast<int64_t>(slot);
}

/// Every value read by `n` or by a node inside its blocks (a loop's or an if's free values).
void values_read(Node* n, std::vector<Value*>& out) {
  for (Value* v : n->inputs()) out.push_back(v);
  for (jit::Block* b : n->blocks()) {
    for (Node* inner : b->nodes()) values_read(inner, out);
    for (Value* v : b->outputs()) out.push_back(v);
  }
}

/// The top-level values of `g` that depend on the model input (graph input 1): what a sample's
/// rows must be selected from when a batch of perturbed samples reruns the second part.
std::set<Value*> input_dependent(jit::Graph& g, Node* cut) {
  std::set<Value*> dep{g.inputs().at(1)};
  for (Node* n : g.block()->nodes()) {
    if (n == cut) break;
    std::vector<Value*> read;
    values_read(n, read);
    const bool depends = std::any_of(read.begin(), read.end(), [&](Value* v) { return dep.count(v) > 0; });
    if (depends) dep.insert(n->outputs().begin(), n->outputs().end());
  }
  return dep;
}

}  // namespace

std::unique_ptr<SplitForward> SplitForward::make(const Forward& forward, size_t slot) {
  if (forward.facts_.list_input) return nullptr;
  std::shared_ptr<jit::Graph> g = forward.graph_->copy();
  // The cut: the layer's one capture, outside any loop or branch (so it runs once per forward).
  Node* cut = nullptr;
  int captures = 0;
  for (Node* n : ir::all_nodes(*g)) {
    if (is_capture_of(n, slot)) {
      ++captures;
      cut = n;
    }
  }
  if (captures != 1 || cut->owningBlock() != g->block()) return nullptr;

  // The values the second part reads from the first (graph inputs included), in a fixed order.
  std::vector<Node*> after;
  for (Node* n = cut->next(); n != g->block()->return_node(); n = n->next()) after.push_back(n);
  std::vector<Value*> read;
  for (Node* n : after) values_read(n, read);
  read.insert(read.end(), g->outputs().begin(), g->outputs().end());
  const std::set<Value*> dependent = input_dependent(*g, cut);
  auto split = std::unique_ptr<SplitForward>(new SplitForward(forward.module_));
  std::map<Value*, Value*> to_second;
  std::vector<Value*> crossing;
  for (Value* v : read) {
    const bool before = v->node() == g->param_node() || (v->node()->owningBlock() == g->block() &&
                                                           v->node()->isBefore(cut));
    if (!before || to_second.count(v)) continue;  // made after the cut, or inside one of its nodes
    // a sample-dependent value that is not a batch-first tensor (x.size(0) as an int, a list of
    // tensors) cannot be cut down to the perturbed samples' rows: no split
    if (dependent.count(v) && !ir::is_tensor(v)) return nullptr;
    split->batched_.push_back(dependent.count(v) > 0);
    crossing.push_back(v);
    to_second[v] = nullptr;  // filled below
  }

  // The second part: an input per crossing value and one for the layer's output, then the nodes
  // after the cut, cloned.
  auto second = std::make_shared<jit::Graph>();
  // copyMetadata (type and name) rather than the inline setType, whose cast to c10::DynamicType
  // UBSan's vptr check cannot link against (LibTorch exports no typeinfo for it)
  for (Value* v : crossing) to_second[v] = second->addInput()->copyMetadata(v);
  to_second[cut->output()] = second->addInput()->copyMetadata(cut->output());
  auto map = [&](Value* v) { return to_second.at(v); };
  for (Node* n : after) {
    Node* c = second->insertNode(second->createClone(n, map));
    for (size_t i = 0; i < n->outputs().size(); ++i) to_second[n->output(i)] = c->output(i);
  }
  for (Value* v : g->outputs()) second->registerOutput(map(v));

  // The first part: the same graph returning the crossing values and the layer's output, with
  // the cut and everything after it removed.
  Value* layer_output = cut->input(0);
  while (!g->outputs().empty()) g->eraseOutput(g->outputs().size() - 1);
  for (Value* v : crossing) g->registerOutput(v);
  g->registerOutput(layer_output);
  for (auto it = after.rbegin(); it != after.rend(); ++it) (*it)->destroy();
  cut->destroy();
  jit::EliminateDeadCode(g);

  split->trailing_ = forward.facts_.trailing;
  split->first_ = std::make_unique<jit::Code>(g, "gradcam_forward_first");
  split->second_ = std::make_unique<jit::Code>(second, "gradcam_forward_second");
  return split;
}

SplitForward::SplitForward(const torch::jit::Module& module) : module_(module) {}
SplitForward::~SplitForward() = default;

SplitForward::First SplitForward::first(const at::Tensor& input, CaptureContext& ctx) const {
  ContextScope scope(&ctx);
  jit::Stack stack{module_._ivalue(), input};
  for (const c10::IValue& v : trailing_) stack.push_back(v);
  jit::InterpreterState(*first_).run(stack);
  GRADCAM_ASSERT(stack.size() == batched_.size() + 1);
  First f;
  f.layer_output = stack.back().toTensor();
  stack.pop_back();
  f.crossing = std::move(stack);
  f.batch = input.size(0);
  for (size_t i = 0; i < batched_.size(); ++i) {
    // a batched value whose rows are not the samples' (a tensor of the batch reshaped) cannot
    // be selected by sample
    if (batched_[i] && (!f.crossing[i].isTensor() || f.crossing[i].toTensor().dim() == 0 ||
                        f.crossing[i].toTensor().size(0) != f.batch)) {
      f.batch = -1;
    }
  }
  if (f.layer_output.dim() == 0 || f.layer_output.size(0) != input.size(0)) f.batch = -1;
  return f;
}

c10::IValue SplitForward::second(const First& f, const at::Tensor& rows, const at::Tensor& layer_output,
                                 CaptureContext& ctx) const {
  GRADCAM_ASSERT(f.batch >= 0);
  ContextScope scope(&ctx);
  jit::Stack stack;
  stack.reserve(f.crossing.size() + 1);
  for (size_t i = 0; i < f.crossing.size(); ++i) {
    stack.push_back(batched_[i] ? c10::IValue(f.crossing[i].toTensor().index_select(0, rows)) : f.crossing[i]);
  }
  stack.emplace_back(layer_output);
  jit::InterpreterState(*second_).run(stack);
  GRADCAM_ASSERT(!stack.empty());
  return stack.back();
}

}  // namespace gradcam::detail
