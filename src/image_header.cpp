// src/image_header.cpp: an image's width and height from its file header, without decoding it.
//
// Why: OpenCV allocates what the header says before it decodes a pixel. A 1.2 MB PNG that says
// 20000 x 20000 made `gradcam explain` use 5.6 GB. OpenCV's own limit (OPENCV_IO_MAX_IMAGE_PIXELS,
// 2^30 pixels by default) is read once when the library loads, so a program cannot set it, and
// OpenCV 4.6 has no call that reads a header alone. The formats here are those the command lists
// in a folder (PNG, JPEG, BMP, WebP, TIFF, PPM/PGM/PBM); for another, the size is unknown and the
// limit applies after decoding.
#include "image_header.hpp"

#include <array>
#include <cctype>
#include <fstream>

namespace gradcam::detail {
namespace {

/// Random reads of a file's first bytes, and of later ones (a JPEG's frame header can follow
/// 64 KB segments of metadata, a TIFF's directory can be anywhere).
class Bytes {
 public:
  explicit Bytes(const std::string& path) : in_(path, std::ios::binary) {}
  bool good() const { return in_.is_open(); }

  /// `n` bytes at `at`, or an empty string when the file is shorter.
  std::string at(std::uint64_t offset, std::size_t n) {
    std::string out(n, '\0');
    in_.clear();
    in_.seekg(static_cast<std::streamoff>(offset));
    in_.read(out.data(), static_cast<std::streamsize>(n));
    if (in_.gcount() != static_cast<std::streamsize>(n)) return {};
    return out;
  }

