// The gradcam command against a hostile or careless user (issue "Reliability, round 2"): each case
// failed on the code before its fix. docs/reliability.md has the table of cases and their tests.
#include "catch.hpp"

#include <nlohmann/json.hpp>

#include <fstream>
#include <iterator>
#include <sstream>
#include <vector>

#include "cli_support.hpp"

using test::cli;
using test::Contains;
using test::demo;
using test::Run;
using test::run;
using test::run_interrupted;
using test::tmpdir;
using json = nlohmann::json;

namespace {
std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
const std::string kDemoFlags = " --resize 0 --crop 0 --quiet";
}  // namespace

TEST_CASE("eval-loc with a bare annotations file name and --images finds every image", "[cli][reliability]") {
  const std::string dir = tmpdir("bare_csv");
  fs::copy_file(demo("test/annotations.csv"), dir + "/a.csv");
  // "a.csv", not "./a.csv": the CSV's folder is the empty path
  Run r = run("cd " + dir + " && " + cli() + " eval-loc --model " + demo("digits.pt") +
              " --annotations a.csv --images " + demo("test") + " --labels " + demo("labels.txt") + kDemoFlags +
              " --report r.json");
  INFO(r.out);
  CHECK(r.code == 0);
  CHECK_THAT(r.out, !Contains("is a directory"));
  const json rep = json::parse(slurp(dir + "/r.json"));
  CHECK(rep["n"] == 300);
}

TEST_CASE("reports never write through a link at a temporary name", "[cli][reliability]") {
  const std::string dir = tmpdir("report_link");
  std::ofstream(dir + "/victim.txt") << "keep me";
  // the names the old code used, and a guess at the new pattern's prefix
  fs::create_symlink(dir + "/victim.txt", dir + "/rep.json.tmp");
  fs::create_symlink(dir + "/victim.txt", dir + "/.rep.json.XXXXXX");
  Run r = run(cli() + " eval-loc --model " + demo("digits.pt") + " --annotations " + demo("test/annotations.csv") +
              " --labels " + demo("labels.txt") + kDemoFlags + " --report " + dir + "/rep.json");
  INFO(r.out);
  CHECK(r.code == 0);
  CHECK(slurp(dir + "/victim.txt") == "keep me");
  CHECK(json::parse(slurp(dir + "/rep.json"))["n"] == 300);
  CHECK(fs::is_regular_file(fs::symlink_status(dir + "/rep.json")));
  // a report path that is itself a link is replaced, not written through
  fs::create_symlink(dir + "/victim.txt", dir + "/linked.json");
  r = run(cli() + " eval-loc --model " + demo("digits.pt") + " --annotations " + demo("test/annotations.csv") +
          " --labels " + demo("labels.txt") + kDemoFlags + " --report " + dir + "/linked.json");
  CHECK(r.code == 0);
  CHECK(slurp(dir + "/victim.txt") == "keep me");
  // no temporary file is left behind
  int left = 0;
  for (const auto& e : fs::directory_iterator(dir)) left += e.path().filename().string().rfind(".rep.json.", 0) == 0 &&
                                                           e.path().filename() != ".rep.json.XXXXXX";
  CHECK(left == 0);
}

namespace {
std::vector<json> read_jsonl(const std::string& path) {
  std::vector<json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) out.push_back(json::parse(line));
  return out;
}
std::string explain_cmd(const std::string& out, const std::string& extra) {
  return cli() + " explain --model " + demo("digits.pt") + kDemoFlags + " --threads 1 --out " + out + " " + extra;
}
}  // namespace

TEST_CASE("explain interrupted with Ctrl-C keeps the record of every image it finished", "[cli][reliability]") {
  const std::string out = tmpdir("explain_int") + "/o";
  Run r = run_interrupted(explain_cmd(out, "--images " + demo("test") + " --method gradcam scorecam --batch 1 --json"),
                          test::written(out + "/records.jsonl"), false);
  std::vector<json> printed;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) printed.push_back(json::parse(line));
  const auto stored = read_jsonl(out + "/records.jsonl");
  if (r.code != 130) WARN("explain finished 300 images before the interrupt; it was not exercised");
  CHECK((r.code == 130 || r.code == 0));
  REQUIRE(!printed.empty());
  CHECK(stored.size() == printed.size());
  for (const auto& rec : stored)
    for (const auto& [kind, path] : rec["files"].items()) CHECK(fs::exists(path.get<std::string>()));
}

