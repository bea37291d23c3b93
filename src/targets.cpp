// src/targets.cpp: segmentation, similarity, any-scalar and Finer-CAM targets (see
// gradcam/targets.hpp).
#include <gradcam/targets.hpp>

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>

#include <cmath>
#include <limits>

#include <gradcam/error.hpp>

#include "util.hpp"

namespace gradcam::targets {

using detail::concat;
using detail::shape_str;

at::Tensor select_output(const c10::IValue& out, const std::string& key) {
  if (key.empty()) {
    GRADCAM_CHECK(out.isTensor(), "the model returns ", out.tagKind(),
                  ", not a tensor; name the element to explain (a dict key or tuple index)");
    return out.toTensor();
  }
  if (out.isGenericDict()) {
    std::string keys;
    for (const auto& kv : out.toGenericDict()) {
      if (!kv.key().isString()) continue;
      if (kv.key().toStringRef() == key) {
        GRADCAM_CHECK(kv.value().isTensor(), "output entry '", key, "' is not a tensor");
        return kv.value().toTensor();
      }
      keys += concat(keys.empty() ? "'" : ", '", kv.key().toStringRef(), "'");
    }
    fail(concat("the model's output has no entry '", key, "'; its keys are ", keys));
  }
  std::vector<c10::IValue> items;
  if (out.isTuple()) {
    const auto& e = out.toTuple()->elements();
    items.assign(e.begin(), e.end());
  } else if (out.isList()) {
    for (const auto& e : out.toList()) items.push_back(e);
  } else if (out.isTensor() && (key == "out" || key == "0")) {
    return out.toTensor();
  } else {
    fail(concat("output key '", key, "' given but the model returns ", out.tagKind(),
                ", not a dict, tuple or list"));
  }
  char* end = nullptr;
  const long i = std::strtol(key.c_str(), &end, 10);
  GRADCAM_CHECK(end != key.c_str() && *end == '\0', "the model returns a tuple/list of ", items.size(),
                " elements; select one by index (0..", items.size() - 1, "), not '", key, "'");
  GRADCAM_CHECK(i >= 0 && i < static_cast<long>(items.size()), "output index ", i,
                " is out of range: the output has ", items.size(), " elements (0..", items.size() - 1, ")");
  GRADCAM_CHECK(items[static_cast<size_t>(i)].isTensor(), "output element ", i, " is not a tensor");
  return items[static_cast<size_t>(i)].toTensor();
}

Target segmentation(int64_t cls, at::Tensor mask, Reduction reduction, std::string key) {
  GRADCAM_CHECK(cls >= 0, "segmentation class must be >= 0, got ", cls);
  return Target::score([cls, mask, reduction, key](const c10::IValue& out) {
    const at::Tensor logits = out.isTensor() ? out.toTensor() : select_output(out, key);
    GRADCAM_CHECK(logits.dim() == 4, "segmentation targets need logits [N, classes, H, W]; the output has shape ",
                  shape_str(logits.sizes()));
    GRADCAM_CHECK(cls < logits.size(1), "segmentation class ", cls, " is out of range: the model has ",
                  logits.size(1), " classes (0..", logits.size(1) - 1, ")");
    const int64_t n = logits.size(0), h = logits.size(2), w = logits.size(3);
    at::Tensor region;
    if (mask.defined()) {
      GRADCAM_CHECK((mask.dim() == 2 && mask.size(0) == h && mask.size(1) == w) ||
                        (mask.dim() == 3 && mask.size(0) == n && mask.size(1) == h && mask.size(2) == w),
                    "segmentation mask has shape ", shape_str(mask.sizes()), "; expected [", h, ", ", w,
                    "] or [", n, ", ", h, ", ", w, "] (the output's resolution)");
      region = mask.to(logits.device(), logits.scalar_type());
      if (region.dim() == 2) region = region.unsqueeze(0).expand({n, h, w});
    } else {
      region = (logits.detach().argmax(1) == cls).to(logits.scalar_type());
    }
    const at::Tensor count = region.sum({1, 2});
    GRADCAM_CHECK(count.min().item<double>() > 0, "the segmentation region of class ", cls,
                  " is empty for at least one sample", mask.defined() ? "" : " (no pixel is predicted as that class)");
    at::Tensor score = (logits.select(1, cls) * region).sum({1, 2});
    return reduction == Reduction::mean ? score / count : score;
  });
}

Target segmentation_box(int64_t cls, std::vector<int64_t> box, Reduction reduction, std::string key) {
  GRADCAM_CHECK(box.size() == 4 && box[0] >= 0 && box[1] >= 0 && box[2] >= box[0] && box[3] >= box[1],
                "segmentation box must be [x0, y0, x1, y1] with 0 <= x0 <= x1 and 0 <= y0 <= y1, got ",
                shape_str(box));
  GRADCAM_CHECK(cls >= 0, "segmentation class must be >= 0, got ", cls);
  // The mask is built when the output size is known.
  return Target::score([cls, box, reduction, key](const c10::IValue& out) {
    const at::Tensor logits = out.isTensor() ? out.toTensor() : select_output(out, key);
    GRADCAM_CHECK(logits.dim() == 4, "segmentation targets need logits [N, classes, H, W]; the output has shape ",
                  shape_str(logits.sizes()));
    const int64_t h = logits.size(2), w = logits.size(3);
    GRADCAM_CHECK(box[2] < w && box[3] < h, "segmentation box ", shape_str(box), " is outside the output (",
                  w, " x ", h, " pixels)");
    at::Tensor mask = at::zeros({h, w}, logits.options().dtype(at::kFloat));
    mask.narrow(0, box[1], box[3] - box[1] + 1).narrow(1, box[0], box[2] - box[0] + 1).fill_(1);
    return segmentation(cls, mask, reduction, key).fn()(out);
  });
}

Target similarity(at::Tensor reference, std::string key) {
  GRADCAM_CHECK(reference.defined() && (reference.dim() == 1 || reference.dim() == 2),
                "the reference embedding must be [D] or [N, D]",
                reference.defined() ? concat(", got ", shape_str(reference.sizes())) : std::string());
  GRADCAM_CHECK(at::isfinite(reference).all().item<bool>() && reference.abs().sum().item<double>() > 0,
                "the reference embedding must be finite and non-zero");
  reference = reference.detach();
  return Target::score([reference, key](const c10::IValue& out) {
    at::Tensor e = key.empty() && !out.isTensor() ? select_output(out, "0") : select_output(out, key);
    GRADCAM_CHECK(e.dim() >= 2, "embedding similarity needs an output [N, D]; it has shape ", shape_str(e.sizes()));
    e = e.flatten(1);
    at::Tensor ref = reference.to(e.device(), e.scalar_type());
    if (ref.dim() == 1) ref = ref.unsqueeze(0).expand({e.size(0), ref.size(0)});
    GRADCAM_CHECK(ref.size(1) == e.size(1) && ref.size(0) == e.size(0), "the reference embedding has shape ",
                  shape_str(reference.sizes()), " but the model's embedding is ", shape_str(e.sizes()));
    return at::cosine_similarity(e, ref, 1, 1e-8);
  });
}

Target output(std::string key, std::vector<int64_t> index) {
  return Target::score([key, index](const c10::IValue& out) {
    at::Tensor t = select_output(out, key);
    GRADCAM_CHECK(t.dim() >= 1, "output '", key, "' is a scalar; gradcam needs one value per sample");
    GRADCAM_CHECK(static_cast<int64_t>(index.size()) == t.dim() - 1 || (index.empty() && t[0].numel() == 1),
                  "output '", key, "' has shape ", shape_str(t.sizes()), "; give ", t.dim() - 1,
                  " index value(s) to pick one element per sample");
    for (size_t d = 0; d < index.size(); ++d) {
      const int64_t size = t.size(1);
      GRADCAM_CHECK(index[d] >= 0 && index[d] < size, "index ", index[d], " is out of range for dimension ", d + 1,
                    " of output '", key, "' (size ", size, ")");
      t = t.select(1, index[d]);
    }
    return t.reshape({t.size(0)});
  });
}

namespace {

/// Finer-CAM's main classes [N, 1]: the given ones (checked against the output's classes), or
/// each sample's top-1.
at::Tensor finer_main(const std::vector<int64_t>& classes, const at::Tensor& y) {
  const int64_t n = y.size(0);
  if (classes.empty()) return y.detach().argmax(1).view({n, 1});
  GRADCAM_CHECK(classes.size() == 1 || static_cast<int64_t>(classes.size()) == n, "Finer-CAM: ", classes.size(),
                " classes given for a batch of ", n, " (give one, or one per sample)");
  for (int64_t c : classes) {
    GRADCAM_CHECK(c >= 0 && c < y.size(1), "class ", c, " is out of range: the output has ", y.size(1), " classes");
  }
  const at::Tensor t = at::tensor(classes, at::TensorOptions().dtype(at::kLong)).to(y.device());
  return (classes.size() == 1 ? t.expand({n}) : t).reshape({n, 1});
}

}  // namespace

Target finer(std::vector<int64_t> classes, int64_t references, double alpha, std::string key) {
  GRADCAM_CHECK(references >= 1, "Finer-CAM needs at least 1 reference class, got ", references);
  GRADCAM_CHECK(std::isfinite(alpha), "Finer-CAM's alpha must be a finite number, got ", alpha);
  return Target::ranked([classes, references, alpha, key](const c10::IValue& out) {
    const at::Tensor y = key.empty() && !out.isTensor() ? select_output(out, "0") : select_output(out, key);
    GRADCAM_CHECK(y.dim() == 2, "Finer-CAM compares class scores: it needs an output [N, classes]; it has shape ",
                  shape_str(y.sizes()));
    GRADCAM_CHECK(references < y.size(1), "Finer-CAM: ", references, " reference classes asked for, but the output has ",
                  y.size(1), " classes (at most ", y.size(1) - 1, " references)");
    const at::Tensor main = finer_main(classes, y);
    const at::Tensor yd = y.detach();
    at::Tensor distance = (yd - yd.gather(1, main)).abs();
    distance.scatter_(1, main, std::numeric_limits<double>::infinity());  // never its own reference
    const at::Tensor refs = std::get<1>(distance.sort(/*stable=*/true, 1, false)).narrow(1, 0, references);
    const at::Tensor p = at::softmax(y, 1).gather(1, refs);
    const at::Tensor margin = y.gather(1, main) - alpha * y.gather(1, refs);
    const at::Tensor score = (p * margin).sum(1) / (p.sum(1) + 1e-9);
    return Target::Ranked{score.unsqueeze(1), main};
  });
}

}  // namespace gradcam::targets
