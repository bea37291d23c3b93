// gradcam/localize.hpp: weakly supervised localization from a map (paper, section 4.1):
// threshold the map at a fraction of its maximum, take the connected components of what is left,
// and box the largest one.
//
// The threshold is applied to the map as it is (after Grad-CAM's ReLU, not min-max normalised):
// a pixel is kept when value >= threshold * max. For a map after ReLU with a zero minimum the two
// conventions agree.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <gradcam/arg.hpp>
#include <gradcam/box.hpp>

namespace gradcam {

/// Options of localize().
class LocalizeOptions {
  /// Keep pixels >= threshold * max. Default 0.15, as in the paper.
  GRADCAM_ARG(double, threshold) = 0.15;
  /// 8 (default) or 4.
  GRADCAM_ARG(int, connectivity) = 8;
  /// Upsample the map bilinearly (align_corners=false) to {H, W} first; empty (default): as is.
  GRADCAM_ARG(std::vector<int64_t>, size) = {};
  /// Choose the component with the largest box area instead of the most pixels. Default false.
  GRADCAM_ARG(bool, largest_by_box_area) = false;
  /// Components smaller than this many pixels are not reported in `components`. Default 1.
  GRADCAM_ARG(int64_t, min_area) = 1;
};

/// The result for one map.
struct Localization {
  std::optional<Box> box;       ///< the chosen component's box; empty for a degenerate map
  std::vector<Box> components;  ///< every component with area >= min_area, largest first
  std::string reason;           ///< why there is no box ("all zero", "constant", "NaN")
};

/// Localizes a map [h,w] (one result) or a batch [N,1,h,w] (N results).
std::vector<Localization> localize(const at::Tensor& map, const LocalizeOptions& options = {});

/// Intersection over union of two inclusive boxes.
double iou(const Box& a, const Box& b);

}  // namespace gradcam
