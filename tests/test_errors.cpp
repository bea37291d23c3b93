// Bad input: each error names the bad value and, where it helps, the valid choices.
#include "catch.hpp"

#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>

#include <cstdio>
#include <fstream>
#include <limits>

#include <gradcam/gradcam.hpp>

#include "support.hpp"

using test::Contains;

TEST_CASE("model files: missing, not TorchScript, truncated", "[errors]") {
  REQUIRE_THROWS_WITH(gradcam::load_model("/no/such/model.pt"),
                      Contains("'/no/such/model.pt' does not exist"));
  const std::string junk = test::fixtures() + "/junk.pt";
  { std::ofstream(junk) << "this is not a model"; }
  REQUIRE_THROWS_WITH(gradcam::load_model(junk),
                      Contains("is not a readable TorchScript model") && Contains("torch.jit.save"));
  std::ifstream in(test::fixture("toy_script.pt"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(bytes.size() > 100);
  REQUIRE_NOTHROW(gradcam::load_model_from_bytes(bytes));
  REQUIRE_THROWS_WITH(gradcam::load_model_from_bytes(bytes.substr(0, bytes.size() / 2)),
                      Contains("not a readable TorchScript model"));
  REQUIRE_THROWS_WITH(gradcam::load_model_from_bytes(""), Contains("empty"));
}

TEST_CASE("unknown layers suggest the closest names", "[errors]") {
  auto module = test::model("resnet18_script");
  REQUIRE_THROWS_WITH(gradcam::GradCAM(module, gradcam::GradCAMOptions("layr4")),
                      Contains("layer 'layr4' not found") && Contains("did you mean 'layer4'") &&
                          Contains("gradcam layers"));
  auto frozen = test::model("resnet18_frozen");
  REQUIRE_THROWS_WITH(gradcam::GradCAM(frozen, gradcam::GradCAMOptions("layer4")),
                      Contains("frozen") && Contains("auto"));
  REQUIRE_THROWS_WITH(gradcam::GradCAM(frozen, gradcam::GradCAMOptions("%nonexistent")),
                      Contains("graph value '%nonexistent' not found"));
}

TEST_CASE("layers that are not tensors, not called, or not spatial", "[errors]") {
  auto odd = test::model("odd_script");
  REQUIRE_THROWS_WITH(gradcam::GradCAM(odd, gradcam::GradCAMOptions("split")),
                      Contains("layer 'split' returns") && Contains("not a tensor"));
  REQUIRE_THROWS_WITH(gradcam::GradCAM(odd, gradcam::GradCAMOptions("unused")),
                      Contains("layer 'unused'") && Contains("never calls it"));
  auto module = test::model("resnet18_script");
  gradcam::GradCAM fc(module, gradcam::GradCAMOptions("fc"));
  REQUIRE_THROWS_WITH(fc.compute(at::zeros({1, 3, 64, 64})),
                      Contains("layer 'fc' outputs shape [1, 1000]") && Contains("spatial"));
}

TEST_CASE("a channels-last layer is read as its grid: the same map as its permutation to channels first", "[errors]") {
  // A ConvNeXt-style block: 'mlp' runs channels last [N, h, w, C]; 'to_first' permutes it back, so
  // its activations and gradients are mlp's, permuted, and the two maps must be equal.
  // Transformers' token layers: test_transformers.cpp.
  auto cl = test::model("channels_last_script");
  const at::Tensor x = at::randn({2, 3, 64, 64});
  gradcam::GradCAM both(cl, gradcam::GradCAMOptions(std::vector<std::string>{"mlp", "to_first"}));
  const auto r = both.compute(x);
  REQUIRE(r.get("mlp").map.sizes() == at::IntArrayRef({2, 1, 16, 16}));
  CHECK(r.get("mlp").layout.kind == gradcam::TokenLayout::Kind::channels_last);
  CHECK(r.get("to_first").layout.kind == gradcam::TokenLayout::Kind::channels_first);
  CHECK(test::rel_err(r.get("mlp").map, r.get("to_first").map) < 1e-6);
  CHECK(gradcam::list_layers(cl, std::vector<int64_t>{1, 3, 64, 64}).auto_layer == "to_first");
}

TEST_CASE("bad inputs", "[errors]") {
  auto module = test::model("resnet18_script");
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("layer4"));
  REQUIRE_THROWS_WITH(cam.compute(at::zeros({3, 64, 64})),
                      Contains("input has shape [3, 64, 64]") && Contains("4-D"));
  REQUIRE_THROWS_WITH(cam.compute(at::zeros({1, 1, 64, 64})),
                      Contains("input has 1 channels") && Contains("expects 3"));
  REQUIRE_THROWS_WITH(cam.compute(at::zeros({0, 3, 64, 64})), Contains("batch is empty"));
  REQUIRE_THROWS_WITH(cam.compute(at::zeros({1, 3, 64, 64}, at::kInt)), Contains("dtype"));
  at::Tensor nan = at::zeros({2, 3, 64, 64});
  nan[1][2][3][4] = std::numeric_limits<float>::quiet_NaN();
  nan[0][0][0][0] = std::numeric_limits<float>::infinity();
  REQUIRE_THROWS_WITH(cam.compute(nan), Contains("2 NaN or Inf values"));
  REQUIRE_THROWS_WITH(cam.compute(at::zeros({1, 3, 64, 64}), gradcam::Target::classes({1000})),
                      Contains("class index 1000 is out of range") && Contains("1000 classes (0..999)"));
  REQUIRE_THROWS_WITH(cam.compute(at::zeros({1, 3, 64, 64}), gradcam::Target::classes({-1})),
                      Contains("class index -1"));
  REQUIRE_THROWS_WITH(cam.compute(at::zeros({2, 3, 64, 64}), gradcam::Target::classes({1, 2, 3})),
                      Contains("got 3 class indices for a batch of 2"));
  REQUIRE_THROWS_WITH(gradcam::Target::topk(0), Contains("k >= 1"));
  REQUIRE_THROWS_WITH(cam.compute(at::zeros({1, 3, 64, 64}), gradcam::Target::topk(1001)),
                      Contains("top-1001 requested but the model has 1000 classes"));
  // float64 input for a float32 model: the forward error is reported with the input shape
  REQUIRE_THROWS_WITH(cam.compute(at::zeros({1, 3, 32, 32}, at::kDouble)),
                      Contains("forward pass failed on input of shape [1, 3, 32, 32]"));
}

TEST_CASE("a target that does not depend on the layer is reported, not a blank map", "[errors]") {
  auto module = test::model("resnet18_script");
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("layer4"));
  auto constant = gradcam::Target::score(
      [](const c10::IValue& out) { return out.toTensor().detach().select(1, 0); });
  REQUIRE_THROWS_WITH(cam.compute(at::ones({1, 3, 64, 64}), constant),
                      Contains("does not depend on layer 'layer4'"));
  auto wrong_shape = gradcam::Target::score([](const c10::IValue& out) { return out.toTensor(); });
  REQUIRE_THROWS_WITH(cam.compute(at::ones({1, 3, 64, 64}), wrong_shape),
                      Contains("expected one score per sample, [1]"));

  // Toy: the stem's map for a score that only reads the second call of the block still works,
  // but a score built from the dict's 'features' before the head does not reach 'head'-only
  // layers. Here: gradient zero everywhere -> a clear error.
  auto toy = test::model("toy_script");
  gradcam::GradCAM stem(toy, gradcam::GradCAMOptions("stem"));
  auto zero = gradcam::Target::score([](const c10::IValue& out) { return out.toTensor().select(1, 0) * 0; });
  REQUIRE_THROWS_WITH(stem.compute(at::ones({1, 3, 16, 16}), zero), Contains("zero everywhere"));
}

