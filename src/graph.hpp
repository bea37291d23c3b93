// src/graph.hpp (private): the one place that rewrites TorchScript graphs.
//
// This uses LibTorch's internal JIT IR (torch/csrc/jit/ir), which has no stability promise: a
// LibTorch upgrade should only touch graph*.cpp and graph_ir.hpp. A Forward is a
// private copy of module.forward (method graphs are shared by every module of one type, so they
// are never edited), rewritten in seven steps, one function each in graph.cpp, numbered as in
// docs/architecture.md:
//  1. resolve targets: every layer named exists (or is a "%value"), with close names if not;
//  2. inline: the calls on the path down to each target layer are inlined, and after every call
//     of a target a gradcam::capture node is inserted (probe mode: after every module call);
//  3. capture or probe: every remaining call is inlined, then graph values ("%name", and every
//     value of a frozen model in probe mode) get their capture nodes;
//  4. force eval: `self.training` reads as false (eval semantics without touching the module);
//  5. detach parameters: parameters, buffers and constants enter detached (no parameter gradient);
//  6. replace activations: for guided gradients, ReLU / ReLU6 become gradcam::guided_act;
//  7. infer input: what the first convolution expects, for clear input errors.
// The graph is then compiled to interpreter Code and run directly (no graph executor, so no
// profiling runs and no global executor settings). SplitForward (graph_split.cpp) cuts a copy of
// the rewritten graph at a layer, for Ablation-CAM; exportable_module (graph_export.cpp) turns a
// copy into a method of standard ops, for `gradcam export`.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/jit/api/module.h>

#include <atomic>
#include <cstdint>
#include <functional>
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

/// How gradcam::guided_act back-propagates: as relu does, guided (positive gradients through the
/// relu mask) or deconvnet (positive gradients, no mask).
enum class BackwardMode { ordinary, guided, deconvnet };

/// Per-call state shared by the capture and guided ops of one forward/backward. Installed as a
/// thread-local for the duration of Forward::run (the interpreter runs ops on the calling thread).
struct CaptureContext {
  /// leaf: record A as an autograd leaf (Grad-CAM); probe: record shapes (layer listing);
  /// perturb: record nothing but the call count, and replace one capture's output x by
  /// `ablate(x)` (Ablation-CAM) when ablate_slot / ablate_call name it.
  enum class Mode { leaf, probe, perturb };
  explicit CaptureContext(size_t slots, Mode m = Mode::leaf, size_t observe = SIZE_MAX)
      : mode(m), captures(slots), observe_from(observe) {}
  Mode mode;
  /// captures[slot][call]: in leaf mode the leaf tensor A that requires grad; in probe mode the
  /// layer's output itself.
  std::vector<std::vector<at::Tensor>> captures;
  /// Slots from this one on observe a call's input (RewriteSpec::inputs): stored detached, passed
  /// on unchanged, in every mode.
  size_t observe_from;
  /// Probe mode: shapes[slot][call] of each layer output.
  std::vector<std::vector<std::vector<int64_t>>> shapes;
  /// Probe mode: the slot of every capture, in the order the forward pass produced them; other
  /// modes: the same for the observed slots only.
  std::vector<size_t> order;
  /// Perturb mode: the (slot, call) whose output x becomes ablate(x); -1 for none. methods.cpp
  /// knows the layer's layout, so it, not this file, says which values are zeroed.
  int64_t ablate_slot = -1;
  int64_t ablate_call = -1;
  std::function<at::Tensor(const at::Tensor&)> ablate;
  /// How gradcam::guided_act back-propagates right now (read during backward).
  std::atomic<BackwardMode> backward_mode{BackwardMode::ordinary};
};

/// The context the operators read on this thread (graph_ops.cpp); Forward::run installs it.
CaptureContext*& current_context();

/// Installs a CaptureContext for the current thread, restoring the previous one on exit.
class ContextScope {
 public:
  explicit ContextScope(CaptureContext* ctx) noexcept : previous_(current_context()) {
    current_context() = ctx;
  }
  ~ContextScope() { current_context() = previous_; }
  ContextScope(const ContextScope&) = delete;
  ContextScope& operator=(const ContextScope&) = delete;

 private:
  CaptureContext* previous_;
};

/// What to rewrite.
struct RewriteSpec {
  std::vector<std::string> layers;  ///< module paths or "%value" names; capture slot i = layers[i]
  /// Module paths whose calls' first argument (the query of an nn.MultiheadAttention) is observed:
  /// slot layers.size() + j, in every mode stored as it is, never a leaf (attention rollout).
  std::vector<std::string> inputs;
  GuidedMode guided = GuidedMode::none;
  bool probe_all = false;  ///< layer listing: a slot for every module call (or graph value)
};

/// A slot of a probe_all rewrite.
struct ProbeSlot {
  std::string name;
  std::string type;
  bool is_tensor = true;
};

/// What the rewrite found out, as Forward's accessors report it.
struct RewriteFacts {
  size_t slot_count = 0;
  size_t observe_from = SIZE_MAX;  ///< the first slot of RewriteSpec::inputs, if any
  std::vector<ProbeSlot> probe_slots;
  bool frozen = false;
  int64_t expected_channels = -1;
  int64_t expected_dim = -1;
  int64_t replaced = 0;
  std::vector<std::string> untouched;
  /// forward takes a list of images (torchvision's detectors), given the batch's samples.
  bool list_input = false;
  /// The defaults of forward's arguments after the input (a detector's `targets=None`).
  std::vector<c10::IValue> trailing;
};

