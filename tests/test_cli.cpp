// The gradcam command and the examples, on the shipped demo model and images.
#include "catch.hpp"

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <sys/wait.h>

#include <gradcam/gradcam.hpp>

#include "cli_support.hpp"
#include "support.hpp"

using test::Contains;
using test::cli;
using test::demo;
using test::env;
using test::Run;
using test::run;
using test::tmpdir;
using json = nlohmann::json;

namespace {

/// Reads a float32 .npy file written by gradcam::save_npy (independent little parser).
at::Tensor read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  char magic[8];
  in.read(magic, 8);
  REQUIRE(std::string(magic + 1, 5) == "NUMPY");
  unsigned char len[2];
  in.read(reinterpret_cast<char*>(len), 2);
  std::string header(len[0] | (len[1] << 8), ' ');
  in.read(header.data(), static_cast<std::streamsize>(header.size()));
  REQUIRE_THAT(header, Contains("'descr': '<f4'"));
  auto a = header.find("'shape': (") + 10;
  auto b = header.find(')', a);
  std::vector<int64_t> shape;
  std::stringstream ss(header.substr(a, b - a));
  std::string item;
  while (std::getline(ss, item, ','))
    if (item.find_first_not_of(' ') != std::string::npos) shape.push_back(std::stoll(item));
  at::Tensor t = at::empty(shape, at::kFloat);
  in.read(reinterpret_cast<char*>(t.data_ptr<float>()), static_cast<std::streamsize>(t.numel() * 4));
  REQUIRE(in.gcount() == t.numel() * 4);
  return t;
}

}  // namespace

TEST_CASE("explain writes overlays, maps and records that match the library", "[cli]") {
  const std::string out = tmpdir("explain");
  const std::string model = demo("digits.pt");
  std::vector<std::string> images;
  for (const auto& e : fs::directory_iterator(demo("images"))) images.push_back(e.path().string());
  std::sort(images.begin(), images.end());
  REQUIRE(images.size() >= 4);
  const std::string cmd = cli() + " explain --model " + model + " --images " + demo("images") +
                          " --resize 0 --crop 0 --labels " + demo("labels.txt") +
                          " --method gradcam counterfactual guided-gradcam --json --quiet --threads 1 --out " + out;
  Run r = run(cmd, false);
  REQUIRE(r.code == 0);
  std::vector<json> recs;
  std::stringstream lines(r.out);
  std::string line;
  while (std::getline(lines, line)) recs.push_back(json::parse(line));
  REQUIRE(recs.size() == images.size() * 3);

  auto module = gradcam::load_model(model);
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("auto").keep_signed(true));
  for (const auto& rec : recs) {
    INFO(rec.dump());
    for (const char* k : {"image", "class", "label", "score", "prob", "layer", "method", "box", "files"})
      REQUIRE(rec.contains(k));
    CHECK(rec["layer"] == "block3");
    for (const auto& [kind, path] : rec["files"].items()) {
      REQUIRE(fs::exists(path.get<std::string>()));
      if (path.get<std::string>().size() > 4 && path.get<std::string>().substr(path.get<std::string>().size() - 4) == ".png") {
        cv::Mat img = cv::imread(path.get<std::string>());
        CHECK_FALSE(img.empty());
      }
    }
    // the same numbers from the library on the same input
    cv::Mat img = gradcam::load_image(rec["image"]);
    gradcam::Geometry geo;
    at::Tensor x = gradcam::to_tensor(img, gradcam::Preprocess().resize(0).crop(0), &geo);
    auto res = cam.compute(x);
    CHECK(rec["class"].get<int64_t>() == res.classes[0][0].item<int64_t>());
    CHECK(rec["score"].get<double>() == Approx(res.scores[0][0].item<double>()).epsilon(1e-5));
    CHECK(rec["prob"].get<double>() == Approx(at::softmax(res.logits, 1)[0][rec["class"].get<int64_t>()].item<double>()).epsilon(1e-5));
    if (rec["method"] == "gradcam" || rec["method"] == "counterfactual") {
      at::Tensor want = rec["method"] == "gradcam" ? res.maps[0].map[0][0] : at::relu(-res.maps[0].map_signed[0][0]);
      at::Tensor got = read_npy(rec["files"]["map"]);
      REQUIRE(got.sizes() == want.sizes());
      CHECK(test::rel_err(got, want) < 1e-5);
      at::Tensor up = read_npy(rec["files"]["map_upsampled"]);
      CHECK(up.sizes() == at::IntArrayRef({x.size(2), x.size(3)}));
      // the overlay is at the original resolution
      CHECK(cv::imread(rec["files"]["overlay"].get<std::string>()).size() == img.size());
    }
    if (rec["method"] == "gradcam") {
      REQUIRE(rec["box"].is_array());
      CHECK(rec["box"].size() == 4);
    }
  }
  // demo accuracy sanity: the shipped model gets most demo images right (label in the file name)
  int right = 0;
  for (const auto& rec : recs) {
    if (rec["method"] != "gradcam") continue;
    if (rec["image"].get<std::string>().find("_" + rec["label"].get<std::string>() + ".png") != std::string::npos) ++right;
  }
  CHECK(right >= static_cast<int>(images.size()) - 2);
}

TEST_CASE("explain --topk and --class", "[cli]") {
  const std::string out = tmpdir("topk");
  std::string img;
  for (const auto& e : fs::directory_iterator(demo("images"))) img = e.path().string();
  Run r = run(cli() + " explain --model " + demo("digits.pt") + " --image " + img +
                  " --resize 0 --crop 0 --topk 3 --json --out " + out, false);
  REQUIRE(r.code == 0);
  std::stringstream lines(r.out);
  std::string line;
  std::vector<json> recs;
  while (std::getline(lines, line)) recs.push_back(json::parse(line));
  REQUIRE(recs.size() == 3);
  CHECK(recs[0]["score"].get<double>() >= recs[1]["score"].get<double>());
  Run c = run(cli() + " explain --model " + demo("digits.pt") + " --image " + img +
                  " --resize 0 --crop 0 --class 7 --json --out " + out, false);
  REQUIRE(c.code == 0);
  CHECK(json::parse(c.out)["class"] == 7);
}

TEST_CASE("layers lists the demo model and marks auto", "[cli]") {
  Run r = run(cli() + " layers --model " + demo("digits.pt") + " --size 64 64");
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Contains("* block3") && Contains("[1, 64, 16, 16]") && Contains("fc"));
  Run j = run(cli() + " layers --model " + demo("digits.pt") + " --size 64 64 --json", false);
  REQUIRE(j.code == 0);
  CHECK(json::parse(j.out)["auto"] == "block3");
}

