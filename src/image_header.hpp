// src/image_header.hpp (private): an image's size read from its header (image_header.cpp).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace gradcam::detail {

struct ImageSize {
  std::uint64_t width = 0, height = 0;
};

/// The width and height a PNG, JPEG, BMP, WebP, TIFF or PPM/PGM/PBM file's header gives, read
/// without decoding it; nullopt for another format or a header too short to say.
std::optional<ImageSize> image_size_from_header(const std::string& path);

}  // namespace gradcam::detail
