// Built against the installed package by tests/package/run.sh: explains one fixture model.
#include <gradcam/gradcam.hpp>
#include <torch/script.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  auto model = gradcam::load_model(argv[1]);
  gradcam::GradCAM cam(model, gradcam::GradCAMOptions("auto"));
  auto r = cam.compute(at::ones({1, 3, 16, 16}));
  std::cout << "gradcam " << gradcam::version << " layer " << cam.layers()[0] << " map "
            << r.maps.at(0).map.sizes() << "\n";
  return r.maps.at(0).map.dim() == 4 ? 0 : 1;
}
