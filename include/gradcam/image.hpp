// gradcam/image.hpp: the image and visualisation layer (OpenCV): loading images, preprocessing
// them like torchvision (resize, centre crop, normalise) while remembering the geometry, and
// drawing maps back onto the original image at full resolution.
//
// Colour order is explicit: OpenCV images (cv::Mat) are BGR, tensors are RGB. Only this header
// uses OpenCV; the core (<gradcam/grad_cam.hpp> ...) builds without it.
#pragma once

#include <ATen/core/Tensor.h>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>  // cv::COLORMAP_* for overlay()

#include <cstdint>
#include <string>
#include <vector>

#include <gradcam/arg.hpp>
#include <gradcam/box.hpp>

namespace gradcam {

/// How an image becomes a network input.
class Preprocess {
  /// Resize so that the shorter side is this many pixels (0: keep the size). Default 256.
  GRADCAM_ARG(int, resize) = 256;
  /// Centre-crop to crop x crop (0: no crop). Default 224.
  GRADCAM_ARG(int, crop) = 224;
  /// Per-channel mean (RGB) subtracted from [0,1] pixel values. Default ImageNet's.
  GRADCAM_ARG(std::vector<double>, mean) = std::vector<double>{0.485, 0.456, 0.406};
  /// Per-channel standard deviation (RGB). Default ImageNet's.
  GRADCAM_ARG(std::vector<double>, std) = std::vector<double>{0.229, 0.224, 0.225};
};

/// Where the network input came from in the original image.
struct Geometry {
  int image_width = 0, image_height = 0;  ///< original image size
  double scale_x = 1.0, scale_y = 1.0;    ///< resized size = original size * scale
  int crop_x = 0, crop_y = 0;             ///< crop offset in the resized image
  int input_width = 0, input_height = 0;  ///< network input size

  /// Maps a box (inclusive corners) in network-input pixels to original-image pixels; its area
  /// and mean value are kept as they are.
  Box to_image(const Box& box) const;
  /// Maps a box in original-image pixels to network-input pixels (clipped to the input).
  Box to_input(const Box& box) const;
};

/// The default pixel limit of load_image: 50 megapixels, 150 MB as 8-bit BGR.
inline constexpr int64_t kMaxImagePixels = 50'000'000;

/// Reads an image as 8-bit BGR: grayscale, 16-bit and alpha images are converted. Throws
/// gradcam::Error naming the file when it is missing or cannot be decoded, or when it has more
/// than `max_pixels` pixels (width x height; 0: no limit). For PNG, JPEG, BMP, WebP, TIFF and
/// PPM/PGM/PBM the size is read from the header and a larger image is refused before it is
/// decoded: a small file can declare 20000 x 20000 pixels, which OpenCV would allocate (1.2 GB
/// here, 5.6 GB at the peak of a run). Other formats are checked after decoding.
cv::Mat load_image(const std::string& path, int64_t max_pixels = kMaxImagePixels);

/// BGR 8-bit image -> normalised RGB float tensor [1,3,H,W]; fills `geometry` if given.
at::Tensor to_tensor(const cv::Mat& bgr, const Preprocess& pre, Geometry* geometry = nullptr);

/// A map [h,w] (or [1,1,h,w]), upsampled bilinearly to the network input, min-max normalised,
/// and placed where the input came from in the original image: CV_32F, original size, [0,1]
/// (zero outside the crop).
cv::Mat map_to_image(const at::Tensor& map, const Geometry& geometry);

/// OpenCV colormap id from its name: jet, turbo, viridis, inferno, magma, plasma, hot, bone,
/// parula, rainbow... Throws gradcam::Error listing the names for an unknown one.
int colormap_from_name(const std::string& name);
/// The accepted colormap names.
std::vector<std::string> colormap_names();

/// Colours `heat` (CV_32F in [0,1], same size as `bgr`) and blends it over the image:
/// (1 - alpha) * image + alpha * colour.
cv::Mat overlay(const cv::Mat& bgr, const cv::Mat& heat, int colormap, double alpha = 0.5);

/// An RGB tensor [3,H,W] in [0,1] (e.g. guided_to_display's output) to an 8-bit BGR image.
cv::Mat rgb_to_mat(const at::Tensor& rgb);

/// Draws a box (inclusive pixels) with an optional label.
void draw_box(cv::Mat& bgr, const Box& box, const cv::Scalar& colour,
              const std::string& label = "");

/// Tiles side by side, each scaled to `height`, with a caption under each, like the paper's
/// figures: image | Grad-CAM | guided backprop | guided Grad-CAM | box.
cv::Mat panel(const std::vector<cv::Mat>& tiles, const std::vector<std::string>& captions,
              int height = 224);

/// Writes an image; throws gradcam::Error naming the path if it cannot.
void save_image(const std::string& path, const cv::Mat& image);

/// Writes a float32 tensor as a NumPy .npy file (C order); throws gradcam::Error on failure.
void save_npy(const std::string& path, const at::Tensor& tensor);

}  // namespace gradcam
