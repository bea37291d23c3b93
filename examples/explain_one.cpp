// examples/explain_one.cpp: the smallest program: load a model, explain one image, save an overlay.
//   explain_one MODEL IMAGE OUT.png [--resize S --crop C are the gradcam command's job; this uses
//   the image as it is, normalised with ImageNet's mean and std]
#include <gradcam/gradcam.hpp>

#include <iostream>

int main(int argc, char** argv) try {
  if (argc != 4) {
    std::cerr << "usage: explain_one MODEL IMAGE OUT.png\n";
    return 2;
  }
  torch::jit::Module model = gradcam::load_model(argv[1]);
  cv::Mat image = gradcam::load_image(argv[2]);  // BGR
  gradcam::Geometry geometry;
  at::Tensor input = gradcam::to_tensor(image, gradcam::Preprocess().resize(0).crop(0), &geometry);

  gradcam::GradCAM cam(model, gradcam::GradCAMOptions("auto"));  // or "layer4", "features.29"...
  gradcam::GradCAMResult result = cam.compute(input);              // top-1 class
  const gradcam::LayerMap& m = result.maps.front();

  cv::Mat heat = gradcam::map_to_image(m.map[0][0], geometry);
  gradcam::save_image(argv[3], gradcam::overlay(image, heat, gradcam::colormap_from_name("jet"), 0.5));
  std::cout << "class " << result.classes[0][0].item<int64_t>() << " (score "
            << result.scores[0][0].item<double>() << ") explained at layer " << m.layer << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "explain_one: " << e.what() << "\n";
  return 1;
}