class Forward;
/// The explainer `gradcam export` writes (graph_export.cpp): a new module whose methods are
/// `source` (TorchScript, made by export.cpp) and whose submodule `model` is a clone of `module`
/// (its own types and parameters: the user's module is not touched) with one more method,
/// `_gradcam_forward(x) -> (scores, A)`. That method is the rewritten forward in standard ops:
/// the one call of `layer` gives A, its output detached and requiring grad, as the capture op
/// records it; scores is the model's output (a tensor, or a tuple's first tensor). Throws
/// gradcam::Error naming what cannot be exported: a layer called more than once or inside a loop,
/// a forward taking a list or more than one input, an output without class scores.
torch::jit::Module exportable_module(const torch::jit::Module& module, const std::string& layer,
                                     const std::string& source);

/// A private, rewritten, compiled copy of module.forward.
class Forward {
 public:
  Forward(const torch::jit::Module& module, const RewriteSpec& spec);
  ~Forward();

  /// Runs the rewritten forward on `input` with `ctx` installed; returns the model's output.
  c10::IValue run(const at::Tensor& input, CaptureContext& ctx) const;

  size_t slots() const { return facts_.slot_count; }
  /// The first slot that observes a call's input (RewriteSpec::inputs); SIZE_MAX when none. Give
  /// it to every CaptureContext for this forward.
  size_t observe_from() const { return facts_.observe_from; }
  /// probe_all only: name, type of each slot.
  const std::vector<ProbeSlot>& probe_slots() const { return facts_.probe_slots; }
  /// True when the model has no submodule calls (frozen): names are graph values.
  bool frozen() const { return facts_.frozen; }
  /// Input channels expected by the first convolution, or -1 when unknown.
  int64_t expected_channels() const { return facts_.expected_channels; }
  /// Number of dimensions the first convolution expects (4 for conv2d), or -1.
  int64_t expected_dim() const { return facts_.expected_dim; }
  /// Guided rewrites: how many activations were replaced, and the kinds left as they are.
  int64_t replaced_activations() const { return facts_.replaced; }
  const std::vector<std::string>& untouched_activations() const { return facts_.untouched; }

 private:
  friend class SplitForward;
  friend torch::jit::Module exportable_module(const torch::jit::Module&, const std::string&,
                                              const std::string&);
  torch::jit::Module module_;
  std::shared_ptr<torch::jit::Graph> graph_;
  std::unique_ptr<torch::jit::Code> code_;
  RewriteFacts facts_;
};

/// A Forward cut in two at a layer's capture (graph_split.cpp): the first part runs the model up
/// to the layer once; the second reruns only what follows the layer, on a batch of changed layer
/// outputs, each of one sample (Ablation-CAM: one per channel). The second part reads the layer's
/// output and every value of the first part that it uses: a value that depends on the input is
/// a batch-first tensor, selected by sample; any other (parameters, constants) is passed as it
/// is. make() gives nullptr where the forward cannot be cut so: a layer called more than once or
/// inside a loop or branch, a list input, or a sample-dependent value that is not a tensor (an
/// int read from x.size(0)) crossing the cut.
class SplitForward {
 public:
  static std::unique_ptr<SplitForward> make(const Forward& forward, size_t slot);
  ~SplitForward();

  /// What the first part gave for a batch.
  struct First {
    std::vector<c10::IValue> crossing;  ///< the values the second part reads
    at::Tensor layer_output;            ///< the layer's output, as its capture received it
    int64_t batch = -1;                 ///< N; -1 when a batched value's rows are not the samples'
  };
  /// Runs the first part on `input` with `ctx` installed.
  First first(const at::Tensor& input, CaptureContext& ctx) const;
  /// Runs the second part: `layer_output` [len, ...] replaces the layer's output, and its row i
  /// belongs to sample rows[i] of `f` (rows: a long tensor of len indices). Needs f.batch >= 0.
  c10::IValue second(const First& f, const at::Tensor& rows, const at::Tensor& layer_output,
                     CaptureContext& ctx) const;

 private:
  explicit SplitForward(const torch::jit::Module& module);
  torch::jit::Module module_;
  std::vector<bool> batched_;  ///< per crossing value: selected by sample
  std::vector<c10::IValue> trailing_;
  std::unique_ptr<torch::jit::Code> first_, second_;
};

/// Checks a model input against what the rewritten forward expects; throws gradcam::Error naming
/// the bad shape, dtype or value. (grad_cam.cpp)
void check_input(const Forward& forward, const at::Tensor& input);

/// Zeros of `shape` whose -1 entries are filled from the model (channels, from its first
/// convolution) or with 224, in the dtype and on the device of its parameters. (layers.cpp)
at::Tensor example_input(const torch::jit::Module& module, std::vector<int64_t> shape);

/// list_layers on an example input, or on zeros of `shape` whose -1 entries are filled from the
/// model (channels) or with 224. (layers.cpp)
LayerListing probe_layers(const torch::jit::Module& module, const at::Tensor& example,
                          std::vector<int64_t> shape = {});

}  // namespace gradcam::detail
