// src/cli/export.cpp: `gradcam export`: writes an explaining TorchScript model (export_explainer,
// <gradcam/export.hpp>, docs/deploy.md) that loads in Triton, TorchServe or any LibTorch or Python
// process without gradcam.
#include <c10/core/GradMode.h>
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/serialization/import.h>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>

#include <gradcam/gradcam.hpp>

#include "commands.hpp"
#include "common.hpp"

namespace gradcam_cli {

namespace {

struct ExportArgs {
  Common common;
  std::string method = "gradcam";
  int topk = 1;
  bool upsample = false;
  std::vector<int> size;
  std::string out;
};

int run_export(const ExportArgs& a) {
  const Common& c = a.common;
  GRADCAM_CHECK(c.device == "cpu", "export runs on the CPU, got --device ", c.device,
                "; the file it writes loads on any device (Triton's instance group, or .to(device))");
  // Ctrl-C does not stop the export halfway (it writes a temporary file beside --out and renames it
  // once checked): before the export nothing is written; after it the file is whole, and kept
  InterruptGuard interrupt_guard;
  auto module = gradcam::load_model(c.model);
  // the input the export is checked on, and for token layers the only one it takes: --size, else
  // the crop, else the resized square (as `gradcam layers`)
  const int h = a.size.size() == 2 ? a.size[0] : c.crop > 0 ? c.crop : c.resize;
  const int w = a.size.size() == 2 ? a.size[1] : c.crop > 0 ? c.crop : c.resize;
  GRADCAM_CHECK(h > 0 && w > 0, "with --resize 0 --crop 0 give the input size with --size H W");
  const auto options = gradcam::ExportOptions()
                           .layer(c.layer)
                           .method(gradcam::method_from_name(a.method))
                           .topk(a.topk)
                           .upsample(a.upsample)
                           .input_shape({1, -1, h, w})
                           .token_layout(cam_options(c, {c.layer}).token_layout());
  if (g_interrupted) {
    say() << "interrupted: nothing written\n";
    return 130;
  }
  gradcam::export_explainer(module, options, a.out);
  // checked last, after the summary below: a Ctrl-C caught at any time while the guard lives exits
  // 130 (one after the return finds SIGINT as the process had it: its default, or ignored in a
  // background job of a script)
  const auto info = torch::jit::load(a.out).run_method("explained").toGenericDict();
  std::printf("exported %s of layer '%s' for the top %d class(es), maps %s; checked against GradCAM on a random "
              "%dx%d input after loading it back; wrote %s\n",
              a.method.c_str(), info.at("layer").toStringRef().c_str(), a.topk,
              a.upsample ? "upsampled to the input" : "at the layer's resolution", h, w, a.out.c_str());
  std::printf("forward(x [N, C, H, W]) returns (scores [N, classes], maps [N, %d, %s], classes [N, %d] int64)\n",
              a.topk, a.upsample ? "H, W" : "h, w", a.topk);
  if (g_interrupted) {
    say() << "interrupted after the export had finished: " << a.out << " is written and checked\n";
    return 130;
  }
  return 0;
}

}  // namespace

Subcommand add_export(CLI::App* sub) {
  auto a = std::make_shared<ExportArgs>();
  add_common(sub, a->common);
  sub->add_option("--method", a->method, "the CAM method the module computes: gradcam, gradcam++, xgradcam, hirescam, "
                  "layercam or gradcamelementwise")->capture_default_str();
  sub->add_option("--topk", a->topk, "maps for the K highest-scoring classes")->check(whole_number(1))->capture_default_str();
  sub->add_flag("--upsample", a->upsample, "maps upsampled to the input's size (default: the layer's resolution)");
  sub->add_option("--size", a->size, "the input height and width the export is checked on (default: the crop, else "
                  "the resize); a token layer's module takes this size only")->expected(2)->check(whole_number(1));
  sub->add_option("--out", a->out, "the TorchScript file to write")->required();
  return {&a->common, [a] { return run_export(*a); }};
}

}  // namespace gradcam_cli
