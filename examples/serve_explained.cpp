// examples/serve_explained.cpp: what a server does with a model written by `gradcam export`
// (docs/deploy.md): plain LibTorch, no gradcam; this program links torch only. It runs a batch
// under NoGradGuard, as servers run models, and prints each image's top classes and where their
// maps peak. Usage: example_serve_explained EXPLAINED.pt C H W [BATCH]
#include <torch/script.h>

#include <iostream>
#include <string>

int main(int argc, char** argv) {
  if (argc != 5 && argc != 6) {
    std::cerr << "usage: example_serve_explained EXPLAINED.pt C H W [BATCH]\n";
    return 2;
  }
  try {
    torch::jit::Module model = torch::jit::load(argv[1]);
    const int64_t c = std::stoll(argv[2]), h = std::stoll(argv[3]), w = std::stoll(argv[4]);
    const int64_t batch = argc == 6 ? std::stoll(argv[5]) : 2;
    const auto info = model.run_method("explained").toGenericDict();
    std::cout << "explains layer " << info.at("layer").toStringRef() << " with " << info.at("method").toStringRef()
              << "\n";
    // Gradients need autograd: NoGradGuard is fine (the module turns grad mode on for its own
    // backward pass and restores it), InferenceMode is not.
    torch::NoGradGuard no_grad;
    const auto out = model.forward({torch::rand({batch, c, h, w})}).toTuple();
    const at::Tensor scores = out->elements()[0].toTensor();   // [N, classes]
    const at::Tensor maps = out->elements()[1].toTensor();     // [N, K, H, W] or [N, K, h, w]
    const at::Tensor classes = out->elements()[2].toTensor();  // [N, K], best first
    for (int64_t n = 0; n < batch; ++n) {
      for (int64_t k = 0; k < classes.size(1); ++k) {
        const int64_t cls = classes[n][k].item<int64_t>();
        const at::Tensor map = maps[n][k];
        const int64_t peak = map.argmax().item<int64_t>();
        std::cout << "image " << n << " rank " << k << ": class " << cls << " (score " << scores[n][cls].item<float>()
                  << "), map " << map.size(0) << "x" << map.size(1) << " peaking at row " << peak / map.size(1)
                  << ", column " << peak % map.size(1) << "\n";
      }
    }
  } catch (const c10::Error& e) {
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
    return 1;
  }
  return 0;
}