TEST_CASE("two runs into one --out: records are appended with a run id; concurrent runs are refused",
          "[cli][reliability]") {
  const std::string out = tmpdir("explain_twice") + "/o";
  REQUIRE(run(explain_cmd(out, "--image " + demo("images/0000_zero.png") + " --quiet")).code == 0);
  REQUIRE(run(explain_cmd(out, "--image " + demo("images/0001_zero.png") + " --method gradcam guided")).code == 0);
  const auto recs = read_jsonl(out + "/records.jsonl");
  REQUIRE(recs.size() == 3);
  CHECK(recs[0]["run"] != recs[1]["run"]);
  CHECK(recs[1]["run"] == recs[2]["run"]);
  for (const auto& rec : recs)
    for (const auto& [kind, path] : rec["files"].items()) CHECK(fs::exists(path.get<std::string>()));
  // another process holds the folder's lock, as a running gradcam would (POSIX lock, Python's
  // lockf), until the gradcam started once it holds the lock has ended (then its next print meets
  // a closed pipe): however long that gradcam takes to load, the lock is held when it looks
  Run r = run("/usr/bin/python3 -c \"import fcntl, signal, time; signal.signal(signal.SIGPIPE, signal.SIG_DFL); "
              "f = open('" + out + "/.gradcam.lock', 'a'); fcntl.lockf(f, fcntl.LOCK_EX); "
              "[(print(flush=True), time.sleep(0.1)) for _ in range(1200)]\" | "
              "(read line; " + explain_cmd(out, "--image " + demo("images/0000_zero.png")) + ")");
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("gradcam: error: output folder '" + out + "' is in use by another gradcam run (process ") &&
                        Contains("); wait for it to finish, or choose another --out"));
  CHECK(read_jsonl(out + "/records.jsonl").size() == 3);
  // a run that explains nothing leaves no records file
  const std::string empty = tmpdir("explain_none") + "/o";
  fs::create_directories(empty);
  { std::ofstream(empty + "/../bad.png") << "not an image"; }
  CHECK(run(explain_cmd(empty, "--image " + empty + "/../bad.png")).code == 1);
  CHECK_FALSE(fs::exists(empty + "/records.jsonl"));
}

TEST_CASE("integer and number options: each error names the option, the value and the range in words",
          "[cli][reliability]") {
  const std::string base = cli() + " explain --model " + demo("digits.pt") + " --image " + demo("images/0000_zero.png") +
                           " --out " + tmpdir("bad_numbers") + " ";
  struct Bad {
    std::string args, message;
  };
  const std::vector<Bad> bad = {
      {"--batch 0", "--batch: 0 is out of range; give a whole number >= 1"},
      {"--class -1", "--class: -1 is out of range; give a whole number >= 0"},
      {"--class abc", "--class: 'abc' is not a whole number; give a whole number >= 0"},
      {"--class 99999999999999999999", "--class: 99999999999999999999 is out of range; give a whole number >= 0"},
      {"--topk 0", "--topk: 0 is out of range; give a whole number >= 1"},
      {"--threads 0", "--threads: 0 is out of range; give a whole number >= 1"},
      {"--resize -5", "--resize: -5 is out of range; give a whole number >= 0"},
      {"--batch 2.5", "--batch: '2.5' is not a whole number; give a whole number >= 1"},
      {"--std 0 1 1", "--std: 0 is out of range; give a number > 0"},
      {"--alpha 2", "--alpha: 2 is out of range; give a number from 0 to 1"},
      {"--alpha x", "--alpha: 'x' is not a number; give a number from 0 to 1"},
  };
  for (const auto& b : bad) {
    INFO(b.args);
    Run r = run(base + b.args);
    CHECK(r.code != 0);
    CHECK_THAT(r.out, Contains(b.message));
    CHECK_THAT(r.out, !Contains("1797693"));
  }
}

TEST_CASE("--threads above the machine's cores is capped with a warning", "[cli][reliability]") {
  Run r = run(cli() + " explain --model " + demo("digits.pt") + kDemoFlags + " --image " +
              demo("images/0000_zero.png") + " --threads 1000 --out " + tmpdir("threads"));
  INFO(r.out);
  CHECK(r.code == 0);
  CHECK_THAT(r.out, Contains("gradcam: warning: --threads 1000 is more than this machine's ") && Contains(" cores; using "));
}

