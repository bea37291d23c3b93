// src/graph.hpp (private): the one place that rewrites TorchScript graphs.
//
// This uses LibTorch's internal JIT IR (torch/csrc/jit/ir), which has no stability promise: a
// LibTorch upgrade should only touch graph.cpp. A Forward is a private copy of module.forward:
//  1. the forward graph is copied (method graphs are shared by every module of one type, so they
//     are never edited), the calls on the path down to each target layer are inlined, and after
//     every call of a target layer a gradcam::capture node is inserted;
//  2. every remaining call is inlined, `self.training` becomes false (eval semantics without
//     touching the module), parameters and buffers are detached (no parameter gradient is ever
//     recorded), and, for guided gradients, ReLU / ReLU6 nodes become gradcam::guided_act;
//  3. the graph is compiled to interpreter Code and run directly (no graph executor, so no
//     profiling runs and no global executor settings).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/jit/api/module.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include <gradcam/grad_cam.hpp>
#include <gradcam/layers.hpp>

namespace torch::jit {
struct Graph;
struct Code;
}  // namespace torch::jit

namespace gradcam::detail {

/// Per-call state shared by the capture and guided ops of one forward/backward. Installed as a
/// thread-local for the duration of Forward::run (the interpreter runs ops on the calling thread).
struct CaptureContext {
  /// leaf: record A as an autograd leaf (Grad-CAM); probe: record shapes (layer listing);
  /// perturb: record nothing but the call count, and scale one capture's channels by
  /// `ablate_mask` (Ablation-CAM) when ablate_slot / ablate_call name it.
  enum class Mode { leaf, probe, perturb };
  explicit CaptureContext(size_t slots, Mode m = Mode::leaf) : mode(m), captures(slots) {}
  Mode mode;
  /// captures[slot][call]: in leaf mode the leaf tensor A that requires grad; in probe mode the
  /// layer's output itself.
  std::vector<std::vector<at::Tensor>> captures;
  /// Probe mode: shapes[slot][call] of each layer output.
  std::vector<std::vector<std::vector<int64_t>>> shapes;
  /// Probe mode: the slot of every capture, in the order the forward pass produced them.
  std::vector<size_t> order;
  /// Perturb mode: the (slot, call) whose output is multiplied by ablate_mask [N,K] (broadcast over
  /// the spatial dimensions); -1 for none.
  int64_t ablate_slot = -1;
  int64_t ablate_call = -1;
  at::Tensor ablate_mask;
  /// How gradcam::guided_act back-propagates right now (read during backward).
  std::atomic<int> backward_mode{0};  // 0 ordinary, 1 guided, 2 deconvnet
};

/// What to rewrite.
struct RewriteSpec {
  std::vector<std::string> layers;  ///< module paths or "%value" names; capture slot i = layers[i]
  GuidedMode guided = GuidedMode::none;
  bool probe_all = false;  ///< layer listing: a slot for every module call (or graph value)
};

/// A slot of a probe_all rewrite.
struct ProbeSlot {
  std::string name;
  std::string type;
  bool is_tensor = true;
};

/// A private, rewritten, compiled copy of module.forward.
class Forward {
 public:
  Forward(const torch::jit::Module& module, const RewriteSpec& spec);
  ~Forward();

  /// Runs the rewritten forward on `input` with `ctx` installed; returns the model's output.
  c10::IValue run(const at::Tensor& input, CaptureContext& ctx) const;

  size_t slots() const { return slot_count_; }
  /// probe_all only: name, type of each slot.
  const std::vector<ProbeSlot>& probe_slots() const { return probe_slots_; }
  /// True when the model has no submodule calls (frozen): names are graph values.
  bool frozen() const { return frozen_; }
  /// Input channels expected by the first convolution, or -1 when unknown.
  int64_t expected_channels() const { return expected_channels_; }
  /// Number of dimensions the first convolution expects (4 for conv2d), or -1.
  int64_t expected_dim() const { return expected_dim_; }
  /// Guided rewrites: how many activations were replaced, and the kinds left as they are.
  int64_t replaced_activations() const { return replaced_; }
  const std::vector<std::string>& untouched_activations() const { return untouched_; }

 private:
  torch::jit::Module module_;
  std::shared_ptr<torch::jit::Graph> graph_;
  std::unique_ptr<torch::jit::Code> code_;
  size_t slot_count_ = 0;
  std::vector<ProbeSlot> probe_slots_;
  bool frozen_ = false;
  int64_t expected_channels_ = -1;
  int64_t expected_dim_ = -1;
  int64_t replaced_ = 0;
  std::vector<std::string> untouched_;
};

/// Checks a model input against what the rewritten forward expects; throws gradcam::Error naming
/// the bad shape, dtype or value. (grad_cam.cpp)
void check_input(const Forward& forward, const at::Tensor& input);

/// The message of a LibTorch exception without its C++ backtrace and TorchScript call stack.
std::string torch_message(const std::exception& e);

/// Whether the module or a submodule has `training` set. A frozen module (torch.jit.freeze) has no
/// such attribute: it is not in training mode, although Module::is_training() says it is, because
/// it reads a missing attribute as true. (model.cpp)
bool in_training_mode(const torch::jit::Module& module);

/// list_layers on an example input, or on zeros of `shape` whose -1 entries are filled from the
/// model (channels) or with 224. (layers.cpp)
LayerListing probe_layers(const torch::jit::Module& module, const at::Tensor& example,
                          std::vector<int64_t> shape = {});

/// Every module path of `module` ("layer4", "layer4.0.conv1", ...), root excluded.
std::vector<std::string> module_paths(const torch::jit::Module& module);

/// The up-to-three names in `choices` closest to `name` (edit distance), for error messages.
std::vector<std::string> closest(const std::string& name, const std::vector<std::string>& choices);

/// "[1, 3, 224, 224]"
std::string shape_str(at::IntArrayRef sizes);

}  // namespace gradcam::detail
