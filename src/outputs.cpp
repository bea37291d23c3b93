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
  GRADCAM_CHECK(detection_scores(out).empty(), "the model returns a detector's detections, not class scores; explain "
                "its boxes with gradcam::detection::boxes() (gradcam explain --task detection)");
  fail(concat("the model returns ", out.tagKind(),
              ", not class scores; use Target::score to choose what to explain"));
}

std::vector<at::Tensor> detection_scores(const c10::IValue& out) {
  const c10::IValue list = out.isTuple() && out.toTuple()->elements().size() == 2 ? out.toTuple()->elements()[1] : out;
  if (!list.isList()) return {};
  std::vector<at::Tensor> scores;
  for (const c10::IValue& item : list.toListRef()) {  // not the c10::List: its proxies "dangle" to GCC 14
    if (!item.isGenericDict()) return {};
    bool found = false;
    for (const auto& kv : item.toGenericDict()) {
      if (kv.key().isString() && kv.key().toStringRef() == "scores" && kv.value().isTensor()) {
        scores.push_back(kv.value().toTensor());
        found = true;
      }
    }
    if (!found) return {};
  }
  return scores;
}

}  // namespace gradcam::detail
