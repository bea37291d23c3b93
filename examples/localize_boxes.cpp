// examples/localize_boxes.cpp: weakly supervised localization: the box of the largest segment
// above 15% of the Grad-CAM map's maximum, for the top-3 classes, drawn on the image.
//   localize_boxes MODEL IMAGE OUT.png
#include <gradcam/gradcam.hpp>

#include <iostream>

int main(int argc, char** argv) try {
  if (argc != 4) {
    std::cerr << "usage: localize_boxes MODEL IMAGE OUT.png\n";
    return 2;
  }
  auto model = gradcam::load_model(argv[1]);
  cv::Mat image = gradcam::load_image(argv[2]);
  gradcam::Geometry geo;
  at::Tensor input = gradcam::to_tensor(image, gradcam::Preprocess().resize(0).crop(0), &geo);
  gradcam::GradCAM cam(model, gradcam::GradCAMOptions("auto"));
  auto r = cam.compute(input, gradcam::Target::topk(3));  // 3 maps from one forward pass

  const cv::Scalar colours[3] = {{0, 0, 255}, {0, 200, 0}, {255, 0, 0}};
  cv::Mat out = image.clone();
  for (int64_t k = 0; k < 3; ++k) {
    const auto& m = r.get(cam.layers()[0], k);
    auto loc = gradcam::localize(m.map[0][0], gradcam::LocalizeOptions().size({geo.input_height, geo.input_width}));
    const int64_t cls = r.classes[0][k].item<int64_t>();
    if (!loc[0].box) {
      std::cout << "class " << cls << ": no box (" << loc[0].reason << ")\n";
      continue;
    }
    const auto& b = *loc[0].box;
    auto box = geo.to_image(b);
    gradcam::draw_box(out, box, colours[k], std::to_string(cls));
    std::cout << "class " << cls << ": box " << box.x0 << "," << box.y0 << "," << box.x1 << "," << box.y1 << "\n";
  }
  gradcam::save_image(argv[3], out);
  return 0;
} catch (const std::exception& e) {
  std::cerr << "localize_boxes: " << e.what() << "\n";
  return 1;
}