TEST_CASE("bad arguments give a message naming them and a non-zero exit", "[cli]") {
  const std::string m = " --model " + demo("digits.pt") + " ";
  std::string img;
  for (const auto& e : fs::directory_iterator(demo("images"))) img = e.path().string();
  const std::string out = " --out " + tmpdir("bad") + " ";
  struct Bad {
    std::string args;
    std::string message;
  };
  const std::vector<Bad> bad = {
      {"explain --image " + img, "--model"},
      {"explain --model /no/model.pt --image " + img, "/no/model.pt"},
      {"explain --model " + demo("labels.txt") + " --image " + img, "not a readable TorchScript model"},
      {"explain" + m + "--image " + img + " --layer block9" + out, "did you mean 'block1', 'block2', 'block3'"},
      {"explain" + m + "--image " + img + " --method gradcan" + out, "gradcan"},
      {"explain" + m + "--image " + img + " --alpha 2" + out, "--alpha"},
      {"explain" + m + "--image " + img + " --colormap nosuch" + out, "nosuch"},
      {"explain" + m + "--image " + img + " --device gpu" + out, "--device"},
      {"explain" + m + "--image " + img + " --resize 0 --crop 0 --class 10" + out, "class index 10 is out of range"},
      {"explain" + m + "--image " + img + " --resize 0 --crop 0 --labels " + demo("test/annotations.csv") + out, "names but the model has 10 classes"},
      {"explain" + m + "--image " + img + " --crop 500 --resize 0" + out, "crop 500 is larger"},
      {"explain" + m + "--images /no/such/dir" + out, "/no/such/dir"},
      {"explain" + m + "--image /no/such.png" + out, "/no/such.png"},
      {"explain" + m + "--image " + img + " --out /etc/passwd/sub", "/etc/passwd/sub"},
      {"explain" + m + "--image " + img + " --class 1 --topk 2" + out, "--topk"},
      {"explain" + m + "--image " + img + " --tokens nhwcx" + out, "--tokens: nhwcx not in {auto,cls+grid,grid,nhwc,nchw}"},
      {"explain" + m + "--image " + img + " --token-grid 4 0" + out, "--token-grid: 0 is out of range; give a whole number >= 1"},
      {"explain" + m + "--image " + img + " --resize 0 --crop 0 --method rollout" + out,
       "attention rollout reads the model's nn.MultiheadAttention modules, and it has none"},
      {"explain" + m + "--image " + img + " --score-threshold 0.3" + out, "--score-threshold applies to --task detection"},
      {"explain" + m + "--image " + img + " --task detection --method scorecam" + out,
       "--task detection explains a box with gradcam, gradcam++, xgradcam, hirescam, layercam or eigencam, not 'scorecam'"},
      {"explain" + m + "--image " + img + " --task detection --class 3" + out,
       "--class chooses classes of a classifier; with --task detection use --classes, --score-threshold and --max-boxes"},
      {"explain" + m + "--image " + img + " --task detection --layer block3" + out,
       "the model returns Tensor, not torchvision's detections (a list of dicts with 'boxes', 'scores' and 'labels', "
       "or a (losses, detections) tuple); for a dense output choose the layout yolo-nxbx(5+c) or yolo-nx(4+c)xb"},
      {"explain" + m + "--image " + img + " --task detection --layout yolo" + out, "--layout: yolo not in"},
      {"explain" + m + "--image " + img + " --ops-library /no/lib.so" + out, "--ops-library: File does not exist: /no/lib.so"},
      {"layers" + m + "--size 64", "--size"},
      {"frobnicate", "unknown command 'frobnicate'"},
  };
  for (const auto& b : bad) {
    INFO(b.args);
    Run r = run(cli() + " " + b.args);
    CHECK(r.code != 0);
    CHECK_THAT(r.out, Contains(b.message));
  }
}

TEST_CASE("eval-loc writes a report; unreadable images are counted and skipped", "[cli][localize]") {
  const std::string dir = tmpdir("evalloc");
  // a small CSV over three demo test images, one of them truncated, one missing
  const std::string src = demo("test/");
  fs::copy_file(src + "0000_zero.png", dir + "/a.png");
  fs::copy_file(src + "0002_five.png", dir + "/b.png");
  {
    std::ifstream in(src + "0004_six.png", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(dir + "/c.png", std::ios::binary) << bytes.substr(0, bytes.size() / 3);
  }
  std::ofstream(dir + "/ann.csv") << "file,label,x0,y0,x1,y1\n"
                                  << "a.png,zero,33,4,53,27\n"
                                  << "b.png,five,0,0,63,63\n"
                                  << "c.png,six,0,0,10,10\n"
                                  << "missing.png,two,0,0,10,10\n";
  const std::string report = dir + "/report.json";
  Run r = run(cli() + " eval-loc --model " + demo("digits.pt") + " --annotations " + dir + "/ann.csv --labels " +
              demo("labels.txt") + " --resize 0 --crop 0 --sweep --quiet --report " + report);
  INFO(r.out);
  CHECK(r.code == 1);  // some images could not be read
  CHECK_THAT(r.out, Contains("c.png") && Contains("missing.png") && Contains("| 0.15*"));
  std::ifstream in(report);
  json rep = json::parse(in);
  for (const char* k : {"n", "top1_cls", "top1_loc", "top5_loc", "gt_known_loc", "mean_iou", "pointing_game", "threshold", "sweep"})
    CHECK(rep.contains(k));
  CHECK(rep["n"] == 2);
  CHECK(rep["unreadable"] == 2);
  CHECK(rep["threshold"] == 0.15);
  CHECK(rep["sweep"].size() == 19);
  // b.png's truth is the whole image: any box of a correct prediction has IoU = box area / 4096
  CHECK(rep["top1_cls"].get<double>() == 1.0);
  for (const char* k : {"top1_cls", "top1_loc", "top5_loc", "gt_known_loc", "mean_iou", "pointing_game"}) {
    CHECK(rep[k].get<double>() >= 0.0);
    CHECK(rep[k].get<double>() <= 1.0);
  }
}

TEST_CASE("eval-loc interrupted with Ctrl-C still leaves a valid report", "[cli][localize]") {
  const std::string dir = tmpdir("evalint");
  const std::string report = dir + "/report.json";
  Run r = test::run_interrupted(cli() + " eval-loc --model " + demo("digits.pt") + " --annotations " +
                                    demo("test/annotations.csv") + " --labels " + demo("labels.txt") +
                                    " --resize 0 --crop 0 --batch 1 --threads 1 --sweep --quiet --report " + report,
                                test::catches_sigint());
  INFO(r.out);
  REQUIRE(fs::exists(report));
  std::ifstream in(report);
  json rep = json::parse(in);
  if (r.code == 130) {
    CHECK(rep["interrupted"] == true);
    CHECK(rep["n"].get<int64_t>() < 300);
  } else {
    WARN("eval-loc finished all 300 images before the interrupt; it was not exercised");
    CHECK(rep["n"] == 300);
  }
}

TEST_CASE("hostile input to the command: huge and tiny images, odd folders, unicode paths", "[cli][reliability]") {
  const std::string dir = tmpdir("hostile") + "/dir with spaces ü";
  fs::create_directories(dir);
  const std::string out = dir + "/out ø";
  cv::imwrite(dir + "/huge.png", cv::Mat(10000, 10000, CV_8UC3, cv::Scalar(40, 40, 40)));
  cv::imwrite(dir + "/tiny ü.png", cv::Mat(1, 1, CV_8UC3, cv::Scalar(200, 200, 200)));
  fs::copy_file(demo("images/0003_zero.png"), dir + "/zéro 3.png");
  std::ofstream(dir + "/notes.txt") << "not an image, skipped by extension";
  std::ofstream(dir + "/fake.png") << "not a png";
  Run r = run(cli() + " explain --model " + demo("digits.pt") + " --images '" + dir +
              "' --resize 64 --crop 64 --json --quiet --max-pixels 100000000 --out '" + out + "'", true);
  INFO(r.out);  // 100 MP is over the default limit (50 MP, test_cli_reliability.cpp), within this one
  CHECK(r.code == 1);  // the fake PNG could not be read
  CHECK_THAT(r.out, Contains("fake.png") && Contains("could not be decoded"));
  CHECK_THAT(r.out, !Contains("notes.txt"));
  int records = 0;
  std::stringstream lines(r.out);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] != '{') continue;
    json rec = json::parse(line);
    ++records;
    const std::string overlay = rec["files"]["overlay"];
    cv::Mat img = cv::imread(overlay);
    REQUIRE_FALSE(img.empty());
    if (rec["image"].get<std::string>().find("huge") != std::string::npos) CHECK(img.cols == 10000);
    if (rec["image"].get<std::string>().find("tiny") != std::string::npos) CHECK(img.cols == 1);
  }
  CHECK(records == 3);  // huge, tiny, zéro
}

