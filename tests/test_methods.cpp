// The CAM family (Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM, Score-CAM, Ablation-CAM, EigenCAM,
// CAM) against the independent PyTorch reference (tests/fixtures/make_method_refs.py), the
// perturbation methods' batching invariant, CAM's head check, and multi-layer fusion.
#include "catch.hpp"

#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/jit/api/module.h>

#include <gradcam/gradcam.hpp>

#include "graph.hpp"  // src/, private: the forward cut at a layer
#include "support.hpp"

using gradcam::Method;

namespace {

constexpr double kTol64 = 1e-8;  // float64 against the float64 reference
constexpr double kTol32 = 1e-3;  // float32 against the float64 reference (see test_gradcam.cpp)

/// Checks every method's maps of `layer` against the reference, for each call it has. The
/// reference keys are the method's name followed by `tag`.
void check_methods(const gradcam::GradCAMResult& r, const test::Ref& ref,
                   const std::vector<Method>& methods, const std::string& layer, int64_t batch,
                   double tol, const std::string& tag = "") {
  for (Method m : methods) {
    const std::string kind = gradcam::method_name(m) + tag;
    int64_t calls = 0;
    while (ref.has(test::key(kind, layer, batch, calls))) ++calls;
    INFO("method " << gradcam::method_name(m) << " layer " << layer);
    REQUIRE(calls > 0);
    for (int64_t c = 0; c < calls; ++c) {
      INFO("call " << c);
      const at::Tensor want = ref.get(test::key(kind, layer, batch, c));
      const at::Tensor got = r.get(layer, 0, c, m).map;
      REQUIRE(got.sizes() == want.sizes());
      REQUIRE(want.abs().max().item<double>() > 0);  // a blank reference would prove nothing
      const double err = test::rel_err(got, want);
      CHECK(err < tol);
    }
  }
}

const std::vector<Method> kGradientMethods = {Method::gradcam, Method::gradcam_pp, Method::xgradcam,
                                              Method::hirescam, Method::layercam};
/// aug_smooth's references: the gradient methods with element-wise terms (aug_smooth_refs)
const std::vector<Method> kAugMethods = {Method::gradcam,  Method::gradcam_pp, Method::xgradcam,
                                         Method::hirescam, Method::layercam,   Method::gradcam_elementwise};

}  // namespace

TEST_CASE("the methods equal the PyTorch reference on resnet18 (float64)", "[methods]") {
  const test::Ref ref("methods_resnet18");
  auto module = test::model("methods_resnet18");
  module.to(at::kDouble);
  const at::Tensor x = ref.get("input").to(at::kDouble);
  const std::vector<Method> methods = {Method::gradcam, Method::gradcam_pp, Method::xgradcam, Method::hirescam,
                                       Method::layercam, Method::eigencam, Method::eigengradcam, Method::kpcacam,
                                       Method::gradcam_elementwise, Method::smoothgradcam_pp, Method::shapleycam,
                                       Method::fullgrad, Method::cam};
  // FullGrad here is its input term only: a fresh resnet18's batch norms add a zero bias (mean 0,
  // bias 0) and its convolutions have none; the toy model's case below has bias terms
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("layer4").methods(methods));
  const auto r = cam.compute(x, gradcam::Target::classes({3, 517}));
  CHECK(test::rel_err(r.logits, ref.get("logits__b2")) < kTol64);
  CHECK(r.maps.size() == methods.size());
  check_methods(r, ref, methods, "layer4", 2, kTol64);
}

TEST_CASE("eigen_smooth: the first principal component of each method's terms (float64)", "[methods]") {
  const test::Ref ref("methods_resnet18");
  auto module = test::model("methods_resnet18");
  module.to(at::kDouble);
  const at::Tensor x = ref.get("input").to(at::kDouble);
  const std::vector<Method> smoothed = {Method::gradcam, Method::gradcam_pp, Method::xgradcam, Method::hirescam,
                                        Method::layercam, Method::gradcam_elementwise, Method::randomcam};
  std::vector<Method> methods = smoothed;
  methods.push_back(Method::eigencam);  // no per-channel terms: unchanged
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("layer4").methods(methods).eigen_smooth(true).keep_weights(true));
  const auto r = cam.compute(x, gradcam::Target::classes({3, 517}));
  check_methods(r, ref, smoothed, "layer4", 2, kTol64, "+eigensmooth");
  check_methods(r, ref, {Method::eigencam}, "layer4", 2, kTol64);
  // the weights are still the method's own
  gradcam::GradCAM plain(module, gradcam::GradCAMOptions("layer4").methods({Method::gradcam}).keep_weights(true));
  CHECK(at::equal(r.get("layer4", 0, 0, Method::gradcam).weights,
                  plain.compute(x, gradcam::Target::classes({3, 517})).maps[0].weights));
}

