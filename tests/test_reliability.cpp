// Reliability: no growth over thousands of calls, the module left unchanged, the thread-safety
// contract, and odd images.
#include "catch.hpp"

#include <filesystem>
#include <fstream>
#include <thread>
#if defined(GRADCAM_WITH_OPENCV)
#include <opencv2/imgcodecs.hpp>
#endif
#include <unistd.h>

#include <gradcam/gradcam.hpp>

#include "support.hpp"

namespace fs = std::filesystem;
using test::Contains;

#if defined(__SANITIZE_ADDRESS__)
#define GRADCAM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GRADCAM_ASAN 1
#endif
#endif

namespace {
/// Resident set size in bytes, from /proc/self/statm.
size_t rss() {
  std::ifstream in("/proc/self/statm");
  size_t pages = 0, resident = 0;
  in >> pages >> resident;
  return resident * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

std::string graph_of(const torch::jit::Module& m) { return m.get_method("forward").graph()->toString(); }
}  // namespace

TEST_CASE("2,000 Grad-CAM + guided Grad-CAM calls: no growth, module unchanged", "[reliability]") {
  auto module = test::model("toy_script");
  const std::string graph_before = graph_of(module);
  std::vector<at::Tensor> params;
  std::vector<bool> flags;
  for (const auto& p : module.parameters()) {
    params.push_back(p.detach().clone());
    flags.push_back(p.requires_grad());
  }
  at::manual_seed(0);
  const at::Tensor x = at::randn({2, 3, 16, 16});
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("block"));
  gradcam::GradCAM guided(module, gradcam::GradCAMOptions("block").guided(gradcam::GuidedMode::guided));
  const int calls = 2000;
  size_t after_warmup = 0;
  for (int i = 0; i < calls; ++i) {
    auto r = cam.compute(x);
    auto g = guided.compute(x, gradcam::Target::classes({1}));
    REQUIRE(r.maps.size() == 2);  // the block is called twice
    REQUIRE(g.guided.size() == 1);
    if (i == 99) after_warmup = rss();
  }
  const size_t end = rss();
  const double growth = (static_cast<double>(end) - static_cast<double>(after_warmup)) / static_cast<double>(after_warmup);
  std::cout << "reliability: " << 2 * calls << " calls, RSS after 100 iterations " << after_warmup / 1024
            << " KiB, at the end " << end / 1024 << " KiB (" << 100 * growth << "%)" << std::endl;
#if !defined(GRADCAM_ASAN)
  CHECK(growth < 0.05);
#endif
  CHECK(graph_of(module) == graph_before);
  size_t i = 0;
  for (const auto& p : module.parameters()) {
    CHECK(at::equal(p, params[i]));
    CHECK(p.requires_grad() == flags[i]);
    CHECK_FALSE(p.grad().defined());
    ++i;
  }
}

TEST_CASE("threads: own explainers on one shared module, and one shared explainer", "[reliability][threads]") {
  auto module = test::model("resnet18_script");
  at::manual_seed(0);
  const int n_threads = 4;
  std::vector<at::Tensor> inputs;
  for (int t = 0; t < n_threads; ++t) inputs.push_back(at::randn({2, 3, 64, 64}));
  const std::vector<std::string> layers = {"layer4", "layer2"};
  auto options = gradcam::GradCAMOptions(layers).guided(gradcam::GuidedMode::guided);

  std::vector<gradcam::GradCAMResult> sequential;
  {
    gradcam::GradCAM cam(module, options);
    for (const auto& x : inputs) sequential.push_back(cam.compute(x));
  }
  auto same = [&](const gradcam::GradCAMResult& a, const gradcam::GradCAMResult& b) {
    bool ok = a.maps.size() == b.maps.size() && at::equal(a.guided[0], b.guided[0]);
    for (size_t i = 0; ok && i < a.maps.size(); ++i) {
      ok = at::equal(a.maps[i].map, b.maps[i].map) && at::equal(a.maps[i].guided_gradcam, b.maps[i].guided_gradcam);
    }
    return ok;
  };
  for (const bool shared : {false, true}) {
    INFO((shared ? "one explainer shared by the threads" : "one explainer per thread"));
    gradcam::GradCAM shared_cam(module, options);
    std::vector<gradcam::GradCAMResult> results(n_threads);
    std::vector<std::string> errors(n_threads);
    std::vector<std::thread> threads;
    for (int t = 0; t < n_threads; ++t) {
      threads.emplace_back([&, t] {
        try {
          std::unique_ptr<gradcam::GradCAM> own;
          if (!shared) own = std::make_unique<gradcam::GradCAM>(module, options);
          const gradcam::GradCAM& cam = shared ? shared_cam : *own;
          for (int rep = 0; rep < 3; ++rep) results[static_cast<size_t>(t)] = cam.compute(inputs[static_cast<size_t>(t)]);
        } catch (const std::exception& e) {
          errors[static_cast<size_t>(t)] = e.what();
        }
      });
    }
    for (auto& th : threads) th.join();
    for (int t = 0; t < n_threads; ++t) {
      INFO("thread " << t);
      REQUIRE(errors[static_cast<size_t>(t)].empty());
      CHECK(same(results[static_cast<size_t>(t)], sequential[static_cast<size_t>(t)]));
    }
  }
}