TEST_CASE("explain: CAM methods and fused layers", "[cli][methods]") {
  const std::string dir = tmpdir("methods");
  const std::string img = demo("test/0002_five.png");
  Run r = run(cli() + " explain --model " + demo("digits.pt") + " --image " + img +
              " --resize 0 --crop 0 --class 3 --quiet --layers block2 block3 --fuse max --method gradcam++ eigencam --out " + dir);
  INFO(r.out);
  REQUIRE(r.code == 0);
  const std::string stem = fs::path(img).stem().string();
  const at::Tensor fused = read_npy(dir + "/" + stem + "_c3_gradcam++_fused_map.npy");
  CHECK(fs::exists(dir + "/" + stem + "_c3_eigencam_fused.png"));
  // the same fusion through the library
  auto module = gradcam::load_model(demo("digits.pt"));
  gradcam::Geometry g;
  const at::Tensor x = gradcam::to_tensor(gradcam::load_image(img), gradcam::Preprocess().resize(0).crop(0), &g);
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions(std::vector<std::string>{"block2", "block3"})
                                   .methods({gradcam::Method::gradcam_pp}));
  const auto res = cam.compute(x, gradcam::Target::classes({3}));
  const at::Tensor want = gradcam::fuse({res.get("block2", 0, 0, gradcam::Method::gradcam_pp).map,
                                         res.get("block3", 0, 0, gradcam::Method::gradcam_pp).map},
                                        gradcam::Fusion::max, {x.size(2), x.size(3)})[0][0];
  REQUIRE(fused.sizes() == want.sizes());
  CHECK(test::rel_err(fused, want) < 1e-5);
  // several layers without --fuse: one output per layer
  r = run(cli() + " explain --model " + demo("digits.pt") + " --image " + img +
          " --resize 0 --crop 0 --class 3 --quiet --layers block2 block3 --method layercam --out " + dir);
  CHECK(r.code == 0);
  CHECK(fs::exists(dir + "/" + stem + "_c3_layercam_block2.png"));
  CHECK(fs::exists(dir + "/" + stem + "_c3_layercam_block3.png"));
  // the command's block3 maps of class 3 against the library's, with the same options and target
  auto same_maps = [&](const std::string& flags, const std::string& sub, const gradcam::GradCAMOptions& opts,
                       const gradcam::Target& target) {
    const Run e = run(cli() + " explain --model " + demo("digits.pt") + " --image " + img +
                      " --resize 0 --crop 0 --class 3 --quiet --layer block3 " + flags + " --out " + dir + "/" + sub);
    INFO(e.out);
    REQUIRE(e.code == 0);
    const auto lib = gradcam::GradCAM(module, opts).compute(x, target);
    for (const auto& m : lib.maps) {
      const std::string name = gradcam::method_name(m.method);
      INFO(flags << ": " << name);
      const at::Tensor got = read_npy(dir + "/" + sub + "/" + stem + "_c3_" + name + "_map.npy");
      REQUIRE(got.sizes() == m.map[0][0].sizes());
      CHECK(test::rel_err(got, m.map[0][0]) < 1e-6);
    }
  };
  using gradcam::Method;
  // --eigen-smooth
  same_maps("--method kpcacam gradcam --eigen-smooth", "es",
            gradcam::GradCAMOptions("block3").methods({Method::kpcacam, Method::gradcam}).eigen_smooth(true),
            gradcam::Target::classes({3}));
  // --aug-smooth, a gradient method and a perturbation one
  same_maps("--method gradcam++ scorecam --aug-smooth", "aug",
            gradcam::GradCAMOptions("block3").methods({Method::gradcam_pp, Method::scorecam}).aug_smooth(true),
            gradcam::Target::classes({3}));
  // --aug-scales: the copies at 48x48 too
  same_maps("--method gradcam --aug-smooth --aug-scales 0.75", "augs",
            gradcam::GradCAMOptions("block3").methods({Method::gradcam}).aug_smooth(true).aug_scales({0.75}),
            gradcam::Target::classes({3}));
  // SS-CAM and IS-CAM with --samples and --noise-std
  same_maps("--method sscam iscam --samples 2 --noise-std 0.5", "ss",
            gradcam::GradCAMOptions("block3").methods({Method::sscam, Method::iscam}).samples(2).noise_std(0.5),
            gradcam::Target::classes({3}));
  // SmoothGrad-CAM++ and SS-CAM without --noise-std: each method's own default noise; ShapleyCAM
  same_maps("--method smoothgradcam++ sscam shapleycam --samples 3", "sg",
            gradcam::GradCAMOptions("block3").methods({Method::smoothgradcam_pp, Method::sscam, Method::shapleycam}).samples(3),
            gradcam::Target::classes({3}));
  // FullGrad: a map at the input's resolution, written as the others are
  same_maps("--method fullgrad gradcam", "fg", gradcam::GradCAMOptions("block3").methods({Method::fullgrad, Method::gradcam}),
            gradcam::Target::classes({3}));
  // --finer: the Finer-CAM target of the class given
  same_maps("--finer 2 --finer-alpha 0.5", "finer", gradcam::GradCAMOptions("block3"), gradcam::targets::finer({3}, 2, 0.5));
  r = run(cli() + " explain --model " + demo("digits.pt") + " --image " + img + " --finer 2 --class 3 4 --out " + dir);
  CHECK(r.code != 0);
  CHECK_THAT(r.out, Contains("--finer explains one class: give one --class, or none for each image's top-1"));
  r = run(cli() + " explain --model " + demo("digits.pt") + " --image " + img + " --method guided --aug-smooth --out " + dir);
  CHECK(r.code != 0);
  CHECK_THAT(r.out, Contains("--aug-smooth averages CAM maps over flipped copies of the input; guided gradients are not "
                             "averaged that way: give the guided methods without --aug-smooth"));
  r = run(cli() + " explain --model " + demo("digits.pt") + " --image " + img + " --aug-scales 0.75 --out " + dir);
  CHECK(r.code != 0);
  CHECK_THAT(r.out, Contains("--aug-scales adds input sizes to --aug-smooth; give --aug-smooth too"));
  r = run(cli() + " explain --model " + demo("digits.pt") + " --image " + img + " --method sscam --samples -1 --out " + dir);
  CHECK(r.code != 0);
  CHECK_THAT(r.out, Contains("--samples"));
  r = run(cli() + " explain --model " + demo("digits.pt") + " --image " + img + " --fuse mean --out " + dir);
  CHECK(r.code != 0);
  CHECK_THAT(r.out, Contains("--fuse combines several layers"));
  r = run(cli() + " explain --model " + demo("digits.pt") + " --image " + img + " --method smoothgrad --out " + dir);
  CHECK(r.code != 0);
  CHECK_THAT(r.out, Contains("smoothgrad"));
}

TEST_CASE("transformers: layers shows the token grid, explain reads it, --tokens states it", "[cli][transformers]") {
  // a DeiT-style ViT: a class and a distillation token, then a 4x4 grid (make_transformer_refs.py)
  const std::string deit = test::fixture("tf_deit_script.pt");
  Run j = run(cli() + " layers --model " + deit + " --resize 64 --crop 64 --json", false);
  REQUIRE(j.code == 0);
  const json listing = json::parse(j.out);
  CHECK(listing["auto"] == "blocks.1.ln_1");
  const json tokens = {{"kind", "tokens"}, {"extra_tokens", 2}, {"grid", {4, 4}}};
  for (const auto& l : listing["layers"]) {
    if (l["name"] == "blocks.1.ln_1") CHECK(l["layout"] == tokens);
    if (l["name"] == "head") CHECK(l["layout"].is_null());
  }
  const std::string dir = tmpdir("transformers");
  const std::string img = demo("test/0002_five.png");
  Run r = run(cli() + " explain --model " + deit + " --image " + img +
              " --resize 64 --crop 64 --class 3 --quiet --method ablationcam rollout guided --out " + dir);
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Contains("warning: guided: the model has no ReLU (it uses aten::gelu), so guided and deconvnet "
                             "gradients are its plain input gradients (docs/guided.md)"));
  std::ifstream records(dir + "/records.jsonl");
  std::string first;
  REQUIRE(std::getline(records, first));
  CHECK(json::parse(first)["layout"] == tokens);
  // the map is the library's
  auto module = gradcam::load_model(deit);
  const at::Tensor x = gradcam::to_tensor(gradcam::load_image(img), gradcam::Preprocess().resize(64).crop(64));
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("blocks.1.ln_1").methods({gradcam::Method::ablationcam,
                                                                                  gradcam::Method::rollout}));
  const auto res = cam.compute(x, gradcam::Target::classes({3}));
  for (const auto m : {gradcam::Method::ablationcam, gradcam::Method::rollout}) {
    INFO(gradcam::method_name(m));
    const at::Tensor want = res.get("blocks.1.ln_1", 0, 0, m).map[0][0];
    const at::Tensor got = read_npy(dir + "/" + fs::path(img).stem().string() + "_c3_" + gradcam::method_name(m) + "_map.npy");
    REQUIRE(got.sizes() == want.sizes());
    CHECK(test::rel_err(got, want) < 1e-6);
  }
  // the demo ViT at its images' own size (--resize 0 --crop 0): auto is resolved at that size
  const std::string demo_out = tmpdir("transformers_demo");
  r = run(cli() + " explain --model " + demo("digits_vit.pt") + " --image " + img +
          " --resize 0 --crop 0 --quiet --method gradcam rollout --out " + demo_out);
  CHECK(r.code == 0);
  std::ifstream demo_records(demo_out + "/records.jsonl");
  REQUIRE(std::getline(demo_records, first));
  CHECK(json::parse(first)["layer"] == "encoder.layers.encoder_layer_2.ln_1");
  // a stated layout that does not fit, in the command's words
  r = run(cli() + " explain --model " + deit + " --image " + img + " --resize 64 --crop 64 --quiet --layer blocks.1.ln_1 "
          "--tokens cls+grid --out " + tmpdir("transformers_bad"));
  CHECK(r.code != 0);
  CHECK_THAT(r.out, Contains("layer 'blocks.1.ln_1' outputs tokens [1, 18, 32]: after 1 extra token, 17 tokens form no "
                             "grid of the input's aspect ratio 64x64; state the grid too (--tokens, --extra-tokens, "
                             "--token-grid)"));
}

