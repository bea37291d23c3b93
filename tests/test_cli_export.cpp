// tests/test_cli_export.cpp: `gradcam export` (docs/deploy.md). Specification: the file it writes,
// loaded by plain torch.jit.load in a Python process without gradcam (tests/export_check.py) and
// called under torch.no_grad(), gives the scores, classes and maps `gradcam explain` gives for the
// same image; it refuses torch.inference_mode() by name; the shipped Triton config's names, types
// and shapes are what the file returns for batches of 1 and 4.
#include "catch.hpp"

#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/jit/serialization/import.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include <gradcam/gradcam.hpp>

#include "cli_support.hpp"
#include "support.hpp"

using Catch::Matchers::Equals;
using test::cli;
using test::demo;
using test::env;
using test::run;
using test::tmpdir;

namespace {

struct Case {
  std::string model, layer;
  int size;  ///< --resize and --crop; 0: the image's own size (64 x 64)
  bool upsample;
};

/// `gradcam explain` and `gradcam export` of `c` on one demo image, the export run by
/// export_check.py; returns its store.
torch::jit::Module explain_and_export(const Case& c, const std::string& dir) {
  const std::string image = demo("images/0002_five.png");
  fs::create_directories(dir + "/images");
  fs::copy_file(image, dir + "/images/five.png");
  const std::string prep = " --resize " + std::to_string(c.size) + " --crop " + std::to_string(c.size);
  const std::string common = " --model " + c.model + " --layer " + c.layer + " --topk 2" + prep;
  const auto ex = run(cli() + " explain" + common + " --images " + dir + "/images --out " + dir + "/explain --quiet");
  INFO(ex.out);
  REQUIRE(ex.code == 0);
  const auto exp = run(cli() + " export" + common + (c.size == 0 ? " --size 64 64" : "") +
                       (c.upsample ? " --upsample" : "") + " --out " + dir + "/explainer.pt");
  INFO(exp.out);
  REQUIRE(exp.code == 0);
  // the network input explain made of the image
  const at::Tensor x = gradcam::to_tensor(gradcam::load_image(image), gradcam::Preprocess().resize(c.size).crop(c.size));
  gradcam::save_npy(dir + "/input.npy", x);
  const auto py = run(env("GRADCAM_PYTHON") + " " + env("GRADCAM_SOURCE_DIR") + "/tests/export_check.py " + dir +
                      "/explainer.pt " + dir + "/input.npy " + dir + "/explain " + dir + "/store.pt");
  INFO(py.out);
  REQUIRE(py.code == 0);
  return torch::jit::load(dir + "/store.pt");
}

/// The `key: value` entries and `dims: [ ... ]` of each input and output block of a config.pbtxt,
/// in order: enough of the text format to check ours.
struct Tensor {
  std::string name, type;
  std::vector<int64_t> dims;
};
struct Config {
  int64_t max_batch = 0;
  std::vector<Tensor> inputs, outputs;
  std::string export_command;
  std::map<std::string, std::string> parameters;
};

Config read_config(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  Config c;
  std::vector<Tensor>* list = nullptr;
  std::string line, parameter;
  std::smatch m;
  while (std::getline(in, line)) {
    if (std::regex_search(line, m, std::regex("^# made by: gradcam (.*)$"))) c.export_command = m[1];
    if (!line.empty() && line[0] == '#') continue;
    if (std::regex_search(line, m, std::regex("^max_batch_size: (\\d+)"))) c.max_batch = std::stoll(m[1]);
    if (std::regex_search(line, m, std::regex("^(input|output) \\["))) list = m[1] == "input" ? &c.inputs : &c.outputs;
    if (list && std::regex_search(line, m, std::regex("^\\s*name: \"(.*)\""))) list->push_back({m[1], "", {}});
    if (list && std::regex_search(line, m, std::regex("^\\s*data_type: (\\w+)"))) list->back().type = m[1];
    if (list && std::regex_search(line, m, std::regex("^\\s*dims: \\[(.*)\\]"))) {
      std::istringstream dims(std::regex_replace(std::string(m[1]), std::regex(","), " "));
      for (int64_t d; dims >> d;) list->back().dims.push_back(d);
    }
    if (line == "]") list = nullptr;
    if (std::regex_search(line, m, std::regex("^\\s*key: \"(.*)\""))) parameter = m[1];
    if (std::regex_search(line, m, std::regex("string_value: \"(.*)\""))) c.parameters[parameter] = m[1];
  }
  return c;
}

at::ScalarType dtype_of(const std::string& triton) {
  if (triton == "TYPE_FP32") return at::kFloat;
  if (triton == "TYPE_INT64") return at::kLong;
  FAIL("a data type this test does not know: " << triton);
  return at::kFloat;
}

}  // namespace

TEST_CASE("export: the file, run by Python's torch.jit.load without gradcam, gives explain's maps", "[export]") {
  const std::string fx = test::fixtures();
  std::vector<Case> cases = {{demo("digits.pt"), "block3", 0, true}, {fx + "/resnet18_script.pt", "layer4", 224, false}};
  if (!test::quick()) cases.push_back({fx + "/resnet18_trace.pt", "layer4.1", 160, true});
  for (const Case& c : cases) {
    INFO(c.model << " " << c.layer);
    const std::string dir = tmpdir("export_" + std::to_string(&c - cases.data()));
    const auto store = explain_and_export(c, dir);
    const at::Tensor maps = store.attr("maps").toTensor(), classes = store.attr("classes").toTensor();
    REQUIRE(maps.size(0) == 1);
    REQUIRE(maps.size(1) == 2);
    CHECK(at::equal(classes[0], store.attr("explain_classes").toTensor()));
    for (int64_t k = 0; k < 2; ++k) {
      const at::Tensor want = store.attr((c.upsample ? "explain_up_" : "explain_map_") + std::to_string(k)).toTensor();
      // measured: 0 at the layer's resolution, at most 2.0e-7 of the map's max upsampled
      CHECK(test::rel_err(maps[0][k], want) <= 1e-6);
    }
    CHECK_THAT(store.attr("inference_mode_error").toStringRef(),
               test::Contains("gradcam explainer: no gradient can be taken: the call runs under torch.inference_mode()"));
  }
}

