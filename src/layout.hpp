// src/layout.hpp: how a layer's output lays out its positions, read from its shape and the
// input's, or as the user stated it (layout.cpp). CAM methods read a grid [N, C, h, w] (or
// [N, C, ...] for 1-D and 3-D models); transformers give tokens [N, T, C], and Swin and ConvNeXt
// blocks channels last [N, h, w, C]. Those are read through to_grid, the same view of the
// activations, their gradients and Ablation-CAM's masks (docs/transformers.md); an output that is
// no grid is refused by name, never read as one.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <string>

#include <gradcam/grad_cam.hpp>

namespace gradcam {
namespace detail {

struct Layout {
  enum class Kind {
    channels_first,  ///< [N, C, spatial...] with as many dimensions as the input: what CAM reads
    channels_last,   ///< [N, h, w, C] for an image input [N, c, H, W]
    tokens,          ///< [N, T, C] for an image input: `extra` leading tokens, then an h x w grid
    other,           ///< none of these (a vector, or tokens that form no grid of the input's shape)
  };
  Kind kind = Kind::other;
  int64_t extra = 0;      ///< tokens: leading tokens before the grid (class, distillation, registers)
  int64_t h = 0, w = 0;   ///< the grid (channels first: 4-D outputs only)
  int64_t channels = 0;   ///< C (channels first: 4-D outputs only)
};

/// The layout of an activation of shape `a` for an input of shape `input`. A 4-D activation of an
/// image input is channels first unless its last two sizes cannot be a grid of the input's aspect
/// ratio while its middle two can (Swin's [1, 14, 14, 384] for a 224 x 224 input).
Layout infer_layout(c10::IntArrayRef a, c10::IntArrayRef input);

/// "tokens [1, 17, 64]: 1 extra token and a 4x4 grid of 64 channels", for messages.
std::string describe(const Layout& layout, c10::IntArrayRef a);

/// The layout layer `layer`'s output `a` is read with: `stated` when its kind is not automatic
/// (checked against the shape; -1 fields inferred), else infer_layout. Throws gradcam::Error
/// naming the layer and its shape when the output cannot be read as a grid that way.
Layout resolve_layout(const TokenLayout& stated, const std::string& layer, c10::IntArrayRef a,
                      c10::IntArrayRef input);

/// x (an output of `layout`, or its gradient) as [N, C, h, w]: the extra tokens left out, the
/// grid's tokens in row-major order, channels moved to dimension 1. A view of x whenever x's
/// strides allow one, which they always do for a contiguous x; channels first: x itself.
at::Tensor to_grid(const at::Tensor& x, const Layout& layout);

/// The public description of a resolved layout (LayerMap::layout, LayerInfo::layout).
TokenLayout to_public(const Layout& layout);

}  // namespace detail
}  // namespace gradcam
