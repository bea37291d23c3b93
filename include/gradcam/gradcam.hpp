// gradcam/gradcam.hpp: the umbrella header. Includes the core API (no OpenCV needed); the image
// and visualisation layer (<gradcam/image.hpp>) and detectors (<gradcam/detection.hpp>, whose NMS is
// OpenCV's) are included here when built with OpenCV.
#pragma once

#include <gradcam/error.hpp>
#include <gradcam/evaluate.hpp>
#include <gradcam/export.hpp>
#include <gradcam/factorization.hpp>
#include <gradcam/faithfulness.hpp>
#include <gradcam/targets.hpp>
#include <gradcam/grad_cam.hpp>
#include <gradcam/guided.hpp>
#include <gradcam/layers.hpp>
#include <gradcam/localize.hpp>
#include <gradcam/model.hpp>
#include <gradcam/version.hpp>

#if defined(GRADCAM_WITH_OPENCV)
#include <gradcam/detection.hpp>
#include <gradcam/image.hpp>
#endif
