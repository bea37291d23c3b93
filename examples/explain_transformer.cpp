// examples/explain_transformer.cpp: a Vision Transformer explained. The layer auto takes (the last
// token layer whose grid the output depends on), how its tokens were read as a grid, and a panel:
// image | Grad-CAM | attention rollout, from one forward pass. docs/transformers.md.
//   explain_transformer MODEL IMAGE SIZE OUT.png      (SIZE: the model's input side, e.g. 224)
#include <gradcam/gradcam.hpp>

#include <iostream>
#include <string>

int main(int argc, char** argv) try {
  if (argc != 5) {
    std::cerr << "usage: explain_transformer MODEL IMAGE SIZE OUT.png\n";
    return 2;
  }
  auto model = gradcam::load_model(argv[1]);
  const int64_t side = std::stoll(argv[3]);
  cv::Mat image = gradcam::load_image(argv[2]);
  gradcam::Geometry geo;
  at::Tensor input = gradcam::to_tensor(image, gradcam::Preprocess().resize(side).crop(side), &geo);

  // auto at the model's own input size; a ViT's position embedding fixes it
  const auto listing = gradcam::list_layers(model, std::vector<int64_t>{1, -1, side, side});
  std::cout << "auto: " << listing.auto_layer << " (" << listing.auto_note << ")\n";

  // Grad-CAM and attention rollout in one pass (a traced model needs .attention_heads(H))
  gradcam::GradCAM cam(model, gradcam::GradCAMOptions(listing.auto_layer)
                                  .methods({gradcam::Method::gradcam, gradcam::Method::rollout}));
  const auto r = cam.compute(input);
  const auto& grad = r.get(cam.layers().front(), 0, 0, gradcam::Method::gradcam);
  const auto& rollout = r.get(cam.layers().front(), 0, 0, gradcam::Method::rollout);
  std::cout << "read as " << gradcam::layout_name(grad.layout.kind) << ": " << grad.layout.extra
            << " extra token(s), a " << grad.layout.grid_h << "x" << grad.layout.grid_w << " grid\n";

  const int jet = gradcam::colormap_from_name("jet");
  auto shown = [&](const gradcam::LayerMap& m) {
    return gradcam::overlay(image, gradcam::map_to_image(m.map[0][0], geo), jet, 0.5);
  };
  const std::string cls = std::to_string(r.classes[0][0].item<int64_t>());
  gradcam::save_image(argv[4], gradcam::panel({image, shown(grad), shown(rollout)},
                                              {"image", "Grad-CAM " + cls, "attention rollout"}));
  std::cout << "class " << cls << "; wrote " << argv[4] << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "explain_transformer: " << e.what() << "\n";
  return 1;
}