TEST_CASE("the methods agree in float32 too, Score-CAM and Ablation-CAM on resnet18", "[methods]") {
  const test::Ref ref("methods_resnet18");
  auto module = test::model("methods_resnet18");
  std::vector<Method> methods = gradcam::all_methods();
  methods.pop_back();  // attention rollout: transformers only (test_transformers.cpp)
  // SS-CAM and IS-CAM (35 and 10 forwards per channel of resnet18): referenced on the toy model
  methods.erase(std::remove_if(methods.begin(), methods.end(),
                               [](Method m) { return m == Method::sscam || m == Method::iscam; }),
                methods.end());
  if (test::quick()) methods = {Method::gradcam_pp, Method::eigencam};
  // batch 1: the perturbation methods' reference is for the first sample only
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("layer4").methods(methods).perturbation_batch(128));
  const auto r = cam.compute(ref.get("input").narrow(0, 0, 1), gradcam::Target::classes({3}));
  for (Method m : methods) {
    const bool perturbation = m == Method::scorecam || m == Method::ablationcam;
    if (perturbation) {
      check_methods(r, ref, {m}, "layer4", 1, kTol32, "32");
    } else {
      INFO(gradcam::method_name(m));
      const at::Tensor want = ref.get(test::key(gradcam::method_name(m), "layer4", 2, 0)).narrow(0, 0, 1);
      CHECK(test::rel_err(r.get("layer4", 0, 0, m).map, want) < kTol32);
    }
  }
}

TEST_CASE("every method except CAM equals the reference on the toy model, block called twice", "[methods]") {
  const test::Ref ref("methods_toy");
  auto module = test::model("methods_toy");
  module.to(at::kDouble);
  const at::Tensor x = ref.get("input").to(at::kDouble);
  std::vector<Method> methods = gradcam::all_methods();
  methods.pop_back();  // attention rollout: transformers only (test_transformers.cpp)
  methods.pop_back();  // CAM: see below
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions(std::vector<std::string>{"block", "stem"}).methods(methods).perturbation_batch(5));
  const auto r = cam.compute(x, gradcam::Target::classes({0, 3, 4}));
  check_methods(r, ref, methods, "block", 3, kTol64);
  check_methods(r, ref, methods, "stem", 3, kTol64);
  // maps are ordered rank, layer, call, method
  REQUIRE(r.maps.size() == 3 * methods.size());
  CHECK(r.maps[0].layer == "block");
  CHECK(r.maps[0].call == 0);
  CHECK(r.maps[1].method == Method::gradcam_pp);
  CHECK(r.maps[methods.size()].call == 1);
}

TEST_CASE("the perturbation methods give the same maps for any batch size", "[methods]") {
  auto module = test::model("methods_toy");
  module.to(at::kDouble);
  const test::Ref ref("methods_toy");
  const at::Tensor x = ref.get("input").to(at::kDouble);
  std::vector<at::Tensor> first;
  for (int64_t batch : {1, 3, 7, 1000}) {
    gradcam::GradCAM cam(module, gradcam::GradCAMOptions("block")
                                     .methods({Method::scorecam, Method::ablationcam, Method::sscam, Method::iscam})
                                     .perturbation_batch(batch)
                                     .samples(4));
    const auto r = cam.compute(x, gradcam::Target::topk(2));
    REQUIRE(r.maps.size() == 16);  // 2 ranks x 2 calls x 4 methods
    for (size_t i = 0; i < r.maps.size(); ++i) {
      if (first.size() < r.maps.size()) {
        first.push_back(r.maps[i].map);
      } else {
        INFO("batch " << batch << " map " << i);
        CHECK(test::rel_err(r.maps[i].map, first[i]) < 1e-12);
      }
    }
  }
}

