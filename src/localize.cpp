// src/localize.cpp: threshold, connected components, boxes.
#include <gradcam/localize.hpp>

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include <gradcam/error.hpp>
#include <gradcam/grad_cam.hpp>

namespace gradcam {

namespace {

Localization localize_one(const at::Tensor& map2d, const LocalizeOptions& opt) {
  Localization out;
  at::Tensor m = map2d.to(at::kCPU, at::kFloat).contiguous();
  const int h = static_cast<int>(m.size(0)), w = static_cast<int>(m.size(1));
  const float* v = m.data_ptr<float>();
  float hi = -INFINITY, lo = INFINITY;
  for (int64_t i = 0; i < m.numel(); ++i) {
    if (std::isnan(v[i])) {
      out.reason = "the map contains NaN";
      return out;
    }
    hi = std::max(hi, v[i]);
    lo = std::min(lo, v[i]);
  }
  if (!(hi > 0)) {
    out.reason = "the map is all zero (or negative)";
    return out;
  }
  if (hi == lo) {
    out.reason = "the map is constant";
    return out;
  }
  const float cut = static_cast<float>(opt.threshold() * hi);
  std::vector<int> label(static_cast<size_t>(h) * w, -1);
  std::vector<int> stack;
  const int dy[8] = {-1, 1, 0, 0, -1, -1, 1, 1};
  const int dx[8] = {0, 0, -1, 1, -1, 1, -1, 1};
  const int nb = opt.connectivity() == 4 ? 4 : 8;
  std::vector<Box> comps;
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      const int idx = y * w + x;
      if (label[idx] >= 0 || v[idx] < cut) continue;
      Box b{x, y, x, y, 0, 0.0};
      double sum = 0;
      label[idx] = static_cast<int>(comps.size());
      stack.push_back(idx);
      while (!stack.empty()) {
        const int p = stack.back();
        stack.pop_back();
        const int py = p / w, px = p % w;
        ++b.area;
        sum += v[p];
        b.x0 = std::min(b.x0, px);
        b.x1 = std::max(b.x1, px);
        b.y0 = std::min(b.y0, py);
        b.y1 = std::max(b.y1, py);
        for (int k = 0; k < nb; ++k) {
          const int ny = py + dy[k], nx = px + dx[k];
          if (ny < 0 || ny >= h || nx < 0 || nx >= w) continue;
          const int q = ny * w + nx;
          if (label[q] >= 0 || v[q] < cut) continue;
          label[q] = label[idx];
          stack.push_back(q);
        }
      }
      b.mean_value = sum / static_cast<double>(b.area);
      comps.push_back(b);
    }
  }
  auto box_area = [](const Box& b) { return int64_t(b.x1 - b.x0 + 1) * (b.y1 - b.y0 + 1); };
  // largest first; ties keep the first found (top-left in raster order)
  std::stable_sort(comps.begin(), comps.end(), [&](const Box& a, const Box& b) {
    return opt.largest_by_box_area() ? box_area(a) > box_area(b) : a.area > b.area;
  });
  if (!comps.empty()) out.box = comps.front();
  for (const auto& c : comps)
    if (c.area >= opt.min_area()) out.components.push_back(c);
  return out;
}

}  // namespace

std::vector<Localization> localize(const at::Tensor& map, const LocalizeOptions& opt) {
  GRADCAM_CHECK(map.defined() && (map.dim() == 2 || (map.dim() == 4 && map.size(1) == 1)),
                "localize needs a map [h,w] or a batch [N,1,h,w]");
  GRADCAM_CHECK(opt.threshold() >= 0 && opt.threshold() <= 1, "threshold must be in [0,1], got ",
                opt.threshold());
  GRADCAM_CHECK(opt.connectivity() == 4 || opt.connectivity() == 8, "connectivity must be 4 or 8, got ",
                opt.connectivity());
  at::Tensor m = map.detach();
  if (!opt.size().empty()) m = upsample(m, opt.size());
  std::vector<Localization> out;
  if (m.dim() == 2) {
    out.push_back(localize_one(m, opt));
  } else {
    for (int64_t i = 0; i < m.size(0); ++i) out.push_back(localize_one(m[i][0], opt));
  }
  return out;
}

double iou(const Box& a, const Box& b) {
  const int64_t ix = std::max(0, std::min(a.x1, b.x1) - std::max(a.x0, b.x0) + 1);
  const int64_t iy = std::max(0, std::min(a.y1, b.y1) - std::max(a.y0, b.y0) + 1);
  const int64_t inter = ix * iy;
  const int64_t ua = int64_t(a.x1 - a.x0 + 1) * (a.y1 - a.y0 + 1) + int64_t(b.x1 - b.x0 + 1) * (b.y1 - b.y0 + 1) - inter;
  return ua > 0 ? static_cast<double>(inter) / static_cast<double>(ua) : 0.0;
}

}  // namespace gradcam
