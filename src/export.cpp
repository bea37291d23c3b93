// src/export.cpp: explainer_module and export_explainer (<gradcam/export.hpp>, docs/deploy.md).
// What the exported module computes is written here as TorchScript source: its forward turns
// grad mode on (a caller under no_grad, as Triton's backend and TorchServe run models, still
// gets gradients), runs the model's rewritten forward (graph_export.cpp), and takes one
// autograd.grad per explained class. The method's formula comes from its row in kMethods
// (methods.cpp), so that a method lives in one place. Both functions check the module against
// GradCAM before handing it out.
#include <gradcam/export.hpp>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/serialization/import.h>

#include <cstdio>
#include <filesystem>
#include <sstream>
#include <unistd.h>

#include <gradcam/error.hpp>
#include <gradcam/version.hpp>

#include "graph.hpp"
#include "methods.hpp"
#include "util.hpp"

namespace gradcam {

namespace {

using detail::concat;
using detail::shape_str;

/// What GradCAM computes on the export's example input: what the module must reproduce.
struct Expected {
  std::string layer;  ///< resolved ("auto" replaced)
  TokenLayout layout;
  at::Tensor input, scores, classes, maps;
};

std::string exportable_names() {
  std::string names;
  for (Method m : all_methods()) {
    if (detail::method_script(m) != nullptr) names += concat(names.empty() ? "" : ", ", method_name(m));
  }
  return names;
}

void check_options(const ExportOptions& o) {
  GRADCAM_CHECK(detail::method_script(o.method()) != nullptr, "export: method '", method_name(o.method()),
                "' cannot be exported (it needs more than the layer's gradient); the exportable methods are: ",
                exportable_names());
  GRADCAM_CHECK(o.topk() >= 1, "export: topk must be at least 1, got ", o.topk());
  GRADCAM_CHECK(o.input_shape().size() == 4, "export: input_shape must be [N, C, H, W], got ",
                shape_str(o.input_shape()));
}

/// A module exported before has a submodule with the method the source calls: exporting it again
/// would explain an explainer.
void refuse_exported(const torch::jit::Module& model) {
  for (const torch::jit::Module& m : model.modules()) {
    GRADCAM_CHECK(!m.find_method("_gradcam_forward").has_value(), "export: the model has a method "
                  "'_gradcam_forward': it is an exported explainer; export the model it was made from");
  }
}

/// GradCAM on a random input of the options' shape (a fixed seed: the export is reproducible).
Expected expected_of(const torch::jit::Module& model, const ExportOptions& o) {
  check_options(o);
  refuse_exported(model);
  GradCAM cam(model, GradCAMOptions(o.layer()).methods({o.method()}).token_layout(o.token_layout()).probe_shape(o.input_shape()));
  Expected e;
  e.layer = cam.layers().at(0);
  const at::Tensor zeros = detail::example_input(model, o.input_shape());
  auto gen = at::make_generator<at::CPUGeneratorImpl>(20171022);
  e.input = at::randn(zeros.sizes(), gen, zeros.options().device(at::kCPU)).to(zeros.device());
  const GradCAMResult r = cam.compute(e.input, Target::topk(1));
  GRADCAM_CHECK(r.logits.dim() == 2, "export: the model's class scores have shape ", shape_str(r.logits.sizes()),
                "; an exported explainer needs scores [N, classes]");
  GRADCAM_CHECK(o.topk() <= r.logits.size(1), "export: topk ", o.topk(), " is more than the model's ",
                r.logits.size(1), " classes");
  const GradCAMResult k = o.topk() == 1 ? r : cam.compute(e.input, Target::topk(o.topk()));
  e.layout = k.maps.at(0).layout;
  GRADCAM_CHECK(k.maps.at(0).map.dim() == 4, "export: layer '", e.layer, "' gives a map of shape ",
                shape_str(k.maps.at(0).map.sizes()), "; an exported explainer reads an image grid [N, C, h, w]");
  std::vector<at::Tensor> maps;
  for (int64_t rank = 0; rank < o.topk(); ++rank) {
    const at::Tensor m = k.get(e.layer, rank, 0, o.method()).map;
    maps.push_back(o.upsample() ? upsample(m, {e.input.size(2), e.input.size(3)}) : m);
  }
  e.scores = k.logits;
  e.classes = k.classes;
  e.maps = at::cat(maps, 1);
  return e;
}

/// A TorchScript string literal.
std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string indented(const std::string& body, const std::string& pad) {
  std::istringstream lines(body);
  std::string line, out;
  while (std::getline(lines, line)) out += pad + line + "\n";
  return out;
}

/// `t` (the layer's output, or its gradient) as the grid [N, K, h, w], as layout.cpp's to_grid.
std::string grid_expression(const TokenLayout& t) {
  switch (t.kind) {
    case TokenLayout::Kind::channels_last:
      return "t.permute([0, 3, 1, 2])";
    case TokenLayout::Kind::tokens:
      return concat("t.narrow(1, ", t.extra, ", ", t.grid_h * t.grid_w, ").reshape([t.size(0), ", t.grid_h, ", ",
                    t.grid_w, ", t.size(2)]).permute([0, 3, 1, 2])");
    default:
      return "t";
  }
}

/// A token layer's grid is fixed by the input size: other sizes are refused by name. (TorchScript
/// source compiled in C++ knows no exception classes: `assert` is its raise.)
std::string size_check(const Expected& e) {
  if (e.layout.kind != TokenLayout::Kind::tokens) return "";
  const int64_t h = e.input.size(2), w = e.input.size(3);
  const std::string same = concat("x.size(2) == ", h, " and x.size(3) == ", w);
  return concat("    if not (", same, "):\n",
                "        torch.set_grad_enabled(grad_enabled)\n",
                "    assert ", same, ", \"gradcam explainer: layer ", e.layer, " is read as tokens of a ", e.layout.grid_h,
                "x", e.layout.grid_w, " grid, which holds for ", h, "x", w, " inputs only; got \" + str(x.size(2)) + \"x\" "
                "+ str(x.size(3)) + \" (export again with that input size)\"\n");
}

/// The module's methods, in TorchScript.
std::string explainer_source(const Expected& e, const ExportOptions& o) {
  const int64_t k = o.topk();
  std::ostringstream s;
  s << "def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:\n"
    << "    grad_enabled = torch.is_grad_enabled()\n"
    << "    torch.set_grad_enabled(True)\n"
    << size_check(e)
    << "    scores, a = self.model._gradcam_forward(x)\n"
    << "    if not scores.requires_grad:\n"
    << "        torch.set_grad_enabled(grad_enabled)\n"
    << "    assert scores.requires_grad, \"gradcam explainer: no gradient can be taken: the call runs under "
       "torch.inference_mode() (c10::InferenceMode), whose tensors record no autograd graph; call it under "
       "torch.no_grad() instead (in Triton: parameters INFERENCE_MODE false, docs/deploy.md)\"\n"
    << "    classes = torch.topk(scores.detach(), " << k << ", 1)[1]\n"
    << "    grid = self._grid(a.detach())\n"
    << "    maps: List[Tensor] = []\n"
    << "    for k in range(" << k << "):\n"
    << "        score = torch.gather(scores, 1, classes.narrow(1, k, 1)).sum()\n"
    << "        g = torch.autograd.grad([score], [a], retain_graph=k < " << k - 1 << ")[0]\n"
    << "        assert g is not None\n"
    << "        maps.append(torch.relu(self._signed_map(grid, self._grid(g))))\n"
    << "    cams = torch.cat(maps, 1)\n"
    << (o.upsample() ? "    cams = torch.upsample_bilinear2d(cams, [x.size(2), x.size(3)], False)\n" : "")
    << "    torch.set_grad_enabled(grad_enabled)\n"
    << "    return scores.detach(), cams, classes\n\n"
    << "def _grid(self, t: Tensor) -> Tensor:\n"
    << "    return " << grid_expression(e.layout) << "\n\n"
    << "def _weighted(self, w: Tensor, a: Tensor) -> Tensor:\n"
    << "    return (w.view([a.size(0), a.size(1), 1, 1]) * a).sum(1, keepdim=True)\n\n"
    << "def _safe_div(self, num: Tensor, den: Tensor) -> Tensor:\n"
    << "    nz = den != 0\n"
    << "    return torch.where(nz, num / torch.where(nz, den, torch.ones_like(den)), torch.zeros_like(num))\n\n"
    << "def _signed_map(self, a: Tensor, g: Tensor) -> Tensor:\n"
    << indented(detail::method_script(o.method()), "    ") << "\n"
    << "def explained(self) -> Dict[str, str]:\n"
    << "    return {\"layer\": " << quoted(e.layer) << ", \"method\": " << quoted(method_name(o.method()))
    << ", \"topk\": \"" << k << "\", \"upsample\": \"" << (o.upsample() ? "true" : "false")
    << "\", \"gradcam\": \"" << gradcam::version << "\"}\n";
  return s.str();
}

/// The module's outputs on the example input, under no_grad (as servers call it), against
/// GradCAM's. Throws gradcam::Error naming what differs.
void check_against(torch::jit::Module& module, const Expected& e, const std::string& what) {
  c10::IValue out;
  bool grad_left_on = false;
  {
    c10::NoGradGuard no_grad;
    out = module.forward({e.input});
    grad_left_on = c10::GradMode::is_enabled();
  }
  GRADCAM_CHECK(!grad_left_on, "export: ", what, " left grad mode on");
  const auto& t = out.toTupleRef().elements();
  GRADCAM_CHECK(t.size() == 3, "export: ", what, " returns ", t.size(), " values, not 3");
  const at::Tensor scores = t[0].toTensor(), maps = t[1].toTensor(), classes = t[2].toTensor();
  GRADCAM_CHECK(classes.equal(e.classes), "export: ", what, " explains classes ", classes, " where GradCAM explains ",
                e.classes);
  GRADCAM_CHECK(maps.sizes() == e.maps.sizes(), "export: ", what, " gives maps of shape ", shape_str(maps.sizes()),
                " where GradCAM's are ", shape_str(e.maps.sizes()));
  // Both run the same operators on the same activations and gradients: at the layer's resolution
  // the maps are equal (difference 0 on resnet18, ViT and Swin layers, test_export); upsampled,
  // the interpolation's rounding differs by at most 2.0e-7 of the largest value in float32. Any
  // difference above 1e-5 means the module computes something else.
  const double scale = e.maps.abs().max().item<double>() + 1e-30;
  const double map_err = (maps - e.maps).abs().max().item<double>() / scale;
  const double score_err = (scores - e.scores).abs().max().item<double>() / (e.scores.abs().max().item<double>() + 1e-30);
  GRADCAM_CHECK(map_err <= 1e-5 && score_err <= 1e-5, "export: ", what, "'s maps differ from GradCAM's by ", map_err,
                " and its scores by ", score_err, " of their largest values");
}

}  // namespace

torch::jit::Module explainer_module(const torch::jit::Module& model, const ExportOptions& options) {
  const Expected e = expected_of(model, options);
  torch::jit::Module module = detail::exportable_module(model, e.layer, explainer_source(e, options));
  check_against(module, e, "the exported module");
  return module;
}

void export_explainer(const torch::jit::Module& model, const ExportOptions& options, const std::string& path) {
  GRADCAM_CHECK(!path.empty(), "export: the output path is empty");
  const Expected e = expected_of(model, options);
  torch::jit::Module module = detail::exportable_module(model, e.layer, explainer_source(e, options));
  const std::string partial = path + ".partial-" + std::to_string(::getpid());
  try {
    try {
      module.save(partial);
    } catch (const c10::Error& err) {
      fail(concat("export: cannot write '", partial, "': ", detail::torch_message(err)));
    }
    torch::jit::Module loaded = torch::jit::load(partial);
    check_against(loaded, e, concat("'", path, "' loaded back"));
    std::error_code ec;
    std::filesystem::rename(partial, path, ec);
    GRADCAM_CHECK(!ec, "export: cannot write '", path, "': ", ec.message());
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(partial, ignored);
    throw;
  }
}

}  // namespace gradcam
