// src/model.cpp: model loading with clear errors, and the error helpers.
#include <gradcam/model.hpp>

#include <ATen/Context.h>
#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/read_adapter_interface.h>
#include <torch/csrc/jit/runtime/operator.h>
#include <torch/csrc/jit/serialization/import.h>

#include <torch/version.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <regex>
#include <sstream>

#include <gradcam/error.hpp>

#include "archive.hpp"
#include "util.hpp"

namespace gradcam {


namespace {
void check_device(const c10::Device& device) {
  GRADCAM_CHECK(!device.is_cuda() || at::hasCUDA(), "device '", device.str(),
                "' requested but CUDA is not available on this machine or LibTorch build; use "
                "the CPU");
}

const char* kHowToExport =
    "save one from Python with torch.jit.save(torch.jit.script(model), PATH) or "
    "torch.jit.save(torch.jit.trace(model, example), PATH)";
/// The error for a model that `torch::jit::load` refused. `what` names it ("'m.pt'", "the data").
/// The archive as PyTorch's own zip reader reads it.
class ReadAtAdapter final : public caffe2::serialize::ReadAdapterInterface {
 public:
  ReadAtAdapter(std::uint64_t size, const detail::ReadAt& read_at) : size_(size), read_at_(read_at) {}
  size_t size() const override { return static_cast<size_t>(size_); }
  size_t read(uint64_t pos, void* buf, size_t n, const char* /*what*/) const override {
    if (pos >= size_) return 0;
    n = static_cast<size_t>(std::min<std::uint64_t>(n, size_ - pos));
    read_at_(pos, static_cast<char*>(buf), n);
    return n;
  }

 private:
  std::uint64_t size_;
  const detail::ReadAt& read_at_;
};

/// The first operator the model's code calls (`ops.NS.NAME`) that no loaded library defines, as
/// "NS::NAME"; empty when there is none or the archive cannot be read. LibTorch reports such a
/// call as a compile error whose text cannot be read safely (torch_message), so the code records
/// are read here, on the failure path only.
std::string unknown_operator(std::uint64_t size, const detail::ReadAt& read_at) {
  try {
    caffe2::serialize::PyTorchStreamReader reader(std::make_shared<ReadAtAdapter>(size, read_at));
    static const std::regex op_call("(^|[^.A-Za-z0-9_])ops\\.([A-Za-z0-9_]+)\\.([A-Za-z0-9_]+)\\(");
    for (const std::string& name : reader.getAllRecords()) {
      if (name.size() < 3 || name.compare(name.size() - 3, 3, ".py") != 0) continue;
      const auto record = reader.getRecord(name);
      const std::string code(static_cast<const char*>(std::get<0>(record).get()), std::get<1>(record));
      for (auto it = std::sregex_iterator(code.begin(), code.end(), op_call); it != std::sregex_iterator(); ++it) {
        const std::string op = (*it)[2].str() + "::" + (*it)[3].str();
        if (torch::jit::getAllOperatorsFor(c10::Symbol::fromQualString(op)).empty()) return op;
      }
    }
  } catch (const std::exception&) {  // unreadable: LibTorch's own error stands
  }
  return "";
}

/// A file written by a newer torch than this LibTorch reads names both versions: otherwise the
/// user sees only "is not a readable TorchScript model" and re-exports what is already fine.
[[noreturn]] void fail_load(const std::string& what, const std::exception& e, std::uint64_t size,
                            const detail::ReadAt& read_at) {
  const std::string message = detail::torch_message(e);
  // torchvision's detectors call its operators (torchvision::nms, roi_align), which LibTorch
  // knows only once torchvision's operator library is loaded into the process.
  const std::string op = unknown_operator(size, read_at);
  if (!op.empty()) {
    const std::string ns = op.substr(0, op.find(':'));
    fail(detail::concat(what, " calls the operator ", op, ", which no loaded library defines: load its library "
                        "first (gradcam --ops-library PATH, or gradcam::load_operators(PATH))",
                        ns == "torchvision" ? "; for torchvision, libtorchvision.so or the _C.so of its Python package"
                                            : ""));
  }
  static const std::regex too_new(
      "file with version ([0-9]+), but the maximum supported version for reading is ([0-9]+)");
  std::smatch m;
  if (std::regex_search(message, m, too_new)) {
    fail(detail::concat(what, " was saved by a newer PyTorch than this LibTorch ", TORCH_VERSION,
                        " reads: the file's format version is ", m[1].str(), ", and LibTorch ",
                        TORCH_VERSION, " reads versions up to ", m[2].str(),
                        "; link a newer LibTorch, or export the model with torch ",
                        TORCH_VERSION_MAJOR, ".", TORCH_VERSION_MINOR));
  }
  fail(detail::concat(what, " is not a readable TorchScript model (", message, "); ", kHowToExport));
}
/// Loads with the archive check (archive.hpp). The records LibTorch parses are checked before it
/// reads them. The tensor storage, nearly all of the file, is summed on a second thread while
/// LibTorch loads: at zlib's 2.8 GB/s here that is 0.2 s for VGG-16's 553 MB, half as long again
/// as the load itself, and a damaged weight cannot upset the loader, only the predictions.
torch::jit::Module load_checked(const std::string& what, std::uint64_t size,
                                const detail::ReadAt& read_at,
                                const std::function<torch::jit::Module()>& load) {
  detail::verify_archive(size, read_at, what, detail::Records::parsed);
  auto weights = std::async(std::launch::async, [&] {
    detail::verify_archive(size, read_at, what, detail::Records::tensors);
  });
  torch::jit::Module m;
  try {
    m = load();
  } catch (const std::exception& e) {
    weights.get();  // a damaged weight, if any, is the better explanation
    fail_load(what, e, size, read_at);
  }
  weights.get();
  // Everything is explained in eval mode (graph.cpp reads `training` as false); say so once here,
  // for a model saved in training mode, since the eval() below hides it from later checks.
  if (detail::in_training_mode(m)) {
    TORCH_WARN("gradcam: ", what, " was saved in training mode; it is explained in eval mode ",
               "(batch norm uses running statistics, dropout is off)");
  }
  m.eval();
  return m;
}

/// A read-only file descriptor; pread lets both threads of load_checked share it.
class ModelFile {
 public:
  explicit ModelFile(const std::string& path) : path_(path), fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    GRADCAM_CHECK(fd_ >= 0, "model file '", path, "' cannot be opened: ", std::strerror(errno));
    struct stat st {};
    GRADCAM_CHECK(::fstat(fd_, &st) == 0 && st.st_size >= 0, "model file '", path, "' cannot be read");
    size_ = static_cast<std::uint64_t>(st.st_size);
  }
  ~ModelFile() { ::close(fd_); }
  ModelFile(const ModelFile&) = delete;
  ModelFile& operator=(const ModelFile&) = delete;

