// Transformers (issue 14, docs/transformers.md): token layers [N, T, C] and channels-last layers
// [N, h, w, C] read as grids by every CAM method, against the independent PyTorch reference
// (tests/fixtures/make_transformer_refs.py, which reshapes as pytorch-grad-cam's
// reshape_transform does); the stated layouts; the auto choice; what is refused.
#include "catch.hpp"

#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>

#include <algorithm>

#include <gradcam/gradcam.hpp>

#include "support.hpp"

using Catch::Matchers::EndsWith;
using Catch::Matchers::Equals;
using Catch::Matchers::StartsWith;
using gradcam::Method;
using gradcam::TokenLayout;

namespace {

// float64 against the float64 reference: 1e-8 of the map's max, as for the CNNs (test_methods).
constexpr double kTol64 = 1e-8;
// float32 against the same float64 reference: rounding, not the method, sets it. Measured with
// LibTorch 1.13: at most 6.1e-7 of the map's max (Grad-CAM, every layer below; the test prints it).
constexpr double kTol32 = 1e-5;

struct Model {
  std::string name;
  std::vector<std::string> layers;  // whose grid the score depends on
  TokenLayout layout;               // what must be read (kind, extra, grid)
};

TokenLayout tokens(int64_t extra, int64_t h, int64_t w) {
  TokenLayout t;
  t.kind = TokenLayout::Kind::tokens;
  t.extra = extra;
  t.grid_h = h;
  t.grid_w = w;
  return t;
}

TokenLayout nhwc() {
  TokenLayout t;
  t.kind = TokenLayout::Kind::channels_last;
  return t;
}

const std::vector<Model>& models() {
  static const std::vector<Model> m = {
      {"tf_vit", {"encoder.layers.encoder_layer_1.ln_1", "encoder.layers.encoder_layer_0"}, tokens(1, 4, 4)},
      {"tf_gap", {"blocks.1", "blocks.0.ln_1"}, tokens(0, 4, 4)},
      {"tf_deit", {"blocks.1.ln_1", "blocks.0"}, tokens(2, 4, 4)},
      {"tf_swin", {"features.1", "features.3"}, nhwc()},
  };
  return m;
}

/// The CAM methods that read a layer (attention rollout reads the attention: its own cases).
std::vector<Method> methods() {
  std::vector<Method> all = gradcam::all_methods();
  all.pop_back();  // attention rollout
  all.pop_back();  // CAM: no transformer here pools a layer straight into its linear head
  // SS-CAM and IS-CAM read the grid through Score-CAM's masks, whose layouts Score-CAM's case
  // covers; at 35 and 10 forwards per channel they are referenced on the toy model (test_methods)
  all.erase(std::remove_if(all.begin(), all.end(), [](Method m) { return m == Method::sscam || m == Method::iscam; }),
            all.end());
  // ShapleyCAM: its own case below (LibTorch 2.x has no second derivative of its fused attention)
  all.erase(std::remove(all.begin(), all.end(), Method::shapleycam), all.end());
  // FullGrad reads no layer, only the model's bias layers (a patch embedding's Conv2d here) and the
  // input: test_methods' case covers it
  all.erase(std::remove(all.begin(), all.end(), Method::fullgrad), all.end());
  return all;
}

void check_layout(const gradcam::LayerMap& m, const TokenLayout& want, const at::Tensor& map_ref) {
  CHECK(m.layout.kind == want.kind);
  if (want.kind == TokenLayout::Kind::tokens) CHECK(m.layout.extra == want.extra);
  CHECK(m.layout.grid_h == map_ref.size(2));
  CHECK(m.layout.grid_w == map_ref.size(3));
}

}  // namespace

TEST_CASE("every CAM method equals the reference on token and channels-last layers, scripted and traced (float64)",
          "[transformers]") {
  for (const auto& model : models()) {
    const test::Ref ref(model.name);
    const at::Tensor x = ref.get("input").to(at::kDouble);
    for (const char* form : {"_script", "_trace"}) {
      INFO(model.name << form);
      auto module = test::model(model.name + form);
      test::to_double(module);
      gradcam::GradCAM cam(module, gradcam::GradCAMOptions(model.layers).methods(methods()).perturbation_batch(16));
      const auto r = cam.compute(x, gradcam::Target::classes({3, 7}));
      CHECK(test::rel_err(r.logits, ref.get("logits__b2")) < kTol64);
      for (const auto& layer : model.layers) {
        for (Method m : methods()) {
          INFO(layer << " " << gradcam::method_name(m));
          const at::Tensor want = ref.get(test::key(gradcam::method_name(m), layer, 2, 0));
          REQUIRE(want.abs().max().item<double>() > 0);  // a blank reference would prove nothing
          const auto& got = r.get(layer, 0, 0, m);
          REQUIRE(got.map.sizes() == want.sizes());
          CHECK(test::rel_err(got.map, want) < kTol64);
          check_layout(got, model.layout, want);
        }
      }
    }
  }
}

