// examples/video.cpp: explain every frame of a video and write the overlays to a new video;
// prints the frames per second, and where each frame's time goes: reading (decoding), the model
// (preprocessing and GradCAM::compute: forward, partial backward, map), drawing (the map to the
// frame's size, the overlay) and writing (encoding).
//   video MODEL IN_VIDEO OUT_VIDEO.avi: frames are used as they are (no resize, no crop).
#include <gradcam/gradcam.hpp>

#include <opencv2/videoio.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>

namespace {

using Clock = std::chrono::steady_clock;

/// Seconds since `t0`, and t0 moved to now.
double lap(Clock::time_point& t0) {
  const Clock::time_point now = Clock::now();
  const double s = std::chrono::duration<double>(now - t0).count();
  t0 = now;
  return s;
}

}  // namespace

int main(int argc, char** argv) try {
  if (argc != 4) {
    std::cerr << "usage: video MODEL IN_VIDEO OUT_VIDEO.avi\n";
    return 2;
  }
  auto model = gradcam::load_model(argv[1]);
  cv::VideoCapture in(argv[2]);
  if (!in.isOpened()) {
    std::cerr << "video: cannot open video '" << argv[2] << "'\n";
    return 1;
  }
  gradcam::GradCAM cam(model, gradcam::GradCAMOptions("auto"));
  const double fps_in = in.get(cv::CAP_PROP_FPS) > 0 ? in.get(cv::CAP_PROP_FPS) : 25.0;
  cv::VideoWriter out;
  const int colormap = gradcam::colormap_from_name("jet");
  cv::Mat frame;
  int frames = 0;
  double read_s = 0, model_s = 0, draw_s = 0, write_s = 0;
  for (Clock::time_point t = Clock::now(); in.read(frame); ++frames) {
    read_s += lap(t);
    gradcam::Geometry geo;
    at::Tensor x = gradcam::to_tensor(frame, gradcam::Preprocess().resize(0).crop(0), &geo);
    auto r = cam.compute(x);
    model_s += lap(t);
    cv::Mat shown = gradcam::overlay(frame, gradcam::map_to_image(r.maps.front().map[0][0], geo), colormap, 0.5);
    draw_s += lap(t);
    if (!out.isOpened()) {
      out.open(argv[3], cv::VideoWriter::fourcc('M', 'J', 'P', 'G'), fps_in, shown.size());
      if (!out.isOpened()) {
        std::cerr << "video: cannot write '" << argv[3] << "'\n";
        return 1;
      }
    }
    out.write(shown);
    write_s += lap(t);
  }
  if (frames == 0) {
    std::cerr << "video: no frames could be read from '" << argv[2] << "'\n";
    return 1;
  }
  const double total = read_s + model_s + draw_s + write_s;
  auto ms = [&](double s) { return 1000.0 * s / frames; };
  std::printf("frames %d fps %.1f; per frame %.2f ms: read %.2f, model (Grad-CAM) %.2f, drawing %.2f, writing %.2f\n",
              frames, frames / total, ms(total), ms(read_s), ms(model_s), ms(draw_s), ms(write_s));
  return 0;
} catch (const std::exception& e) {
  std::cerr << "video: " << e.what() << "\n";
  return 1;
}