TEST_CASE("SS-CAM and IS-CAM: their limits are Score-CAM, and an image's map does not depend on its batch",
          "[methods]") {
  auto module = test::model("methods_toy");
  module.to(at::kDouble);
  const test::Ref ref("methods_toy");
  const at::Tensor x = ref.get("input").to(at::kDouble);
  const auto target = gradcam::Target::classes({0, 3, 4});
  auto map = [&](Method m, const gradcam::GradCAMOptions& o, const at::Tensor& in, const gradcam::Target& t) {
    return gradcam::GradCAM(module, gradcam::GradCAMOptions(o).methods({m})).compute(in, t).get("stem", 0, 0, m).map;
  };
  const gradcam::GradCAMOptions stem("stem");
  const at::Tensor score = map(Method::scorecam, stem, x, target);
  // no noise: every draw is Score-CAM's; one integration step: c_1 = 1, Score-CAM's masks
  CHECK(test::rel_err(map(Method::sscam, gradcam::GradCAMOptions(stem).noise_std(0).samples(3), x, target), score) < 1e-12);
  CHECK(test::rel_err(map(Method::iscam, gradcam::GradCAMOptions(stem).samples(1), x, target), score) < 1e-12);
  // the noise differs from Score-CAM's masks by something: the default map is not Score-CAM's
  CHECK(test::rel_err(map(Method::sscam, stem, x, target), score) > 1e-3);
  // draw s is seeded with s, not with the image's place in the batch
  for (Method m : {Method::sscam, Method::iscam}) {
    INFO(gradcam::method_name(m));
    const at::Tensor all = map(m, stem, x, target);
    const at::Tensor last = map(m, stem, x.narrow(0, 2, 1), gradcam::Target::classes({4}));
    CHECK(test::rel_err(last, all.narrow(0, 2, 1)) < 1e-12);
  }
  CHECK_THROWS_WITH(gradcam::GradCAM(module, gradcam::GradCAMOptions(stem).methods({Method::sscam}).samples(-2)),
                    "samples must be >= 1 (or 0: the method's default), got -2");
  CHECK_THROWS_WITH(gradcam::GradCAM(module, gradcam::GradCAMOptions(stem).methods({Method::sscam}).noise_std(NAN)),
                    "noise_std must be a finite number >= 0, got nan");
}

TEST_CASE("SmoothGrad-CAM++: without noise it is Grad-CAM++, every rank has its own, an image's map does not "
          "depend on its batch", "[methods]") {
  auto module = test::model("methods_toy");
  module.to(at::kDouble);
  const test::Ref ref("methods_toy");
  const at::Tensor x = ref.get("input").to(at::kDouble);
  const auto smooth = Method::smoothgradcam_pp;
  const std::vector<std::string> layers = {"block", "stem"};
  auto run = [&](const gradcam::GradCAMOptions& o, const at::Tensor& in, const gradcam::Target& t) {
    return gradcam::GradCAM(module, gradcam::GradCAMOptions(o).methods({smooth, Method::gradcam_pp})).compute(in, t);
  };
  // one copy without noise: the copy is the input, the means are g, g^2, g^3: Grad-CAM++ exactly
  const auto plain = run(gradcam::GradCAMOptions(layers).samples(1).noise_std(0), x, gradcam::Target::topk(2));
  REQUIRE(plain.maps.size() == 12);  // 2 ranks x (block twice, stem once) x 2 methods
  for (size_t i = 0; i < plain.maps.size(); i += 2) {
    INFO("map " << i);
    REQUIRE(plain.maps[i].method == smooth);
    CHECK(test::rel_err(plain.maps[i].map, plain.maps[i + 1].map) < 1e-12);
  }
  // the defaults (4 copies, 0.3): the second rank equals that class explained alone
  const auto top2 = run(gradcam::GradCAMOptions("stem"), x, gradcam::Target::topk(2));
  const at::Tensor second = top2.classes.select(1, 1).contiguous();
  std::vector<int64_t> cls(second.data_ptr<int64_t>(), second.data_ptr<int64_t>() + second.numel());
  const auto alone = run(gradcam::GradCAMOptions("stem"), x, gradcam::Target::classes(cls));
  CHECK(test::rel_err(top2.get("stem", 1, 0, smooth).map, alone.get("stem", 0, 0, smooth).map) < 1e-12);
  CHECK(test::rel_err(top2.get("stem", 0, 0, smooth).map, top2.get("stem", 0, 0, Method::gradcam_pp).map) > 1e-3);
  // the noise of copy s is seeded with s, the same for every image
  const at::Tensor last = run(gradcam::GradCAMOptions("stem"), x.narrow(0, 2, 1), gradcam::Target::classes({cls[2]}))
                              .get("stem", 0, 0, smooth).map;
  CHECK(test::rel_err(last, alone.get("stem", 0, 0, smooth).map.narrow(0, 2, 1)) < 1e-12);
  // no counterfactual form: its gradients are the noisy copies', not the input's
  CHECK_THROWS_WITH(gradcam::GradCAM(module, gradcam::GradCAMOptions("stem").methods({smooth}).counterfactual(true)),
                    "counterfactual maps come from negated gradients; method 'smoothgradcam++' does not use gradients "
                    "(use gradcam, gradcam++, xgradcam, hirescam or layercam)");
  CHECK(gradcam::method_from_name("SmoothGradCAMpp") == smooth);
}

