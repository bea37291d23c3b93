// Detectors (issue 15, docs/detection.md): one map per detected box, against the independent
// PyTorch reference (tests/fixtures/make_detection_refs.py) on scripted torchvision detectors with
// random weights (Faster R-CNN, RetinaNet, SSDlite) and traced YOLO-style toys of both dense
// layouts; every target kind of <gradcam/detection.hpp>; the auto layer; what is refused.
#include "catch.hpp"

#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>

#include <cstdlib>

#include <gradcam/gradcam.hpp>

#include "support.hpp"

using Catch::Matchers::Equals;
using gradcam::Method;
namespace det = gradcam::detection;

namespace {

// float64 against the float64 reference, as for classifiers (test_methods): 1e-8 of the map's max.
constexpr double kTol64 = 1e-8;

struct Model {
  std::string name;
  det::Layout layout;
  std::vector<std::string> layers;
  double threshold;
};

const std::vector<Model>& models() {
  static const std::vector<Model> m = {
      {"det_frcnn", det::Layout::torchvision, {"backbone.body.16", "backbone.fpn.layer_blocks.0"}, 0.0},
      {"det_retina", det::Layout::torchvision, {"backbone.body.layer4"}, 0.0},
      {"det_ssd", det::Layout::torchvision, {"backbone.features.0"}, 0.0},
      {"det_yolo_rows", det::Layout::yolo_rows, {"backbone.5", "backbone.3"}, 0.1},
      {"det_yolo_columns", det::Layout::yolo_columns, {"backbone.5"}, 0.1},
  };
  return m;
}

/// torchvision's operators (roi_align, nms), loaded once: the path CMake found
/// (GRADCAM_TORCHVISION_OPS, the _C.so of the Python package that exported the fixtures).
void load_torchvision_ops() {
  static const bool loaded = [] {
    const char* path = std::getenv("GRADCAM_TORCHVISION_OPS");
    REQUIRE(path != nullptr);
    gradcam::load_operators(path);
    return true;
  }();
  (void)loaded;
}

torch::jit::Module load(const Model& m, bool dbl = true) {
  load_torchvision_ops();
  auto module = test::model(m.name);
  if (dbl) test::to_double(module);
  return module;
}

std::string layer_key(std::string layer) {
  for (auto& c : layer)
    if (c == '.') c = '_';
  return layer;
}

const std::vector<Method> kMethods = {Method::gradcam, Method::hirescam, Method::gradcam_pp, Method::eigencam};

/// The reference map of method m for a target kind ("rank0", "index", ...); EigenCAM's is one
/// per layer.
at::Tensor ref_map(const test::Ref& ref, Method m, const std::string& layer, const std::string& kind) {
  const std::string lk = layer_key(layer);
  if (m == Method::eigencam) return ref.get("eigencam__" + lk);
  return ref.get(std::string(gradcam::method_name(m)) + "__" + lk + "__" + kind);
}

void check_maps(const gradcam::GradCAMResult& r, const test::Ref& ref, const std::string& layer, int64_t rank,
                const std::string& kind, int64_t images) {
  for (Method m : kMethods) {
    at::Tensor want = ref_map(ref, m, layer, kind).narrow(0, 0, images);
    const at::Tensor got = r.get(layer, rank, 0, m).map;
    INFO(gradcam::method_name(m) << " " << kind);
    REQUIRE(got.sizes() == want.sizes());
    // a blank reference would prove nothing (every Grad-CAM map here has a positive part; a
    // HiResCAM map may be negative everywhere before its ReLU, as yolo_rows' "match" is)
    if (m == Method::gradcam) CHECK(want.max().item<double>() > 0);
    CHECK(test::rel_err(got, want) < kTol64);
  }
}

}  // namespace

