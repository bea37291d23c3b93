// src/graph_ir.hpp (private): what the graph surgery files (graph.cpp, graph_split.cpp) share
// about LibTorch's JIT IR: the names of our operators, walks over a graph's nodes, and how a
// module-typed value and a forward method are named.
#pragma once

#include <torch/csrc/jit/ir/ir.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

namespace gradcam::detail::ir {

namespace jit = torch::jit;

inline const c10::Symbol kCapture = c10::Symbol::fromQualString("gradcam::capture");
inline const c10::Symbol kGuidedAct = c10::Symbol::fromQualString("gradcam::guided_act");

/// Every node of `block` and of the blocks inside its nodes (loops, branches), in order.
inline void collect_nodes(jit::Block* block, std::vector<jit::Node*>& out) {
  for (jit::Node* n : block->nodes()) {
    out.push_back(n);
    for (jit::Block* b : n->blocks()) collect_nodes(b, out);
  }
}

inline std::vector<jit::Node*> all_nodes(jit::Graph& g) {
  std::vector<jit::Node*> out;
  collect_nodes(g.block(), out);
  return out;
}

inline bool is_tensor(jit::Value* v) { return v->type()->isSubtypeOf(*c10::TensorType::get()); }

/// The module path of a module-typed value: the chain of prim::GetAttr from `self`.
inline std::optional<std::string> module_path(jit::Value* v, jit::Value* self) {
  std::vector<std::string> parts;
  while (v != self) {
    jit::Node* n = v->node();
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

/// "forward" and "forward1", "forward2"...: the names TorchScript gives a forward and its overloads.
inline bool is_forward_name(const std::string& name) {
  if (name.rfind("forward", 0) != 0) return false;
  return std::all_of(name.begin() + 7, name.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace gradcam::detail::ir
