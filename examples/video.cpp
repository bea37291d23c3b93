// examples/video.cpp: explain every frame of a video and write the overlays to a new video;
// prints the frames per second of the explanation.
//   video MODEL IN_VIDEO OUT_VIDEO.avi [--resize S --crop C]: frames are used as they are.
#include <gradcam/gradcam.hpp>

#include <opencv2/videoio.hpp>

#include <chrono>
#include <iostream>

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
  double explain_s = 0;
  while (in.read(frame)) {
    const auto t0 = std::chrono::steady_clock::now();
    gradcam::Geometry geo;
    at::Tensor x = gradcam::to_tensor(frame, gradcam::Preprocess().resize(0).crop(0), &geo);
    auto r = cam.compute(x);
    cv::Mat shown = gradcam::overlay(frame, gradcam::map_to_image(r.maps.front().map[0][0], geo), colormap, 0.5);
    explain_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!out.isOpened()) {
      out.open(argv[3], cv::VideoWriter::fourcc('M', 'J', 'P', 'G'), fps_in, shown.size());
      if (!out.isOpened()) {
        std::cerr << "video: cannot write '" << argv[3] << "'\n";
        return 1;
      }
    }
    out.write(shown);
    ++frames;
  }
  if (frames == 0) {
    std::cerr << "video: no frames could be read from '" << argv[2] << "'\n";
    return 1;
  }
  std::cout << "frames " << frames << " fps " << frames / explain_s << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "video: " << e.what() << "\n";
  return 1;
}
