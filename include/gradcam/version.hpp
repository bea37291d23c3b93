// gradcam/version.hpp: the library version, kept in this one place (CMake parses it).
#pragma once

#define GRADCAM_VERSION_MAJOR 0
#define GRADCAM_VERSION_MINOR 1
#define GRADCAM_VERSION_PATCH 0

namespace gradcam {
/// The library version as "major.minor.patch".
inline constexpr const char* version = "0.1.0";
}  // namespace gradcam
