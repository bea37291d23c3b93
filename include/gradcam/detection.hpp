// gradcam/detection.hpp: explaining object detectors, one map per detected box (docs/detection.md).
//
// A detection's score is a differentiable function of the layer's activations like a class score,
// so Grad-CAM explains it the same way: one forward pass, then one partial backward pass per box
// (Target::ranked), every box of every image of the batch at once. Two kinds of output are read:
//  - torchvision's detectors (Faster R-CNN, RetinaNet, SSD, FCOS...): a list of dicts with
//    "boxes" [D, 4] (x0, y0, x1, y1), "scores" [D] and "labels" [D], one per image, alone or as
//    the second element of the (losses, detections) tuple a scripted torchvision detector returns.
//    Non-maximum suppression is in their graph; their forward takes a list of images, which
//    GradCAM gives from the batch's samples. They call torchvision's operators: see
//    load_operators() in <gradcam/model.hpp>.
//  - YOLO-style dense outputs of a traced model, one row or column per candidate box:
//    [N, B, 5 + C] (cx, cy, w, h, objectness, C class scores; YOLOv5 and YOLOv7 exports; a box's
//    score for class c is objectness * class score) or [N, 4 + C, B] (cx, cy, w, h, C class scores;
//    YOLOv8 and later exports; the score is the class score). Non-maximum suppression is not in
//    their graph: detect() does it per class with OpenCV's cv::dnn::NMSBoxes, outside the
//    differentiated part, which reads the kept boxes' scores only.
// Needs the OpenCV layer (GRADCAM_WITH_OPENCV).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <gradcam/arg.hpp>
#include <gradcam/error.hpp>
#include <gradcam/grad_cam.hpp>

namespace gradcam::detection {

/// How a detector's output is laid out (see the file comment).
enum class Layout {
  torchvision,   ///< list of {"boxes", "scores", "labels"} dicts, NMS done by the model
  yolo_rows,     ///< [N, B, 5 + C]: cx, cy, w, h, objectness, class scores ("yolo-nxbx(5+c)")
  yolo_columns,  ///< [N, 4 + C, B]: cx, cy, w, h, class scores ("yolo-nx(4+c)xb")
};

/// "torchvision", "yolo-nxbx(5+c)", "yolo-nx(4+c)xb".
const char* layout_name(Layout layout);
/// The layout with that name; throws gradcam::Error listing the names.
Layout layout_from_name(const std::string& name);

/// One detected box.
struct Detection {
  int64_t index = 0;  ///< the model's own detection: its row in torchvision's list, or the box b of a dense output
  int64_t label = 0;  ///< the class (torchvision: 0 is the background, never detected)
  double score = 0;   ///< the detection score the map explains
  double x0 = 0, y0 = 0, x1 = 0, y1 = 0;  ///< the box, in input pixels (continuous coordinates)
};

/// Intersection over union of two boxes in continuous coordinates (0 when either is empty).
double iou(const Detection& a, const Detection& b);

/// Which detections to explain.
class DetectionOptions {
 public:
  /// How the output is read. Default Layout::torchvision.
  GRADCAM_ARG(Layout, layout) = Layout::torchvision;
  /// Boxes whose score is below this are left out. Default 0.5.
  GRADCAM_ARG(double, score_threshold) = 0.5;
  /// At most this many boxes per image, the highest scores first; 0 for all. Default 20.
  GRADCAM_ARG(int64_t, max_boxes) = 20;
  /// Only these classes; empty (default) for every class.
  GRADCAM_ARG(std::vector<int64_t>, classes) = std::vector<int64_t>{};
  /// Dense layouts: the IoU above which a lower-scoring box of the same class is suppressed
  /// (cv::dnn::NMSBoxes). torchvision's models do their own NMS. Default 0.45.
  GRADCAM_ARG(double, nms_iou) = 0.45;
};

/// The detections of each image of the batch, by descending score (ties: the model's order).
/// Throws gradcam::Error for an output that does not have the layout's form, naming its shape.
std::vector<std::vector<Detection>> detect(const c10::IValue& output, const DetectionOptions& options = {});

/// What compute() throws with boxes() when no image of the batch has a box to explain (none with a
/// score above the threshold, or none of the chosen classes): a gradcam::Error whose message names
/// the best score there is. A caller going through many images usually records the image as
/// explained, with no box, and goes on.
class NoDetection : public Error {
 public:
  using Error::Error;
};

/// One target rank per detection detect() selects: rank r explains the r-th detection of each
/// image (GradCAMResult::classes has its label, ::scores its score; an image with fewer boxes has
/// class -1 and a zero map there). compute() throws NoDetection when no image has a box. A box
/// whose score does not depend on the layer (another FPN level's, say) while another image's box
/// of its rank does has a zero LayerMap::map_signed there; with one image, compute() refuses it.
Target boxes(DetectionOptions options = {});

/// The model's detection `index` of every image: torchvision's row `index`, or a dense output's
/// box `index` with its highest-scoring class. No threshold; an index out of range is an error.
Target box(int64_t index, Layout layout = Layout::torchvision);

/// One map for a class: the sum of the scores of every detection of class `cls` that detect()
/// selects (the options' classes are replaced by {cls}). An image with no such box is an error.
Target class_total(int64_t cls, DetectionOptions options = {});

/// The detections that match a reference box (pytorch-grad-cam's FasterRCNNBoxScoreTarget rule):
/// the sum of the scores of the selected detections of class `reference.label` whose box has
/// IoU >= `min_iou` with the reference. An image with none is an error naming its best IoU.
/// Unlike that target, the IoU itself is not added to the score: its gradient would move the box,
/// which is not the evidence for the class.
Target matching(Detection reference, double min_iou = 0.5, DetectionOptions options = {});

}  // namespace gradcam::detection