TEST_CASE("one map per detected box equals the reference, torchvision detectors and YOLO-style outputs (float64)",
          "[detection]") {
  for (const auto& model : models()) {
    // quick (the sanitizer build): the small models only
    if (test::quick() && (model.name == "det_frcnn" || model.name == "det_retina")) continue;
    SECTION(model.name) {
      auto module = load(model);
      const test::Ref ref(model.name);
      const at::Tensor input = ref.get("input").to(at::kDouble);
      const auto options = det::DetectionOptions().layout(model.layout).score_threshold(model.threshold).max_boxes(3);
      for (const auto& layer : model.layers) {
        INFO(model.name << " " << layer);
        gradcam::GradCAM cam(module, gradcam::GradCAMOptions(layer).methods(kMethods));
        const auto r = cam.compute(input, det::boxes(options));
        // the selection: the reference's boxes, labels and scores, in its order
        const at::Tensor labels = ref.get("sel_label");
        REQUIRE(r.classes.sizes() == labels.sizes());
        CHECK(r.classes.equal(labels));
        CHECK(test::rel_err(r.scores, ref.get("sel_score")) < 1e-10);
        const auto found = det::detect(*r.output, options);
        for (size_t n = 0; n < found.size(); ++n) {
          for (size_t j = 0; j < found[n].size(); ++j) {
            const auto& d = found[n][j];
            CHECK(d.index == ref.get("sel_index")[int64_t(n)][int64_t(j)].item<int64_t>());
            const at::Tensor box = at::tensor({d.x0, d.y0, d.x1, d.y1}, at::kDouble);
            CHECK(test::rel_err(box, ref.get("sel_box")[int64_t(n)][int64_t(j)]) < 1e-10);
          }
        }
        for (int64_t rank = 0; rank < labels.size(1); ++rank) {
          check_maps(r, ref, layer, rank, "rank" + std::to_string(rank), input.size(0));
        }
        // the model's detection 5, every box of the top box's class, and the boxes matching a box
        check_maps(cam.compute(input, det::box(5, model.layout)), ref, layer, 0, "index", input.size(0));
        const int64_t top = ref.get("match_label").item<int64_t>();
        check_maps(cam.compute(input, det::class_total(top, options)), ref, layer, 0, "class", input.size(0));
        const at::Tensor mb = ref.get("match_box");
        det::Detection reference;
        reference.label = top;
        reference.x0 = mb[0].item<double>();
        reference.y0 = mb[1].item<double>();
        reference.x1 = mb[2].item<double>();
        reference.y1 = mb[3].item<double>();
        check_maps(cam.compute(input.narrow(0, 0, 1), det::matching(reference, 0.5, options)), ref, layer, 0, "match", 1);
      }
    }
  }
}

TEST_CASE("Grad-CAM of each box in float32 is within float32 rounding of the float64 reference",
          "[detection][onednn]") {
  // Measured with LibTorch 1.13: at most 8.0e-5 of the map's max (Faster R-CNN, backbone.body.16,
  // three boxes of two images; the test prints it), 13 times a classifier's: the scores pass
  // through roi_align over an FPN and a softmax, more float32 steps. Tagged [onednn] for Debian 13
  // (float32 convolution gradients there: docs/reliability.md).
  constexpr double kTol32 = 2e-4;
  const Model& model = models().front();
  auto module = load(model, false);
  const test::Ref ref(model.name);
  const auto options = det::DetectionOptions().score_threshold(model.threshold).max_boxes(3);
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions(model.layers.front()));
  const auto r = cam.compute(ref.get("input"), det::boxes(options));
  REQUIRE(r.classes.equal(ref.get("sel_label")));
  double worst = 0;
  for (int64_t rank = 0; rank < r.classes.size(1); ++rank) {
    const at::Tensor want = ref_map(ref, Method::gradcam, model.layers.front(), "rank" + std::to_string(rank));
    worst = std::max(worst, test::rel_err(r.get(model.layers.front(), rank).map, want));
  }
  WARN("float32 Faster R-CNN Grad-CAM: max error " << worst << " of the map's max");
  CHECK(worst < kTol32);
}

// [onednn]: auto's probe is float32 backward passes, which on Debian 13's oneDNN and this CPU
// died once with SIGFPE inside dnnl_convolution_backward_data_primitive_desc_create (RetinaNet);
// docs/reliability.md
TEST_CASE("auto takes the last backbone stage every top detection depends on", "[detection][onednn]") {
  // Faster R-CNN and RetinaNet read an FPN over every stage; SSDlite's heads read both of its
  // stages, so a box of the first level does not depend on the second (make_detection_refs.py
  // asserts the same of its reference)
  const std::vector<std::pair<std::string, std::string>> want = {
      {"det_frcnn", "backbone.body.16"}, {"det_retina", "backbone.body.layer4"}, {"det_ssd", "backbone.features.0"}};
  for (const auto& [name, layer] : want) {
    if (test::quick() && name == "det_retina") continue;
    load_torchvision_ops();
    const auto listing = gradcam::list_layers(test::model(name), std::vector<int64_t>{1, 3, 96, 128});
    INFO(name);
    CHECK(listing.auto_layer == layer);
    CHECK_THAT(listing.auto_note, Equals("a detector: the last stage of its backbone ('" +
                                         layer.substr(0, layer.rfind('.')) +
                                         "') that its top detections of a random image all depend on"));
  }
}

