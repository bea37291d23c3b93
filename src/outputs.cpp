// src/outputs.cpp (private): see outputs.hpp.
#include "outputs.hpp"

#include <string>

#include <gradcam/error.hpp>

#include "util.hpp"

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
  GRADCAM_CHECK(!torchvision_detections(out), "the model returns a detector's detections, not class scores; explain "
                "its boxes with gradcam::detection::boxes() (gradcam explain --task detection)");
  fail(concat("the model returns ", out.tagKind(),
              ", not class scores; use Target::score to choose what to explain"));
}

namespace {

/// The tensor under `key` in image `image`'s dict; undefined when there is none, and then `why`
/// names the first key missing.
at::Tensor entry(const c10::impl::GenericDict& d, const char* key, size_t image, std::string& why) {
  for (const auto& kv : d) {
    if (kv.key().isString() && kv.key().toStringRef() == key && kv.value().isTensor()) return kv.value().toTensor();
  }
  if (why.empty()) why = concat("detections of image ", image, " have no tensor '", key,
               "'; a torchvision detector gives 'boxes', 'scores' and 'labels'");
  return {};
}

}  // namespace

std::optional<std::vector<DetectorImage>> torchvision_detections(const c10::IValue& out, std::string* why) {
  std::string reason;
  std::vector<DetectorImage> images;
  const c10::IValue list = out.isTuple() && out.toTuple()->elements().size() == 2 ? out.toTuple()->elements()[1] : out;
  if (!list.isList()) {
    reason = concat("the model returns ", out.tagKind(), ", not torchvision's detections (a list of dicts with "
                    "'boxes', 'scores' and 'labels', or a (losses, detections) tuple)");
  }
  if (reason.empty()) {
    for (const c10::IValue& item : list.toListRef()) {  // not the c10::List: its proxies "dangle" to GCC 14
      if (!item.isGenericDict()) {
        reason = concat("the model's detections are a list of ", item.tagKind(),
                        ", not of dicts with 'boxes', 'scores' and 'labels'");
        break;
      }
      const auto d = item.toGenericDict();
      const size_t n = images.size();
      DetectorImage im{entry(d, "boxes", n, reason), entry(d, "scores", n, reason), entry(d, "labels", n, reason)};
      if (!reason.empty()) break;
      if (im.boxes.dim() != 2 || im.boxes.size(1) != 4 || im.scores.dim() != 1 ||
          im.labels.sizes() != im.scores.sizes() || im.boxes.size(0) != im.scores.size(0)) {
        reason = concat("detections of image ", n, " have boxes ", shape_str(im.boxes.sizes()), ", scores ",
                        shape_str(im.scores.sizes()), " and labels ", shape_str(im.labels.sizes()),
                        "; expected [D, 4], [D] and [D]");
        break;
      }
      images.push_back(im);
    }
  }
  if (reason.empty()) return images;
  if (why != nullptr) *why = reason;
  return std::nullopt;
}

c10::IValue map_tensors(const c10::IValue& v, const std::function<at::Tensor(const at::Tensor&)>& fn) {
  if (v.isTensor()) return fn(v.toTensor());
  if (v.isTuple()) {
    std::vector<c10::IValue> items;
    for (const auto& e : v.toTuple()->elements()) items.push_back(map_tensors(e, fn));
    return c10::ivalue::Tuple::create(std::move(items));
  }
  if (v.isTensorList()) {
    c10::List<at::Tensor> out;
    // a vector, not the c10::List: its proxy references are "dangling" to GCC 14
    for (const at::Tensor& t : v.toTensorVector()) out.push_back(fn(t));
    return out;
  }
  if (v.isGenericDict()) {
    auto in = v.toGenericDict();
    c10::impl::GenericDict out(in.keyType(), in.valueType());
    for (const auto& kv : in) out.insert(kv.key(), map_tensors(kv.value(), fn));
    return out;
  }
  if (v.isList()) {
    auto in = v.toList();
    c10::impl::GenericList out(in.elementType());
    for (const auto& e : in) out.push_back(map_tensors(e, fn));
    return out;
  }
  return v;
}

}  // namespace gradcam::detail
