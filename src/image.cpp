// src/image.cpp: the OpenCV image and visualisation layer.
#include <gradcam/image.hpp>

#include <ATen/ATen.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include <gradcam/error.hpp>
#include <gradcam/grad_cam.hpp>

#include "image_header.hpp"

namespace gradcam {

using detail::concat;

Box Geometry::to_image(const Box& b) const {
  auto clampi = [](int v, int hi) { return std::max(0, std::min(v, hi - 1)); };
  Box o = b;
  o.x0 = clampi(static_cast<int>(std::floor((b.x0 + crop_x) / scale_x)), image_width);
  o.y0 = clampi(static_cast<int>(std::floor((b.y0 + crop_y) / scale_y)), image_height);
  o.x1 = clampi(static_cast<int>(std::ceil((b.x1 + 1 + crop_x) / scale_x)) - 1, image_width);
  o.y1 = clampi(static_cast<int>(std::ceil((b.y1 + 1 + crop_y) / scale_y)) - 1, image_height);
  return o;
}

Box Geometry::to_input(const Box& b) const {
  auto clampi = [](int v, int hi) { return std::max(0, std::min(v, hi - 1)); };
  Box o = b;
  o.x0 = clampi(static_cast<int>(std::floor(b.x0 * scale_x)) - crop_x, input_width);
  o.y0 = clampi(static_cast<int>(std::floor(b.y0 * scale_y)) - crop_y, input_height);
  o.x1 = clampi(static_cast<int>(std::ceil((b.x1 + 1) * scale_x)) - 1 - crop_x, input_width);
  o.y1 = clampi(static_cast<int>(std::ceil((b.y1 + 1) * scale_y)) - 1 - crop_y, input_height);
  return o;
}

namespace {
void check_pixels(const std::string& path, std::uint64_t width, std::uint64_t height, int64_t max_pixels,
                  const char* when) {
  const auto limit = static_cast<std::uint64_t>(max_pixels);
  GRADCAM_CHECK(height == 0 || width <= limit / height, "image '", path, "' is ", width, " x ", height,
                " pixels, more than the limit of ", max_pixels, " pixels (max_pixels; 0: no limit); ", when);
}
}  // namespace

cv::Mat load_image(const std::string& path, int64_t max_pixels) {
  GRADCAM_CHECK(max_pixels >= 0, "max_pixels must be >= 0 (0: no limit), got ", max_pixels);
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    // a link loop or an unreadable folder is not "does not exist": say what is wrong
    GRADCAM_CHECK(!ec || ec == std::errc::no_such_file_or_directory, "image '", path, "' cannot be opened: ",
                  ec.message());
    std::error_code lec;
    GRADCAM_CHECK(!std::filesystem::is_symlink(path, lec), "image '", path, "' is a link to a missing file");
    fail(concat("image '", path, "' does not exist"));
  }
  GRADCAM_CHECK(!std::filesystem::is_directory(path, ec), "image path '", path, "' is a directory");
  if (max_pixels > 0) {
    if (const auto size = detail::image_size_from_header(path))
      check_pixels(path, size->width, size->height, max_pixels, "it was not decoded");
  }
  cv::Mat img;
  try {
    img = cv::imread(path, cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception& e) {
    fail(concat("image '", path, "' could not be decoded: ", e.what()));
  }
  GRADCAM_CHECK(!img.empty(), "image '", path,
                "' could not be decoded (not an image, truncated, or an unsupported format)");
  if (max_pixels > 0) {  // formats without a header reader
    check_pixels(path, static_cast<std::uint64_t>(img.cols), static_cast<std::uint64_t>(img.rows), max_pixels,
                 "its format's header is not read, so this is after decoding");
  }
  if (img.depth() == CV_16U) {
    img.convertTo(img, CV_8U, 1.0 / 257.0);
  } else if (img.depth() == CV_32F || img.depth() == CV_64F) {
    img.convertTo(img, CV_8U, 255.0);
  } else if (img.depth() != CV_8U) {
    img.convertTo(img, CV_8U);
  }
  cv::Mat bgr;
  switch (img.channels()) {
    case 1: cv::cvtColor(img, bgr, cv::COLOR_GRAY2BGR); break;
    case 3: bgr = img; break;
    case 4: cv::cvtColor(img, bgr, cv::COLOR_BGRA2BGR); break;
    default: fail(concat("image '", path, "' has ", img.channels(), " channels; expected 1, 3 or 4"));
  }
  return bgr;
}

at::Tensor to_tensor(const cv::Mat& bgr, const Preprocess& pre, Geometry* geometry) {
  GRADCAM_CHECK(!bgr.empty() && bgr.type() == CV_8UC3, "to_tensor needs an 8-bit BGR image");
  GRADCAM_CHECK(pre.mean().size() == 3 && pre.std().size() == 3,
                "mean and std need 3 values (R G B)");
  for (double s : pre.std()) GRADCAM_CHECK(s > 0, "std values must be positive, got ", s);
  GRADCAM_CHECK(pre.resize() >= 0 && pre.crop() >= 0, "resize and crop must be >= 0");
  Geometry g;
  g.image_width = bgr.cols;
  g.image_height = bgr.rows;
  cv::Mat img = bgr;
  if (pre.resize() > 0) {
    // torchvision's Resize(int): the shorter side becomes `resize`, the longer one is truncated
    const int s = pre.resize();
    int w = s, h = s;
    if (bgr.cols <= bgr.rows) {
      h = static_cast<int>(static_cast<int64_t>(s) * bgr.rows / bgr.cols);
    } else {
      w = static_cast<int>(static_cast<int64_t>(s) * bgr.cols / bgr.rows);
    }
    if (w != bgr.cols || h != bgr.rows) cv::resize(bgr, img, cv::Size(w, h), 0, 0, cv::INTER_LINEAR);
  }
  g.scale_x = static_cast<double>(img.cols) / bgr.cols;
  g.scale_y = static_cast<double>(img.rows) / bgr.rows;
  if (pre.crop() > 0) {
    const int c = pre.crop();
    GRADCAM_CHECK(c <= img.cols && c <= img.rows, "crop ", c, " is larger than the resized image (",
                  img.cols, "x", img.rows, "); lower --crop or raise --resize");
    g.crop_x = static_cast<int>(std::nearbyint((img.cols - c) / 2.0));
    g.crop_y = static_cast<int>(std::nearbyint((img.rows - c) / 2.0));
    img = img(cv::Rect(g.crop_x, g.crop_y, c, c));
  }
  g.input_width = img.cols;
  g.input_height = img.rows;
  cv::Mat rgb, f;
  cv::cvtColor(img, rgb, cv::COLOR_BGR2RGB);
  rgb.convertTo(f, CV_32FC3, 1.0 / 255.0);
  at::Tensor t = at::from_blob(f.data, {f.rows, f.cols, 3}, at::kFloat).clone().permute({2, 0, 1});
  at::Tensor mean = at::tensor(pre.mean(), at::kFloat).view({3, 1, 1});
  at::Tensor stdv = at::tensor(pre.std(), at::kFloat).view({3, 1, 1});
  if (geometry) *geometry = g;
  return ((t - mean) / stdv).unsqueeze(0).contiguous();
}

cv::Mat map_to_image(const at::Tensor& map, const Geometry& g) {
  GRADCAM_CHECK(map.defined() && map.numel() > 0, "map_to_image: empty map");
  at::Tensor m = map.detach().to(at::kCPU, at::kFloat);
  while (m.dim() > 2) m = m.squeeze(0);
  GRADCAM_CHECK(m.dim() == 2, "map_to_image needs one map [h,w] or [1,1,h,w], got ",
                map.sizes().size(), "-D");
  m = normalize(upsample(m, {g.input_height, g.input_width})).contiguous();
  cv::Mat net(g.input_height, g.input_width, CV_32F, m.data_ptr<float>());
  const int rw = static_cast<int>(std::lround(g.image_width * g.scale_x));
  const int rh = static_cast<int>(std::lround(g.image_height * g.scale_y));
  cv::Mat canvas = cv::Mat::zeros(std::max(rh, g.input_height + g.crop_y),
                                  std::max(rw, g.input_width + g.crop_x), CV_32F);
  net.copyTo(canvas(cv::Rect(g.crop_x, g.crop_y, g.input_width, g.input_height)));
  canvas = canvas(cv::Rect(0, 0, rw, rh));
  cv::Mat out;
  cv::resize(canvas, out, cv::Size(g.image_width, g.image_height), 0, 0, cv::INTER_LINEAR);
  return out;
}

namespace {
const std::map<std::string, int>& colormaps() {
  static const std::map<std::string, int> m = {
      {"autumn", cv::COLORMAP_AUTUMN}, {"bone", cv::COLORMAP_BONE},       {"jet", cv::COLORMAP_JET},
      {"winter", cv::COLORMAP_WINTER}, {"rainbow", cv::COLORMAP_RAINBOW}, {"ocean", cv::COLORMAP_OCEAN},
      {"summer", cv::COLORMAP_SUMMER}, {"spring", cv::COLORMAP_SPRING},   {"cool", cv::COLORMAP_COOL},
      {"hsv", cv::COLORMAP_HSV},       {"pink", cv::COLORMAP_PINK},       {"hot", cv::COLORMAP_HOT},
      {"parula", cv::COLORMAP_PARULA}, {"magma", cv::COLORMAP_MAGMA},     {"inferno", cv::COLORMAP_INFERNO},
      {"plasma", cv::COLORMAP_PLASMA}, {"viridis", cv::COLORMAP_VIRIDIS}, {"cividis", cv::COLORMAP_CIVIDIS},
      {"twilight", cv::COLORMAP_TWILIGHT}, {"turbo", cv::COLORMAP_TURBO}};
  return m;
}
}  // namespace

std::vector<std::string> colormap_names() {
  std::vector<std::string> names;
  for (const auto& kv : colormaps()) names.push_back(kv.first);
  return names;
}

int colormap_from_name(const std::string& name) {
  auto it = colormaps().find(name);
  if (it != colormaps().end()) return it->second;
  std::string all;
  for (const auto& n : colormap_names()) all += (all.empty() ? "" : ", ") + n;
  fail(concat("unknown colormap '", name, "'; choose one of: ", all));
}

cv::Mat overlay(const cv::Mat& bgr, const cv::Mat& heat, int colormap, double alpha) {
  GRADCAM_CHECK(heat.type() == CV_32F && heat.size() == bgr.size(),
                "overlay needs a CV_32F heat map of the image's size");
  GRADCAM_CHECK(alpha >= 0 && alpha <= 1, "alpha must be in [0,1], got ", alpha);
  cv::Mat h8, colour, out;
  heat.convertTo(h8, CV_8U, 255.0);
  cv::applyColorMap(h8, colour, colormap);
  cv::addWeighted(bgr, 1.0 - alpha, colour, alpha, 0.0, out);
  return out;
}

cv::Mat rgb_to_mat(const at::Tensor& rgb) {
  GRADCAM_CHECK(rgb.defined() && rgb.dim() == 3 && rgb.size(0) == 3, "rgb_to_mat needs [3,H,W]");
  at::Tensor t = (rgb.detach().to(at::kCPU, at::kFloat).clamp(0, 1) * 255.0).round().to(at::kByte);
  t = t.permute({1, 2, 0}).contiguous();
  cv::Mat m(static_cast<int>(t.size(0)), static_cast<int>(t.size(1)), CV_8UC3, t.data_ptr<uint8_t>());
  cv::Mat bgr;
  cv::cvtColor(m, bgr, cv::COLOR_RGB2BGR);
  return bgr;
}

void draw_box(cv::Mat& bgr, const Box& b, const cv::Scalar& colour, const std::string& label) {
  const int thick = std::max(1, std::min(bgr.cols, bgr.rows) / 150);
  cv::rectangle(bgr, cv::Point(b.x0, b.y0), cv::Point(b.x1, b.y1), colour, thick);
  if (!label.empty()) {
    cv::putText(bgr, label, cv::Point(b.x0 + 2, std::max(12, b.y0 - 4)), cv::FONT_HERSHEY_SIMPLEX,
                0.4 * thick, colour, thick);
  }
}

cv::Mat panel(const std::vector<cv::Mat>& tiles, const std::vector<std::string>& captions, int height) {
  GRADCAM_CHECK(!tiles.empty(), "panel needs at least one image");
  GRADCAM_CHECK(height > 0, "panel height must be positive");
  const int band = 22;
  std::vector<cv::Mat> cols;
  for (size_t i = 0; i < tiles.size(); ++i) {
    const cv::Mat& t = tiles[i];
    GRADCAM_CHECK(!t.empty() && t.type() == CV_8UC3, "panel tiles must be 8-bit BGR images");
    const int w = std::max(1, static_cast<int>(std::lround(t.cols * static_cast<double>(height) / t.rows)));
    cv::Mat col(height + band, w, CV_8UC3, cv::Scalar(255, 255, 255));
    cv::Mat scaled;
    cv::resize(t, scaled, cv::Size(w, height), 0, 0, cv::INTER_LINEAR);
    scaled.copyTo(col(cv::Rect(0, 0, w, height)));
    if (i < captions.size()) {
      cv::putText(col, captions[i], cv::Point(4, height + 16), cv::FONT_HERSHEY_SIMPLEX, 0.45,
                  cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
    }
    cols.push_back(col);
    if (i + 1 < tiles.size()) cols.emplace_back(height + band, 4, CV_8UC3, cv::Scalar(255, 255, 255));
  }
  cv::Mat out;
  cv::hconcat(cols, out);
  return out;
}

void save_image(const std::string& path, const cv::Mat& image) {
  bool ok = false;
  try {
    ok = cv::imwrite(path, image);
  } catch (const cv::Exception& e) {
    fail(concat("cannot write image '", path, "': ", e.what()));
  }
  GRADCAM_CHECK(ok, "cannot write image '", path, "' (is the directory writable?)");
}

void save_npy(const std::string& path, const at::Tensor& tensor) {
  at::Tensor t = tensor.detach().to(at::kCPU, at::kFloat).contiguous();
  std::string shape = "(";
  for (int64_t i = 0; i < t.dim(); ++i) shape += std::to_string(t.size(i)) + (t.dim() == 1 || i + 1 < t.dim() ? ", " : "");
  shape += ")";
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  GRADCAM_CHECK(out.good(), "cannot write '", path, "' (is the directory writable?)");
  const char magic[] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  out.write(magic, sizeof(magic));
  const auto len = static_cast<uint16_t>(header.size());
  const char lenb[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  out.write(lenb, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(t.data_ptr<float>()),
            static_cast<std::streamsize>(t.numel() * sizeof(float)));
  GRADCAM_CHECK(out.good(), "failed writing '", path, "'");
}

}  // namespace gradcam
