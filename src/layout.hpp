// src/layout.hpp: how a layer's output lays out its positions, read from its shape and the
// input's (layout.cpp). CAM methods read a grid [N, C, h, w] (or [N, C, ...] for 1-D and 3-D
// models); transformers give tokens [N, T, C], and Swin and ConvNeXt blocks channels last
// [N, h, w, C]. Reading those as [N, C, h, w] gives a map of the wrong shape, so they are named
// and refused until they are read properly (docs/transformers.md).
#pragma once

#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <string>

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
  int64_t h = 0, w = 0;   ///< channels_last and tokens: the grid
  int64_t channels = 0;   ///< channels_last and tokens: C
};

/// The layout of an activation of shape `a` for an input of shape `input`. A 4-D activation of an
/// image input is channels first unless its last two sizes cannot be a grid of the input's aspect
/// ratio while its middle two can (Swin's [1, 14, 14, 384] for a 224 x 224 input).
Layout infer_layout(c10::IntArrayRef a, c10::IntArrayRef input);

/// "tokens [1, 17, 64]: 1 extra token and a 4x4 grid of 64 channels", for messages.
std::string describe(const Layout& layout, c10::IntArrayRef a);

}  // namespace detail
}  // namespace gradcam