TEST_CASE("eval-faith: report figures equal the library's metrics", "[cli][faithfulness]") {
  const std::string dir = tmpdir("faith");
  const std::string report = dir + "/faith.json";
  Run r = run(cli() + " eval-faith --model " + demo("digits.pt") + " --annotations " + demo("test/annotations.csv") +
              " --labels " + demo("labels.txt") + " --resize 0 --crop 0 --limit 5 --batch 2 --quiet --steps 10" +
              " --method gradcam scorecam guided --metrics deletion drop road adcc pointing --tolerance 2 --sanity 2" +
              " --report " + report);
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Contains("| gradcam |") && Contains("| scorecam |") && Contains("| guided |"));
  std::ifstream in(report);
  const json rep = json::parse(in);
  CHECK(rep["images"] == 5);
  CHECK(rep["explained"] == "true class");
  CHECK(rep["tolerance"] == 2);  // the pointing game's, recorded with its figures
  for (const char* m : {"gradcam", "scorecam", "guided"}) {
    const json& mm = rep["methods"][m];
    for (const char* k : {"deletion_auc", "average_drop", "increase_in_confidence", "confidence_change", "road_morf",
                          "road_lerf", "road_combined", "adcc", "adcc_coherency", "adcc_complexity", "pointing_game",
                          "sanity_final_spearman"})
      CHECK(mm.contains(k));
    CHECK_FALSE(mm.contains("insertion_auc"));  // not asked for
    CHECK(mm["deletion_curve"].size() == 11);
  }
  // Grad-CAM's figures recomputed with the library on the same five images and true classes
  auto module = gradcam::load_model(demo("digits.pt"));
  auto anns = gradcam::read_csv_annotations(demo("test/annotations.csv"));
  const auto labels = gradcam::Labels::read(demo("labels.txt"));
  std::vector<at::Tensor> xs;
  std::vector<int64_t> cls;
  for (size_t i = 0; i < 5; ++i) {
    xs.push_back(gradcam::to_tensor(gradcam::load_image(anns[i].image), gradcam::Preprocess().resize(0).crop(0)));
    cls.push_back(*labels.index(anns[i].objects.front().label));
  }
  const at::Tensor x = at::cat(xs, 0);
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("auto").probe_shape({1, 3, 64, 64}));
  const at::Tensor map = cam.compute(x, gradcam::Target::classes(cls)).maps[0].map;
  const at::Tensor c = at::tensor(cls, at::kLong);
  const auto model = gradcam::score_model(module);
  const double del = gradcam::deletion_curve(model, x, map, c, gradcam::CurveOptions().steps(10)).auc.mean().item<double>();
  const auto conf = gradcam::confidence_change(model, x, map, c);
  const gradcam::MapFn again = [&](const at::Tensor& in, const at::Tensor& k) {
    std::vector<int64_t> ks(k.data_ptr<int64_t>(), k.data_ptr<int64_t>() + k.numel());
    return cam.compute(in, gradcam::Target::classes(ks)).maps[0].map;
  };
  const auto adcc = gradcam::adcc(model, x, map, c, again);
  const json& g = rep["methods"]["gradcam"];
  CHECK(g["deletion_auc"].get<double>() == Approx(del).epsilon(1e-4));
  CHECK(g["average_drop"].get<double>() == Approx(conf.drop.mean().item<double>()).epsilon(1e-4));
  CHECK(g["confidence_change"].get<double>() == Approx(conf.change.mean().item<double>()).epsilon(1e-4));
  CHECK(g["adcc"].get<double>() == Approx(adcc.adcc.mean().item<double>()).epsilon(1e-4));
  CHECK(g["adcc_coherency"].get<double>() == Approx(adcc.coherency.mean().item<double>()).epsilon(1e-4));
  CHECK(g["adcc_complexity"].get<double>() == Approx(adcc.complexity.mean().item<double>()).epsilon(1e-4));
  CHECK(g["road_combined"].get<double>() == Approx((g["road_lerf"].get<double>() - g["road_morf"].get<double>()) / 2));
  // the pointing game by hand: the map bilinearly upsampled to the image (no resize, no crop: input
  // pixels are image pixels), its first maximum, within `tol` pixels of one of the image's boxes
  auto pointing = [&](const at::Tensor& maps, int tol) {
    int hits = 0;
    for (int64_t i = 0; i < 5; ++i) {
      const at::Tensor up = at::upsample_bilinear2d(maps.narrow(0, i, 1), {x.size(2), x.size(3)}, false)[0][0];
      const int64_t flat = up.argmax().item<int64_t>();
      const int64_t px = flat % x.size(3), py = flat / x.size(3);
      bool hit = false;
      for (const auto& o : anns[static_cast<size_t>(i)].objects) {
        hit = hit || (px >= o.box.x0 - tol && px <= o.box.x1 + tol && py >= o.box.y0 - tol && py <= o.box.y1 + tol);
      }
      hits += hit;
    }
    return hits / 5.0;
  };
  CHECK(g["pointing_game"].get<double>() == Approx(pointing(map, 2)));
  // RandomCAM without tolerance misses on some of these images (4 of 5 hit): both outcomes counted
  r = run(cli() + " eval-faith --model " + demo("digits.pt") + " --annotations " + demo("test/annotations.csv") +
          " --labels " + demo("labels.txt") + " --resize 0 --crop 0 --limit 5 --batch 5 --quiet --method randomcam" +
          " --metrics pointing --tolerance 0 --report " + report);
  REQUIRE(r.code == 0);
  std::ifstream in2(report);
  const double random_pointing = json::parse(in2)["methods"]["randomcam"]["pointing_game"].get<double>();
  gradcam::GradCAM random(module, gradcam::GradCAMOptions("auto").probe_shape({1, 3, 64, 64})
                                      .methods({gradcam::Method::randomcam}));
  const double want = pointing(random.compute(x, gradcam::Target::classes(cls)).maps[0].map, 0);
  CHECK((want > 0 && want < 1));
  CHECK(random_pointing == Approx(want));
  r = run(cli() + " eval-faith --model " + demo("digits.pt") + " --images " + demo("test") +
          " --metrics pointing --limit 1 --quiet");
  CHECK(r.code != 0);
  CHECK_THAT(r.out, Contains("--metrics pointing needs --annotations"));

  r = run(cli() + " eval-faith --model " + demo("digits.pt") + " --quiet");
  CHECK(r.code != 0);
  CHECK_THAT(r.out, Contains("--annotations") && Contains("--images"));
}

