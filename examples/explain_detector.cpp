// examples/explain_detector.cpp: one Grad-CAM map per detected box, from one forward pass.
// Prints each box's class, score and map file, and writes each map as an overlay masked to its
// box. docs/detection.md.
//   explain_detector MODEL IMAGE OUT_DIR [THRESHOLD] [LAYER] [OPS_LIBRARY]
// THRESHOLD is the lowest detection score explained (default 0.5); LAYER defaults to "auto" (a torchvision detector's backbone's last stage); OPS_LIBRARY is
// torchvision's operator library, which torchvision's detectors need (libtorchvision.so, or the
// Python package's _C.so).
#include <gradcam/gradcam.hpp>

#include <filesystem>
#include <iostream>
#include <string>

int main(int argc, char** argv) try {
  if (argc < 4 || argc > 7) {
    std::cerr << "usage: explain_detector MODEL IMAGE OUT_DIR [THRESHOLD] [LAYER] [OPS_LIBRARY]\n";
    return 2;
  }
  if (argc == 7) gradcam::load_operators(argv[6]);
  auto model = gradcam::load_model(argv[1]);
  cv::Mat image = gradcam::load_image(argv[2]);
  // torchvision's detectors resize and normalise inside the model: give them the image as it is
  gradcam::Geometry geo;
  const at::Tensor input =
      gradcam::to_tensor(image, gradcam::Preprocess().resize(0).crop(0).mean({0, 0, 0}).std({1, 1, 1}), &geo);

  const double threshold = argc >= 5 ? std::stod(argv[4]) : 0.5;
  const std::string layer = argc >= 6 ? argv[5] : "auto";
  gradcam::GradCAM cam(model, gradcam::GradCAMOptions(layer).probe_shape({1, 3, input.size(2), input.size(3)}));
  const auto options = gradcam::detection::DetectionOptions().score_threshold(threshold).max_boxes(5);
  const auto result = cam.compute(input, gradcam::detection::boxes(options));
  // the same selection the target made, with the boxes
  const auto found = gradcam::detection::detect(*result.output, options).front();

  std::filesystem::create_directories(argv[3]);
  const int jet = gradcam::colormap_from_name("jet");
  std::cout << "layer " << cam.layers().front() << "\n";
  for (size_t r = 0; r < found.size(); ++r) {
    const auto& d = found[r];
    cv::Mat heat = gradcam::map_to_image(result.get(cam.layers().front(), static_cast<int64_t>(r)).map[0][0], geo);
    cv::Mat shown = gradcam::overlay(image, heat, jet, 0.5);
    gradcam::draw_box(shown, gradcam::Box{int(d.x0), int(d.y0), int(d.x1), int(d.y1)}, cv::Scalar(0, 255, 0));
    const std::string file = std::string(argv[3]) + "/box" + std::to_string(r) + ".png";
    gradcam::save_image(file, shown);
    std::cout << "box " << r << ": class " << d.label << ", score " << d.score << ", [" << d.x0 << ", " << d.y0
              << ", " << d.x1 << ", " << d.y1 << "] -> " << file << "\n";
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "explain_detector: " << e.what() << "\n";
  return 1;
}
