// Targets beyond a class score (segmentation regions, embedding similarity, any scalar) against
// the independent PyTorch reference of tests/fixtures/make_method_refs.py, and their errors.
#include "catch.hpp"

#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>

#include <gradcam/gradcam.hpp>

#include "support.hpp"

namespace tg = gradcam::targets;

namespace {
constexpr double kTol64 = 1e-8;

at::Tensor cam_of(torch::jit::Module& m, const at::Tensor& x, const gradcam::Target& t) {
  gradcam::GradCAM cam(m, gradcam::GradCAMOptions("backbone"));
  return cam.compute(x, t).maps.at(0).map;
}
}  // namespace

TEST_CASE("segmentation targets: box, mask, predicted pixels", "[targets]") {
  const test::Ref ref("targets_seg");
  auto m = test::model("targets_seg");
  m.to(at::kDouble);
  const at::Tensor x = ref.get("input").to(at::kDouble);
  const at::Tensor box = ref.get("box");
  std::vector<int64_t> b(box.data_ptr<int64_t>(), box.data_ptr<int64_t>() + 4);
  const at::Tensor want_box = ref.get(test::key("seg_box", "backbone", 2, 0));
  REQUIRE(want_box.abs().max().item<double>() > 0);
  CHECK(test::rel_err(cam_of(m, x, tg::segmentation_box(2, b)), want_box) < kTol64);
  const at::Tensor want_mask = ref.get(test::key("seg_mask", "backbone", 2, 0));
  CHECK(test::rel_err(cam_of(m, x, tg::segmentation(1, ref.get("mask"))), want_mask) < kTol64);
  const int64_t cls = ref.get("pred_class").item<int64_t>();
  const at::Tensor want_pred = ref.get(test::key("seg_pred_mean", "backbone", 2, 0));
  CHECK(test::rel_err(cam_of(m, x, tg::segmentation(cls, at::Tensor(), tg::Reduction::mean)), want_pred) < kTol64);
  // the box equals the same box given as a mask
  at::Tensor mask = at::zeros({32, 32});
  mask.narrow(0, b[1], b[3] - b[1] + 1).narrow(1, b[0], b[2] - b[0] + 1).fill_(1);
  CHECK(test::rel_err(cam_of(m, x, tg::segmentation(2, mask)), want_box) < kTol64);
}

TEST_CASE("embedding similarity and any scalar of a tuple output", "[targets]") {
  const test::Ref ref("targets_embed");
  auto m = test::model("targets_embed");
  m.to(at::kDouble);
  const at::Tensor x = ref.get("input").to(at::kDouble);
  // the reference embedding of a second image, computed here through the model
  at::Tensor reference;
  {
    c10::NoGradGuard no_grad;
    reference = m.forward({ref.get("other").to(at::kDouble)}).toTuple()->elements()[0].toTensor()[0];
  }
  CHECK(test::rel_err(reference, ref.get("reference")) < kTol64);
  const at::Tensor want = ref.get(test::key("similarity", "backbone", 2, 0));
  REQUIRE(want.abs().max().item<double>() > 0);
  CHECK(test::rel_err(cam_of(m, x, tg::similarity(reference, "0")), want) < kTol64);
  CHECK(test::rel_err(cam_of(m, x, tg::similarity(reference)), want) < kTol64);  // first element by default
  CHECK(test::rel_err(cam_of(m, x, tg::output("1", {2})), ref.get(test::key("scalar", "backbone", 2, 0))) < kTol64);
  // the explained score is the cosine similarity itself
  gradcam::GradCAM cam(m, gradcam::GradCAMOptions("backbone"));
  const auto r = cam.compute(x, tg::similarity(reference, "0"));
  CHECK(r.scores.max().item<double>() <= 1.0);
  CHECK(r.classes.eq(-1).all().item<bool>());
}

