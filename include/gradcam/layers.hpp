// gradcam/layers.hpp: discovering the layers of a TorchScript model and their output shapes.
//
// list_layers runs one forward pass on an example input through a copy of the graph in which
// every module call is recorded, and reports each module path with its output shape, in the order
// the forward pass produced them. For a frozen model (torch.jit.freeze), whose module names are
// gone, it lists the graph values instead ("%input.5"); both kinds of name are accepted by
// GradCAMOptions.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace torch::jit {
struct Module;
}

namespace gradcam {

/// One layer of the model.
struct LayerInfo {
  std::string name;            ///< module path ("layer4.1.conv2") or graph value ("%x.7")
  std::string type;            ///< module class ("Conv2d") or op kind ("aten::relu")
  std::vector<int64_t> shape;  ///< output shape for the example input (first call); empty if none
  int64_t calls = 0;           ///< how many times forward called it
  bool is_tensor = true;       ///< false when the layer returns a tuple, list, dict...
};

/// The layers of a model and the "auto" choice.
struct LayerListing {
  std::vector<LayerInfo> layers;  ///< in the order their outputs were produced
  /// The last-produced 4-D activation with h*w > 1 that is not an adaptive pooling (the head's
  /// input); when an enclosing module returns the same activation, the outermost module.
  /// Unless it is the only one before token layers (a transformer's patch embedding): then
  /// auto_layer is empty and auto_note says why.
  std::string auto_layer;
  std::string auto_note;          ///< why auto_layer is empty, when the listing can tell
  bool frozen = false;            ///< true when names are graph values (no submodules)
};

/// Lists every layer with its output shape for `example_input` ([N,C,H,W]).
LayerListing list_layers(const torch::jit::Module& module, const at::Tensor& example_input);

/// The same for a zero input of `shape`; -1 entries are filled from the model (channels, from its
/// first convolution) or with 224.
LayerListing list_layers(const torch::jit::Module& module, std::vector<int64_t> shape);

}  // namespace gradcam
