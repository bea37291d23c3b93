// CUDA: the same maps on the GPU as on the CPU (TF32 off), everything kept on the device.
// Skipped, with a visible message, where CUDA is not available.
#include "catch.hpp"

#include <ATen/Context.h>

#include <iostream>

#include <gradcam/gradcam.hpp>

#include "support.hpp"

TEST_CASE("CUDA results equal CPU results", "[cuda]") {
  if (!at::hasCUDA()) {
    std::cout << "SKIPPED: CUDA is not available on this machine; the CUDA tests did not run" << std::endl;
    WARN("CUDA is not available: CUDA tests skipped");
    return;
  }
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
  const c10::Device cuda("cuda");
  const std::vector<std::pair<std::string, std::string>> models = {
      {"resnet18", "layer4"}, {"resnet18", "layer3.1.conv2"}, {"vgg16", "features.29"}};
  double worst = 0;
  for (const auto& [name, layer] : models) {
    const test::Ref ref(name);
    const at::Tensor x = ref.get("input");  // batch 3
    for (const std::string exported : {"script", "trace"}) {
      INFO(name << " " << exported << " " << layer);
      auto module = test::model(name + "_" + exported);
      const auto target = gradcam::Target::classes({3, 517, 999});
      gradcam::GradCAM cpu(module, gradcam::GradCAMOptions(layer).guided(gradcam::GuidedMode::guided));
      // the documented way: move a copy of the module yourself, or let GradCAMOptions::device do it
      auto on_gpu = gradcam::load_model(test::fixture(name + "_" + exported + ".pt"), cuda);
      gradcam::GradCAM gpu(on_gpu, gradcam::GradCAMOptions(layer).guided(gradcam::GuidedMode::guided));
      gradcam::GradCAM gpu_copy(module, gradcam::GradCAMOptions(layer).device(cuda));

      auto rc = cpu.compute(x, target);
      auto rg = gpu.compute(x.to(cuda), target);
      auto rg2 = gpu_copy.compute(x, target);  // CPU input, moved by the explainer
      const auto& mg = rg.get(layer);
      CHECK(mg.map.device().is_cuda());
      CHECK(mg.guided_gradcam.device().is_cuda());
      CHECK(rg.guided[0].device().is_cuda());
      const double e = test::rel_err(mg.map, rc.get(layer).map);
      worst = std::max(worst, e);
      CHECK(e < 1e-4);
      CHECK(test::rel_err(rg2.get(layer).map, rc.get(layer).map) < 1e-4);
      CHECK(test::rel_err(rg.guided[0], rc.guided[0]) < 1e-4);
      CHECK(test::rel_err(mg.guided_gradcam, rc.get(layer).guided_gradcam) < 1e-4);
      // localisation's map processing on the device
      auto loc = gradcam::localize(mg.map, gradcam::LocalizeOptions().size({x.size(2), x.size(3)}));
      auto locc = gradcam::localize(rc.get(layer).map, gradcam::LocalizeOptions().size({x.size(2), x.size(3)}));
      REQUIRE(loc.size() == 3);
      for (size_t i = 0; i < 3; ++i) CHECK(loc[i].box.has_value() == locc[i].box.has_value());
    }
  }
  std::cout << "CUDA vs CPU: worst map difference " << worst << " of the map's max" << std::endl;
}