namespace {
/// Every href / src attribute of an HTML file.
std::vector<std::string> html_links(const std::string& path) {
  std::ifstream in(path);
  std::string html((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> out;
  for (const std::string attr : {"href=\"", "src=\""}) {
    for (size_t pos = html.find(attr); pos != std::string::npos; pos = html.find(attr, pos + 1)) {
      const size_t start = pos + attr.size();
      out.push_back(html.substr(start, html.find('"', start) - start));
    }
  }
  return out;
}
}  // namespace

TEST_CASE("diagnose: exactly the misclassified images, panels that decode, links that exist", "[cli][diagnose]") {
  const std::string out = tmpdir("diagnose");
  Run r = run(cli() + " diagnose --model " + demo("digits.pt") + " --annotations " + demo("test/annotations.csv") +
              " --labels " + demo("labels.txt") + " --resize 0 --crop 0 --quiet --out " + out);
  INFO(r.out);
  REQUIRE(r.code == 0);
  // the mistakes, found independently with the library
  auto module = gradcam::load_model(demo("digits.pt"));
  const auto labels = gradcam::Labels::read(demo("labels.txt"));
  const auto model = gradcam::score_model(module);
  std::set<std::string> wrong;
  for (const auto& ann : gradcam::read_csv_annotations(demo("test/annotations.csv"))) {
    const at::Tensor x = gradcam::to_tensor(gradcam::load_image(ann.image), gradcam::Preprocess().resize(0).crop(0));
    if (model(x).argmax(1).item<int64_t>() != *labels.index(ann.objects.front().label)) wrong.insert(ann.image);
  }
  REQUIRE_FALSE(wrong.empty());  // the demo model makes a few mistakes on its test split
  std::ifstream in(out + "/summary.json");
  const json s = json::parse(in);
  CHECK(s["images"] == 300);
  CHECK(s["correct"] == 300 - wrong.size());
  std::set<std::string> listed;
  for (const auto& m : s["mistakes"]) {
    listed.insert(m["image"].get<std::string>());
    CHECK(m["true"] != m["predicted"]);
    const cv::Mat panel = cv::imread(out + "/" + m["panel"].get<std::string>());
    REQUIRE_FALSE(panel.empty());
    CHECK(panel.cols > 4 * panel.rows / 2);  // five tiles
    CHECK_FALSE(cv::imread(out + "/" + m["thumbnail"].get<std::string>()).empty());
  }
  CHECK(listed == wrong);
  int64_t total = 0;
  for (const auto& c : s["confusions"]) total += c["count"].get<int64_t>();
  CHECK(total == static_cast<int64_t>(wrong.size()));
  // the report links only to files that exist (or to anchors in itself), and to every panel
  size_t panels = 0;
  for (const auto& link : html_links(out + "/index.html")) {
    if (link.rfind("#", 0) == 0) continue;
    INFO(link);
    CHECK(link.find("://") == std::string::npos);  // offline: relative links only
    CHECK(fs::exists(out + "/" + link));
    panels += link.rfind("panels/", 0) == 0;
  }
  CHECK(panels == wrong.size());
}

TEST_CASE("diagnose on class folders; bad labels and unknown folders", "[cli][diagnose]") {
  const std::string dir = tmpdir("diagnose_folders");
  const std::string out = dir + "/out";
  fs::create_directories(dir + "/set/three");
  fs::create_directories(dir + "/set/seven");
  fs::copy_file(demo("test/0013_three.png"), dir + "/set/three/a.png");
  fs::copy_file(demo("test/0022_three.png"), dir + "/set/three/b.png");
  fs::copy_file(demo("test/0022_three.png"), dir + "/set/seven/c.png");  // a three filed as seven: a known mistake
  Run r = run(cli() + " diagnose --model " + demo("digits.pt") + " --images " + dir + "/set --labels " +
              demo("labels.txt") + " --resize 0 --crop 0 --quiet --out " + out);
  INFO(r.out);
  REQUIRE(r.code == 0);
  std::ifstream in(out + "/summary.json");
  const json s = json::parse(in);
  CHECK(s["images"] == 3);
  REQUIRE(s["mistakes"].size() == 1);
  CHECK(s["mistakes"][0]["image"] == dir + "/set/seven/c.png");
  CHECK(s["mistakes"][0]["true_label"] == "seven");
  CHECK(s["mistakes"][0]["predicted_label"] == "three");

  std::ofstream(dir + "/nine.txt") << "zero\none\ntwo\nthree\nfour\nfive\nsix\nseven\neight\n";
  r = run(cli() + " diagnose --model " + demo("digits.pt") + " --images " + dir + "/set --labels " + dir +
          "/nine.txt --resize 0 --crop 0 --quiet --out " + out);
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("has 9 names but the model has 10 classes"));
  fs::create_directories(dir + "/set/eleven");
  fs::copy_file(demo("test/0013_three.png"), dir + "/set/eleven/d.png");
  r = run(cli() + " diagnose --model " + demo("digits.pt") + " --images " + dir + "/set --labels " +
          demo("labels.txt") + " --resize 0 --crop 0 --quiet --out " + out);
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("class folder 'eleven'") && Contains("zero, one"));
  r = run(cli() + " diagnose --model " + demo("digits.pt") + " --images " + demo("images") + " --quiet --out " + out);
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("no class folders"));
}

TEST_CASE("compare: two copies of one model agree exactly", "[cli][compare]") {
  const std::string out = tmpdir("compare");
  Run r = run(cli() + " compare --model " + demo("digits.pt") + " --model " + demo("digits.pt") + " --image " +
              demo("test/0013_three.png") + " " + demo("test/0002_five.png") + " " + demo("test/0000_zero.png") +
              " --resize 0 --crop 0 --quiet --out " + out);
  INFO(r.out);
  REQUIRE(r.code == 0);
  std::ifstream in(out + "/compare.json");
  const json c = json::parse(in);
  REQUIRE(c["compared"] == 3);
  for (const auto& row : c["images"]) {
    CHECK(row["spearman"].get<double>() == Approx(1.0));
    CHECK(row["box_iou"].get<double>() == Approx(1.0));
    CHECK_FALSE(cv::imread(out + "/" + row["panel"].get<std::string>()).empty());
  }
  // two layers of one model do not agree exactly
  r = run(cli() + " compare --model " + demo("digits.pt") + " --model " + demo("digits.pt") + " --layer-b block2 --image " +
          demo("test/0013_three.png") + " --resize 0 --crop 0 --quiet --out " + out);
  REQUIRE(r.code == 0);
  std::ifstream in2(out + "/compare.json");
  CHECK(json::parse(in2)["images"][0]["spearman"].get<double>() < 0.999);
  r = run(cli() + " compare --model " + demo("digits.pt") + " --image " + demo("test/0013_three.png") + " --out " + out);
  CHECK(r.code != 0);
  CHECK_THAT(r.out, Contains("exactly two models"));
}

TEST_CASE("concepts: the factorisation, class scores and maps of the library, one panel per image", "[cli][methods]") {
  const std::string out = tmpdir("concepts");
  const std::vector<std::string> images = {demo("test/0013_three.png"), demo("test/0002_five.png"), demo("test/0000_zero.png")};
  Run r = run(cli() + " concepts --model " + demo("digits.pt") + " --image " + images[0] + " " + images[1] + " " +
              images[2] + " --resize 0 --crop 0 --components 3 --iterations 20 --top 2 --quiet --out " + out);
  INFO(r.out);
  REQUIRE(r.code == 0);
  std::ifstream in(out + "/concepts.json");
  const json c = json::parse(in);
  REQUIRE(c["concepts"].size() == 3);
  REQUIRE(c["images"].size() == 3);
  // the library on the same inputs: block3's activations of the three images, factorised
  auto module = gradcam::load_model(demo("digits.pt"));
  std::vector<at::Tensor> xs;
  for (const auto& p : images) xs.push_back(gradcam::to_tensor(gradcam::load_image(p), gradcam::Preprocess().resize(0).crop(0)));
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("block3").methods({gradcam::Method::eigencam}).keep_activations(true));
  const auto f = gradcam::factorize(cam.compute(at::cat(xs)).maps[0].activations,
                                    gradcam::FactorizationOptions().components(3).iterations(20));
  CHECK(c["residual"].get<double>() == Approx(f.residual).epsilon(1e-6));
  const at::Tensor scores = gradcam::concept_scores(f, module.attr("fc").toModule().attr("weight").toTensor(),
                                                    module.attr("fc").toModule().attr("bias").toTensor());
  for (int64_t k = 0; k < 3; ++k) {
    const json& top = c["concepts"][static_cast<size_t>(k)]["top_classes"];
    REQUIRE(top.size() == 2);
    const int64_t best = scores[k].argmax().item<int64_t>();
    CHECK(top[0]["class"].get<int64_t>() == best);
    CHECK(top[0]["score"].get<double>() == Approx(scores[k][best].item<double>()).epsilon(1e-5));
  }
  for (size_t i = 0; i < 3; ++i) {
    const json& im = c["images"][i];
    CHECK_FALSE(cv::imread(out + "/" + im["panel"].get<std::string>()).empty());
    const at::Tensor maps = read_npy(out + "/" + im["maps"].get<std::string>());
    CHECK(test::rel_err(maps, f.maps[static_cast<int64_t>(i)]) < 1e-6);
  }
  r = run(cli() + " concepts --model " + demo("digits.pt") + " --image " + images[0] + " --linear head --out " + out);
  CHECK(r.code != 0);
  CHECK_THAT(r.out, Contains("--linear 'head' names no linear layer with a weight [classes, "));
}

