// gradcam_bench: times a plain forward pass (the baseline) and full Grad-CAM / Guided Grad-CAM
// calls in the same run, interleaved, and prints the medians as one JSON object.
//
//   gradcam_bench --model resnet50.pt [--layer layer4] [--batch 1] [--size 224] [--threads 2]
//                 [--repeat 20] [--warmup 3] [--device cpu|cuda] [--no-guided]
//                 [--methods all|gradcam++,scorecam,...] [--perturbation-batch 64]
//   gradcam_bench --model detector.pt --boxes 1,5,20 [--ops-library PATH] [--layer auto] ...
//
// forward_ms: module.forward under torch::NoGradGuard (the user's own module, as an application
// would run it). gradcam_ms: GradCAM::compute (forward, partial backward to the layer, map).
// guided_gradcam_ms: GradCAM::compute with GuidedMode::guided (one forward, two backward passes).
// --methods adds one row per CAM method (GradCAM with that method alone; Score-CAM and Ablation-CAM
// are timed once, they run one forward pass per channel), each with its own interleaved forward
// baseline, and a row for all gradient methods computed together from one forward pass.
// --boxes explains a torchvision detector (forward(List[Tensor])) instead: per K, Grad-CAM of its
// K best boxes (score threshold 0), each with its own interleaved forward baseline, so that the
// cost of one more box is the slope (docs/performance.md, "Detectors"). Images are uniform noise
// in [0, 1] of --size x --size.
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
#include <sstream>
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
  std::vector<int64_t> boxes;  // detection: the box counts to time
  std::string ops_library;
};

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "gradcam_bench: " << why
            << "\nusage: gradcam_bench --model PATH [--layer NAME] [--batch N] [--size S] "
               "[--threads T] [--repeat R] [--warmup W] [--device cpu|cuda] [--no-guided]\n"
               "       [--methods all|NAME,NAME...] [--perturbation-batch B] [--boxes K,K...] [--ops-library PATH]\n";
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
    else if (k == "--ops-library") a.ops_library = value();
    else if (k == "--boxes") {
      std::stringstream list(value());
      for (std::string item; std::getline(list, item, ',');) a.boxes.push_back(std::stoll(item));
    }
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

using Timer = std::function<double(const std::function<void()>&)>;

/// --boxes: a detector's forward against Grad-CAM of its K best boxes, for each K.
int detection_bench(const Args& args, torch::jit::Module& module, const c10::Device& device, const Timer& time_ms) {
  const at::Tensor x = at::rand({args.batch, 3, args.size, args.size}, at::TensorOptions().device(device));
  c10::List<at::Tensor> images;
  for (const at::Tensor& image : x.unbind(0)) images.push_back(image);
  auto forward = [&] {
    c10::NoGradGuard no_grad;
    (void)module.forward({images});
  };
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions(args.layer).probe_shape({1, 3, args.size, args.size}));
  std::printf("{\"model\": \"%s\", \"layer\": \"%s\", \"batch\": %lld, \"size\": %lld, \"threads\": %d, "
              "\"repeat\": %d, \"boxes\": {", args.model.c_str(), cam.layers().front().c_str(),
              static_cast<long long>(args.batch), static_cast<long long>(args.size), args.threads, args.repeat);
  for (size_t i = 0; i < args.boxes.size(); ++i) {
    const auto target = gradcam::detection::boxes(
        gradcam::detection::DetectionOptions().score_threshold(0).max_boxes(args.boxes[i]));
    auto call = [&] { (void)cam.compute(x, target); };
    for (int w = 0; w < args.warmup; ++w) call();
    std::vector<double> tf, tm;
    for (int r = 0; r < args.repeat; ++r) {
      tf.push_back(time_ms(forward));
      tm.push_back(time_ms(call));
    }
    const double f = median(tf), m = median(tm);
    std::printf("%s\"%lld\": {\"forward_ms\": %.3f, \"gradcam_ms\": %.3f, \"ratio\": %.3f}", i ? ", " : "",
                static_cast<long long>(args.boxes[i]), f, m, m / f);
    std::fflush(stdout);
  }
  std::printf("}}\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  const Args args = parse(argc, argv);
  at::set_num_threads(args.threads);
  const c10::Device device(args.device);
  if (!args.ops_library.empty()) gradcam::load_operators(args.ops_library);
  auto module = gradcam::load_model(args.model, device);
  const at::Tensor x = at::randn({args.batch, 3, args.size, args.size}, at::TensorOptions().device(device));
  const bool cuda = device.is_cuda();
  auto sync = [&] {
    if (cuda) torch::cuda::synchronize();
  };
  const Timer time_ms = [&](const std::function<void()>& f) {
    sync();
    const auto t0 = std::chrono::steady_clock::now();
    f();
    sync();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  if (!args.boxes.empty()) return detection_bench(args, module, device, time_ms);

  gradcam::GradCAM cam(module, gradcam::GradCAMOptions(args.layer));
  gradcam::GradCAM guided(module, gradcam::GradCAMOptions(args.layer).guided(gradcam::GuidedMode::guided));

  auto forward = [&] {
    c10::NoGradGuard no_grad;
    (void)module.forward({x});
  };
  auto gradcam_call = [&] { (void)cam.compute(x); };
  auto guided_call = [&] { (void)guided.compute(x); };

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
