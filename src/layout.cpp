// src/layout.cpp: layouts of layer outputs (layout.hpp).
#include "layout.hpp"

#include <cmath>

#include "util.hpp"

namespace gradcam {
namespace detail {

namespace {

/// Whether an h x w grid can cover an H x W input with one stride for both sides: the two
/// aspect ratios within a factor 1.5 (padding and odd sizes round a side up or down by one).
bool grid_of(int64_t h, int64_t w, int64_t H, int64_t W) {
  if (h < 1 || w < 1 || H < 1 || W < 1) return false;
  const double mismatch = std::abs(std::log((static_cast<double>(h) / w) / (static_cast<double>(H) / W)));
  return mismatch <= std::log(1.5);
}

/// Tokens [N, T, C] of an H x W image: the fewest leading tokens (0 to 8: class, distillation,
/// registers) after which T is an h x w grid with one patch size for both sides.
Layout tokens_of(int64_t T, int64_t C, int64_t H, int64_t W) {
  Layout l;
  for (int64_t extra = 0; extra <= 8 && extra < T; ++extra) {
    const int64_t n = T - extra;
    const auto h = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(n) * H / W)));
    if (h < 1 || n % h != 0) continue;
    const int64_t w = n / h;
    if (H % h != 0 || W % w != 0 || H / h != W / w) continue;
    l.kind = Layout::Kind::tokens;
    l.extra = extra;
    l.h = h;
    l.w = w;
    l.channels = C;
    return l;
  }
  return l;
}

}  // namespace

Layout infer_layout(c10::IntArrayRef a, c10::IntArrayRef input) {
  Layout l;
  if (a.size() < 3) return l;
  const bool image = input.size() == 4;
  if (!image) {  // 1-D or 3-D models: channels first when the rank is the input's
    if (a.size() == input.size()) l.kind = Layout::Kind::channels_first;
    return l;
  }
  const int64_t H = input[2], W = input[3];
  if (a.size() == 3) return tokens_of(a[1], a[2], H, W);
  if (a.size() != 4) return l;
  if (!grid_of(a[2], a[3], H, W) && grid_of(a[1], a[2], H, W)) {
    l.kind = Layout::Kind::channels_last;
    l.h = a[1];
    l.w = a[2];
    l.channels = a[3];
    return l;
  }
  l.kind = Layout::Kind::channels_first;
  return l;
}

std::string describe(const Layout& l, c10::IntArrayRef a) {
  const std::string grid = std::to_string(l.h) + "x" + std::to_string(l.w) + " grid of " +
                           std::to_string(l.channels) + " channels";
  switch (l.kind) {
    case Layout::Kind::channels_first:
      return "channels first " + shape_str(a);
    case Layout::Kind::channels_last:
      return "channels last " + shape_str(a) + ": a " + grid;
    case Layout::Kind::tokens:
      return "tokens " + shape_str(a) + ": " +
             (l.extra == 0 ? std::string("a ")
                           : std::to_string(l.extra) + (l.extra == 1 ? " extra token and a " : " extra tokens and a ")) +
             grid;
    case Layout::Kind::other:
      break;
  }
  return "shape " + shape_str(a);
}

}  // namespace detail
}  // namespace gradcam
