// examples/explain_output.cpp: explain any scalar the model outputs.
//   explain_output MODEL LAYER IMAGE KEY OUT.png [INDEX...]
// KEY selects a dict entry by name or a tuple element by index ("" for a plain tensor output);
// INDEX picks one element of each sample's tensor (gradcam::targets::output). For example
// `explain_output m.pt layer4 cat.jpg 1 out.png 7` explains the model's second output at [:, 7].
#include <gradcam/gradcam.hpp>

#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) try {
  if (argc < 6) {
    std::cerr << "usage: explain_output MODEL LAYER IMAGE KEY OUT.png [INDEX...]\n";
    return 2;
  }
  std::vector<int64_t> index;
  for (int i = 6; i < argc; ++i) index.push_back(std::stoll(argv[i]));
  torch::jit::Module model = gradcam::load_model(argv[1]);
  cv::Mat image = gradcam::load_image(argv[3]);
  gradcam::Geometry geometry;
  at::Tensor input = gradcam::to_tensor(image, gradcam::Preprocess().resize(0).crop(0), &geometry);

  gradcam::GradCAM cam(model, gradcam::GradCAMOptions(argv[2]));
  gradcam::GradCAMResult r = cam.compute(input, gradcam::targets::output(argv[4], index));

  cv::Mat heat = gradcam::map_to_image(r.maps.front().map[0][0], geometry);
  gradcam::save_image(argv[5], gradcam::overlay(image, heat, gradcam::colormap_from_name("jet"), 0.5));
  std::cout << "output value " << r.scores[0][0].item<double>() << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "explain_output: " << e.what() << "\n";
  return 1;
}