TEST_CASE("explain --task detection: a record and a map per box, equal to the library's", "[cli][detection]") {
  // Faster R-CNN: minutes under the sanitizers, whose quick mode runs the YOLO-style case below
  if (test::quick()) return;
  const std::string ops = env("GRADCAM_TORCHVISION_OPS");
  const std::string frcnn = test::fixture("det_frcnn.pt");
  const std::string img = demo("test/0002_five.png");
  // without torchvision's operators: the operator and the flag named
  Run r = run(cli() + " explain --task detection --model " + frcnn + " --image " + img + " --out " + tmpdir("det_noops"));
  CHECK(r.code != 0);
  CHECK_THAT(r.out, Contains("calls the operator torchvision::nms, which no loaded library defines: load its library "
                             "first (gradcam --ops-library PATH, or gradcam::load_operators(PATH)); for torchvision, "
                             "libtorchvision.so or the _C.so of its Python package"));
  const std::string dir = tmpdir("detection");
  // with this process's thread count: a float32 detector's maps change by 7e-6 of their max from 1 to 2
  // threads (the reductions' order), more than a classifier's
  r = run(cli() + " explain --task detection --model " + frcnn + " --ops-library " + ops + " --image " + img +
          " --score-threshold 0 --max-boxes 3 --quiet --method gradcam eigencam --threads " +
          std::to_string(at::get_num_threads()) + " --out " + dir);
  INFO(r.out);
  REQUIRE(r.code == 0);
  // the library on the same image, as the command preprocesses it for detection (as it is, [0, 1])
  gradcam::load_operators(ops);
  auto module = gradcam::load_model(frcnn);
  const at::Tensor x = gradcam::to_tensor(gradcam::load_image(img),
                                          gradcam::Preprocess().resize(0).crop(0).mean({0, 0, 0}).std({1, 1, 1}));
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("backbone.body.16").methods({gradcam::Method::gradcam,
                                                                                    gradcam::Method::eigencam}));
  const auto options = gradcam::detection::DetectionOptions().score_threshold(0).max_boxes(3);
  const auto res = cam.compute(x, gradcam::detection::boxes(options));
  const auto found = gradcam::detection::detect(*res.output, options).front();
  REQUIRE(found.size() == 3);
  std::ifstream records(dir + "/records.jsonl");
  int count = 0;
  for (std::string line; std::getline(records, line); ++count) {
    const json rec = json::parse(line);
    const auto j = rec["box_index"].get<size_t>();
    REQUIRE(j < found.size());
    CHECK(rec["layer"] == "backbone.body.16");  // auto: the backbone's last stage
    CHECK(rec["class"] == found[j].label);
    CHECK(std::abs(rec["detection_score"].get<double>() - found[j].score) < 1e-6);
    CHECK(rec["box_input"][2].get<double>() == Approx(found[j].x1).epsilon(1e-6));
    for (const char* f : {"overlay", "map", "boxes"}) CHECK(fs::exists(rec["files"][f].get<std::string>()));
    const auto m = gradcam::method_from_name(rec["method"]);
    const at::Tensor want = res.get("backbone.body.16", static_cast<int64_t>(j), 0, m).map[0][0];
    CHECK(test::rel_err(read_npy(rec["files"]["map"]), want) < 1e-6);
  }
  CHECK(count == 6);  // 3 boxes x 2 methods
  // no box above the threshold: a record saying so, and the run succeeds
  const std::string none = tmpdir("detection_none");
  r = run(cli() + " explain --task detection --model " + frcnn + " --ops-library " + ops + " --image " + img +
          " --score-threshold 0.99 --quiet --out " + none);
  CHECK(r.code == 0);
  std::ifstream none_records(none + "/records.jsonl");
  std::string line;
  REQUIRE(std::getline(none_records, line));
  CHECK(json::parse(line)["boxes"] == 0);
  CHECK_THAT(json::parse(line)["note"].get<std::string>(), Contains("no detection has a score >= 0.99 in any image"));
}

TEST_CASE("explain --task detection on a YOLO-style traced model", "[cli][detection]") {
  // dense layout [N, boxes, 5 + classes], at its own input size (64 x 64, the demo's)
  const std::string img = demo("test/0002_five.png");
  const std::string yolo = tmpdir("detection_yolo");
  Run r = run(cli() + " explain --task detection --layout 'yolo-nxbx(5+c)' --model " + test::fixture("det_yolo_rows.pt") +
          " --image " + img + " --resize 64 --crop 64 --score-threshold 0.1 --max-boxes 2 --layer backbone.5 --quiet "
          "--out " + yolo);
  CHECK(r.code == 0);
  // the library's maps
  auto module = gradcam::load_model(test::fixture("det_yolo_rows.pt"));
  const at::Tensor x = gradcam::to_tensor(gradcam::load_image(img),
                                          gradcam::Preprocess().resize(64).crop(64).mean({0, 0, 0}).std({1, 1, 1}));
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("backbone.5"));
  const auto res = cam.compute(x, gradcam::detection::boxes(gradcam::detection::DetectionOptions()
                                                                .layout(gradcam::detection::Layout::yolo_rows)
                                                                .score_threshold(0.1)
                                                                .max_boxes(2)));
  std::ifstream yolo_records(yolo + "/records.jsonl");
  int count = 0;
  for (std::string line; std::getline(yolo_records, line); ++count) {
    const json rec = json::parse(line);
    CHECK(rec["task"] == "detection");
    const at::Tensor want = res.get("backbone.5", rec["box_index"].get<int64_t>()).map[0][0];
    CHECK(test::rel_err(read_npy(rec["files"]["map"]), want) < 1e-6);
  }
  CHECK(count == 2);
}

