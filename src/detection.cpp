// src/detection.cpp: detectors' outputs read as boxes, and targets on their scores
// (gradcam/detection.hpp, docs/detection.md).
#include <gradcam/detection.hpp>

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>

#include <opencv2/dnn.hpp>

#include <algorithm>
#include <limits>
#include <map>

#include <gradcam/error.hpp>

#include "outputs.hpp"
#include "util.hpp"

namespace gradcam::detection {

using detail::concat;
using detail::shape_str;

namespace {

struct LayoutRow {
  Layout layout;
  const char* name;
};
constexpr LayoutRow kLayouts[] = {
    {Layout::torchvision, "torchvision"},
    {Layout::yolo_rows, "yolo-nxbx(5+c)"},
    {Layout::yolo_columns, "yolo-nx(4+c)xb"},
};

using TorchvisionImage = detail::DetectorImage;

std::vector<TorchvisionImage> torchvision_images(const c10::IValue& out) {
  std::string why;
  auto images = detail::torchvision_detections(out, &why);
  if (!images) fail(why + "; for a dense output choose the layout yolo-nxbx(5+c) or yolo-nx(4+c)xb");
  return std::move(*images);
}

/// A dense output [N, B, 5 + C] or [N, 4 + C, B] (the first element of a tuple, as some exports
/// return it with their feature maps).
at::Tensor dense(const c10::IValue& out, Layout layout) {
  c10::IValue v = out;
  if (v.isTuple() && !v.toTuple()->elements().empty()) v = v.toTuple()->elements()[0];
  GRADCAM_CHECK(v.isTensor(), "the model returns ", out.tagKind(), ", not a dense tensor of boxes for the layout ",
                layout_name(layout));
  const at::Tensor t = v.toTensor();
  const bool rows = layout == Layout::yolo_rows;
  GRADCAM_CHECK(t.dim() == 3 && (rows ? t.size(2) >= 6 : t.size(1) >= 5), "the model's output has shape ",
                shape_str(t.sizes()), "; the layout ", layout_name(layout), " needs ",
                rows ? "[N, boxes, 5 + classes]" : "[N, 4 + classes, boxes]", " with at least one class");
  return t;
}

/// The candidate boxes of image n of a dense output, each with its best class, NMS not yet done.
std::vector<Detection> dense_candidates(const at::Tensor& out, Layout layout, int64_t n) {
  at::Tensor t = out[n].detach().to(at::kCPU, at::kDouble);  // [B, 5 + C] or [B, 4 + C]
  if (layout == Layout::yolo_columns) t = t.t();
  const int64_t first_class = layout == Layout::yolo_rows ? 5 : 4;
  at::Tensor cls = t.narrow(1, first_class, t.size(1) - first_class);
  if (layout == Layout::yolo_rows) cls = cls * t.select(1, 4).unsqueeze(1);
  const auto best = cls.max(1);
  const at::Tensor xywh = t.narrow(1, 0, 4).contiguous();
  const at::Tensor score = std::get<0>(best).contiguous(), label = std::get<1>(best).contiguous();
  const double* b = xywh.data_ptr<double>();
  std::vector<Detection> out_boxes(static_cast<size_t>(t.size(0)));
  for (int64_t i = 0; i < t.size(0); ++i) {
    Detection& d = out_boxes[static_cast<size_t>(i)];
    d.index = i;
    d.label = label[i].item<int64_t>();
    d.score = score[i].item<double>();
    d.x0 = b[4 * i] - b[4 * i + 2] / 2;
    d.y0 = b[4 * i + 1] - b[4 * i + 3] / 2;
    d.x1 = b[4 * i] + b[4 * i + 2] / 2;
    d.y1 = b[4 * i + 1] + b[4 * i + 3] / 2;
  }
  return out_boxes;
}

bool by_score(const Detection& a, const Detection& b) {
  return a.score > b.score || (a.score == b.score && a.index < b.index);
}

/// Per-class NMS with OpenCV: the kept boxes, in no particular order. OpenCV takes float scores
/// above a threshold >= 0; it is given each box's rank instead (1 for the last), so that no score
/// is dropped or tied by the conversion, and the order is ours.
std::vector<Detection> nms(std::vector<Detection> boxes, double iou_threshold) {
  std::stable_sort(boxes.begin(), boxes.end(), by_score);
  std::map<int64_t, std::vector<size_t>> by_class;
  for (size_t i = 0; i < boxes.size(); ++i) by_class[boxes[i].label].push_back(i);
  std::vector<Detection> kept;
  for (const auto& [label, members] : by_class) {
    std::vector<cv::Rect2d> rects;
    std::vector<float> ranks;
    for (size_t i : members) {
      const Detection& d = boxes[i];
      rects.emplace_back(d.x0, d.y0, d.x1 - d.x0, d.y1 - d.y0);
      ranks.push_back(static_cast<float>(members.size() - ranks.size()));
    }
    std::vector<int> keep;
    cv::dnn::NMSBoxes(rects, ranks, 0.0f, static_cast<float>(iou_threshold), keep);
    for (int k : keep) kept.push_back(boxes[members[static_cast<size_t>(k)]]);
  }
  return kept;
}

bool wanted(const Detection& d, const DetectionOptions& o) {
  return d.score >= o.score_threshold() &&
         (o.classes().empty() || std::find(o.classes().begin(), o.classes().end(), d.label) != o.classes().end());
}

/// Threshold, classes, descending score (ties: the model's order), at most max_boxes.
std::vector<Detection> select(std::vector<Detection> all, const DetectionOptions& o) {
  std::vector<Detection> out;
  for (const Detection& d : all) {
    if (wanted(d, o)) out.push_back(d);
  }
  std::stable_sort(out.begin(), out.end(), by_score);
  if (o.max_boxes() > 0 && static_cast<int64_t>(out.size()) > o.max_boxes()) out.resize(static_cast<size_t>(o.max_boxes()));
  return out;
}

/// The differentiable score of detection d of image n, from an output parsed once per target
/// call (not once per box).
class ScoreReader {
 public:
  ScoreReader(const c10::IValue& out, Layout layout) : layout_(layout) {
    if (layout == Layout::torchvision) {
      images_ = torchvision_images(out);
    } else {
      dense_ = dense(out, layout);
    }
  }
  at::Tensor operator()(int64_t n, const Detection& d) const {
    if (layout_ == Layout::torchvision) return images_[static_cast<size_t>(n)].scores[d.index];
    if (layout_ == Layout::yolo_rows) return dense_[n][d.index][4] * dense_[n][d.index][5 + d.label];
    return dense_[n][4 + d.label][d.index];
  }

