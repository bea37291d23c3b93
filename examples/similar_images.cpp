// examples/similar_images.cpp: why does the model find IMAGE similar to REFERENCE?
//   similar_images MODEL LAYER IMAGE REFERENCE OUT.png [OUTPUT_KEY]
// The model's output (or its OUTPUT_KEY entry: a dict key or tuple index) is an embedding [N,D];
// the explained score is the cosine similarity between IMAGE's embedding and REFERENCE's
// (gradcam::targets::similarity), as re-identification and face matching ask.
#include <gradcam/gradcam.hpp>

#include <iostream>
#include <string>

int main(int argc, char** argv) try {
  if (argc != 6 && argc != 7) {
    std::cerr << "usage: similar_images MODEL LAYER IMAGE REFERENCE OUT.png [OUTPUT_KEY]\n";
    return 2;
  }
  const std::string key = argc == 7 ? argv[6] : "";
  torch::jit::Module model = gradcam::load_model(argv[1]);
  const auto pre = gradcam::Preprocess().resize(0).crop(0);
  cv::Mat image = gradcam::load_image(argv[3]);
  gradcam::Geometry geometry;
  at::Tensor input = gradcam::to_tensor(image, pre, &geometry);
  at::Tensor reference;
  {
    c10::NoGradGuard no_grad;
    c10::IValue out = model.forward({gradcam::to_tensor(gradcam::load_image(argv[4]), pre)});
    reference = gradcam::targets::select_output(out, key.empty() && !out.isTensor() ? "0" : key)[0];
  }
  gradcam::GradCAM cam(model, gradcam::GradCAMOptions(argv[2]));
  gradcam::GradCAMResult r = cam.compute(input, gradcam::targets::similarity(reference, key));

  cv::Mat heat = gradcam::map_to_image(r.maps.front().map[0][0], geometry);
  cv::Mat ref_image = gradcam::load_image(argv[4]);
  gradcam::save_image(argv[5], gradcam::panel({image, gradcam::overlay(image, heat, gradcam::colormap_from_name("jet"), 0.5), ref_image},
                                              {"image", "why similar", "reference"}, 192));
  std::cout << "cosine similarity " << r.scores[0][0].item<double>() << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "similar_images: " << e.what() << "\n";
  return 1;
}