TEST_CASE("FullGrad: every bias layer's gradient and the input's, scripted and traced, any named layer, every rank "
          "(float64)", "[methods]") {
  const test::Ref ref("methods_toy");
  const at::Tensor x = ref.get("input").to(at::kDouble);
  const at::Tensor want = ref.get(test::key("fullgrad", "stem", 3, 0));
  REQUIRE(want.abs().max().item<double>() > 0);
  auto scripted = test::model("methods_toy");
  auto traced = test::model("methods_toy_traced");
  scripted.to(at::kDouble);
  traced.to(at::kDouble);  // a traced batch norm keeps eps in its graph only: its bias is read by running it
  // the named layer does not change the map: a plain one, a bias layer itself (one capture for both)
  for (const char* layer : {"stem", "block.bn", "block.conv"}) {
    INFO(layer);
    for (auto* module : {&scripted, &traced}) {
      gradcam::GradCAM cam(*module, gradcam::GradCAMOptions(layer).methods({Method::fullgrad, Method::gradcam}));
      const auto r = cam.compute(x, gradcam::Target::classes({0, 3, 4}));
      CHECK(test::rel_err(r.get(layer, 0, 0, Method::fullgrad).map, want) < kTol64);
      if (std::string(layer) == "stem") {  // the input's gradient taken for FullGrad leaves Grad-CAM as it is
        CHECK(test::rel_err(r.get("stem", 0, 0, Method::gradcam).map, ref.get(test::key("gradcam", "stem", 3, 0))) <
              kTol64);
      }
    }
  }
  // each rank has its own backward pass: rank 1 of top-2 is each image's second class
  gradcam::GradCAM cam(scripted, gradcam::GradCAMOptions("stem").methods({Method::fullgrad}));
  const auto top2 = cam.compute(x, gradcam::Target::topk(2));
  CHECK(at::equal(top2.classes.select(1, 1), ref.get("second_classes").to(at::kLong)));
  CHECK(test::rel_err(top2.get("stem", 1, 0, Method::fullgrad).map, ref.get("fullgrad_rank1")) < kTol64);
  CHECK_THROWS_WITH(gradcam::GradCAM(scripted, gradcam::GradCAMOptions("stem").methods({Method::fullgrad})
                                                   .counterfactual(true)),
                    "counterfactual maps come from negated gradients; method 'fullgrad' sums absolute values "
                    "(|x dy/dx| and |b dy/db|), which negated gradients leave unchanged: it has no counterfactual "
                    "form");
  auto frozen = test::model("resnet18_frozen");
  CHECK_THROWS_WITH(gradcam::GradCAM(frozen, gradcam::GradCAMOptions("%input.5").methods({Method::fullgrad})),
                    "FullGrad needs the layers that add a bias (torch.nn.Conv2d with a bias, BatchNorm2d), and this "
                    "model has none (it has no submodules: a frozen model has them folded away)");
}