TEST_CASE("ShapleyCAM equals the reference where LibTorch has second derivatives, and is refused by name where not",
          "[transformers]") {
  // Torch 2.x's fused attention kernel has no second derivative: there the reference has no
  // ShapleyCAM key, and the C++ side must refuse the layer by name instead of a wrong map. Where
  // it has one, the reference's H A must not be zero (GELU, LayerNorm, softmax attention after the
  // layer), so that the check is not Grad-CAM's again.
  for (const auto& model : models()) {
    const test::Ref ref(model.name);
    const at::Tensor x = ref.get("input").to(at::kDouble);
    for (const char* form : {"_script", "_trace"}) {
      auto module = test::model(model.name + form);
      test::to_double(module);
      for (const auto& layer : model.layers) {
        INFO(model.name << form << " " << layer);
        gradcam::GradCAM cam(module, gradcam::GradCAMOptions(layer).methods({Method::gradcam, Method::shapleycam}));
        if (!ref.has(test::key("shapleycam", layer, 2, 0))) {
          CHECK_THROWS_WITH(cam.compute(x, gradcam::Target::classes({3, 7})),
                            test::Contains("ShapleyCAM needs the second derivative of the score with respect to layer '" +
                                            layer + "', and this LibTorch has none for an operator after it"));
          continue;
        }
        const auto r = cam.compute(x, gradcam::Target::classes({3, 7}));
        CHECK(test::rel_err(r.get(layer, 0, 0, Method::shapleycam).map, ref.get(test::key("shapleycam", layer, 2, 0))) <
              kTol64);
        std::string flat = layer;
        std::replace(flat.begin(), flat.end(), '.', '_');
        CHECK(ref.get("hvp__" + flat).item<double>() > 1e-6);
        CHECK(test::rel_err(r.get(layer, 0, 0, Method::shapleycam).map, r.get(layer, 0, 0, Method::gradcam).map) > 1e-4);
      }
    }
  }
  // the counterfactual map explains -y: g and H A both change sign, and so do the weights
  const test::Ref ref("tf_swin");
  auto module = test::model("tf_swin_script");
  test::to_double(module);
  const at::Tensor x = ref.get("input").to(at::kDouble);
  const auto opts = gradcam::GradCAMOptions("features.1").methods({Method::shapleycam}).keep_weights(true);
  const at::Tensor w = gradcam::GradCAM(module, opts).compute(x, gradcam::Target::classes({3, 7})).maps[0].weights;
  const at::Tensor neg = gradcam::GradCAM(module, gradcam::GradCAMOptions(opts).counterfactual(true))
                             .compute(x, gradcam::Target::classes({3, 7})).maps[0].weights;
  CHECK(test::rel_err(neg, -w) < 1e-12);
}

TEST_CASE("Grad-CAM on token layers in float32 is within rounding of the float64 reference", "[transformers]") {
  double worst = 0;
  for (const auto& model : models()) {
    const test::Ref ref(model.name);
    auto module = test::model(model.name + "_script");
    gradcam::GradCAM cam(module, gradcam::GradCAMOptions(model.layers));
    const auto r = cam.compute(ref.get("input"), gradcam::Target::classes({3, 7}));
    for (const auto& layer : model.layers) {
      INFO(model.name << " " << layer);
      const double err = test::rel_err(r.get(layer).map, ref.get(test::key("gradcam", layer, 2, 0)));
      CHECK(err < kTol32);
      worst = std::max(worst, err);
    }
  }
  WARN("worst float32 Grad-CAM error on token layers: " << worst);
}

