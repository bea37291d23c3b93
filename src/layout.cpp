// src/layout.cpp: layouts of layer outputs (layout.hpp).
#include "layout.hpp"

#include <ATen/ATen.h>

#include <cmath>

#include <gradcam/error.hpp>

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

Layout tokens(int64_t extra, int64_t h, int64_t w, int64_t C) {
  Layout l;
  l.kind = Layout::Kind::tokens;
  l.extra = extra;
  l.h = h;
  l.w = w;
  l.channels = C;
  return l;
}

/// The grid rows of n tokens with the aspect ratio of an H x W input, or 0 when n tokens form no
/// such grid.
int64_t grid_rows(int64_t n, int64_t H, int64_t W) {
  if (n < 1) return 0;
  const auto h = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(n) * H / W)));
  return h >= 1 && n % h == 0 ? h : 0;
}

/// Tokens [N, T, C] of an H x W image: the fewest leading tokens (0 to 8: class, distillation,
/// registers) after which T is an h x w grid with one patch size for both sides.
Layout tokens_of(int64_t T, int64_t C, int64_t H, int64_t W) {
  for (int64_t extra = 0; extra <= 8 && extra < T; ++extra) {
    const int64_t h = grid_rows(T - extra, H, W);
    if (h == 0) continue;
    const int64_t w = (T - extra) / h;
    if (H % h != 0 || W % w != 0 || H / h != W / w) continue;
    return tokens(extra, h, w, C);
  }
  return Layout{};
}

std::string extra_tokens(int64_t n) { return concat(n, n == 1 ? " extra token" : " extra tokens"); }

/// Tokens as the user stated them, the -1 fields inferred; "" or why they do not fit.
std::string stated_tokens(const TokenLayout& s, int64_t T, int64_t C, int64_t H, int64_t W, Layout& out) {
  const bool grid = s.grid_h > 0 && s.grid_w > 0;
  if (s.extra >= 0 && grid) {
    if (s.extra + s.grid_h * s.grid_w == T) out = tokens(s.extra, s.grid_h, s.grid_w, C);
    return out.kind == Layout::Kind::tokens ? "" : concat(extra_tokens(s.extra), " and a ", s.grid_h, "x", s.grid_w,
                                                           " grid make ", s.extra + s.grid_h * s.grid_w, " tokens, not ", T);
  }
  if (grid) {
    if (s.grid_h * s.grid_w <= T) out = tokens(T - s.grid_h * s.grid_w, s.grid_h, s.grid_w, C);
    return out.kind == Layout::Kind::tokens ? "" : concat("a ", s.grid_h, "x", s.grid_w, " grid needs ",
                                                           s.grid_h * s.grid_w, " tokens, more than ", T);
  }
  if (s.extra >= T) return concat(extra_tokens(s.extra), " leave none of the ", T, " tokens for the grid");
  if (s.extra >= 0) {
    const int64_t h = grid_rows(T - s.extra, H, W);
    if (h > 0) out = tokens(s.extra, h, (T - s.extra) / h, C);
    return h > 0 ? "" : concat("after ", extra_tokens(s.extra), ", ", T - s.extra, " tokens form no grid of the input's "
                               "aspect ratio ", H, "x", W, "; state the grid too");
  }
  out = tokens_of(T, C, H, W);
  return out.kind == Layout::Kind::tokens ? "" : concat(T, " tokens are no grid of the input's aspect ratio ", H, "x", W,
                                                         " after 0 to 8 extra tokens; state the extra tokens and the grid");
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
  l.h = a[2];
  l.w = a[3];
  l.channels = a[1];
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

Layout resolve_layout(const TokenLayout& stated, const std::string& layer, c10::IntArrayRef a,
                      c10::IntArrayRef input) {
  GRADCAM_CHECK(a.size() >= 3, "layer '", layer, "' outputs shape ", shape_str(a),
                "; CAM methods need spatial dimensions [N, C, h, w]");
  using Kind = TokenLayout::Kind;
  if (stated.kind == Kind::automatic) {
    const Layout l = infer_layout(a, input);
    GRADCAM_CHECK(l.kind != Layout::Kind::other, "layer '", layer, "' outputs ", describe(l, a), " for an input ",
                  shape_str(input), ": neither a grid [N, C, h, w] nor tokens that form one for this input; CAM "
                  "methods need spatial dimensions [N, C, h, w] (or state the layout: GradCAMOptions::token_layout)");
    return l;
  }
  Layout l;
  if (stated.kind == Kind::channels_first) {
    l.kind = Layout::Kind::channels_first;
    if (a.size() == 4) {
      l.h = a[2];
      l.w = a[3];
      l.channels = a[1];
    }
  } else if (stated.kind == Kind::channels_last) {
    GRADCAM_CHECK(a.size() == 4, "layer '", layer, "' outputs shape ", shape_str(a),
                  "; token_layout says channels last, which is 4-D [N, h, w, C]");
    l.kind = Layout::Kind::channels_last;
    l.h = a[1];
    l.w = a[2];
    l.channels = a[3];
  } else {
    GRADCAM_CHECK(a.size() == 3 && input.size() == 4, "layer '", layer, "' outputs shape ", shape_str(a),
                  " for an input ", shape_str(input), "; token_layout says tokens, which are 3-D [N, T, C] for an "
                  "image input [N, C, H, W]");
    const std::string why = stated_tokens(stated, a[1], a[2], input[2], input[3], l);
    GRADCAM_CHECK(why.empty(), "layer '", layer, "' outputs tokens ", shape_str(a), ": ", why,
                  " (GradCAMOptions::token_layout)");
  }
  return l;
}

at::Tensor to_grid(const at::Tensor& x, const Layout& l) {
  switch (l.kind) {
    case Layout::Kind::channels_last:
      return x.permute({0, 3, 1, 2});
    case Layout::Kind::tokens:
      return x.narrow(1, l.extra, l.h * l.w).reshape({x.size(0), l.h, l.w, x.size(2)}).permute({0, 3, 1, 2});
    case Layout::Kind::channels_first:
    case Layout::Kind::other:
      break;
  }
  return x;
}

TokenLayout to_public(const Layout& l) {
  TokenLayout t;
  switch (l.kind) {
    case Layout::Kind::channels_first:
      t.kind = TokenLayout::Kind::channels_first;
      break;
    case Layout::Kind::channels_last:
      t.kind = TokenLayout::Kind::channels_last;
      break;
    case Layout::Kind::tokens:
      t.kind = TokenLayout::Kind::tokens;
      t.extra = l.extra;
      break;
    case Layout::Kind::other:
      return t;
  }
  if (l.h > 0 && l.w > 0) {  // channels first: 4-D layers only
    t.grid_h = l.h;
    t.grid_w = l.w;
  }
  return t;
}

}  // namespace detail

const char* layout_name(TokenLayout::Kind kind) {
  switch (kind) {
    case TokenLayout::Kind::automatic:
      return "automatic";
    case TokenLayout::Kind::channels_first:
      return "nchw";
    case TokenLayout::Kind::tokens:
      return "tokens";
    case TokenLayout::Kind::channels_last:
      return "nhwc";
  }
  return "unknown";
}

}  // namespace gradcam