TEST_CASE("messages start on their own line without a blank line; layers follows --crop and --resize",
          "[cli][reliability]") {
  Run r = run(cli() + " layers --quiet --model " + demo("labels.txt"));
  CHECK(r.code == 1);
  CHECK(r.out.rfind("gradcam: error: ", 0) == 0);
  r = run(cli() + " layers --model " + demo("digits.pt") + " --resize 0 --crop 64");
  CHECK(r.code == 0);
  CHECK_THAT(r.out, Contains("[1, 64, 16, 16]") && Contains("input 1x?x64x64"));
  r = run(cli() + " layers --model " + demo("digits.pt") + " --resize 0 --crop 0");
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("gradcam: error: with --resize 0 --crop 0 the input is each image's own size; give it "
                             "with --size H W"));
}

TEST_CASE("a link loop among the images is skipped and named; alone it says what is wrong", "[cli][reliability]") {
  const std::string dir = tmpdir("link_loop");
  fs::copy_file(demo("images/0000_zero.png"), dir + "/a.png");
  fs::create_symlink("loop.png", dir + "/loop.png");  // points at itself
  fs::copy_file(demo("images/0001_zero.png"), dir + "/z.png");
  const std::string out = dir + "/out";
  Run r = run(explain_cmd(out, "--images " + dir));
  INFO(r.out);
  CHECK(r.code == 1);  // one image could not be read
  CHECK_THAT(r.out, Contains("gradcam: skipping " + dir + "/loop.png: image '" + dir +
                             "/loop.png' cannot be opened: Too many levels of symbolic links"));
  CHECK(read_jsonl(out + "/records.jsonl").size() == 2);  // a.png and z.png, before and after it
  r = run(explain_cmd(out, "--image " + dir + "/loop.png"));
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("image '" + dir + "/loop.png' cannot be opened: Too many levels of symbolic links"));
  fs::create_symlink("gone.png", dir + "/dangling.png");
  r = run(explain_cmd(out, "--image " + dir + "/dangling.png"));
  CHECK_THAT(r.out, Contains("image '" + dir + "/dangling.png' is a link to a missing file"));
}

TEST_CASE("an image the network cannot take is skipped and named; later images are explained", "[cli][reliability]") {
  const std::string dir = tmpdir("tiny_image");
  fs::copy_file(demo("images/0000_zero.png"), dir + "/a.png");
  REQUIRE(run("/usr/bin/python3 -c \"import zlib, struct; "
              "c = lambda t, d: struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d)); "
              "open('" + dir + "/tiny.png', 'wb').write(b'\\\\x89PNG\\\\r\\\\n\\\\x1a\\\\n' + "
              "c(b'IHDR', struct.pack('>IIBBBBB', 1, 1, 8, 0, 0, 0, 0)) + c(b'IDAT', zlib.compress(b'\\\\x00\\\\x80')) + "
              "c(b'IEND', b''))\"").code == 0);
  fs::copy_file(demo("images/0001_zero.png"), dir + "/z.png");
  const std::string out = dir + "/out";
  Run r = run(explain_cmd(out, "--images " + dir));
  INFO(r.out);
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("gradcam: skipping " + dir + "/tiny.png: "));
  CHECK_THAT(r.out, Contains("gradcam: 1 image(s) could not be read or explained"));
  CHECK(read_jsonl(out + "/records.jsonl").size() == 2);
  // a setting that fails every image is the run's error, said once
  r = run(explain_cmd(out, "--image " + dir + "/a.png --class 10"));
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("gradcam: error: class index 10 is out of range"));
}