TEST_CASE("export: the shipped Triton config matches what the exported file returns for batches of 1 and 4",
          "[export]") {
  const std::string root = env("GRADCAM_SOURCE_DIR");
  const Config config = read_config(root + "/examples/deploy/triton/digits_explained/config.pbtxt");
  REQUIRE(!config.export_command.empty());
  REQUIRE(config.inputs.size() == 1);
  CHECK(config.parameters.at("INFERENCE_MODE") == "false");
  const std::string dir = tmpdir("export_triton");
  // the config's own command, run from the repository's root, writing into the scratch folder
  const std::string command = std::regex_replace(config.export_command, std::regex("--out \\S+"), "--out " + dir + "/model.pt");
  const auto r = run("cd " + root + " && " + cli() + " " + command);
  INFO(r.out);
  REQUIRE(r.code == 0);
  auto model = torch::jit::load(dir + "/model.pt");
  for (const int64_t batch : {int64_t{1}, int64_t{4}}) {
    REQUIRE(batch <= config.max_batch);
    std::vector<int64_t> shape = {batch};
    for (int64_t d : config.inputs[0].dims) shape.push_back(d);
    REQUIRE(config.inputs[0].name == "INPUT__0");
    c10::NoGradGuard no_grad;  // as Triton's PyTorch backend calls a model without INFERENCE_MODE
    const auto out = model.forward({at::randn(shape, at::TensorOptions().dtype(dtype_of(config.inputs[0].type)))});
    const auto& t = out.toTupleRef().elements();
    REQUIRE(t.size() == config.outputs.size());
    for (size_t i = 0; i < t.size(); ++i) {
      const Tensor& o = config.outputs[i];
      INFO("batch " << batch << " output " << o.name);
      CHECK(o.name == "OUTPUT__" + std::to_string(i));  // the backend's naming: the tuple's position
      std::vector<int64_t> want = {batch};
      want.insert(want.end(), o.dims.begin(), o.dims.end());
      CHECK(t[i].toTensor().sizes() == want);
      CHECK(t[i].toTensor().scalar_type() == dtype_of(o.type));
    }
  }
}

TEST_CASE("export: bad input gets the error that names it", "[export]") {
  const std::string dir = tmpdir("export_errors");
  const std::string model = " --model " + demo("digits.pt") + " --resize 0 --crop 0 --size 64 64";
  auto r = run(cli() + " export" + model + " --method scorecam --out " + dir + "/e.pt");
  CHECK(r.code == 1);
  CHECK_THAT(r.out, test::Contains("gradcam: error: export: method 'scorecam' cannot be exported (it needs more than "
                                   "the layer's gradient); the exportable methods are: gradcam, gradcam++, xgradcam, "
                                   "hirescam, layercam, gradcamelementwise"));
  r = run(cli() + " export" + model + " --method gradcamx --out " + dir + "/e.pt");
  CHECK(r.code == 1);
  CHECK_THAT(r.out, test::Contains("unknown method 'gradcamx'"));
  r = run(cli() + " export" + model + " --layer block9 --out " + dir + "/e.pt");
  CHECK(r.code == 1);
  CHECK_THAT(r.out, test::Contains("block9"));
  r = run(cli() + " export" + model + " --out " + dir + "/missing/e.pt");
  CHECK(r.code == 1);
  CHECK_THAT(r.out, test::Contains("export: cannot write '" + dir + "/missing/e.pt.partial-"));
  r = run(cli() + " export --model " + demo("digits.pt") + " --resize 0 --crop 0 --out " + dir + "/e.pt");
  CHECK(r.code == 1);
  CHECK_THAT(r.out, test::Contains("with --resize 0 --crop 0 give the input size with --size H W"));
  r = run(cli() + " export" + model + " --device cuda --out " + dir + "/e.pt");
  CHECK(r.code == 1);
  CHECK_THAT(r.out, test::Contains("export runs on the CPU, got --device cuda"));
  CHECK(std::distance(fs::directory_iterator(dir), fs::directory_iterator()) == 0);  // nothing written

  // Ctrl-C once the process catches it: exit 130, and either nothing or the whole checked file,
  // never a partial one. The signal is sent once the poll (every 0.1 s) sees the handler; on a busy
  // machine that can be after the run has returned, when the process, a background job of the
  // test's shell, ignores SIGINT again and exits 0 with its summary printed: then the signal came
  // too late to interrupt anything, and the file must still be whole.
  const auto ri = test::run_interrupted(cli() + " export --model " + test::fixtures() + "/resnet18_script.pt --layer "
                                        "layer4 --out " + dir + "/r.pt", test::catches_sigint());
  INFO(ri.out);
  const bool too_late = ri.code == 0 && ri.out.find("exported gradcam of layer 'layer4'") != std::string::npos;
  CHECK((ri.code == 130 || too_late));
  for (const auto& e : fs::directory_iterator(dir)) {
    CHECK(e.path().filename() == "r.pt");
    if (!too_late) CHECK_THAT(ri.out, test::Contains("interrupted after the export had finished"));
    CHECK(torch::jit::load(e.path().string()).run_method("explained").toGenericDict().at("layer").toStringRef() == "layer4");
  }
  if (fs::exists(dir + "/r.pt")) return;
  CHECK_THAT(ri.out, test::Contains("interrupted: nothing written"));
}
