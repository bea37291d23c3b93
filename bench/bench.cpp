// gradcam_bench: the development benchmark, for machines where the gradcam command cannot be built
// (the GPU check builds without OpenCV). The measurement is `gradcam bench`'s, one implementation
// (src/cli/bench_core.cpp); this file only reads the flags and prints the JSON report.
//
//   gradcam_bench --model resnet50.pt [--layer auto] [--batch 1] [--size 224] [--channels 3]
//                 [--threads T] [--repeat 20] [--warmup 3] [--device cpu|cuda] [--no-guided]
//                 [--methods all|gradcam++,scorecam,...] [--perturbation-batch B] [--no-memory]
//   gradcam_bench --model detector.pt --boxes 1,5,20 [--ops-library PATH] ...
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gradcam/gradcam.hpp>

#include "../src/cli/bench_core.hpp"
#include "../src/cli/malloc_policy.hpp"

namespace {

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "gradcam_bench: " << why
            << "\nusage: gradcam_bench --model PATH [--layer NAME] [--batch N] [--size S] [--channels C] "
               "[--threads T] [--repeat R] [--warmup W] [--device cpu|cuda] [--no-guided]\n"
               "       [--methods all|NAME,NAME...] [--perturbation-batch B] [--boxes K,K...] "
               "[--ops-library PATH] [--no-memory]\n";
  std::exit(2);
}

std::vector<std::string> split(const std::string& v) {
  std::vector<std::string> items;
  std::stringstream list(v);
  for (std::string item; std::getline(list, item, ',');) items.push_back(item);
  return items;
}

}  // namespace

int main(int argc, char** argv) try {
  gradcam_bench::Options o;
  o.malloc_policy = gradcam_cli::apply_malloc_policy();  // as the command does (malloc_policy.hpp)
  std::string memory_child, ops_library;
  int threads = 0;
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
      if (end == v.c_str() || *end != '\0' || n < 0) usage("bad value '" + v + "' for " + k);
      return n;
    };
    if (k == "--model") o.model = value();
    else if (k == "--layer") o.layer = value();
    else if (k == "--batch") o.batch = number();
    else if (k == "--size") o.size = number();
    else if (k == "--channels") o.channels = number();
    else if (k == "--threads") threads = static_cast<int>(number());
    else if (k == "--repeat") o.repeat = static_cast<int>(number());
    else if (k == "--warmup") o.warmup = static_cast<int>(number());
    else if (k == "--device") o.device = value();
    else if (k == "--no-guided") o.guided = false;
    else if (k == "--no-memory") o.memory = false;
    else if (k == "--perturbation-batch") o.perturbation_batch = number();
    else if (k == "--ops-library") ops_library = value();
    else if (k == "--memory-child") memory_child = value();
    else if (k == "--boxes") {
      for (const auto& item : split(value())) o.boxes.push_back(std::stoll(item));
    } else if (k == "--methods") {
      const std::string v = value();
      o.methods = v == "all" ? gradcam_bench::all_method_names() : split(v);
    } else {
      usage("unknown argument '" + k + "'");
    }
  }
  if (o.model.empty()) usage("--model is required");
  // as the command does: all cores unless told (LibTorch's own default varies by build)
  at::set_num_threads(threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  if (!ops_library.empty()) {
    gradcam::load_operators(ops_library);
    o.relaunch = {"--ops-library", ops_library};
  }
  if (!memory_child.empty()) return gradcam_bench::memory_child(o, memory_child);
  std::cout << gradcam_bench::to_json(gradcam_bench::run(o));
  return 0;
} catch (const std::exception& e) {
  std::cerr << "gradcam_bench: " << e.what() << "\n";
  return 1;
}
