// gradcam_bench: times a plain forward pass (the baseline) and full Grad-CAM / Guided Grad-CAM
// calls in the same run, interleaved, and prints the medians as one JSON object.
//
//   gradcam_bench --model resnet50.pt [--layer layer4] [--batch 1] [--size 224] [--threads 2]
//                 [--repeat 20] [--warmup 3] [--device cpu|cuda] [--no-guided]
//
// forward_ms: module.forward under torch::NoGradGuard (the user's own module, as an application
// would run it). gradcam_ms: GradCAM::compute (forward, partial backward to the layer, map).
// guided_gradcam_ms: GradCAM::compute with GuidedMode::guided (one forward, two backward passes).
// Uses only the public API.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/api/include/torch/cuda.h>
#include <torch/csrc/jit/api/module.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include <gradcam/gradcam.hpp>

namespace {

struct Args {
  std::string model;
  std::string layer = "layer4";
  int64_t batch = 1;
  int64_t size = 224;
  int threads = 2;
  int repeat = 20;
  int warmup = 3;
  std::string device = "cpu";
  bool guided = true;
};

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "gradcam_bench: " << why
            << "\nusage: gradcam_bench --model PATH [--layer NAME] [--batch N] [--size S] "
               "[--threads T] [--repeat R] [--warmup W] [--device cpu|cuda] [--no-guided]\n";
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage("missing value after " + k);
      return argv[++i];
    };
    auto number = [&]() -> long {
      const std::string v = value();
      char* end = nullptr;
      const long n = std::strtol(v.c_str(), &end, 10);
      if (end == v.c_str() || *end != '\0' || n <= 0) usage("bad value '" + v + "' for " + k);
      return n;
    };
    if (k == "--model") a.model = value();
    else if (k == "--layer") a.layer = value();
    else if (k == "--batch") a.batch = number();
    else if (k == "--size") a.size = number();
    else if (k == "--threads") a.threads = static_cast<int>(number());
    else if (k == "--repeat") a.repeat = static_cast<int>(number());
    else if (k == "--warmup") a.warmup = static_cast<int>(number());
    else if (k == "--device") a.device = value();
    else if (k == "--no-guided") a.guided = false;
    else usage("unknown argument '" + k + "'");
  }
  if (a.model.empty()) usage("--model is required");
  return a;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int main(int argc, char** argv) try {
  const Args args = parse(argc, argv);
  at::set_num_threads(args.threads);
  const c10::Device device(args.device);
  auto module = gradcam::load_model(args.model, device);
  const at::Tensor x = at::randn({args.batch, 3, args.size, args.size}, at::TensorOptions().device(device));
  const bool cuda = device.is_cuda();
  auto sync = [&] {
    if (cuda) torch::cuda::synchronize();
  };

  gradcam::GradCAM cam(module, gradcam::GradCAMOptions(args.layer));
  gradcam::GradCAM guided(module, gradcam::GradCAMOptions(args.layer).guided(gradcam::GuidedMode::guided));

  auto forward = [&] {
    c10::NoGradGuard no_grad;
    (void)module.forward({x});
  };
  auto gradcam_call = [&] { (void)cam.compute(x); };
  auto guided_call = [&] { (void)guided.compute(x); };

  auto time_ms = [&](const std::function<void()>& f) {
    sync();
    const auto t0 = std::chrono::steady_clock::now();
    f();
    sync();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  for (int i = 0; i < args.warmup; ++i) {
    forward();
    gradcam_call();
    if (args.guided) guided_call();
  }
  std::vector<double> tf, tg, tgg;
  for (int i = 0; i < args.repeat; ++i) {  // interleaved, so drift affects all alike
    tf.push_back(time_ms(forward));
    tg.push_back(time_ms(gradcam_call));
    if (args.guided) tgg.push_back(time_ms(guided_call));
  }
  const double f = median(tf), g = median(tg);
  std::printf("{\"model\": \"%s\", \"layer\": \"%s\", \"device\": \"%s\", \"batch\": %lld, \"size\": %lld, "
              "\"threads\": %d, \"repeat\": %d, \"forward_ms\": %.3f, \"gradcam_ms\": %.3f, \"ratio\": %.3f, "
              "\"gradcam_images_per_s\": %.1f",
              args.model.c_str(), args.layer.c_str(), args.device.c_str(),
              static_cast<long long>(args.batch), static_cast<long long>(args.size), args.threads,
              args.repeat, f, g, g / f, 1000.0 * static_cast<double>(args.batch) / g);
  if (args.guided) {
    const double gg = median(tgg);
    std::printf(", \"guided_gradcam_ms\": %.3f, \"guided_ratio\": %.3f", gg, gg / f);
  }
  std::printf("}\n");
  return 0;
} catch (const std::exception& e) {
  std::cerr << "gradcam_bench: " << e.what() << "\n";
  return 1;
}