TEST_CASE("CUDA requested without CUDA", "[errors]") {
  if (at::hasCUDA()) {
    WARN("CUDA is available: the no-CUDA error path is not exercised on this machine");
    return;
  }
  auto module = test::model("toy_script");
  REQUIRE_THROWS_WITH(gradcam::GradCAM(module, gradcam::GradCAMOptions("block").device(c10::Device("cuda"))),
                      Contains("CUDA is not available"));
  REQUIRE_THROWS_WITH(gradcam::load_model(test::fixture("toy_script.pt"), c10::Device("cuda")),
                      Contains("CUDA is not available"));
}

TEST_CASE("a model in training mode is explained in eval mode", "[errors]") {
  auto train = test::model("toy_training_script");
  train.train();
  REQUIRE(train.is_training());
  at::manual_seed(0);
  at::Tensor x = at::randn({2, 3, 16, 16});
  gradcam::GradCAM cam(train, gradcam::GradCAMOptions("block"));
  CHECK(cam.compute(x).get("block").map.sizes() == at::IntArrayRef({2, 1, 16, 16}));
  // Eval semantics: deterministic, and batch statistics are not used (a sample alone gives the
  // same map as in the batch). Checked in float64: Debian 13's oneDNN makes PyTorch's own float32
  // convolution gradients differ from call to call on some CPUs (NaN in some calls; equal with
  // oneDNN off: docs/reliability.md), and this compares calls.
  auto train64 = train.clone();
  test::to_double(train64);
  gradcam::GradCAM cam64(train64, gradcam::GradCAMOptions("block"));
  const at::Tensor x64 = x.to(at::kDouble);
  auto batch = cam64.compute(x64);
  CHECK(at::equal(batch.get("block").map, cam64.compute(x64).get("block").map));
  auto single = cam64.compute(x64.narrow(0, 1, 1), gradcam::Target::classes({batch.classes[1][0].item<int64_t>()}));
  CHECK(test::rel_err(single.get("block").map, batch.get("block").map.narrow(0, 1, 1)) < 1e-10);
  CHECK(train.is_training());  // the user's module still is in training mode
}