TEST_CASE("a stated layout reads the same grid, and one that does not fit is refused by name", "[transformers]") {
  const test::Ref ref("tf_deit");
  auto module = test::model("tf_deit_script");
  const at::Tensor x = ref.get("input");
  const std::string layer = "blocks.1.ln_1";
  const at::Tensor inferred = gradcam::GradCAM(module, gradcam::GradCAMOptions(layer)).compute(x).get(layer).map;
  TokenLayout extra_only;
  extra_only.kind = TokenLayout::Kind::tokens;
  extra_only.extra = 2;
  TokenLayout grid_only = tokens(-1, 4, 4);
  for (const TokenLayout& stated : {extra_only, grid_only, tokens(2, 4, 4)}) {
    const auto r = gradcam::GradCAM(module, gradcam::GradCAMOptions(layer).token_layout(stated)).compute(x);
    CHECK(r.get(layer).layout.extra == 2);
    CHECK(at::equal(r.get(layer).map, inferred));
  }
  auto refuse = [&](const TokenLayout& stated) {
    return gradcam::GradCAM(module, gradcam::GradCAMOptions(layer).token_layout(stated)).compute(x);
  };
  REQUIRE_THROWS_WITH(refuse(tokens(1, 4, 4)),
                      Equals("layer 'blocks.1.ln_1' outputs tokens [2, 18, 32]: 1 extra token and a 4x4 grid make "
                             "17 tokens, not 18 (GradCAMOptions::token_layout)"));
  REQUIRE_THROWS_WITH(refuse(tokens(-1, 5, 4)),
                      Equals("layer 'blocks.1.ln_1' outputs tokens [2, 18, 32]: a 5x4 grid needs 20 tokens, more "
                             "than 18 (GradCAMOptions::token_layout)"));
  REQUIRE_THROWS_WITH(refuse(tokens(3, -1, -1)),
                      Equals("layer 'blocks.1.ln_1' outputs tokens [2, 18, 32]: after 3 extra tokens, 15 tokens form "
                             "no grid of the input's aspect ratio 64x64; state the grid too "
                             "(GradCAMOptions::token_layout)"));
  REQUIRE_THROWS_WITH(refuse(tokens(18, -1, -1)),
                      Equals("layer 'blocks.1.ln_1' outputs tokens [2, 18, 32]: 18 extra tokens leave none of the 18 "
                             "tokens for the grid (GradCAMOptions::token_layout)"));
  REQUIRE_THROWS_WITH(refuse(nhwc()), Equals("layer 'blocks.1.ln_1' outputs shape [2, 18, 32]; token_layout says "
                                             "channels last, which is 4-D [N, h, w, C]"));
  auto swin = test::model("tf_swin_script");
  REQUIRE_THROWS_WITH(gradcam::GradCAM(swin, gradcam::GradCAMOptions("features.3").token_layout(tokens(0, -1, -1)))
                          .compute(x),
                      Equals("layer 'features.3' outputs shape [2, 8, 8, 64] for an input [2, 3, 64, 64]; "
                             "token_layout says tokens, which are 3-D [N, T, C] for an image input [N, C, H, W]"));
  // Swin's channels-last layer stated as such: the inferred reading
  const auto s = gradcam::GradCAM(swin, gradcam::GradCAMOptions("features.3").token_layout(nhwc())).compute(x);
  CHECK(at::equal(s.get("features.3").map,
                  gradcam::GradCAM(swin, gradcam::GradCAMOptions("features.3")).compute(x).get("features.3").map));
}

TEST_CASE("a class-token ViT's last block output is refused: its grid gets no gradient", "[transformers]") {
  const test::Ref ref("tf_vit");
  REQUIRE(ref.get("gridgrad__encoder_layers_encoder_layer_1").item<double>() == 0);  // the reference agrees
  auto module = test::model("tf_vit_script");
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("encoder.layers.encoder_layer_1"));
  REQUIRE_THROWS_WITH(cam.compute(ref.get("input")),
                      Equals("the gradient of the target score with respect to layer 'encoder.layers.encoder_layer_1' "
                             "is zero at every grid token and reaches only its extra tokens, so its map would be "
                             "blank: the head reads the class token, and no attention follows this layer to carry "
                             "the grid's tokens into it; choose a layer before the last attention (the last block's "
                             "first norm, e.g. ln_1 or norm1)"));
}

TEST_CASE("a ViT traced under no_grad holds a kernel with no backward: said, with the fix", "[transformers]") {
  auto module = test::model("tf_vit_nograd_trace");
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("encoder.layers.encoder_layer_1.ln_1"));
  REQUIRE_THROWS_WITH(cam.compute(at::randn({1, 3, 64, 64})),
                      Equals("the backward pass to the layers failed: derivative for "
                             "aten::_native_multi_head_attention is not implemented; the model holds "
                             "nn.MultiheadAttention's fused inference kernel, which a trace under torch.no_grad() or "
                             "torch.inference_mode() records: trace it with gradients on, or script it "
                             "(docs/transformers.md)"));
}

TEST_CASE("auto takes the last token layer whose grid the output depends on, never the patch embedding",
          "[transformers]") {
  const std::vector<int64_t> shape = {1, 3, 64, 64};
  const std::vector<std::pair<std::string, std::string>> want = {
      {"tf_vit", "encoder.layers.encoder_layer_1.ln_1"},  // class token: the last block's first norm
      {"tf_deit", "blocks.1.ln_1"},                        // class and distillation tokens: the same
      {"tf_gap", "norm"},                                  // pooling head: the last token layer
      {"tf_swin", "permute"},                              // its channels-first view before pooling
  };
  for (const auto& [name, layer] : want) {
    for (const char* form : {"_script", "_trace"}) {
      INFO(name << form);
      auto module = test::model(name + form);
      const auto listing = gradcam::list_layers(module, shape);
      CHECK(listing.auto_layer == layer);
      gradcam::GradCAM cam(module, gradcam::GradCAMOptions("auto").probe_shape(shape));
      CHECK(cam.layers().front() == layer);
    }
  }
  // the listing says how each layer is read
  const auto listing = gradcam::list_layers(test::model("tf_deit_script"), shape);
  CHECK_THAT(listing.auto_note, StartsWith("a transformer (its one grid layer, 'conv_proj', is its patch embedding"));
  for (const auto& l : listing.layers) {
    if (l.name == "blocks.1.ln_1") {
      REQUIRE(l.layout.has_value());
      CHECK(l.layout->kind == TokenLayout::Kind::tokens);
      CHECK(l.layout->extra == 2);
      CHECK((l.layout->grid_h == 4 && l.layout->grid_w == 4));
    }
    if (l.name == "head") CHECK(!l.layout.has_value());  // [1, 10]: no grid
  }
}

