// gradcam_bench: times a plain forward pass (the baseline) and full Grad-CAM / Guided Grad-CAM
// calls in the same run, interleaved, and prints the medians as one JSON object.
//
//   gradcam_bench --model resnet50.pt [--layer layer4] [--batch 1] [--size 224] [--threads 2]
//                 [--repeat 20] [--warmup 3] [--device cpu|cuda] [--no-guided]
//                 [--methods all|gradcam++,scorecam,...] [--perturbation-batch 64]
//
// forward_ms: module.forward under torch::NoGradGuard (the user's own module, as an application
// would run it). gradcam_ms: GradCAM::compute (forward, partial backward to the layer, map).
// guided_gradcam_ms: GradCAM::compute with GuidedMode::guided (one forward, two backward passes).
// --methods adds one row per CAM method (GradCAM with that method alone; Score-CAM and Ablation-CAM
// are timed once, they run one forward pass per channel), each with its own interleaved forward
// baseline, and a row for all gradient methods computed together from one forward pass.
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
  std::vector<std::string> methods;
  int64_t perturbation_batch = 64;
};

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "gradcam_bench: " << why
            << "\nusage: gradcam_bench --model PATH [--layer NAME] [--batch N] [--size S] "
               "[--threads T] [--repeat R] [--warmup W] [--device cpu|cuda] [--no-guided]\n"
               "       [--methods all|NAME,NAME...] [--perturbation-batch B]\n";
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
    else if (k == "--perturbation-batch") a.perturbation_batch = number();
    else if (k == "--methods") {
      std::string v = value();
      if (v == "all") {
        for (auto m : gradcam::all_methods()) {
          if (m != gradcam::Method::rollout) a.methods.emplace_back(gradcam::method_name(m));  // transformers only
        }
      } else {
        for (size_t pos = 0; pos <= v.size();) {
          const size_t comma = std::min(v.find(',', pos), v.size());
          a.methods.push_back(v.substr(pos, comma - pos));
          pos = comma + 1;
        }
      }
    }
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
  if (!args.methods.empty()) {
    std::printf(", \"methods\": {");
    std::vector<std::pair<std::string, std::vector<gradcam::Method>>> rows;
    for (const auto& name : args.methods) rows.push_back({name, {gradcam::method_from_name(name)}});
    std::vector<gradcam::Method> gradient;
    for (auto m : gradcam::all_methods())
      if (gradcam::uses_gradients(m)) gradient.push_back(m);
    rows.push_back({"all_gradient_methods", gradient});
    bool first = true;
    for (const auto& [name, methods] : rows) {
      const bool perturbation = std::any_of(methods.begin(), methods.end(), [](gradcam::Method m) {
        return m == gradcam::Method::scorecam || m == gradcam::Method::ablationcam;
      });
      gradcam::GradCAM e(module, gradcam::GradCAMOptions(args.layer).methods(methods)
                                     .perturbation_batch(args.perturbation_batch));
      auto call = [&] { (void)e.compute(x); };
      const int reps = perturbation ? 1 : args.repeat;
      if (!perturbation) {
        for (int i = 0; i < args.warmup; ++i) call();
      }
      std::vector<double> mf, mm;
      for (int i = 0; i < reps; ++i) {
        mf.push_back(time_ms(forward));
        mm.push_back(time_ms(call));
        if (perturbation) mf.push_back(time_ms(forward));
      }
      const double bf = median(mf), bm = median(mm);
      std::printf("%s\"%s\": {\"ms\": %.3f, \"forward_ms\": %.3f, \"ratio\": %.3f}", first ? "" : ", ",
                  name.c_str(), bm, bf, bm / bf);
      std::fflush(stdout);
      first = false;
    }
    std::printf("}");
  }
  std::printf("}\n");
  return 0;
} catch (const std::exception& e) {
  std::cerr << "gradcam_bench: " << e.what() << "\n";
  return 1;
}