TEST_CASE("an image whose model output is NaN is named, recorded with an error, and counted", "[cli][reliability]") {
  const std::string dir = tmpdir("nan_output");
  fs::create_directories(dir + "/images");
  {
    std::ofstream py(dir + "/make.py");
    py << "import struct, sys, zlib\nimport torch\n"
          "class M(torch.nn.Module):\n"
          "    def __init__(self):\n"
          "        super().__init__()\n"
          "        torch.manual_seed(0)\n"
          "        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)\n"
          "        self.fc = torch.nn.Linear(4, 3)\n"
          "    def forward(self, x):\n"
          "        y = self.fc(torch.relu(self.conv(x)).mean((2, 3)))\n"
          "        return y + torch.log(-x.mean((1, 2, 3))).unsqueeze(1)  # NaN when the input is bright\n"
          "torch.jit.script(M().eval()).save(sys.argv[1] + '/nan_bright.pt')\n"
          "c = lambda t, d: struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))\n"
          "white = zlib.compress(b''.join(b'\\x00' + b'\\xff' * 16 for _ in range(16)))\n"
          "open(sys.argv[1] + '/images/b_white.png', 'wb').write(b'\\x89PNG\\r\\n\\x1a\\n' + "
          "c(b'IHDR', struct.pack('>IIBBBBB', 16, 16, 8, 0, 0, 0, 0)) + c(b'IDAT', white) + c(b'IEND', b''))\n";
  }
  REQUIRE(run("/usr/bin/python3 " + dir + "/make.py " + dir).code == 0);
  fs::copy_file(demo("images/0000_zero.png"), dir + "/images/a_digit.png");
  const std::string cmd = cli() + " explain --model " + dir + "/nan_bright.pt --layer conv" + kDemoFlags +
                          " --threads 1 --batch 2 --out " + dir + "/out ";
  Run r = run(cmd + "--images " + dir + "/images");
  INFO(r.out);
  CHECK(r.code == 1);
  const std::string why = "the model's output for it is NaN or infinite, so there is nothing to explain";
  CHECK_THAT(r.out, Contains("gradcam: skipping " + dir + "/images/b_white.png: " + why));
  CHECK_THAT(r.out, Contains("gradcam: 1 image(s) could not be read or explained"));
  const auto records = read_jsonl(dir + "/out/records.jsonl");
  REQUIRE(records.size() == 2);
  CHECK(records[0]["image"] == dir + "/images/a_digit.png");
  CHECK(records[0].contains("files"));
  CHECK(records[1]["image"] == dir + "/images/b_white.png");
  CHECK(records[1]["error"] == why);
  CHECK(!records[1].contains("files"));
  // the NaN image alone: nothing explained, exit 1
  r = run(cmd + "--image " + dir + "/images/b_white.png");
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("gradcam: skipping " + dir + "/images/b_white.png: " + why));
}

TEST_CASE("a layer whose map is 1x1 is refused, naming the layers that have a grid", "[cli][reliability]") {
  const std::string out = tmpdir("one_pixel") + "/o";
  const Run r = run(explain_cmd(out, "--image " + demo("images/0000_zero.png") + " --layer pool"));
  INFO(r.out);
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("gradcam: error: layer 'pool' gives a 1x1 map for this 64x64 input: a map "
                             "without spatial extent cannot show where the evidence is; layers with a grid "
                             "here: block3 (16x16), block2 (32x32), block1 (64x64) (all of them: gradcam layers)"));
  CHECK(!fs::exists(out + "/records.jsonl"));
}

namespace {
/// Models a command-line user may bring (made by torch here): a dict output without 'out', and
/// a model without convolutions.
std::string odd_models() {
  const std::string dir = tmpdir("odd_models");
  std::ofstream py(dir + "/make.py");
  py << "import sys\nimport torch\n"
        "class Dict(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)\n"
        "        self.fc = torch.nn.Linear(4, 3)\n"
        "    def forward(self, x):\n"
        "        return {'logits': self.fc(torch.relu(self.conv(x)).mean((2, 3)))}\n"
        "class Mlp(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(3, 10)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.mean((2, 3)))\n"
        "torch.manual_seed(0)\n"
        "torch.jit.script(Dict().eval()).save(sys.argv[1] + '/dict_out.pt')\n"
        "torch.jit.script(Mlp().eval()).save(sys.argv[1] + '/mlp.pt')\n";
  py.close();
  REQUIRE(run("/usr/bin/python3 " + dir + "/make.py " + dir).code == 0);
  return dir;
}
}  // namespace