TEST_CASE("aug_smooth: the mean of the flipped and scaled copies' maps, each explaining the image's class (float64)",
          "[methods]") {
  const std::vector<Method>& methods = kAugMethods;
  {
    const test::Ref ref("methods_resnet18");
    auto module = test::model("methods_resnet18");
    module.to(at::kDouble);
    const at::Tensor x = ref.get("input").to(at::kDouble);
    gradcam::GradCAM cam(module, gradcam::GradCAMOptions("layer4").methods(methods).aug_smooth(true));
    const auto r = cam.compute(x, gradcam::Target::classes({3, 517}));
    check_methods(r, ref, methods, "layer4", 2, kTol64, "+aug");
    // everything but the maps is the unaugmented input's
    const auto plain = gradcam::GradCAM(module, gradcam::GradCAMOptions("layer4")).compute(x, gradcam::Target::classes({3, 517}));
    CHECK(at::equal(r.logits, plain.logits));
    CHECK(at::equal(r.scores, plain.scores));
    CHECK(at::equal(r.classes, plain.classes));
    CHECK(at::equal(r.output->toTensor(), plain.output->toTensor()));
    CHECK(test::rel_err(r.get("layer4").map, plain.get("layer4").map) > 1e-3);  // the copies do count
  }
  const test::Ref ref("methods_toy");
  auto module = test::model("methods_toy");
  module.to(at::kDouble);
  const at::Tensor x = ref.get("input").to(at::kDouble);
  const auto opts = gradcam::GradCAMOptions("block").methods(methods).aug_smooth(true).keep_weights(true);
  const auto r = gradcam::GradCAM(module, opts).compute(x, gradcam::Target::classes({0, 3, 4}));
  check_methods(r, ref, methods, "block", 3, kTol64, "+aug");  // the block is called twice
  CHECK(r.get("block").weights.size(0) == 3);
  // top-k is read on the image itself, not per copy
  const auto top = gradcam::GradCAM(module, opts).compute(x, gradcam::Target::topk(2));
  const at::Tensor c1 = top.classes.select(1, 1).contiguous();
  const auto second = gradcam::GradCAM(module, opts).compute(
      x, gradcam::Target::classes(std::vector<int64_t>(c1.data_ptr<int64_t>(), c1.data_ptr<int64_t>() + 3)));
  CHECK(test::rel_err(top.get("block", 1).map, second.get("block").map) < 1e-12);
  // what cannot be mapped back is refused
  CHECK_THROWS_WITH(gradcam::GradCAM(module, opts).compute(x, gradcam::Target::score([](const c10::IValue& o) {
                      return o.toTensor().select(1, 0);
                    })),
                    "aug_smooth explains class targets (top-k or classes): a Target::score or Target::ranked function "
                    "may read places in the image (boxes, masks), which the flipped copies move");
  CHECK_THROWS_WITH(gradcam::GradCAM(module, gradcam::GradCAMOptions(opts).guided(gradcam::GuidedMode::guided)),
                    "aug_smooth averages CAM maps over flipped copies of the input; guided gradients are not averaged "
                    "that way: compute them without aug_smooth");
  CHECK_THROWS_WITH(gradcam::GradCAM(module, opts).compute(x, gradcam::Target::classes({0, 3})),
                    "got 2 class indices for a batch of 3; give one per sample or one for all");
}

TEST_CASE("aug_scales: the six copies at more input sizes, maps resized to the input's own and averaged, explaining "
          "the classes read at the input's own size (float64)", "[methods]") {
  const std::vector<Method>& methods = kAugMethods;
  const test::Ref ref("methods_toy");
  auto module = test::model("methods_toy");
  module.to(at::kDouble);
  const at::Tensor x = ref.get("input").to(at::kDouble);
  // 16x16 input: 12x12 and 21x21 more; 1 adds nothing
  const auto opts = gradcam::GradCAMOptions("block").methods(methods).aug_smooth(true).aug_scales({0.75, 1.0, 1.3});
  const auto r = gradcam::GradCAM(module, opts).compute(x, gradcam::Target::classes({0, 3, 4}));
  check_methods(r, ref, methods, "block", 3, kTol64, "+aug3");
  CHECK(test::rel_err(r.get("block").map, ref.get(test::key("gradcam+aug", "block", 3, 0))) > 1e-3);  // sizes count
  // the other sizes explain the classes of the image itself: top-2's second rank is those classes
  const auto top = gradcam::GradCAM(module, opts).compute(x, gradcam::Target::topk(2));
  const at::Tensor c1 = top.classes.select(1, 1).contiguous();
  const auto second = gradcam::GradCAM(module, opts).compute(
      x, gradcam::Target::classes(std::vector<int64_t>(c1.data_ptr<int64_t>(), c1.data_ptr<int64_t>() + 3)));
  CHECK(test::rel_err(top.get("block", 1).map, second.get("block").map) < 1e-12);
  CHECK_THROWS_WITH(gradcam::GradCAM(module, gradcam::GradCAMOptions("block").aug_scales({0.75})),
                    "aug_scales adds input sizes to aug_smooth; set aug_smooth too");
  CHECK_THROWS_WITH(gradcam::GradCAM(module, gradcam::GradCAMOptions(opts).aug_scales({0.5, 0})),
                    "aug_scales: each factor must be in (0, 4], got 0");
}