#if defined(GRADCAM_WITH_OPENCV)
TEST_CASE("odd images: grayscale, 16-bit, alpha, 1x1, truncated", "[reliability][image]") {
  const fs::path dir = test::scratch_root() / "odd_images";
  fs::create_directories(dir);
  auto path = [&](const std::string& name) { return (dir / name).string(); };
  cv::Mat gray(20, 30, CV_8UC1, cv::Scalar(128));
  cv::imwrite(path("gray.png"), gray);
  cv::Mat deep(20, 30, CV_16UC3, cv::Scalar(65535, 0, 32896));
  cv::imwrite(path("deep.png"), deep);
  cv::Mat alpha(20, 30, CV_8UC4, cv::Scalar(10, 20, 30, 0));
  cv::imwrite(path("alpha.png"), alpha);
  cv::Mat one(1, 1, CV_8UC3, cv::Scalar(1, 2, 3));
  cv::imwrite(path("one.png"), one);

  cv::Mat g = gradcam::load_image(path("gray.png"));
  CHECK(g.type() == CV_8UC3);
  CHECK(g.at<cv::Vec3b>(0, 0) == cv::Vec3b(128, 128, 128));
  cv::Mat d = gradcam::load_image(path("deep.png"));
  CHECK(d.type() == CV_8UC3);
  CHECK(d.at<cv::Vec3b>(0, 0) == cv::Vec3b(255, 0, 128));  // 16-bit scaled by 1/257
  cv::Mat a = gradcam::load_image(path("alpha.png"));
  CHECK(a.type() == CV_8UC3);
  CHECK(a.at<cv::Vec3b>(0, 0) == cv::Vec3b(10, 20, 30));
  gradcam::Geometry geo;
  at::Tensor x = gradcam::to_tensor(gradcam::load_image(path("one.png")), gradcam::Preprocess().resize(64).crop(64), &geo);
  CHECK(x.sizes() == at::IntArrayRef({1, 3, 64, 64}));
  CHECK(geo.to_image({0, 0, 63, 63}) == gradcam::Box{0, 0, 0, 0});

  // a truncated JPEG: either a clear error or a (partly grey) image, never a crash
  cv::Mat noise(64, 64, CV_8UC3);
  cv::randu(noise, 0, 255);
  cv::imwrite(path("full.jpg"), noise);
  std::ifstream in(path("full.jpg"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::ofstream(path("cut.jpg"), std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  try {
    cv::Mat cut = gradcam::load_image(path("cut.jpg"));
    CHECK(cut.type() == CV_8UC3);
  } catch (const gradcam::Error& e) {
    CHECK_THAT(e.what(), Contains("cut.jpg"));
  }
  std::ofstream(path("text.png")) << "not an image";
  CHECK_THROWS_WITH(gradcam::load_image(path("text.png")), Contains("text.png") && Contains("could not be decoded"));
  CHECK_THROWS_WITH(gradcam::load_image(dir.string()), Contains("is a directory"));
}

// Each format's header, written by OpenCV's own encoders, gives the size; one pixel over the
// limit is refused before decoding, the exact count loads. 37 x 23: odd, and not square, so a
// swapped width and height shows.
TEST_CASE("the pixel limit is read from each format's header, before decoding", "[reliability][image]") {
  const fs::path dir = test::scratch_root() / "pixel_limit";
  fs::create_directories(dir);
  cv::Mat img(23, 37, CV_8UC3);
  cv::randu(img, 0, 255);
  cv::Mat gray(23, 37, CV_8UC1, cv::Scalar(7));
  struct Case {
    std::string name;
    const cv::Mat* image;
    std::vector<int> params;
  };
  const std::vector<Case> cases = {
      {"a.png", &img, {}},
      {"a.jpg", &img, {}},
      {"progressive.jpg", &img, {cv::IMWRITE_JPEG_PROGRESSIVE, 1}},
      {"a.bmp", &img, {}},
      {"lossy.webp", &img, {cv::IMWRITE_WEBP_QUALITY, 80}},
      {"lossless.webp", &img, {cv::IMWRITE_WEBP_QUALITY, 101}},
      {"a.tiff", &img, {}},
      {"a.ppm", &img, {}},
      {"a.pgm", &gray, {}},
  };
  for (const auto& c : cases) {
    const std::string path = (dir / c.name).string();
    INFO(c.name);
    REQUIRE(cv::imwrite(path, *c.image, c.params));
    CHECK_THROWS_WITH(gradcam::load_image(path, 37 * 23 - 1),
                      "image '" + path + "' is 37 x 23 pixels, more than the limit of 850 pixels (max_pixels; "
                      "0: no limit); it was not decoded");
    CHECK(gradcam::load_image(path, 37 * 23).size() == cv::Size(37, 23));
    CHECK(gradcam::load_image(path, 0).size() == cv::Size(37, 23));
  }
  // a PNG that declares 20000 x 20000 (1.2 GB as BGR) in 33 bytes: refused, nothing allocated
  const std::string bomb = (dir / "bomb.png").string();
  {
    std::ofstream out(bomb, std::ios::binary);
    out << std::string("\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0\x4e\x20\0\0\x4e\x20\x08\x02\0\0\0\0\0\0\0", 33);
  }
  CHECK_THROWS_WITH(gradcam::load_image(bomb),
                    "image '" + bomb + "' is 20000 x 20000 pixels, more than the limit of 50000000 pixels "
                    "(max_pixels; 0: no limit); it was not decoded");
  CHECK_THROWS_WITH(gradcam::load_image(bomb, -1), "max_pixels must be >= 0 (0: no limit), got -1");
}
#endif