TEST_CASE("Finer-CAM: the class against the classes nearest in score", "[targets]") {
  const test::Ref ref("targets_embed");
  auto m = test::model("targets_embed");
  m.to(at::kDouble);
  const at::Tensor x = ref.get("input").to(at::kDouble);
  // top-1 against its 3 nearest classes (alpha 1), on the tuple's logits (element "1")
  const at::Tensor want = ref.get(test::key("finer", "backbone", 2, 0));
  REQUIRE(want.abs().max().item<double>() > 0);
  CHECK(test::rel_err(cam_of(m, x, tg::finer({}, 3, 1.0, "1")), want) < kTol64);
  // class 2 for both samples against its 2 nearest, alpha 0.5
  const at::Tensor want2 = ref.get(test::key("finer_c2_r2_a05", "backbone", 2, 0));
  REQUIRE(want2.abs().max().item<double>() > 0);
  CHECK(test::rel_err(cam_of(m, x, tg::finer({2}, 2, 0.5, "1")), want2) < kTol64);
  // the result names the classes explained: the top-1, or the one given
  gradcam::GradCAM cam(m, gradcam::GradCAMOptions("backbone"));
  at::Tensor logits;
  {
    c10::NoGradGuard no_grad;
    logits = m.forward({x}).toTuple()->elements()[1].toTensor();
  }
  CHECK(at::equal(cam.compute(x, tg::finer({}, 3, 1.0, "1")).classes.squeeze(1), logits.argmax(1)));
  CHECK(cam.compute(x, tg::finer({2}, 2, 0.5, "1")).classes.eq(2).all().item<bool>());
  // bad values, by name
  CHECK_THROWS_WITH(cam.compute(x, tg::finer({}, 5, 1.0, "1")),
                    "Finer-CAM: 5 reference classes asked for, but the output has 5 classes (at most 4 references)");
  CHECK_THROWS_WITH(cam.compute(x, tg::finer({7}, 3, 1.0, "1")), "class 7 is out of range: the output has 5 classes");
  auto seg = test::model("targets_seg");  // a dict of per-pixel scores [N, 4, 32, 32]: no class scores
  gradcam::GradCAM cs(seg, gradcam::GradCAMOptions("backbone"));
  CHECK_THROWS_WITH(cs.compute(at::randn({1, 3, 32, 32}), tg::finer({}, 3, 1.0, "out")),
                    "Finer-CAM compares class scores: it needs an output [N, classes]; it has shape [1, 4, 32, 32]");
  CHECK_THROWS_WITH(tg::finer({}, 0), "Finer-CAM needs at least 1 reference class, got 0");
}

TEST_CASE("bad targets name the bad value", "[targets][errors]") {
  auto seg = test::model("targets_seg");
  auto emb = test::model("targets_embed");
  const at::Tensor xs = at::randn({1, 3, 32, 32});
  const at::Tensor xe = at::randn({1, 3, 16, 16});
  gradcam::GradCAM cs(seg, gradcam::GradCAMOptions("backbone"));
  gradcam::GradCAM ce(emb, gradcam::GradCAMOptions("backbone"));
  CHECK_THROWS_WITH(cs.compute(xs, tg::segmentation(9)), test::Contains("class 9 is out of range") && test::Contains("4 classes"));
  CHECK_THROWS_WITH(cs.compute(xs, tg::segmentation(1, at::ones({8, 8}))), test::Contains("[8, 8]") && test::Contains("[32, 32]"));
  CHECK_THROWS_WITH(cs.compute(xs, tg::segmentation(1, at::zeros({32, 32}))), test::Contains("empty"));
  CHECK_THROWS_WITH(cs.compute(xs, tg::segmentation_box(1, {0, 0, 40, 3})), test::Contains("outside the output"));
  CHECK_THROWS_WITH(tg::segmentation_box(1, {5, 0, 2, 3}), test::Contains("x0 <= x1"));
  CHECK_THROWS_WITH(cs.compute(xs, tg::segmentation(1, at::Tensor(), tg::Reduction::sum, "logits")),
                    test::Contains("no entry 'logits'") && test::Contains("'out'"));
  CHECK_THROWS_WITH(ce.compute(xe, tg::similarity(at::ones({7}), "0")), test::Contains("[7]") && test::Contains("[1, 8]"));
  CHECK_THROWS_WITH(tg::similarity(at::zeros({8})), test::Contains("non-zero"));
  CHECK_THROWS_WITH(ce.compute(xe, tg::output("2")), test::Contains("out of range") && test::Contains("2 elements"));
  CHECK_THROWS_WITH(ce.compute(xe, tg::output("1", {5})), test::Contains("index 5 is out of range"));
  CHECK_THROWS_WITH(ce.compute(xe, tg::output("1")), test::Contains("give 1 index"));
  CHECK_THROWS_WITH(ce.compute(xe, tg::output("scores")), test::Contains("select one by index"));
}