TEST_CASE("Deep Feature Factorization equals the reference's NMF on resnet18's layer4, and converges where an exact "
          "factorisation exists", "[methods]") {
  const test::Ref ref("methods_resnet18");
  auto module = test::model("methods_resnet18");
  module.to(at::kDouble);
  const at::Tensor x = ref.get("input").to(at::kDouble);
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("layer4").methods({Method::eigencam}).keep_activations(true));
  const at::Tensor a = cam.compute(x).maps[0].activations;
  const auto f = gradcam::factorize(a, gradcam::FactorizationOptions().components(4).iterations(50));
  CHECK(test::rel_err(f.concepts, ref.get("dff_concepts")) < kTol64);
  CHECK(test::rel_err(f.maps, ref.get("dff_maps")) < kTol64);
  CHECK(f.residual == Approx(ref.get("dff_residual").item<double>()).epsilon(1e-8));
  CHECK(f.maps.min().item<double>() >= 0);
  const at::Tensor fc_w = module.attr("fc").toModule().attr("weight").toTensor();
  const at::Tensor fc_b = module.attr("fc").toModule().attr("bias").toTensor();
  CHECK(test::rel_err(gradcam::concept_scores(f, fc_w, fc_b), ref.get("dff_scores")) < kTol64);
  // X = W0 H0 with W0, H0 >= 0 and a zero column (so no channel is shifted): the residual falls
  // with the iterations towards 0 (measured by make_method_refs.py's dff_ref on the same matrix:
  // 0.135, 0.0267, 0.00285, 0.000876 after 10, 100, 1000, 2000)
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const at::Tensor w0 = at::rand({16, 3}, gen, at::TensorOptions().dtype(at::kDouble));
  at::Tensor h0 = at::rand({3, 50}, gen, at::TensorOptions().dtype(at::kDouble));
  h0.select(1, 0).zero_();
  const at::Tensor exact = at::matmul(w0, h0).view({16, 2, 5, 5}).transpose(0, 1);
  double previous = 1;
  for (int64_t it : {10, 100, 1000, 2000}) {
    const double r = gradcam::factorize(exact, gradcam::FactorizationOptions().components(3).iterations(it)).residual;
    INFO(it << " iterations: residual " << r);
    CHECK(r < previous);
    previous = r;
  }
  CHECK(previous < 1e-3);
  CHECK_THROWS_WITH(gradcam::factorize(a, gradcam::FactorizationOptions().components(513)),
                    "components must be from 1 to the 512 channels, got 513");
  CHECK_THROWS_WITH(gradcam::factorize(a.sum(3)), "factorize needs activations [N, K, h, w], got [2, 512, 3]");
  CHECK_THROWS_WITH(gradcam::concept_scores(f, fc_w.t()),
                    "the linear head's weight must be [classes, 512] for concepts of 512 channels, got [512, 1000]");
}

TEST_CASE("CAM reads the linear layer and refuses layers that are not pooled into it", "[methods][errors]") {
  // Tiny: 1x1 conv -> spatial mean -> linear: CAM on 'conv' is sum_k W_ck A_k, computed by hand.
  auto tiny = test::model("tiny_script");
  const at::Tensor x = at::rand({1, 3, 2, 2}, at::kDouble);
  tiny.to(at::kDouble);
  gradcam::GradCAM cam(tiny, gradcam::GradCAMOptions("conv").methods({Method::cam}).keep_signed(true));
  const auto r = cam.compute(x, gradcam::Target::classes({1}));
  const at::Tensor conv_w = at::tensor({1.0, 0.0, -1.0, 0.5, 0.5, 0.0}, at::kDouble).view({2, 3});
  const at::Tensor a = at::einsum("kc,nchw->nkhw", {conv_w, x});
  const at::Tensor want = -1.0 * a.select(1, 0) + 3.0 * a.select(1, 1);  // fc row 1 = [-1, 3]
  CHECK(test::rel_err(r.maps[0].map_signed.squeeze(1), want) < 1e-12);

  auto toy = test::model("methods_toy");
  // The first call of 'block' is not pooled into the head: CAM must refuse, naming the layer.
  gradcam::GradCAM bad(toy, gradcam::GradCAMOptions("block").methods({Method::cam}));
  CHECK_THROWS_WITH(bad.compute(at::randn({1, 3, 16, 16})),
                    test::Contains("CAM does not apply to layer 'block'"));
  gradcam::GradCAM named(toy, gradcam::GradCAMOptions("stem").methods({Method::cam}).cam_linear("nope"));
  CHECK_THROWS_WITH(named.compute(at::randn({1, 3, 16, 16})), test::Contains("'nope'"));
  auto frozen = test::model("resnet18_frozen");
  gradcam::GradCAM fz(frozen, gradcam::GradCAMOptions("auto").methods({Method::cam}).probe_shape({1, 3, 64, 64}));
  CHECK_THROWS_WITH(fz.compute(at::randn({1, 3, 64, 64})), test::Contains("frozen"));
}