TEST_CASE("eval-loc --task detection: the pointing game per box against VOC boxes", "[cli][detection][localize]") {
  // the YOLO-style toy (a 64 x 64 input, as the demo's images)
  const std::string yolo = test::fixture("det_yolo_rows.pt");
  const std::string img = demo("test/0002_five.png");
  // the maps and boxes, from the library
  auto module = gradcam::load_model(yolo);
  const at::Tensor x = gradcam::to_tensor(gradcam::load_image(img),
                                          gradcam::Preprocess().resize(64).crop(64).mean({0, 0, 0}).std({1, 1, 1}));
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions("backbone.5").methods({gradcam::Method::gradcam,
                                                                              gradcam::Method::hirescam}));
  const auto options = gradcam::detection::DetectionOptions()
                           .layout(gradcam::detection::Layout::yolo_rows)
                           .score_threshold(0.1)
                           .max_boxes(3);
  const auto res = cam.compute(x, gradcam::detection::boxes(options));
  const auto found = gradcam::detection::detect(*res.output, options).front();
  REQUIRE(found.size() == 3);
  // each box as the pixels it covers (the image is the input: 64x64, no resize)
  auto pixels = [](const gradcam::detection::Detection& d) {
    auto c = [](double v) { return std::max(0, std::min(63, static_cast<int>(v))); };
    return gradcam::Box{c(std::floor(d.x0)), c(std::floor(d.y0)), c(std::ceil(d.x1) - 1), c(std::ceil(d.y1) - 1)};
  };
  // one true box: the first detection's, of its class (VOC: 1-based)
  const gradcam::Box truth = pixels(found[0]);
  const std::string dir = tmpdir("eval_loc_detection");
  fs::create_directories(dir + "/xml");
  std::ofstream(dir + "/xml/a.xml") << "<annotation><filename>" << fs::path(img).filename().string()
                                   << "</filename><object><name>" << found[0].label << "</name><bndbox><xmin>"
                                   << truth.x0 + 1 << "</xmin><ymin>" << truth.y0 + 1 << "</ymin><xmax>"
                                   << truth.x1 + 1 << "</xmax><ymax>" << truth.y1 + 1 << "</ymax></bndbox></object>"
                                   << "</annotation>\n";
  for (const gradcam::Method method : {gradcam::Method::gradcam, gradcam::Method::hirescam}) {
    const std::string name = gradcam::method_name(method);
    INFO("--method " << name);
    int own = 0, matched = 0, in_truth = 0;
    for (size_t j = 0; j < found.size(); ++j) {
      const at::Tensor up = gradcam::upsample(res.get("backbone.5", static_cast<int64_t>(j), 0, method).map[0][0], {64, 64});
      const int64_t flat = up.argmax().item<int64_t>();
      const int px = static_cast<int>(flat % 64), py = static_cast<int>(flat / 64);
      auto in = [&](const gradcam::Box& b) { return px >= b.x0 && px <= b.x1 && py >= b.y0 && py <= b.y1; };
      own += in(pixels(found[j]));
      if (found[j].label == found[0].label && gradcam::iou(pixels(found[j]), truth) >= 0.5) {
        ++matched;
        in_truth += in(truth);
      }
    }
    Run r = run(cli() + " eval-loc --task detection --layout 'yolo-nxbx(5+c)' --model " + yolo + " --layer backbone.5 "
                "--resize 64 --crop 64 --annotations " + dir + "/xml --images " + fs::path(img).parent_path().string() +
                " --score-threshold 0.1 --max-boxes 3 --tolerance 0 --quiet --threads " +
                std::to_string(at::get_num_threads()) + " --method " + name + " --report " + dir + "/r.json");
    INFO(r.out);
    REQUIRE(r.code == 0);
    const json rep = json::parse(std::ifstream(dir + "/r.json"));
    CHECK(rep["boxes"] == 3);
    CHECK(rep["layer"] == "backbone.5");
    CHECK(rep["method"] == name);
    CHECK(rep["pointing_own_box"].get<double>() == Approx(own / 3.0));
    CHECK(rep["matched"] == matched);
    CHECK(matched >= 1);
    CHECK(rep["pointing_true_box"].get<double>() == Approx(static_cast<double>(in_truth) / matched));
    CHECK(rep["per_class"][std::to_string(found[0].label)]["boxes"].get<int>() >= 1);
  }
  // without --task detection, eval-loc's own two
  Run bad = run(cli() + " eval-loc --model " + yolo + " --annotations " + dir + "/xml --method hirescam --quiet");
  CHECK(bad.code != 0);
  CHECK_THAT(bad.out, Contains("eval-loc takes --method gradcam or counterfactual, not 'hirescam' (other methods with "
                               "--task detection)"));
}

TEST_CASE("bench: times each mode against the forward, and each mode's peak memory in its own process", "[cli][bench]") {
  const std::string m = cli() + " bench --model " + demo("digits.pt") + " --size 64 --repeat 3 --warmup 1 ";
  Run j = run(m + "--methods gradcam++ --json", false);
  REQUIRE(j.code == 0);
  const json r = json::parse(j.out);
  CHECK(r["layer"] == "block3");  // auto resolved, as `layers` marks it
  CHECK(r["batch"] == 1);
  const double f = r["forward_ms"], g = r["gradcam_ms"], gg = r["guided_gradcam_ms"];
  CHECK(f > 0);
  // the printed ratios are the printed times' (3 decimals each)
  CHECK(std::abs(r["ratio"].get<double>() - g / f) < 2e-3 * (1 + g / f));
  CHECK(std::abs(r["guided_ratio"].get<double>() - gg / f) < 2e-3 * (1 + gg / f));
  for (const char* method : {"gradcam++", "all_gradient_methods"}) {
    INFO(method);
    const json& row = r["methods"][method];
    CHECK(std::abs(row["ratio"].get<double>() - row["ms"].get<double>() / row["forward_ms"].get<double>()) < 2e-2);
  }
  REQUIRE(r["memory"]["kind"] == "rss");
  for (const char* mode : {"forward", "gradcam", "guided_gradcam", "gradcam++", "all_gradient_methods"}) {
    INFO(mode);
    const json& mem = r["memory"][mode];
    CHECK(mem["before_mib"].get<double>() > 1);  // LibTorch and the model are resident
    CHECK(mem["peak_mib"].get<double>() >= mem["before_mib"].get<double>());
  }

  // A forward must hold at once the input and the largest layer output (shapes from `layers`,
  // independent of the bench): at batch 64 its peak rises above batch 1's by at least those.
  // Not in quick mode (the sanitizer leg): AddressSanitizer's allocator keeps freed blocks in
  // quarantine and adds its own, so a peak there is not the program's.
  if (!test::quick()) {
    Run b64 = run(m + "--batch 64 --no-guided --json", false);
    REQUIRE(b64.code == 0);
    const json r64 = json::parse(b64.out);
    const double input_mib = 64.0 * 3 * 64 * 64 * 4 / (1 << 20);
    Run l = run(cli() + " layers --model " + demo("digits.pt") + " --size 64 64 --json", false);
    REQUIRE(l.code == 0);
    double largest = 0;
    const json listing = json::parse(l.out);
    for (const json& layer : listing["layers"]) {
      double n = 1;
      for (const json& d : layer["shape"]) n *= d.get<double>();
      largest = std::max(largest, n);
    }
    const double largest_mib = 63.0 * largest * 4 / (1 << 20);  // 63 more samples, float32
    const double rise = r64["memory"]["forward"]["peak_mib"].get<double>() - r["memory"]["forward"]["peak_mib"].get<double>();
    INFO("rise " << rise << " MiB, input " << input_mib << " MiB, largest output " << largest_mib << " MiB");
    CHECK(rise >= input_mib + largest_mib);
  }

  Run t = run(m + "--no-memory --no-guided -q");
  REQUIRE(t.code == 0);
  CHECK_THAT(t.out, Contains("| mode | ms | forward ms | ratio | images/s |") && Contains("| forward | ") &&
                        Contains("| gradcam | ") && !Contains("peak"));

  // --images: plain inference over a folder, every image counted once
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(demo("images"))) files += e.path().extension() == ".png";
  Run p = run(cli() + " bench --model " + demo("digits.pt") + " --images " + demo("images") +
              " --batch 4 --resize 0 --crop 0 --json", false);
  REQUIRE(p.code == 0);
  const json pj = json::parse(p.out);
  CHECK(pj["images"] == files);
  CHECK(pj["unreadable"] == 0);
  CHECK(pj["images_per_s"].get<double>() > 0);
  // explain's last line gives its own rate, the figure scripts/folder_throughput.sh compares
  Run e = run(cli() + " explain --model " + demo("digits.pt") + " --images " + demo("images") +
              " --batch 4 --resize 0 --crop 0 --out " + tmpdir("bench_explain"));
  REQUIRE(e.code == 0);
  CHECK_THAT(e.out, Contains("gradcam: explained " + std::to_string(files) + " image(s) at layer 'block3' in ") &&
                        Contains(" images/s; wrote "));

  for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
           {"--methods gradcan", "--methods: gradcan not in {gradcam,gradcam++"},
           {"--boxes 0", "--boxes: 0 is out of range; give a whole number >= 1"},
           {"--layer block9", "did you mean 'block1', 'block2', 'block3'"},
           {"--boxes 2 --methods eigencam", "--boxes times Grad-CAM only; leave out --methods"}}) {
    INFO(args);
    Run bad = run(m + args);
    CHECK(bad.code != 0);
    CHECK_THAT(bad.out, Contains(message));
  }
}

