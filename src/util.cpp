// src/util.cpp (private): see util.hpp.
#include "util.hpp"

#include <c10/util/Exception.h>
#include <torch/csrc/jit/frontend/error_report.h>

#include <algorithm>
#include <utility>

#include <gradcam/error.hpp>

namespace gradcam::detail {

std::string shape_str(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(sizes[i]);
  }
  return s + "]";
}

std::vector<std::string> closest(const std::string& name, const std::vector<std::string>& choices) {
  auto distance = [](const std::string& a, const std::string& b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
      size_t diag = row[0];
      row[0] = i;
      for (size_t j = 1; j <= b.size(); ++j) {
        size_t up = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
        diag = up;
      }
    }
    return row[b.size()];
  };
  std::vector<std::pair<size_t, std::string>> scored;
  for (const auto& c : choices) scored.emplace_back(distance(name, c), c);
  std::stable_sort(scored.begin(), scored.end(),
                   [](const auto& x, const auto& y) { return x.first < y.first; });
  std::vector<std::string> best;
  for (size_t i = 0; i < scored.size() && i < 3; ++i) best.push_back(scored[i].second);
  return best;
}

std::string torch_message(const std::exception& e) {
  std::string msg;
  // LibTorch 1.13's ErrorReport::what() formats the TorchScript source range lazily and, on a
  // corrupt archive, that formatting can throw inside a noexcept what() (std::terminate; found by
  // fuzz_model): never call it.
  if (dynamic_cast<const torch::jit::ErrorReport*>(&e) != nullptr) {
    return "its TorchScript code does not compile (a corrupt or incompatible code file)";
  }
  if (const auto* ce = dynamic_cast<const c10::Error*>(&e)) {
    msg = ce->what_without_backtrace();
  } else {
    msg = e.what();
  }
  // TorchScript errors carry the script call stack first; the cause is after the last marker.
  const std::string marker = "RuntimeError: ";
  if (auto pos = msg.rfind(marker); pos != std::string::npos) msg = msg.substr(pos + marker.size());
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  if (auto nl = msg.find('\n'); nl != std::string::npos) msg = msg.substr(0, nl);
  return msg;
}

std::vector<std::string> module_paths(const torch::jit::Module& module) {
  std::vector<std::string> names;
  for (const auto& item : module.named_modules()) {
    if (!item.name.empty()) names.push_back(item.name);
  }
  return names;
}

bool in_training_mode(const torch::jit::Module& module) {
  for (const auto& m : module.modules()) {
    if (!m.hasattr("training")) continue;
    const c10::IValue flag = m.attr("training");
    if (flag.isBool() && flag.toBool()) return true;
  }
  return false;
}

void backward_failed(const std::string& what, const std::exception& e) {
  const std::string message = torch_message(e);
  const bool fused_attention = message.find("_native_multi_head_attention") != std::string::npos;
  fail(concat("the backward pass ", what, " failed: ", message,
              fused_attention ? "; the model holds nn.MultiheadAttention's fused inference kernel, which a trace "
                                "under torch.no_grad() or torch.inference_mode() records: trace it with gradients "
                                "on, or script it (docs/transformers.md)"
                              : ""));
}

}  // namespace gradcam::detail