TEST_CASE("a ranked target: one backward pass per rank, and a rank a sample lacks has class -1 and a zero map",
          "[detection]") {
  auto module = test::model("toy_script");
  test::to_double(module);
  const at::Tensor x = at::rand({2, 3, 16, 16}, at::kDouble);
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("block"));
  const auto ranked = gradcam::Target::ranked([](const c10::IValue& out) {
    const at::Tensor logits = out.toTensor();
    const at::Tensor second = at::stack({logits[0][4], at::zeros({}, logits.options())});  // sample 1 has none
    return gradcam::Target::Ranked{at::stack({logits.select(1, 2), second}, 1),
                                   at::tensor({2, 4, 2, -1}, at::kLong).view({2, 2})};
  });
  const auto r = cam.compute(x, ranked);
  CHECK(r.classes.equal(at::tensor({2, 4, 2, -1}, at::kLong).view({2, 2})));
  // each rank is the class target it scores (test_gradcam checks those against the reference)
  const auto c2 = cam.compute(x, gradcam::Target::classes({2}));
  const auto c4 = cam.compute(x, gradcam::Target::classes({4}));
  CHECK(test::rel_err(r.get("block", 0, 0).map, c2.get("block").map) < 1e-12);
  CHECK(test::rel_err(r.get("block", 1, 0).map[0], c4.get("block").map[0]) < 1e-12);
  CHECK(r.get("block", 1, 0).map[1].abs().max().item<double>() == 0);
  CHECK(r.get("block", 1, 1).map[1].abs().max().item<double>() == 0);
}

TEST_CASE("detection errors name the bad value", "[detection][errors]") {
  const Model& yolo = models()[3];
  auto module = load(yolo);
  const at::Tensor input = test::Ref(yolo.name).get("input").to(at::kDouble);
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("backbone.5"));
  const auto options = [&] { return det::DetectionOptions().layout(yolo.layout); };
  CHECK_THROWS_WITH(cam.compute(input, det::boxes(options().score_threshold(0.99))),
                    Catch::Matchers::StartsWith("no detection has a score >= 0.99 in any image: the highest score is ") &&
                        Catch::Matchers::EndsWith("; lower the score threshold"));
  // typed, so that a caller going through many images can tell "no box" from a failure
  CHECK_THROWS_AS(cam.compute(input, det::boxes(options().score_threshold(0.99))), det::NoDetection);
  CHECK_THROWS_WITH(cam.compute(input, det::boxes(options().score_threshold(0.99).classes({1, 2}))),
                    Catch::Matchers::StartsWith("no detection of class 1, 2 has a score >= 0.99 in any image"));
  CHECK_THROWS_WITH(cam.compute(input, det::box(64, yolo.layout)),
                    Equals("box 64 is out of range: the output has 64 boxes (0..63)"));
  CHECK_THROWS_WITH(cam.compute(input, det::boxes(det::DetectionOptions())),
                    Equals("the model returns Tensor, not torchvision's detections (a list of dicts with 'boxes', "
                           "'scores' and 'labels', or a (losses, detections) tuple); for a dense output choose the "
                           "layout yolo-nxbx(5+c) or yolo-nx(4+c)xb"));
  CHECK_THROWS_WITH(cam.compute(input.narrow(1, 0, 1).squeeze(1), det::boxes(options())),
                    Equals("input has shape [2, 64, 64]; expected a 4-D batch [N, C, H, W]"));
  CHECK_THROWS_WITH(cam.compute(input), Equals("the model output has shape [2, 64, 8]; class targets need "
                                               "[N, classes] with N = 2 (use Target::score for other outputs)"));
  det::Detection far;
  far.label = 0;
  far.x0 = 1000;
  far.y0 = 1000;
  far.x1 = 1010;
  far.y1 = 1010;
  CHECK_THROWS_WITH(cam.compute(input, det::matching(far, 0.5, options().score_threshold(0.1))),
                    Equals("image 0 has no detection of class 0 with a score >= 0.1 that overlaps the reference box "
                           "with IoU >= 0.5 (the best IoU is 0)"));
  CHECK_THROWS_WITH(det::layout_from_name("yolo"),
                    Equals("unknown detection layout 'yolo'; choose one of torchvision, yolo-nxbx(5+c), yolo-nx(4+c)xb"));
  CHECK_THROWS_WITH(det::matching(det::Detection{}, 0.5), Equals("the reference box [0, 0, 0, 0] is empty (x1 <= x0 or y1 <= y0)"));
  // Score-CAM and the other perturbation methods perturb the input and read class scores
  gradcam::GradCAM score(module, gradcam::GradCAMOptions("backbone.5").methods({Method::gradcam, Method::scorecam}));
  CHECK_THROWS_WITH(score.compute(input, det::boxes(options())),
                    Equals("method 'scorecam' explains class targets (top-k or classes): it runs the model again on "
                           "perturbed inputs and reads their class scores, where a Target::score or Target::ranked "
                           "function cannot be evaluated"));
  // a region head's batch is of boxes
  auto frcnn = load(models().front());
  gradcam::GradCAM heads(frcnn, gradcam::GradCAMOptions("roi_heads.box_roi_pool"));
  CHECK_THROWS_WITH(heads.compute(input.narrow(0, 0, 1)),
                    Equals("the model returns a detector's detections, not class scores; explain its boxes with "
                           "gradcam::detection::boxes() (gradcam explain --task detection)"));
  CHECK_THROWS_WITH(heads.compute(input.narrow(0, 0, 1), det::boxes(det::DetectionOptions().score_threshold(0))),
                    Catch::Matchers::StartsWith("layer 'roi_heads.box_roi_pool' (call 0) gives shape [") &&
                        Catch::Matchers::EndsWith(", 256, 7, 7], whose first dimension is not the batch of 1 image; "
                                                  "choose a layer that sees the whole image (a backbone or FPN layer "
                                                  "of a detector)"));
  CHECK_THROWS_WITH(gradcam::load_operators("/nonexistent/libtorchvision.so"),
                    Equals("operator library '/nonexistent/libtorchvision.so' does not exist"));
  CHECK_THROWS_WITH(gradcam::load_operators(test::fixture("det_yolo_rows.pt")),
                    Catch::Matchers::StartsWith("operator library '" + test::fixture("det_yolo_rows.pt") +
                                                "' could not be loaded: "));
}