TEST_CASE("guided backpropagation on a GELU transformer is its plain input gradient, as documented", "[transformers]") {
  // docs/guided.md: the guided rule modifies ReLUs only; these models have none.
  for (const char* name : {"tf_vit", "tf_swin"}) {
    INFO(name);
    const test::Ref ref(name);
    auto module = test::model(std::string(name) + "_script");
    test::to_double(module);
    const auto r = gradcam::GuidedBackprop(module).compute(ref.get("input").to(at::kDouble),
                                                           gradcam::Target::classes({3, 7}));
    CHECK(r.replaced_activations == 0);
    CHECK(std::find(r.untouched_activations.begin(), r.untouched_activations.end(), "aten::gelu") !=
          r.untouched_activations.end());
    CHECK(test::rel_err(r.gradients.at(0), ref.get("inputgrad__b2")) < kTol64);
  }
}

TEST_CASE("FullGrad on transformers: the patch embedding's bias term and the input's, scripted and traced (float64)",
          "[transformers]") {
  for (const auto& model : models()) {
    const test::Ref ref(model.name);
    const at::Tensor want = ref.get("fullgrad__b2");
    REQUIRE(want.abs().max().item<double>() > 0);
    for (const char* form : {"_script", "_trace"}) {
      INFO(model.name << form);
      auto module = test::model(model.name + form);
      test::to_double(module);
      gradcam::GradCAM cam(module, gradcam::GradCAMOptions(model.layers.front()).methods({Method::fullgrad}));
      const auto r = cam.compute(ref.get("input").to(at::kDouble), gradcam::Target::classes({3, 7}));
      CHECK(test::rel_err(r.get(model.layers.front(), 0, 0, Method::fullgrad).map, want) < kTol64);
    }
  }
}

TEST_CASE("attention rollout equals its reference, scripted, and traced with the heads stated", "[transformers]") {
  // make_transformer_refs.py: PyTorch's own attention weights (need_weights=True), rolled out
  for (const auto& model : models()) {
    if (model.name == "tf_swin") continue;  // below
    const test::Ref ref(model.name);
    const std::string& layer = model.layers.front();
    const at::Tensor x = ref.get("input").to(at::kDouble);
    const at::Tensor want = ref.get(test::key("rollout", layer, 2, 0));
    for (const char* form : {"_script", "_trace"}) {
      INFO(model.name << form);
      auto module = test::model(model.name + form);
      test::to_double(module);
      auto options = gradcam::GradCAMOptions(layer).methods({Method::rollout});
      if (std::string(form) == "_trace") {
        // a traced nn.MultiheadAttention keeps its weights but not num_heads
        REQUIRE_THROWS_WITH(gradcam::GradCAM(module, options), StartsWith("attention rollout needs the number of heads of '") &&
                                                                   EndsWith("', which a traced model does not keep: script "
                                                                            "the model, or give attention_heads"));
        options.attention_heads(2);
      }
      const auto r = gradcam::GradCAM(module, options).compute(x, gradcam::Target::classes({3, 7}));
      const auto& got = r.get(layer, 0, 0, Method::rollout);
      REQUIRE(got.map.sizes() == want.sizes());
      CHECK(test::rel_err(got.map, want) < kTol64);
    }
  }
  auto swin = test::model("tf_swin_script");
  REQUIRE_THROWS_WITH(gradcam::GradCAM(swin, gradcam::GradCAMOptions("features.3").methods({Method::rollout})),
                      Equals("attention rollout reads the model's nn.MultiheadAttention modules, and it has none"));
  auto vit = test::model("tf_vit_script");
  REQUIRE_THROWS_WITH(gradcam::GradCAM(vit, gradcam::GradCAMOptions("encoder.layers.encoder_layer_1.ln_1")
                                               .methods({Method::rollout}).attention_heads(4)),
                      Equals("attention_heads is 4 but 'encoder.layers.encoder_layer_0.self_attention' has num_heads 2"));
}