 private:
  std::ifstream in_;
};

std::uint32_t be(const std::string& s, std::size_t at, int bytes) {
  std::uint32_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<unsigned char>(s[at + static_cast<std::size_t>(i)]);
  return v;
}
std::uint32_t le(const std::string& s, std::size_t at, int bytes) {
  std::uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(s[at + static_cast<std::size_t>(i)]);
  return v;
}

std::optional<ImageSize> png(Bytes& f) {  // IHDR is the first chunk: width, height (big-endian)
  const std::string h = f.at(16, 8);
  if (h.empty()) return std::nullopt;
  return ImageSize{be(h, 0, 4), be(h, 4, 4)};
}

/// Walks the segments up to the first frame header (SOF0-15 but DHT C4, JPG C8, DAC CC).
std::optional<ImageSize> jpeg(Bytes& f) {
  std::uint64_t pos = 2;
  for (int segments = 0; segments < 4096; ++segments) {
    std::string m = f.at(pos, 2);
    while (m.size() == 2 && static_cast<unsigned char>(m[0]) == 0xFF && static_cast<unsigned char>(m[1]) == 0xFF)
      m = f.at(++pos, 2);  // fill bytes
    if (m.size() != 2 || static_cast<unsigned char>(m[0]) != 0xFF) return std::nullopt;
    const unsigned marker = static_cast<unsigned char>(m[1]);
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {  // no length
      pos += 2;
      continue;
    }
    if (marker == 0xDA || marker == 0xD9) return std::nullopt;  // scan or end before a frame
    const std::string seg = f.at(pos + 2, 7);
    if (seg.empty()) return std::nullopt;
    if (marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC)
      return ImageSize{be(seg, 5, 2), be(seg, 3, 2)};  // length, precision, height, width
    pos += 2 + be(seg, 0, 2);
  }
  return std::nullopt;
}

std::optional<ImageSize> bmp(Bytes& f) {
  const std::string h = f.at(14, 12);
  if (h.empty()) return std::nullopt;
  if (le(h, 0, 4) == 12) return ImageSize{le(h, 4, 2), le(h, 6, 2)};  // OS/2 core header
  const auto height = static_cast<std::int32_t>(le(h, 8, 4));       // negative: top-down
  return ImageSize{le(h, 4, 4), static_cast<std::uint64_t>(height < 0 ? -static_cast<std::int64_t>(height) : height)};
}

std::optional<ImageSize> webp(Bytes& f) {
  const std::string h = f.at(12, 18);
  if (h.empty()) return std::nullopt;
  const std::string kind = h.substr(0, 4);
  if (kind == "VP8 ") return ImageSize{le(h, 14, 2) & 0x3FFF, le(h, 16, 2) & 0x3FFF};
  if (kind == "VP8L") {
    const std::uint32_t b = le(h, 9, 4);
    return ImageSize{(b & 0x3FFF) + 1, ((b >> 14) & 0x3FFF) + 1};
  }
  if (kind == "VP8X") return ImageSize{le(h, 12, 3) + 1, le(h, 15, 3) + 1};
  return std::nullopt;
}

/// The first directory's ImageWidth (256) and ImageLength (257), SHORT or LONG.
std::optional<ImageSize> tiff(Bytes& f, bool little) {
  auto num = [little](const std::string& s, std::size_t at, int bytes) {
    return little ? le(s, at, bytes) : be(s, at, bytes);
  };
  const std::string head = f.at(4, 4);
  if (head.empty()) return std::nullopt;
  const std::uint64_t dir = num(head, 0, 4);
  const std::string count = f.at(dir, 2);
  if (count.empty()) return std::nullopt;
  const std::uint32_t n = num(count, 0, 2);
  const std::string entries = f.at(dir + 2, static_cast<std::size_t>(n) * 12);
  if (entries.empty()) return std::nullopt;
  std::uint64_t width = 0, height = 0;
  for (std::uint32_t i = 0; i < n; ++i) {
    const std::size_t e = static_cast<std::size_t>(i) * 12;
    const std::uint32_t tag = num(entries, e, 2), type = num(entries, e + 2, 2);
    if (tag != 256 && tag != 257) continue;
    const std::uint64_t v = type == 3 ? num(entries, e + 8, 2) : type == 4 ? num(entries, e + 8, 4) : 0;
    (tag == 256 ? width : height) = v;
  }
  if (width == 0 || height == 0) return std::nullopt;
  return ImageSize{width, height};
}

/// Netpbm: "P1".."P6", then width and height as decimal text, with '#' comments between.
std::optional<ImageSize> netpbm(Bytes& f) {
  std::string h;
  for (std::size_t n = 512; n > 0 && h.empty(); n /= 2) h = f.at(0, n);  // short files
  std::size_t pos = 2;
  std::array<std::uint64_t, 2> v{};
  for (auto& value : v) {
    while (pos < h.size() && (std::isspace(static_cast<unsigned char>(h[pos])) || h[pos] == '#')) {
      if (h[pos] == '#') pos = h.find('\n', pos);
      if (pos == std::string::npos) return std::nullopt;
      ++pos;
    }
    if (pos >= h.size() || !std::isdigit(static_cast<unsigned char>(h[pos]))) return std::nullopt;
    for (int digits = 0; pos < h.size() && std::isdigit(static_cast<unsigned char>(h[pos])); ++digits, ++pos) {
      if (digits >= 12) return std::nullopt;
      value = value * 10 + static_cast<std::uint64_t>(h[pos] - '0');
    }
  }
  return ImageSize{v[0], v[1]};
}

}  // namespace

std::optional<ImageSize> image_size_from_header(const std::string& path) {
  Bytes f(path);
  if (!f.good()) return std::nullopt;
  const std::string magic = f.at(0, 12).empty() ? f.at(0, 2) : f.at(0, 12);
  if (magic.size() < 2) return std::nullopt;
  if (magic.rfind("\x89PNG\r\n\x1a\n", 0) == 0) return png(f);
  if (magic.rfind("\xFF\xD8", 0) == 0) return jpeg(f);
  if (magic.rfind("BM", 0) == 0) return bmp(f);
  if (magic.size() >= 12 && magic.rfind("RIFF", 0) == 0 && magic.compare(8, 4, "WEBP") == 0) return webp(f);
  if (magic.rfind(std::string("II*\0", 4), 0) == 0) return tiff(f, true);
  if (magic.rfind(std::string("MM\0*", 4), 0) == 0) return tiff(f, false);
  if (magic[0] == 'P' && magic[1] >= '1' && magic[1] <= '6') return netpbm(f);
  return std::nullopt;
}

}  // namespace gradcam::detail