// docs/detection.md's picture: on the shipped demo detector (a one-stage grid detector whose box
// reads one cell of backbone.stage4 through a 1x1 head), each box's HiResCAM map peaks at its
// box: element-wise, it stays where the box's gradient is. (Grad-CAM's global channel weights
// light up other digits too: 44% of the 40 scenes' boxes, the docs say; not asserted here.)
TEST_CASE("the demo detector: each box's HiResCAM map peaks in the box", "[detection][demo]") {
  const std::string demo = std::string(std::getenv("GRADCAM_SOURCE_DIR")) + "/examples/demo/";
  auto module = gradcam::load_model(demo + "digits_detector.pt");
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("backbone.stage4").methods({gradcam::Method::hirescam}));
  const auto options = det::DetectionOptions().layout(det::Layout::yolo_rows).score_threshold(0.5);
  int boxes = 0;
  for (const char* scene : {"scene_00.png", "scene_01.png", "scene_02.png", "scene_03.png"}) {
    INFO(scene);
    // one image per call: float32 gradients of a batch are what Debian 13's oneDNN gets wrong
    const at::Tensor x = gradcam::to_tensor(gradcam::load_image(demo + "scenes/" + scene),
                                            gradcam::Preprocess().resize(0).crop(0));
    const auto r = cam.compute(x, det::boxes(options));
    const auto found = det::detect(*r.output, options)[0];
    REQUIRE(!found.empty());
    for (size_t j = 0; j < found.size(); ++j) {
      const at::Tensor map = r.get("backbone.stage4", static_cast<int64_t>(j), 0, gradcam::Method::hirescam).map[0][0];
      const int64_t peak = map.argmax().item<int64_t>();
      const double cx = 8.0 * static_cast<double>(peak % map.size(1)) + 4, cy = 8.0 * static_cast<double>(peak / map.size(1)) + 4;
      INFO("box " << j << " [" << found[j].x0 << ", " << found[j].y0 << ", " << found[j].x1 << ", " << found[j].y1
                  << "], peak cell centre (" << cx << ", " << cy << ")");
      // the peak's 8-pixel cell overlaps the box
      CHECK(cx + 4 > found[j].x0);
      CHECK(cx - 4 < found[j].x1);
      CHECK(cy + 4 > found[j].y0);
      CHECK(cy - 4 < found[j].y1);
      ++boxes;
    }
  }
  CHECK(boxes == 8);  // as the picture shows: 2, 1, 2 and 3
}
