// examples/guided_panel.cpp: the paper's figure for one image: image | Grad-CAM | guided backprop |
// guided Grad-CAM | localization box, all from one forward pass.
//   guided_panel MODEL IMAGE OUT.png [CLASS]
#include <gradcam/gradcam.hpp>

#include <iostream>
#include <string>

int main(int argc, char** argv) try {
  if (argc != 4 && argc != 5) {
    std::cerr << "usage: guided_panel MODEL IMAGE OUT.png [CLASS]\n";
    return 2;
  }
  auto model = gradcam::load_model(argv[1]);
  cv::Mat image = gradcam::load_image(argv[2]);
  gradcam::Geometry geo;
  at::Tensor input = gradcam::to_tensor(image, gradcam::Preprocess().resize(0).crop(0), &geo);

  gradcam::GradCAM cam(model, gradcam::GradCAMOptions("auto").guided(gradcam::GuidedMode::guided));
  auto target = argc == 5 ? gradcam::Target::classes({std::stoll(argv[4])}) : gradcam::Target::top1();
  auto r = cam.compute(input, target);
  const auto& m = r.maps.front();

  cv::Mat heat = gradcam::map_to_image(m.map[0][0], geo);
  cv::Mat overlay = gradcam::overlay(image, heat, gradcam::colormap_from_name("jet"), 0.5);
  cv::Mat guided = gradcam::rgb_to_mat(gradcam::guided_to_display(r.guided[0][0]));
  cv::Mat ggc = gradcam::rgb_to_mat(gradcam::guided_to_display(m.guided_gradcam[0]));
  cv::Mat boxed = image.clone();
  auto loc = gradcam::localize(m.map[0][0], gradcam::LocalizeOptions().size({geo.input_height, geo.input_width}));
  if (loc[0].box) {
    const auto& b = *loc[0].box;
    gradcam::draw_box(boxed, geo.to_image(b), cv::Scalar(0, 0, 255));
  }
  const std::string cls = std::to_string(r.classes[0][0].item<int64_t>());
  gradcam::save_image(argv[3], gradcam::panel({image, overlay, guided, ggc, boxed},
                                              {"image", "Grad-CAM " + cls, "guided backprop", "guided Grad-CAM", "box"}));
  std::cout << "wrote " << argv[3] << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "guided_panel: " << e.what() << "\n";
  return 1;
}
