// examples/segment_region.cpp: why does a segmentation model label a region as class C?
//   segment_region MODEL LAYER IMAGE CLASS OUT.png [x0 y0 x1 y1]
// The model returns [N,C,H,W] logits or a dict with "out" (torchvision FCN / DeepLab, scripted).
// Without a box the region is every pixel the model predicts as CLASS; the score is the sum of
// CLASS's logits over the region (gradcam::targets::segmentation).
#include <gradcam/gradcam.hpp>

#include <iostream>
#include <string>

int main(int argc, char** argv) try {
  if (argc != 6 && argc != 10) {
    std::cerr << "usage: segment_region MODEL LAYER IMAGE CLASS OUT.png [x0 y0 x1 y1]\n";
    return 2;
  }
  torch::jit::Module model = gradcam::load_model(argv[1]);
  cv::Mat image = gradcam::load_image(argv[3]);
  gradcam::Geometry geometry;
  at::Tensor input = gradcam::to_tensor(image, gradcam::Preprocess().resize(0).crop(0), &geometry);
  const int64_t cls = std::stoll(argv[4]);

  gradcam::Target target = gradcam::targets::segmentation(cls);  // pixels predicted as cls
  if (argc == 10) {
    target = gradcam::targets::segmentation_box(cls, {std::stoll(argv[6]), std::stoll(argv[7]),
                                                      std::stoll(argv[8]), std::stoll(argv[9])});
  }
  gradcam::GradCAM cam(model, gradcam::GradCAMOptions(argv[2]));
  gradcam::GradCAMResult r = cam.compute(input, target);

  cv::Mat heat = gradcam::map_to_image(r.maps.front().map[0][0], geometry);
  cv::Mat out = gradcam::overlay(image, heat, gradcam::colormap_from_name("jet"), 0.5);
  if (argc == 10) {
    gradcam::draw_box(out, {std::stoi(argv[6]), std::stoi(argv[7]), std::stoi(argv[8]), std::stoi(argv[9])},
                      cv::Scalar(255, 255, 255));
  }
  gradcam::save_image(argv[5], out);
  std::cout << "region score " << r.scores[0][0].item<double>() << " for class " << cls << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "segment_region: " << e.what() << "\n";
  return 1;
}