 private:
  Layout layout_;
  std::vector<TorchvisionImage> images_;
  at::Tensor dense_;
};

std::string classes_str(const DetectionOptions& o) {
  if (o.classes().empty()) return "";
  std::string s;
  for (int64_t c : o.classes()) s += concat(s.empty() ? "" : ", ", c);
  return concat(" of class ", s);
}

/// Why no image has a box: the threshold, and the best score there is.
[[noreturn]] void no_box(const c10::IValue& out, const DetectionOptions& o) {
  DetectionOptions any = o;
  any.score_threshold(-std::numeric_limits<double>::infinity()).max_boxes(1);
  std::string best = "the model detected no box at all";
  double top = -std::numeric_limits<double>::infinity();
  for (const auto& image : detect(out, any)) {
    if (!image.empty() && image.front().score > top) {
      top = image.front().score;
      best = concat("the highest score is ", image.front().score, " (class ", image.front().label,
                    "); lower the score threshold");
    }
  }
  throw NoDetection(concat("no detection", classes_str(o), " has a score >= ", o.score_threshold(), " in any image: ", best));
}

}  // namespace

const char* layout_name(Layout layout) {
  for (const auto& row : kLayouts) {
    if (row.layout == layout) return row.name;
  }
  return "?";
}

Layout layout_from_name(const std::string& name) {
  std::string names;
  for (const auto& row : kLayouts) {
    if (name == row.name) return row.layout;
    names += concat(names.empty() ? "" : ", ", row.name);
  }
  fail(concat("unknown detection layout '", name, "'; choose one of ", names));
}

double iou(const Detection& a, const Detection& b) {
  const double w = std::min(a.x1, b.x1) - std::max(a.x0, b.x0);
  const double h = std::min(a.y1, b.y1) - std::max(a.y0, b.y0);
  if (w <= 0 || h <= 0) return 0;
  const double inter = w * h;
  const double area_a = (a.x1 - a.x0) * (a.y1 - a.y0), area_b = (b.x1 - b.x0) * (b.y1 - b.y0);
  return inter / (area_a + area_b - inter);
}

std::vector<std::vector<Detection>> detect(const c10::IValue& output, const DetectionOptions& options) {
  GRADCAM_CHECK(options.nms_iou() > 0 && options.nms_iou() <= 1, "the NMS IoU threshold must be in (0, 1], got ",
                options.nms_iou());
  GRADCAM_CHECK(options.max_boxes() >= 0, "max_boxes must be >= 0 (0: all), got ", options.max_boxes());
  std::vector<std::vector<Detection>> result;
  if (options.layout() == Layout::torchvision) {
    for (const TorchvisionImage& im : torchvision_images(output)) {
      const at::Tensor boxes = im.boxes.detach().to(at::kCPU, at::kDouble).contiguous();
      const at::Tensor scores = im.scores.detach().to(at::kCPU, at::kDouble).contiguous();
      const at::Tensor labels = im.labels.detach().to(at::kCPU, at::kLong).contiguous();
      std::vector<Detection> all(static_cast<size_t>(scores.size(0)));
      for (int64_t i = 0; i < scores.size(0); ++i) {
        const double* b = boxes.data_ptr<double>() + 4 * i;
        all[static_cast<size_t>(i)] = {i, labels.data_ptr<int64_t>()[i], scores.data_ptr<double>()[i],
                                       b[0], b[1], b[2], b[3]};
      }
      result.push_back(select(std::move(all), options));
    }
    return result;
  }
  const at::Tensor t = dense(output, options.layout());
  for (int64_t n = 0; n < t.size(0); ++n) {
    // the threshold first: fewer boxes for NMS, and the same result (a box suppresses only
    // lower-scoring boxes of its own class)
    std::vector<Detection> candidates;
    for (const Detection& d : dense_candidates(t, options.layout(), n)) {
      if (wanted(d, options)) candidates.push_back(d);
    }
    result.push_back(select(nms(std::move(candidates), options.nms_iou()), options));
  }
  return result;
}

Target boxes(DetectionOptions options) {
  return Target::ranked([options](const c10::IValue& out) {
    const auto images = detect(out, options);
    const ScoreReader score_of(out, options.layout());
    size_t ranks = 0;
    for (const auto& image : images) ranks = std::max(ranks, image.size());
    if (ranks == 0) no_box(out, options);
    const auto n = static_cast<int64_t>(images.size());
    at::Tensor classes = at::full({n, static_cast<int64_t>(ranks)}, -1, at::TensorOptions().dtype(at::kLong));
    std::vector<std::vector<at::Tensor>> rows(images.size());
    at::TensorOptions like;
    for (int64_t i = 0; i < n; ++i) {
      for (const Detection& d : images[static_cast<size_t>(i)]) {
        rows[static_cast<size_t>(i)].push_back(score_of(i, d));
        classes[i][static_cast<int64_t>(rows[static_cast<size_t>(i)].size()) - 1] = d.label;
        like = rows[static_cast<size_t>(i)].back().options();
      }
    }
    std::vector<at::Tensor> per_image;
    for (auto& row : rows) {
      while (row.size() < ranks) row.push_back(at::zeros({}, like));  // no box there: a constant
      per_image.push_back(at::stack(row));
    }
    return Target::Ranked{at::stack(per_image), classes};
  });
}

Target box(int64_t index, Layout layout) {
  GRADCAM_CHECK(index >= 0, "a detection index must be >= 0, got ", index);
  return Target::score([index, layout](const c10::IValue& out) {
    std::vector<at::Tensor> scores;
    if (layout == Layout::torchvision) {
      const auto images = torchvision_images(out);
      for (size_t n = 0; n < images.size(); ++n) {
        const int64_t count = images[n].scores.size(0);
        GRADCAM_CHECK(index < count, "detection ", index, " is out of range: image ", n, " has ", count,
                      " detection", count == 1 ? "" : "s", count > 0 ? concat(" (0..", count - 1, ")") : std::string());
        scores.push_back(images[n].scores[index]);
      }
      return at::stack(scores);
    }
    const at::Tensor t = dense(out, layout);
    const ScoreReader score_of(out, layout);
    const int64_t count = layout == Layout::yolo_rows ? t.size(1) : t.size(2);
    GRADCAM_CHECK(index < count, "box ", index, " is out of range: the output has ", count, " boxes (0..", count - 1, ")");
    for (int64_t n = 0; n < t.size(0); ++n) {
      Detection d = dense_candidates(t, layout, n)[static_cast<size_t>(index)];
      scores.push_back(score_of(n, d));
    }
    return at::stack(scores);
  });
}

Target class_total(int64_t cls, DetectionOptions options) {
  GRADCAM_CHECK(cls >= 0, "a detection class must be >= 0, got ", cls);
  options.classes({cls});
  return Target::score([options, cls](const c10::IValue& out) {
    const auto images = detect(out, options);
    const ScoreReader score_of(out, options.layout());
    std::vector<at::Tensor> scores;
    for (size_t n = 0; n < images.size(); ++n) {
      GRADCAM_CHECK(!images[n].empty(), "image ", n, " has no detection of class ", cls, " with a score >= ",
                    options.score_threshold());
      at::Tensor total = score_of(static_cast<int64_t>(n), images[n].front());
      for (size_t j = 1; j < images[n].size(); ++j) {
        total = total + score_of(static_cast<int64_t>(n), images[n][j]);
      }
      scores.push_back(total);
    }
    return at::stack(scores);
  });
}

Target matching(Detection reference, double min_iou, DetectionOptions options) {
  GRADCAM_CHECK(min_iou > 0 && min_iou <= 1, "the IoU a detection must reach is in (0, 1], got ", min_iou);
  GRADCAM_CHECK(reference.x1 > reference.x0 && reference.y1 > reference.y0, "the reference box [", reference.x0, ", ",
                reference.y0, ", ", reference.x1, ", ", reference.y1, "] is empty (x1 <= x0 or y1 <= y0)");
  options.classes({reference.label});
  return Target::score([reference, min_iou, options](const c10::IValue& out) {
    const auto images = detect(out, options);
    const ScoreReader score_of(out, options.layout());
    std::vector<at::Tensor> scores;
    for (size_t n = 0; n < images.size(); ++n) {
      at::Tensor total;
      double best = 0;
      for (const Detection& d : images[n]) {
        const double overlap = iou(d, reference);
        best = std::max(best, overlap);
        if (overlap < min_iou) continue;
        const at::Tensor s = score_of(static_cast<int64_t>(n), d);
        total = total.defined() ? total + s : s;
      }
      GRADCAM_CHECK(total.defined(), "image ", n, " has no detection of class ", reference.label, " with a score >= ",
                    options.score_threshold(), " that overlaps the reference box with IoU >= ", min_iou,
                    " (the best IoU is ", best, ")");
      scores.push_back(total);
    }
    return at::stack(scores);
  });
}

}  // namespace gradcam::detection
