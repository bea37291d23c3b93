// src/outputs.cpp (private): see outputs.hpp.
#include "outputs.hpp"

#include <string>

#include <gradcam/error.hpp>

namespace gradcam::detail {

at::Tensor logits_of(const c10::IValue& out) {
  if (out.isTensor()) return out.toTensor();
  if (out.isTuple()) {
    for (const auto& e : out.toTuple()->elements()) {
      if (e.isTensor()) return e.toTensor();
    }
  }
  if (out.isGenericDict()) {
    std::string keys;
    for (const auto& kv : out.toGenericDict()) {
      if (kv.key().isString()) {
        if (kv.key().toStringRef() == "out" && kv.value().isTensor()) return kv.value().toTensor();
        keys += (keys.empty() ? "'" : ", '") + kv.key().toStringRef() + "'";
      }
    }
    fail(concat("the model returns a dict without an 'out' tensor (keys: ", keys,
                "); use Target::score to choose what to explain"));
  }
  if (out.isTensorList() && !out.toTensorList().empty()) return out.toTensorList().get(0);
  fail(concat("the model returns ", out.tagKind(),
              ", not class scores; use Target::score to choose what to explain"));
}

}  // namespace gradcam::detail
