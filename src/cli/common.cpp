// src/cli/common.cpp: the shared flags of the `gradcam` subcommands and the library options they
// make (common.hpp).
#include "common.hpp"

namespace gradcam_cli {

void add_common(CLI::App* app, Common& c, bool with_model) {
  if (with_model) {
    app->add_option("--model", c.model, "TorchScript model file (torch.jit.script / torch.jit.trace, saved with torch.jit.save)")
        ->required()->check(CLI::ExistingFile);
  }
  app->add_option("--layer", c.layer, "target layer: a module path as named_modules() prints it (layer4, features.29), or auto")
      ->capture_default_str();
  app->add_option("--device", c.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  app->add_option("--batch", c.batch, "images per forward pass")->check(whole_number(1))->capture_default_str();
  app->add_option("--resize", c.resize, "resize the shorter side to S pixels (0: keep)")->check(whole_number(0))->capture_default_str();
  app->add_option("--crop", c.crop, "centre crop C x C (0: none)")->check(whole_number(0))->capture_default_str();
  app->add_option("--mean", c.mean, "per-channel mean R G B")->expected(3)->capture_default_str();
  app->add_option("--std", c.std, "per-channel standard deviation R G B")->expected(3)->check(real_number(0, std::numeric_limits<double>::max(), true))->capture_default_str();
  app->add_option("--labels", c.labels, "class names, one per line")->check(CLI::ExistingFile);
  app->add_option("--threads", c.threads, "intra-op threads (default: all cores; more than the cores are capped, with a warning)")->check(whole_number(1));
  app->add_option("--max-pixels", c.max_pixels, "refuse images with more pixels (width x height), read from the header before decoding (0: no limit)")
      ->check(whole_number(0, std::numeric_limits<long long>::max()))->capture_default_str();
  app->add_flag("--quiet,-q", c.quiet, "no progress bar");
  app->add_option("--tokens", c.tokens, "how the layer's output is read as a grid: auto (inferred from its shape), cls+grid "
                  "(transformer tokens [N, T, C]: extra tokens, then a grid), grid (tokens, no extra ones), nhwc (channels "
                  "last, Swin and ConvNeXt), nchw (channels first)")
      ->check(CLI::IsMember({"auto", "cls+grid", "grid", "nhwc", "nchw"}))->capture_default_str();
  app->add_option("--extra-tokens", c.extra_tokens, "tokens: how many lead the grid (class, distillation, registers); "
                  "default: 1 with cls+grid, 0 with grid, inferred with auto")->check(whole_number(0));
  app->add_option("--token-grid", c.token_grid, "tokens: the grid's rows and columns (default: inferred)")
      ->expected(2)->check(whole_number(1));
  app->add_option("--ops-library", c.ops_libraries, "a library of TorchScript operators the model calls, loaded first "
                  "(torchvision's detectors: libtorchvision.so, or the _C.so of torchvision's Python package)")
      ->expected(1, -1)->check(CLI::ExistingFile);
  app->add_option("--attention-heads", c.attention_heads, "attention rollout: the heads of each attention layer "
                  "(default: the model's num_heads, which a traced model does not keep)")->check(whole_number(1));
}

gradcam::GradCAMOptions cam_options(const Common& c, std::vector<std::string> layers, const std::vector<int64_t>& own_hw) {
  gradcam::TokenLayout t;
  using Kind = gradcam::TokenLayout::Kind;
  const bool token_details = c.extra_tokens >= 0 || c.token_grid.size() == 2;
  if (c.tokens == "nhwc") t.kind = Kind::channels_last;
  if (c.tokens == "nchw") t.kind = Kind::channels_first;
  if (c.tokens == "cls+grid" || c.tokens == "grid" || (c.tokens == "auto" && token_details)) {
    t.kind = Kind::tokens;
    t.extra = c.extra_tokens >= 0 ? c.extra_tokens : c.tokens == "cls+grid" ? 1 : c.tokens == "grid" ? 0 : -1;
  }
  if (c.token_grid.size() == 2) {
    t.grid_h = c.token_grid[0];
    t.grid_w = c.token_grid[1];
  }
  const int64_t side = c.crop > 0 ? c.crop : c.resize > 0 ? c.resize : 224;
  const bool own = c.crop == 0 && c.resize == 0 && own_hw.size() == 2;
  auto options = gradcam::GradCAMOptions(std::move(layers)).token_layout(t)
      .probe_shape({1, -1, own ? own_hw[0] : side, own ? own_hw[1] : side})
      .attention_heads(c.attention_heads).eigen_smooth(c.eigen_smooth).aug_smooth(c.aug_smooth).aug_scales(c.aug_scales)
      .samples(c.samples);
  if (c.noise_std >= 0) options.noise_std(c.noise_std);
  return options;
}

void add_cam_smoothing(CLI::App* app, Common& c) {
  app->add_flag("--eigen-smooth", c.eigen_smooth, "each CAM map as the first principal component of its per-channel "
                "terms instead of their sum (pytorch-grad-cam's eigen_smooth; not EigenCAM, EigenGradCAM, KPCA-CAM, rollout)");
  app->add_flag("--aug-smooth", c.aug_smooth, "each CAM map as the mean of the maps of 6 copies of the image (flipped "
                "left-right or not, times 0.9, 1 and 1.1), mapped back (pytorch-grad-cam's aug_smooth; 6 times the memory)");
  app->add_option("--aug-scales", c.aug_scales, "--aug-smooth: more input sizes, as factors of the image's (0.75 1.25), "
                  "each a pass of 6 copies whose maps are resized to the image's own and averaged with them")
      ->check(CLI::Range(0.01, 4.0));
  app->add_option("--samples", c.samples, "sscam / iscam: noise draws or integration steps per channel; smoothgradcam++: "
                  "noisy copies of the input (0: 35 for sscam, 10 for iscam, 4 for smoothgradcam++)")
      ->check(CLI::Range(int64_t{0}, int64_t{100000}))->capture_default_str();
  app->add_option("--noise-std", c.noise_std, "standard deviation of the noise: sscam adds it to the masks, which lie "
                  "in [0, 1] (default 2); smoothgradcam++ to the normalised input (default 0.3)")->check(CLI::Range(0.0, 1e6));
}

}  // namespace gradcam_cli