TEST_CASE("method names, bad method options", "[methods][errors]") {
  for (Method m : gradcam::all_methods()) CHECK(gradcam::method_from_name(gradcam::method_name(m)) == m);
  CHECK(gradcam::method_from_name("Grad-CAM++") == Method::gradcam_pp);
  CHECK(gradcam::method_from_name("ScoreCAM") == Method::scorecam);
  CHECK_THROWS_WITH(gradcam::method_from_name("smoothgrad"),
                    test::Contains("'smoothgrad'") && test::Contains("gradcam++"));
  auto toy = test::model("methods_toy");
  CHECK_THROWS_WITH(gradcam::GradCAM(toy, gradcam::GradCAMOptions("stem").methods({Method::scorecam}).counterfactual(true)),
                    test::Contains("scorecam"));
  CHECK_THROWS_WITH(gradcam::GradCAM(toy, gradcam::GradCAMOptions("stem").methods({})),
                    test::Contains("methods is empty"));
  CHECK_THROWS_WITH(gradcam::GradCAM(toy, gradcam::GradCAMOptions("stem").methods({Method::gradcam, Method::gradcam})),
                    test::Contains("twice"));
  CHECK_THROWS_WITH(gradcam::GradCAM(toy, gradcam::GradCAMOptions("stem").methods({Method::scorecam}).perturbation_batch(-1)),
                    test::Contains("perturbation_batch"));
  gradcam::GradCAM sc(toy, gradcam::GradCAMOptions("stem").methods({Method::scorecam}));
  auto fn = [](const c10::IValue& out) { return out.toTensor().sum(1); };
  CHECK_THROWS_WITH(sc.compute(at::randn({1, 3, 16, 16}), gradcam::Target::score(fn)),
                    test::Contains("class targets"));
}

TEST_CASE("counterfactual gradient methods negate the gradients", "[methods]") {
  // In float64: this compares two calls, and Debian 13's oneDNN makes float32 convolution
  // gradients differ from call to call (NaN in some) on some CPUs (docs/reliability.md).
  auto toy = test::model("methods_toy");
  test::to_double(toy);
  const at::Tensor x = at::randn({2, 3, 16, 16}, at::kDouble);
  const std::vector<Method> methods = {Method::gradcam, Method::xgradcam, Method::hirescam, Method::layercam};
  gradcam::GradCAM plain(toy, gradcam::GradCAMOptions("stem").methods(methods).keep_signed(true)
                                  .keep_gradients(true).keep_activations(true));
  gradcam::GradCAM cf(toy, gradcam::GradCAMOptions("stem").methods(methods).counterfactual(true));
  const auto a = plain.compute(x);
  const auto b = cf.compute(x);
  REQUIRE(a.maps.size() == 4);
  REQUIRE(b.maps.size() == 4);
  // Grad-CAM, XGrad-CAM and HiResCAM are linear in the gradient: the signed map flips.
  for (size_t i = 0; i < 3; ++i) {
    INFO(gradcam::method_name(a.maps[i].method));
    CHECK(test::rel_err(b.maps[i].map, at::relu(-a.maps[i].map_signed)) < 1e-5);
  }
  // LayerCAM keeps the positive part of -g.
  const at::Tensor want = at::relu((at::relu(-a.maps[3].gradients) * a.maps[3].activations).sum(1, true));
  CHECK(test::rel_err(b.maps[3].map, want) < 1e-5);
}

TEST_CASE("fuse: mean and max of normalised, upsampled maps", "[methods]") {
  const at::Tensor m1 = at::tensor({0.0, 2.0, 4.0, 8.0}).view({1, 1, 2, 2});
  const at::Tensor m2 = at::tensor({1.0, 1.0, 1.0, 3.0}).view({1, 1, 2, 2});
  const at::Tensor mean = gradcam::fuse({m1, m2}, gradcam::Fusion::mean, {2, 2});
  const at::Tensor max = gradcam::fuse({m1, m2}, gradcam::Fusion::max, {2, 2});
  // normalised: m1 -> 0, .25, .5, 1; m2 -> 0, 0, 0, 1
  CHECK(at::allclose(mean.flatten(), at::tensor({0.0, 0.125, 0.25, 1.0})));
  CHECK(at::allclose(max.flatten(), at::tensor({0.0, 0.25, 0.5, 1.0})));
  // different resolutions: both are upsampled to the requested size first
  const at::Tensor small = at::ones({1, 1, 1, 1});
  CHECK(gradcam::fuse({m1, small}, gradcam::Fusion::max, {4, 4}).sizes() == at::IntArrayRef({1, 1, 4, 4}));
  CHECK_THROWS_WITH(gradcam::fuse({}, gradcam::Fusion::mean, {2, 2}), test::Contains("at least one"));
  CHECK_THROWS_WITH(gradcam::fuse({m1, at::ones({2, 1, 2, 2})}, gradcam::Fusion::mean, {2, 2}),
                    test::Contains("batch"));
}

