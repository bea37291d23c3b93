// tests/test_export.cpp: the explaining module of <gradcam/export.hpp> and `gradcam export`
// (docs/deploy.md). Specification: the module, saved and loaded back by plain LibTorch or by
// Python's torch.jit.load without this library, returns the model's scores, the top-k classes and
// the maps GradCAM (tested against PyTorch references in test_gradcam, test_methods and
// test_transformers) and `gradcam explain` give, under no_grad as servers call it; it refuses
// inference mode by name; the user's model is left as it was.
#include "catch.hpp"  // first: after LibTorch, before anything that includes glog

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/jit/serialization/import.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <gradcam/gradcam.hpp>

#include "support.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::Equals;

namespace {

struct Outputs {
  at::Tensor scores, maps, classes;
};

Outputs call(torch::jit::Module& m, const at::Tensor& x) {
  const auto t = m.forward({x}).toTuple()->elements();
  REQUIRE(t.size() == 3);
  return {t[0].toTensor(), t[1].toTensor(), t[2].toTensor()};
}

/// GradCAM's top-k maps of `layer`, stacked as the module gives them ([N, K, h, w]).
Outputs library(const torch::jit::Module& model, const gradcam::ExportOptions& o, const at::Tensor& x) {
  gradcam::GradCAM cam(model, gradcam::GradCAMOptions(o.layer()).methods({o.method()}));
  const auto r = cam.compute(x, gradcam::Target::topk(o.topk()));
  std::vector<at::Tensor> maps;
  for (int64_t k = 0; k < o.topk(); ++k) {
    const at::Tensor m = r.get(cam.layers()[0], k, 0, o.method()).map;
    maps.push_back(o.upsample() ? gradcam::upsample(m, {x.size(2), x.size(3)}) : m);
  }
  return {r.logits, at::cat(maps, 1), r.classes};
}

std::string scratch(const std::string& name) {
  const fs::path d = test::scratch_root() / ("export_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

}  // namespace

TEST_CASE("an exported explainer gives GradCAM's scores, classes and maps for every exportable method",
          "[export]") {
  // resnet18 scripted and traced (from torchvision), layer4 and a block inside it; a batch of 3
  // that is not the export's own check input, and another image size (convolutional layers take
  // any). Measured in float32: at the layer's resolution the maps are equal (difference 0);
  // upsampled, they differ by at most 2.0e-7 of the largest value (the rounding of the
  // interpolation), so the bound there is 1e-6.
  const std::vector<gradcam::Method> methods = {gradcam::Method::gradcam, gradcam::Method::gradcam_pp,
                                                gradcam::Method::xgradcam, gradcam::Method::hirescam,
                                                gradcam::Method::layercam, gradcam::Method::gradcam_elementwise};
  for (const std::string name : {"resnet18_script", "resnet18_trace"}) {
    const auto model = test::model(name);
    for (const auto method : test::quick() ? std::vector<gradcam::Method>{methods[1]} : methods) {
      for (const bool up : {false, true}) {
        const auto o = gradcam::ExportOptions().layer(up ? "layer4.1" : "layer4").method(method).topk(2).upsample(up);
        INFO(name << " " << gradcam::method_name(method) << " upsample " << up);
        auto m = gradcam::explainer_module(model, o);
        const at::Tensor x = at::randn({3, 3, 160, 192});
        const Outputs want = library(model, o, x);
        Outputs got;
        {
          c10::NoGradGuard no_grad;
          got = call(m, x);
          CHECK_FALSE(c10::GradMode::is_enabled());  // the caller's mode is given back
        }
        CHECK(got.maps.sizes() == (up ? std::vector<int64_t>{3, 2, 160, 192} : std::vector<int64_t>{3, 2, 5, 6}));
        CHECK(at::equal(got.classes, want.classes));
        CHECK(test::rel_err(got.scores, want.scores) == 0);
        CHECK(test::rel_err(got.maps, want.maps) <= (up ? 1e-6 : 0.0));
        CHECK_FALSE(got.maps.requires_grad());
      }
    }
  }
}

TEST_CASE("an exported explainer reads the class scores where GradCAM reads them", "[export]") {
  // scripted GoogLeNet returns a named tuple (logits, aux2, aux1): the scores are its first tensor
  const auto model = test::model("googlenet_script");
  const auto o = gradcam::ExportOptions().layer("inception5b").topk(2);
  auto m = gradcam::explainer_module(model, o);
  const at::Tensor x = at::randn({2, 3, 224, 224});
  const Outputs want = library(model, o, x);
  const Outputs got = call(m, x);
  CHECK(got.scores.sizes() == std::vector<int64_t>{2, 1000});
  CHECK(test::rel_err(got.scores, want.scores) == 0);
  CHECK(test::rel_err(got.maps, want.maps) == 0);
  // a dict's "out" (odd_script returns {"out": logits, "features": x})
  const auto odd = test::model("odd_script");
  const auto o2 = gradcam::ExportOptions().layer("stem").topk(2).input_shape({1, 3, 32, 32});
  auto m2 = gradcam::explainer_module(odd, o2);
  const at::Tensor x2 = at::randn({2, 3, 32, 32});
  const Outputs want2 = library(odd, o2, x2), got2 = call(m2, x2);
  CHECK(test::rel_err(got2.scores, want2.scores) == 0);
  CHECK(test::rel_err(got2.maps, want2.maps) == 0);
}

TEST_CASE("an exported explainer reads token and channels-last layers as GradCAM does", "[export]") {
  struct Case {
    std::string model, layer;
  };
  for (const Case& c : {Case{"tf_vit_script", "encoder.layers.encoder_layer_1.ln_1"}, Case{"tf_vit_trace", "encoder.layers.encoder_layer_0"},
                        Case{"tf_swin_script", "features.1"}}) {
    INFO(c.model << " " << c.layer);
    const auto model = test::model(c.model);
    const auto o = gradcam::ExportOptions().layer(c.layer).topk(3).input_shape({1, 3, 64, 64});
    auto m = gradcam::explainer_module(model, o);
    const at::Tensor x = at::randn({2, 3, 64, 64});
    const Outputs want = library(model, o, x);
    const Outputs got = call(m, x);
    CHECK(at::equal(got.classes, want.classes));
    CHECK(test::rel_err(got.maps, want.maps) == 0);
    CHECK(c10::GradMode::is_enabled());  // called with grad mode on, it stays on
  }
  // a token grid holds for the input size it was exported for
  auto m = gradcam::explainer_module(test::model("tf_vit_script"), gradcam::ExportOptions()
                                                                        .layer("encoder.layers.encoder_layer_1.ln_1")
                                                                        .input_shape({1, 3, 64, 64}));
  CHECK_THROWS_WITH(call(m, at::randn({1, 3, 96, 96})),
                    test::Contains("gradcam explainer: layer encoder.layers.encoder_layer_1.ln_1 is read as tokens "
                                      "of a 4x4 grid, which holds for 64x64 inputs only; got 96x96 (export again with "
                                      "that input size)"));
}

TEST_CASE("an exported explainer, saved and loaded back, refuses inference mode by name", "[export]") {
  const auto model = test::model("resnet18_script");
  const std::string path = scratch("saved") + "/explainer.pt";
  const auto o = gradcam::ExportOptions().layer("layer4").topk(3).upsample(true);
  gradcam::export_explainer(model, o, path);
  REQUIRE(fs::exists(path));
  CHECK(std::distance(fs::directory_iterator(fs::path(path).parent_path()), fs::directory_iterator()) == 1);
  auto loaded = torch::jit::load(path);
  const at::Tensor x = at::randn({2, 3, 224, 224});
  const Outputs want = library(model, o, x);
  const Outputs got = call(loaded, x);
  CHECK(test::rel_err(got.maps, want.maps) <= 1e-6);  // upsampled: as in the first case
  CHECK(at::equal(got.classes, want.classes));
  const auto info = loaded.run_method("explained").toGenericDict();
  CHECK(info.at("layer").toStringRef() == "layer4");
  CHECK(info.at("method").toStringRef() == "gradcam");
  CHECK(info.at("topk").toStringRef() == "3");
  CHECK(info.at("upsample").toStringRef() == "true");
  {
    c10::InferenceMode inference;
    CHECK_THROWS_WITH(call(loaded, at::randn({1, 3, 224, 224})),
                      test::Contains("gradcam explainer: no gradient can be taken: the call runs under "
                                        "torch.inference_mode() (c10::InferenceMode), whose tensors record no "
                                        "autograd graph; call it under torch.no_grad() instead (in Triton: "
                                        "parameters INFERENCE_MODE false, docs/deploy.md)"));
  }
  CHECK(c10::GradMode::is_enabled());
}

TEST_CASE("exporting leaves the user's model as it was", "[export]") {
  auto model = test::model("resnet18_script");
  model.train();
  std::vector<at::Tensor> before;
  for (const auto& p : model.parameters()) before.push_back(p.clone());
  const size_t methods = model.type()->methods().size();
  auto m = gradcam::explainer_module(model, gradcam::ExportOptions().layer("layer4"));
  CHECK(model.type()->methods().size() == methods);
  CHECK_FALSE(model.find_method("_gradcam_forward").has_value());
  CHECK(model.is_training());
  size_t i = 0;
  for (const auto& p : model.parameters()) {
    CHECK(at::equal(p, before[i++]));
    CHECK(p.requires_grad());
  }
  // and the module's own copy is independent of it
  for (const auto& p : model.parameters()) p.detach().zero_();
  const Outputs got = call(m, at::randn({1, 3, 64, 64}));
  CHECK(got.scores.abs().max().item<double>() > 0);
}

TEST_CASE("export refuses what it cannot export, by name", "[export]") {
  const auto resnet = test::model("resnet18_script");
  CHECK_THROWS_WITH(gradcam::explainer_module(resnet, gradcam::ExportOptions().layer("layer4").method(gradcam::Method::scorecam)),
                    Equals("export: method 'scorecam' cannot be exported (it needs more than the layer's gradient); "
                           "the exportable methods are: gradcam, gradcam++, xgradcam, hirescam, layercam, gradcamelementwise"));
  CHECK_THROWS_WITH(gradcam::explainer_module(resnet, gradcam::ExportOptions().layer("layer4").topk(1001)),
                    Equals("export: topk 1001 is more than the model's 1000 classes"));
  CHECK_THROWS_WITH(gradcam::explainer_module(resnet, gradcam::ExportOptions().layer("layer4").topk(0)),
                    Equals("export: topk must be at least 1, got 0"));
  CHECK_THROWS_WITH(gradcam::explainer_module(resnet, gradcam::ExportOptions().layer("layer9")),
                    test::Contains("layer9"));
  CHECK_THROWS_WITH(gradcam::explainer_module(resnet, gradcam::ExportOptions().layer("fc")),
                    Equals("layer 'fc' outputs shape [1, 1000]; CAM methods need spatial dimensions [N, C, h, w]"));
  CHECK_THROWS_WITH(gradcam::explainer_module(test::model("targets_seg"), gradcam::ExportOptions().layer("auto")),
                    Equals("the model output has shape [1, 4, 224, 224]; class targets need [N, classes] with N = 1 "
                           "(use Target::score for other outputs)"));
  CHECK_THROWS_WITH(gradcam::export_explainer(resnet, gradcam::ExportOptions().layer("layer4"), "/nonexistent/dir/e.pt"),
                    test::Contains("export: cannot write '/nonexistent/dir/e.pt.partial-"));
  CHECK_THROWS_WITH(gradcam::explainer_module(test::model("toy_script"), gradcam::ExportOptions().layer("block")),
                    Equals("export: layer 'block' is called 2 times in one forward pass; an exported explainer reads "
                           "one call of its layer (name a module that is called once, e.g. one block of a repeated stage)"));
  auto exported = gradcam::explainer_module(resnet, gradcam::ExportOptions().layer("layer4"));
  CHECK_THROWS_WITH(gradcam::explainer_module(exported, gradcam::ExportOptions().layer("model.layer4")),
                    Equals("export: the model has a method '_gradcam_forward': it is an exported explainer; "
                           "export the model it was made from"));
}