  std::uint64_t size() const { return size_; }
  void read_at(std::uint64_t at, char* out, std::size_t n) const {
    while (n > 0) {
      const ssize_t got = ::pread(fd_, out, n, static_cast<off_t>(at));
      if (got < 0 && errno == EINTR) continue;
      GRADCAM_CHECK(got > 0, "model file '", path_, "' could not be read at byte ", at,
                    " (did it change while loading?)");
      out += got;
      at += static_cast<std::uint64_t>(got);
      n -= static_cast<std::size_t>(got);
    }
  }

 private:
  std::string path_;
  int fd_;
  std::uint64_t size_ = 0;
};
}  // namespace

torch::jit::Module load_model(const std::string& path, c10::Device device) {
  namespace fs = std::filesystem;
  std::error_code ec;
  GRADCAM_CHECK(fs::exists(path, ec), "model file '", path, "' does not exist");
  GRADCAM_CHECK(fs::is_regular_file(path, ec), "model path '", path, "' is not a regular file");
  check_device(device);
  const ModelFile file(path);
  return load_checked(
      detail::concat("'", path, "'"), file.size(),
      [&](std::uint64_t at, char* out, std::size_t n) { file.read_at(at, out, n); },
      [&] { return torch::jit::load(path, device); });
}

torch::jit::Module load_model_from_bytes(const std::string& bytes, c10::Device device) {
  GRADCAM_CHECK(!bytes.empty(), "the model data is empty");
  check_device(device);
  return load_checked(
      "the data", bytes.size(),
      [&](std::uint64_t at, char* out, std::size_t n) { bytes.copy(out, n, at); },
      [&] {
        std::istringstream in(bytes);
        return torch::jit::load(in, device);
      });
}

}  // namespace gradcam

namespace gradcam {

void load_operators(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  GRADCAM_CHECK(fs::exists(path, ec), "operator library '", path, "' does not exist");
  GRADCAM_CHECK(fs::is_regular_file(path, ec), "operator library '", path, "' is not a regular file");
  // RTLD_GLOBAL: the library's static initialisers register its operators with LibTorch's
  // dispatcher; it stays loaded for the life of the process (operators cannot be unregistered).
  if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    const char* why = dlerror();
    fail(detail::concat("operator library '", path, "' could not be loaded: ", why ? why : "unknown error",
                        " (it must be built for this LibTorch, ", TORCH_VERSION, ")"));
  }
}

}  // namespace gradcam
