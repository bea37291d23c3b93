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
#include <optional>
#include <string>
#include <vector>

#include <gradcam/grad_cam.hpp>

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
  /// How CAM methods read the output as a grid, as inferred for the example input (tokens:
  /// extra tokens and grid; channels last; channels first); empty when it is no grid.
  std::optional<TokenLayout> layout;
};

/// The layers of a model and the "auto" choice.
struct LayerListing {
  std::vector<LayerInfo> layers;  ///< in the order their outputs were produced
  /// The last-produced 4-D activation with h*w > 1 that is not an adaptive pooling (the head's
  /// input); when an enclosing module returns the same activation, the outermost module.
  /// A transformer (its one grid layer, the patch embedding, followed by token layers): the
  /// last-produced token or channels-last layer whose grid the output depends on, found by one
  /// backward pass (a class-token ViT: the last block's first norm; a pooling head: the last
  /// token layer); empty when there is none, and auto_note says why.
  std::string auto_layer;
  /// Transformers: how auto_layer was chosen, or why none was.
  std::string auto_note;
  bool frozen = false;            ///< true when names are graph values (no submodules)
};

/// Lists every layer with its output shape for `example_input` ([N,C,H,W]).
LayerListing list_layers(const torch::jit::Module& module, const at::Tensor& example_input);

/// The same for a zero input of `shape`; -1 entries are filled from the model (channels, from its
/// first convolution) or with 224.
LayerListing list_layers(const torch::jit::Module& module, std::vector<int64_t> shape);

}  // namespace gradcam