TEST_CASE("command errors give command-line advice, not the library's API", "[cli][reliability]") {
  const std::string dir = odd_models();
  const std::string image = " --image " + demo("images/0000_zero.png") + kDemoFlags + " --out " + dir + "/o";
  Run r = run(cli() + " explain --model " + dir + "/dict_out.pt --layer conv" + image);
  INFO(r.out);
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("the model returns a dict without an 'out' tensor (keys: 'logits'); the gradcam "
                             "command explains class scores: export a model whose forward returns them as a "
                             "tensor [N, classes] (or a dict with an 'out' tensor); other outputs need the "
                             "library's Target::score"));
  CHECK_THAT(r.out, !Contains("use Target::score to choose"));
  r = run(cli() + " explain --model " + dir + "/mlp.pt" + image);
  INFO(r.out);
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("; name a layer with --layer (list them with gradcam layers --model MODEL --size H W)"));
  CHECK_THAT(r.out, !Contains("probe_shape"));
}

TEST_CASE("training mode: a frozen model is not warned about; one saved in training mode is, without glog's preamble",
          "[cli][reliability]") {
  const std::string fixtures = test::env("GRADCAM_FIXTURES");
  const std::string image = " --image " + demo("images/0000_zero.png") + " --quiet --threads 1 --out " +
                            tmpdir("training_mode") + "/o";
  Run r = run(cli() + " explain --model " + fixtures + "/resnet18_frozen.pt --resize 64 --crop 64" + image);
  INFO(r.out);
  CHECK(r.code == 0);
  CHECK_THAT(r.out, !Contains("training mode"));
  CHECK_THAT(r.out, !Contains("InitGoogleLogging"));
  const std::string trained = fixtures + "/toy_training_script.pt";
  r = run(cli() + " explain --model " + trained + " --layer block --resize 0 --crop 0" + image);
  INFO(r.out);
  CHECK(r.code == 0);
  CHECK_THAT(r.out, Contains("gradcam: warning: '" + trained + "' was saved in training mode; it is explained "
                             "in eval mode (batch norm uses running statistics, dropout is off)\n"));
  CHECK_THAT(r.out, !Contains("InitGoogleLogging"));
}

TEST_CASE("a label that names no class is the annotation file's error, with its line", "[cli][reliability]") {
  const std::string dir = tmpdir("bad_label");
  std::ofstream(dir + "/a.csv") << "file,label,x0,y0,x1,y1\n0000_zero.png,zero,33,4,53,27\n"
                                   "0001_zero.png,eleven,23,31,49,54\n";
  const std::string cmd = cli() + " eval-loc --model " + demo("digits.pt") + " --annotations " + dir +
                          "/a.csv --images " + demo("test") + kDemoFlags + " --report " + dir + "/r.json";
  Run r = run(cmd + " --labels " + demo("labels.txt"));
  INFO(r.out);
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("gradcam: error: " + dir + "/a.csv:3: label 'eleven' is neither a class index nor a "
                             "name in the labels file '" + demo("labels.txt") + "'"));
  CHECK_THAT(r.out, !Contains("unreadable"));
  r = run(cmd);
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("gradcam: error: " + dir + "/a.csv:2: label 'zero' is not a class index (give "
                             "--labels FILE to use class names)"));
  CHECK(!fs::exists(dir + "/r.json"));
}

TEST_CASE("--max-pixels: an image whose header declares too many pixels is skipped before decoding",
          "[cli][reliability]") {
  const std::string dir = tmpdir("max_pixels");
  fs::create_directories(dir + "/images");
  fs::copy_file(demo("images/0000_zero.png"), dir + "/images/a.png");
  {  // 20000 x 20000 declared in 33 bytes
    std::ofstream out(dir + "/images/bomb.png", std::ios::binary);
    out << std::string("\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0\x4e\x20\0\0\x4e\x20\x08\x02\0\0\0\0\0\0\0", 33);
  }
  Run r = run(explain_cmd(dir + "/out", "--images " + dir + "/images"));
  INFO(r.out);
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("gradcam: skipping " + dir + "/images/bomb.png: image '" + dir +
                             "/images/bomb.png' is 20000 x 20000 pixels, more than the limit of 50000000 "
                             "pixels (--max-pixels; 0: no limit); it was not decoded"));
  CHECK(read_jsonl(dir + "/out/records.jsonl").size() == 1);
  // the demo image is 64 x 64
  r = run(explain_cmd(dir + "/out2", "--image " + dir + "/images/a.png --max-pixels 4095"));
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("is 64 x 64 pixels, more than the limit of 4095 pixels (--max-pixels; 0: no limit)"));
  CHECK(run(explain_cmd(dir + "/out3", "--image " + dir + "/images/a.png --max-pixels 4096")).code == 0);
}
