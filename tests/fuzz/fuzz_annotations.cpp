// libFuzzer target: the CSV annotation reader, the VOC/ImageNet XML reader, the labels file and
// the image header reader of the pixel limit (the first byte chooses which). Any input must give
// a result or a gradcam::Error.
#include <gradcam/evaluate.hpp>
#include <gradcam/error.hpp>

#include <cstdint>
#include <fstream>
#include <string>
#include <unistd.h>

#include "../../src/image_header.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const std::string dir = "/tmp/gradcam_fuzz_" + std::to_string(getpid());
  static const bool made = [] { return system(("mkdir -p " + dir).c_str()) == 0; }();
  if (!made) return 0;
  const int which = data[0] % 4;
  const std::string path =
      dir + (which == 0 ? "/a.csv" : which == 1 ? "/a.xml" : which == 2 ? "/labels.txt" : "/image");
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data + 1), static_cast<std::streamsize>(size - 1));
  }
  try {
    if (which == 0) {
      auto rows = gradcam::read_csv_annotations(path);
      for (const auto& r : rows)
        for (const auto& o : r.objects)
          if (o.box.x1 < o.box.x0 || o.box.y1 < o.box.y0) __builtin_trap();  // invariant
    } else if (which == 1) {
      auto a = gradcam::read_voc_annotation(path, dir);
      if (a.objects.empty()) __builtin_trap();
    } else if (which == 3) {
      (void)gradcam::detail::image_size_from_header(path);
    } else {
      auto labels = gradcam::Labels::read(path);
      for (size_t i = 0; i < labels.size(); ++i) {
        auto idx = labels.index(labels.name(static_cast<int64_t>(i)));
        if (!idx) __builtin_trap();  // every name maps back to an index
      }
      (void)labels.index(std::string(reinterpret_cast<const char*>(data), size));
    }
  } catch (const gradcam::Error&) {
  }
  return 0;
}
