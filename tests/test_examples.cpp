// The examples (examples/*.cpp) run as a user runs them, on the shipped demo model and the target
// fixtures: each writes its picture and prints what it promises.
#include "catch.hpp"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/videoio.hpp>

#include <filesystem>

#include <gradcam/gradcam.hpp>

#include "cli_support.hpp"
#include "support.hpp"

using test::Contains;
using test::demo;
using test::env;
using test::Run;
using test::run;
using test::tmpdir;

TEST_CASE("the examples run on the demo model", "[examples]") {
  const std::string dir = env("GRADCAM_EXAMPLES_DIR");
  const std::string out = tmpdir("examples");
  std::string img;
  for (const auto& e : fs::directory_iterator(demo("images"))) img = e.path().string();
  const std::string model = demo("digits.pt");

  Run a = run(dir + "/example_explain_one " + model + " " + img + " " + out + "/one.png");
  INFO(a.out);
  CHECK(a.code == 0);
  CHECK_FALSE(cv::imread(out + "/one.png").empty());

  Run b = run(dir + "/example_guided_panel " + model + " " + img + " " + out + "/panel.png");
  CHECK(b.code == 0);
  cv::Mat panel = cv::imread(out + "/panel.png");
  REQUIRE_FALSE(panel.empty());
  CHECK(panel.cols > 4 * panel.rows / 2);  // five tiles side by side

  Run c = run(dir + "/example_localize_boxes " + model + " " + img + " " + out + "/boxes.png");
  CHECK(c.code == 0);
  CHECK_THAT(c.out, Contains("box"));

  // a short video made from the demo images
  const std::string video = out + "/in.avi";
  {
    cv::VideoWriter w(video, cv::VideoWriter::fourcc('M', 'J', 'P', 'G'), 10, cv::Size(64, 64));
    REQUIRE(w.isOpened());
    for (const auto& e : fs::directory_iterator(demo("images"))) w.write(cv::imread(e.path().string()));
  }
  Run d = run(dir + "/example_video " + model + " " + video + " " + out + "/out.avi");
  CHECK(d.code == 0);
  CHECK_THAT(d.out, Contains("fps"));
  cv::VideoCapture check(out + "/out.avi");
  CHECK(check.isOpened());
  CHECK(check.get(cv::CAP_PROP_FRAME_COUNT) >= 4);
}

TEST_CASE("the target examples: segmentation region, similarity, any output", "[examples][targets]") {
  const std::string dir = env("GRADCAM_EXAMPLES_DIR");
  const std::string out = tmpdir("target_examples");
  const std::string img = demo("test/0013_three.png");
  const std::string seg = test::fixture("targets_seg.pt");
  Run a = run(dir + "/example_segment_region " + seg + " backbone " + img + " 2 " + out + "/seg.png 4 6 20 25");
  INFO(a.out);
  CHECK(a.code == 0);
  CHECK_THAT(a.out, Contains("region score"));
  CHECK_FALSE(cv::imread(out + "/seg.png").empty());
  Run b = run(dir + "/example_similar_images " + demo("digits.pt") + " block3 " + img + " " + demo("test/0022_three.png") + " " + out + "/sim.png");
  INFO(b.out);
  CHECK(b.code == 0);
  CHECK_THAT(b.out, Contains("cosine similarity 0.9"));  // two threes: the logits point the same way
  CHECK_FALSE(cv::imread(out + "/sim.png").empty());
  Run c = run(dir + "/example_explain_output " + test::fixture("targets_embed.pt") + " backbone " + img + " 1 " + out + "/o.png 2");
  CHECK(c.code == 0);
  Run d = run(dir + "/example_explain_output " + test::fixture("targets_embed.pt") + " backbone " + img + " 1 " + out + "/o.png 9");
  CHECK(d.code == 1);
  CHECK_THAT(d.out, Contains("index 9 is out of range"));
}

TEST_CASE("the transformer example: auto, the grid it read, Grad-CAM and rollout", "[examples][transformers]") {
  const std::string dir = env("GRADCAM_EXAMPLES_DIR");
  const std::string out = tmpdir("transformer_example");
  // the DeiT-style fixture (make_transformer_refs.py): a class and a distillation token, a 4x4 grid
  Run a = run(dir + "/example_explain_transformer " + test::fixture("tf_deit_script.pt") + " " +
              demo("test/0013_three.png") + " 64 " + out + "/vit.png");
  INFO(a.out);
  CHECK(a.code == 0);
  CHECK_THAT(a.out, Contains("auto: blocks.1.ln_1 (a transformer") && Contains("read as tokens: 2 extra token(s), a 4x4 grid"));
  const cv::Mat panel = cv::imread(out + "/vit.png");
  REQUIRE_FALSE(panel.empty());
  CHECK(panel.cols > 2 * panel.rows / 2);  // three tiles side by side
}

TEST_CASE("the detector example prints each box with its class, score and map file", "[examples][detection]") {
  const std::string dir = env("GRADCAM_EXAMPLES_DIR");
  const std::string out = tmpdir("detector_example");
  // the Faster R-CNN fixture (make_detection_refs.py, random weights: scores near 0.3)
  Run a = run(dir + "/example_explain_detector " + test::fixture("det_frcnn.pt") + " " + demo("test/0013_three.png") +
              " " + out + " 0 auto " + env("GRADCAM_TORCHVISION_OPS"));
  INFO(a.out);
  CHECK(a.code == 0);
  CHECK_THAT(a.out, Contains("layer backbone.body.16\n") && Contains("box 0: class ") && Contains("box 4: class ") &&
                        Contains("-> " + out + "/box4.png"));
  const cv::Mat shown = cv::imread(out + "/box4.png");
  CHECK(shown.cols == 64);
}

TEST_CASE("the server example runs an exported explainer with LibTorch alone", "[examples][export]") {
  const std::string dir = env("GRADCAM_EXAMPLES_DIR");
  const std::string out = tmpdir("serve_example");
  gradcam::export_explainer(gradcam::load_model(demo("digits.pt")),
                            gradcam::ExportOptions().layer("block3").topk(2).upsample(true).input_shape({1, 3, 64, 64}),
                            out + "/explained.pt");
  // the program links LibTorch, not gradcam
  CHECK(run("ldd " + dir + "/example_serve_explained | grep -c gradcam").out == "0\n");
  Run a = run(dir + "/example_serve_explained " + out + "/explained.pt 3 64 64 2");
  INFO(a.out);
  CHECK(a.code == 0);
  CHECK_THAT(a.out, Contains("explains layer block3 with gradcam\n") && Contains("image 1 rank 1: class ") &&
                        Contains("map 64x64 peaking at row "));
}