TEST_CASE("shards: eval-loc as 3 shards plus merge is the whole run's report; explain's shards cover every image once",
          "[cli][shard]") {
  const std::string dir = tmpdir("shards");
  const int images = test::quick() ? 30 : 90;  // of the demo's 300 test images (quick: the sanitizer leg)
  {
    std::ifstream in(demo("test/annotations.csv"));
    std::ofstream out(dir + "/ann.csv");
    std::string line;
    for (int i = 0; i <= images && std::getline(in, line); ++i) out << line << "\n";  // the header, then images
  }
  const std::string eval = cli() + " eval-loc --model " + demo("digits.pt") + " --annotations " + dir +
                           "/ann.csv --images " + demo("test") + " --labels " + demo("labels.txt") +
                           " --resize 0 --crop 0 --sweep --quiet --batch 16";
  REQUIRE(run(eval + " --report " + dir + "/whole.json").code == 0);
  for (int i = 0; i < 3; ++i) {
    REQUIRE(run(eval + " --shard " + std::to_string(i) + "/3 --report " + dir + "/s" + std::to_string(i) + ".json").code == 0);
  }
  Run m = run(cli() + " merge " + dir + "/s2.json " + dir + "/s0.json " + dir + "/s1.json --out " + dir + "/merged.json");
  REQUIRE(m.code == 0);
  CHECK_THAT(m.out, Contains("merged 3 shard(s): " + std::to_string(images) + " images"));
  auto load = [](const std::string& path) {
    std::ifstream in(path);
    return json::parse(in);
  };
  json whole = load(dir + "/whole.json"), merged = load(dir + "/merged.json");
  size_t shard_n = 0;
  for (int i = 0; i < 3; ++i) {
    const json s = load(dir + "/s" + std::to_string(i) + ".json");
    CHECK(s["shard"] == std::to_string(i) + "/3");
    shard_n += s["n"].get<size_t>();
    CHECK(s["n"] == images / 3);
  }
  CHECK(shard_n == static_cast<size_t>(images));
  // the same report, bit for bit, but for the rates (the shards ran one after another here)
  for (const char* rate : {"images_per_s", "network_images_per_s"}) {
    whole.erase(rate);
    merged.erase(rate);
  }
  CHECK(whole.dump() == merged.dump());
  CHECK(whole["sweep"].size() == 19);
  CHECK(whole["counts"]["n"] == images);

  // what merge refuses, by name
  for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
           {dir + "/s0.json " + dir + "/s1.json", "shard 2/3 is missing (given: 2 report(s))"},
           {dir + "/s0.json " + dir + "/s0.json " + dir + "/s1.json", "shard 0/3 is given twice"},
           {dir + "/s0.json " + dir + "/whole.json", "is shard 0/1 but"},
           {demo("labels.txt"), "is not a JSON report"}}) {
    INFO(args);
    Run bad = run(cli() + " merge " + args + " --out " + dir + "/bad.json");
    CHECK(bad.code != 0);
    CHECK_THAT(bad.out, Contains(message));
  }
  Run odd = run(eval + " --shard 3/3 --report " + dir + "/x.json");
  CHECK(odd.code != 0);
  CHECK_THAT(odd.out, Contains("--shard '3/3' is not I/N with 0 <= I < N"));

  // explain: three shards' records name every image of the folder once
  std::multiset<std::string> seen;
  for (int i = 0; i < 3; ++i) {
    const std::string out = dir + "/explain" + std::to_string(i);
    REQUIRE(run(cli() + " explain --model " + demo("digits.pt") + " --images " + demo("images") +
                " --resize 0 --crop 0 --quiet --shard " + std::to_string(i) + "/3 --out " + out).code == 0);
    std::ifstream records(out + "/records.jsonl");
    for (std::string line; std::getline(records, line);) seen.insert(json::parse(line)["image"].get<std::string>());
  }
  std::multiset<std::string> all;
  for (const auto& e : fs::directory_iterator(demo("images"))) all.insert(e.path().string());
  CHECK(seen == all);
}

TEST_CASE("shards: eval-faith and diagnose as 3 shards plus merge are the whole run's report", "[cli][shard]") {
  const std::string dir = tmpdir("shards_faith");
  // eval-faith on 12 of the demo's 300 test images (4 per shard, one batch each: 30 made this case
  // 4 minutes of CI, most of it ROAD's imputations), diagnose on all (5 mistakes); in quick mode
  // (the sanitizer leg, where every image costs seconds) 6 and 60 (1 mistake). Not 3: with one
  // image per shard a forward batch of one sample runs LibTorch's N = 1 kernels, whose float32
  // results differ from a larger batch's by about 1e-6 (measured; see docs/scale.md's limits)
  const int images = test::quick() ? 6 : 12;
  const int diagnosed = test::quick() ? 60 : 300;
  for (const auto& [name, count] : {std::pair<std::string, int>{"ann.csv", images}, {"diag.csv", diagnosed}}) {
    std::ifstream in(demo("test/annotations.csv"));
    std::ofstream out(dir + "/" + name);
    std::string line;
    for (int i = 0; i <= count && std::getline(in, line); ++i) out << line << "\n";
  }
  auto load = [](const std::string& path) {
    std::ifstream in(path);
    return json::parse(in);
  };
  const std::string set = " --model " + demo("digits.pt") + " --images " + demo("test") + " --labels " +
                          demo("labels.txt") + " --resize 0 --crop 0 --quiet";
  const std::string faith = cli() + " eval-faith" + set + " --annotations " + dir +
                            "/ann.csv --method gradcam gradcam++ --steps 10 --batch 4";
  REQUIRE(run(faith + " --report " + dir + "/whole.json").code == 0);
  for (int i = 0; i < 3; ++i) {
    REQUIRE(run(faith + " --shard " + std::to_string(i) + "/3 --report " + dir + "/f" + std::to_string(i) + ".json").code == 0);
  }
  Run m = run(cli() + " merge " + dir + "/f1.json " + dir + "/f2.json " + dir + "/f0.json --out " + dir + "/merged.json");
  INFO(m.out);
  REQUIRE(m.code == 0);
  CHECK_THAT(m.out, Contains("merged 3 shard(s): " + std::to_string(images) + " images, 2 method(s)"));
  json whole = load(dir + "/whole.json"), merged = load(dir + "/merged.json");
  CHECK(load(dir + "/f1.json")["images"] == images / 3);
  whole.erase("seconds");
  merged.erase("seconds");
  // every sum and mean, ROAD included (each image's noise is seeded from its path), bit for bit
  CHECK(whole.dump() == merged.dump());
  CHECK(whole["counts"]["gradcam"]["n"] == images);
  CHECK(whole["methods"]["gradcam++"].contains("road_combined"));
  Run sanity = run(faith + " --sanity 2 --shard 0/3 --report " + dir + "/x.json");
  CHECK(sanity.code != 0);
  CHECK_THAT(sanity.out, Contains("--sanity checks the first images of the whole set; run it without --shard"));
  Run mixed = run(cli() + " merge " + dir + "/f0.json " + dir + "/f1.json " + dir + "/whole.json --out " + dir + "/x.json");
  CHECK(mixed.code != 0);
  CHECK_THAT(mixed.out, Contains("is shard 0/1 but"));

  // diagnose: one summary.json and one index.html
  const std::string diag = cli() + " diagnose" + set + " --annotations " + dir + "/diag.csv";
  REQUIRE(run(diag + " --out " + dir + "/dg").code == 0);
  for (int i = 0; i < 3; ++i) {
    REQUIRE(run(diag + " --shard " + std::to_string(i) + "/3 --out " + dir + "/dg" + std::to_string(i)).code == 0);
  }
  Run dm = run(cli() + " merge " + dir + "/dg2 " + dir + "/dg0/summary.json " + dir + "/dg1 --out " + dir + "/dgm");
  INFO(dm.out);
  REQUIRE(dm.code == 0);
  json dw = load(dir + "/dg/summary.json"), dmj = load(dir + "/dgm/summary.json");
  REQUIRE(dmj["mistakes"].size() == dw["mistakes"].size());
  CHECK(dw["mistakes"].size() >= (test::quick() ? 1u : 3u));
  for (size_t i = 0; i < dw["mistakes"].size(); ++i) {
    // the merged report links the panels in the shards' folders
    const std::string panel = dmj["mistakes"][i]["panel"];
    CHECK(panel.rfind("../dg", 0) == 0);
    CHECK(fs::exists(dir + "/dgm/" + panel));
    for (json* s : {&dw, &dmj}) {
      (*s)["mistakes"][i].erase("panel");
      (*s)["mistakes"][i].erase("thumbnail");
    }
  }
  CHECK(dw.dump() == dmj.dump());
  std::ifstream html(dir + "/dgm/index.html");
  const std::string page((std::istreambuf_iterator<char>(html)), std::istreambuf_iterator<char>());
  CHECK_THAT(page, Contains("../dg"));
}
