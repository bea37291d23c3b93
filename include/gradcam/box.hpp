// gradcam/box.hpp: the library's one box type, used by localization, evaluation and drawing.
#pragma once

#include <cstdint>

namespace gradcam {

/// A box in inclusive pixel coordinates [x0, x1] x [y0, y1]; from localize(), also its
/// component's pixel count and mean map value.
struct Box {
  int x0 = 0, y0 = 0, x1 = 0, y1 = 0;
  int64_t area = 0;          ///< pixels in the component (localize(); 0 otherwise)
  double mean_value = 0.0;   ///< mean map value over the component (localize(); 0 otherwise)
};

inline bool operator==(const Box& a, const Box& b) {
  return a.x0 == b.x0 && a.y0 == b.y0 && a.x1 == b.x1 && a.y1 == b.y1 && a.area == b.area &&
         a.mean_value == b.mean_value;
}
inline bool operator!=(const Box& a, const Box& b) { return !(a == b); }

}  // namespace gradcam
