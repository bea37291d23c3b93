// src/graph_export.cpp (private): the rewritten forward as a method of standard ops, for
// `gradcam export` (graph.hpp, docs/architecture.md, docs/deploy.md). Part of the graph surgery:
// graph.cpp makes the rewritten graph; this file replaces its one capture by the ops the capture
// performs, and gives the result to a clone of the model as a method. The module written must
// load with plain torch.jit.load, so nothing of ours may remain in it.
#include <ATen/core/interned_strings.h>
#include <torch/csrc/jit/api/compilation_unit.h>
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include <gradcam/error.hpp>

#include "graph.hpp"
#include "graph_ir.hpp"

namespace gradcam::detail {

namespace jit = torch::jit;
using jit::Node;
using jit::Value;

namespace {

constexpr const char* kMethod = "_gradcam_forward";  // export.cpp's source calls it by this name

/// The layer's one capture, outside any loop or branch; throws naming why there is none.
Node* the_capture(jit::Graph& g, const std::string& layer) {
  Node* cut = nullptr;
  int captures = 0;
  for (Node* n : ir::all_nodes(g)) {
    if (n->kind() == ir::kCapture) {
      ++captures;
      cut = n;
    }
  }
  GRADCAM_CHECK(captures == 1, "export: layer '", layer, "' is called ", captures,
                " times in one forward pass; an exported explainer reads one call of its layer "
                "(name a module that is called once, e.g. one block of a repeated stage)");
  GRADCAM_CHECK(cut->owningBlock() == g.block(), "export: layer '", layer,
                "' is called inside a loop or a branch of the forward pass; an exported explainer "
                "reads a layer that runs once on every pass");
  return cut;
}

/// The capture's work in standard ops: A = x.detach().requires_grad_(), and the rest of the
/// forward reads A.clone() (so that in-place ops after the layer never change A). Returns A.
Value* replace_capture(jit::Graph& g, Node* cut) {
  jit::WithInsertPoint guard(cut);
  Value* detached = g.insert(c10::aten::detach, {cut->input(0)});
  Value* leaf = g.insert(c10::Symbol::fromQualString("aten::requires_grad_"), {detached, true});
  Value* copy = g.insert(c10::aten::clone, {leaf});
  cut->output()->replaceAllUsesWith(copy);
  cut->destroy();
  return leaf;
}

/// The class scores in the model's output `out`, where logits_of (outputs.cpp) reads them: the
/// tensor itself, a tuple's first tensor, a dict's "out", a list's first. Throws for any other.
Value* scores_of(jit::Graph& g, Value* out) {
  if (ir::is_tensor(out)) return out;
  jit::WithInsertPoint guard(g.block()->return_node());
  const c10::TypePtr tensor = c10::TensorType::get();
  if (auto tuple = out->type()->cast<c10::TupleType>()) {
    const auto& elements = tuple->elements();
    for (size_t i = 0; i < elements.size(); ++i) {
      if (elements[i]->isSubtypeOf(*tensor)) {
        Node* index = g.createTupleIndex(out, g.insertConstant(static_cast<int64_t>(i)), elements[i]);
        return g.insertNode(index)->output();
      }
    }
  }
  if (auto dict = out->type()->cast<c10::DictType>()) {
    if (dict->getKeyType()->kind() == c10::TypeKind::StringType && dict->getValueType()->isSubtypeOf(*tensor)) {
      return g.insert(c10::aten::__getitem__, {out, std::string("out")});
    }
  }
  if (auto list = out->type()->cast<c10::ListType>()) {
    if (list->getElementType()->isSubtypeOf(*tensor)) return g.insert(c10::aten::__getitem__, {out, int64_t{0}});
  }
  fail(concat("export: the model's forward returns ", out->type()->repr_str(),
              "; an exported explainer needs class scores: a tensor [N, classes], a tuple's first tensor, a "
              "dict's 'out' or a list's first tensor"));
}

}  // namespace

torch::jit::Module exportable_module(const torch::jit::Module& module, const std::string& layer,
                                     const std::string& source) {
  jit::Module model = module.clone();  // new types for the whole hierarchy: the user's are not touched
  RewriteSpec spec;
  spec.layers = {layer};
  const Forward forward(model, spec);
  GRADCAM_CHECK(!forward.facts_.list_input && forward.facts_.trailing.empty(),
                "export: the model's forward takes ", forward.facts_.list_input ? "a list of images" : "more than one input",
                "; an exported explainer takes one input tensor [N, C, H, W]");
  std::shared_ptr<jit::Graph> g = forward.graph_->copy();
  Value* a = replace_capture(*g, the_capture(*g, layer));
  Value* scores = scores_of(*g, g->outputs().at(0));
  g->eraseOutput(0);
  {
    jit::WithInsertPoint guard(g->block()->return_node());
    g->registerOutput(g->insertNode(g->createTuple({scores, a}))->output());
  }
  jit::EliminateDeadCode(g);
  for (Node* n : ir::all_nodes(*g)) {
    GRADCAM_ASSERT(n->kind() != ir::kCapture && n->kind() != ir::kGuidedAct);
  }

  const auto cu = model._ivalue()->compilation_unit();
  jit::Function* fn = cu->create_function(c10::QualifiedName(*model.type()->name(), kMethod), g);
  model.type()->addMethod(fn);
  jit::Module wrapper(c10::QualifiedName("__torch__.gradcam.Explainer"), cu, /*shouldMangle=*/true);
  wrapper.register_module("model", model);
  wrapper.define(source);
  wrapper.eval();
  return wrapper;
}

}  // namespace gradcam::detail