// Ablation-CAM reruns only what follows the layer, through the forward cut there
// (src/graph_split.cpp); the maps above, equal to the reference, come through it on resnet18's
// layer4 and the toy's stem, and through whole reruns on the toy's block, which runs twice.
TEST_CASE("the forward cut at a layer gives the model's own output, sample by sample", "[methods][split]") {
  using gradcam::detail::CaptureContext;
  using gradcam::detail::SplitForward;
  const test::Ref ref("methods_resnet18");
  auto module = test::model("methods_resnet18");
  module.to(at::kDouble);
  const at::Tensor x = ref.get("input").to(at::kDouble);
  gradcam::detail::RewriteSpec spec;
  spec.layers = {"layer4"};
  const gradcam::detail::Forward forward(module, spec);
  const auto split = SplitForward::make(forward, 0);
  REQUIRE(split != nullptr);
  CaptureContext first_ctx(forward.slots(), CaptureContext::Mode::perturb);
  const SplitForward::First first = split->first(x, first_ctx);
  REQUIRE(first.batch == 2);
  CHECK(first.layer_output.size(0) == 2);
  CHECK(first.layer_output.size(1) == 512);  // layer4's channels
  // samples out of order and repeated, as Ablation-CAM's batches of (sample, channel) are
  const at::Tensor rows = at::tensor({1, 0, 1, 1}, at::kLong);
  CaptureContext second_ctx(forward.slots(), CaptureContext::Mode::perturb);
  const at::Tensor got = split->second(first, rows, first.layer_output.index_select(0, rows), second_ctx).toTensor();
  c10::InferenceMode no_grad;
  const at::Tensor want = module.forward({x}).toTensor().index_select(0, rows);  // the model's own forward
  CHECK(test::rel_err(got, want) < 1e-12);

  auto toy = test::model("methods_toy");
  spec.layers = {"block", "stem"};
  const gradcam::detail::Forward toy_forward(toy, spec);
  CHECK(SplitForward::make(toy_forward, 0) == nullptr);  // block runs twice: no one place to cut
  CHECK(SplitForward::make(toy_forward, 1) != nullptr);
}

TEST_CASE("RandomCAM: reproducible weights, uniform in [-1, 1], and a map that is their weighted sum", "[methods]") {
  // (its map equals the PyTorch reference in the cases above, which draw the same seeded numbers)
  const test::Ref ref("methods_resnet18");
  auto module = test::model("methods_resnet18");
  const at::Tensor x = ref.get("input");
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("layer4").methods({Method::randomcam}).keep_weights(true)
                                   .keep_activations(true).keep_signed(true));
  const auto r = cam.compute(x, gradcam::Target::classes({3, 517}));
  const auto& m = r.get("layer4", 0, 0, Method::randomcam);
  CHECK(at::equal(m.map, cam.compute(x, gradcam::Target::classes({3, 517})).get("layer4", 0, 0, Method::randomcam).map));
  const at::Tensor w = m.weights.to(at::kDouble);
  REQUIRE(w.sizes() == std::vector<int64_t>{2, 512});
  CHECK(w.min().item<double>() >= -1);
  CHECK(w.max().item<double>() <= 1);
  CHECK_FALSE(at::equal(w[0], w[1]));  // each sample draws its own
  // 1,024 uniform draws on [-1, 1]: mean 0 (standard error sqrt(1/3 / 1024) = 0.018) and variance
  // 1/3 (standard error sqrt((1/5 - 1/9) / 1024) = 0.0093); 4 standard errors each
  const double n = 1024;
  CHECK(std::abs(w.mean().item<double>()) < 4 * std::sqrt(1.0 / 3 / n));
  CHECK(std::abs(w.var(/*unbiased=*/false).item<double>() - 1.0 / 3) < 4 * std::sqrt((1.0 / 5 - 1.0 / 9) / n));
  // the signed map is sum_k w_k A_k, computed here in float64
  const at::Tensor a = m.activations.to(at::kDouble);
  const at::Tensor want = (w.view({2, 512, 1, 1}) * a).sum(1, true);
  CHECK(test::rel_err(m.map_signed, want) < 1e-5);
}
