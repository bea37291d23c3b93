// src/cli/common.hpp: what the `gradcam` subcommands share: common flags, preprocessing, the
// progress bar, image listing, output files and the interrupt guard. Included by every subcommand.
#pragma once

#include <ATen/ATen.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <ctime>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include <c10/util/Exception.h>
#include <torch/version.h>

#include <gradcam/gradcam.hpp>

#include "malloc_policy.hpp"  // command_perturbation_batch

namespace gradcam_cli {

namespace fs = std::filesystem;

/// Checks a whole-number option in [lo, hi] on its text, before CLI11 converts it, so that every
/// error names the option (CLI11 prefixes "--batch: "), the value and the valid range in words:
/// "'abc' is not a whole number", "0 is out of range", and a value too large for any integer is
/// refused instead of saturating.
inline CLI::Validator whole_number(long long lo, long long hi = std::numeric_limits<int>::max()) {
  const std::string range = hi == std::numeric_limits<int>::max() || hi == std::numeric_limits<long long>::max()
                                ? "a whole number >= " + std::to_string(lo)
                                : "a whole number from " + std::to_string(lo) + " to " + std::to_string(hi);
  return CLI::Validator(
      [lo, hi, range](std::string& text) -> std::string {
        errno = 0;
        char* end = nullptr;
        const long long v = std::strtoll(text.c_str(), &end, 10);
        if (text.empty() || end == text.c_str() || *end != '\0') return "'" + text + "' is not a whole number; give " + range;
        if (errno == ERANGE || v < lo || v > hi) return text + " is out of range; give " + range;
        return "";
      },
      range);
}

/// A real-number option in [lo, hi] (lo excluded when `lo_open`), with messages as whole_number's.
inline CLI::Validator real_number(double lo, double hi, bool lo_open = false) {
  auto str = [](double v) { std::ostringstream o; o << v; return o.str(); };
  const std::string range = hi == std::numeric_limits<double>::max()
                                ? std::string(lo_open ? "a number > " : "a number >= ") + str(lo)
                                : "a number from " + str(lo) + (lo_open ? " (excluded)" : "") + " to " + str(hi);
  return CLI::Validator(
      [lo, hi, lo_open, range](std::string& text) -> std::string {
        errno = 0;
        char* end = nullptr;
        const double v = std::strtod(text.c_str(), &end);
        if (text.empty() || end == text.c_str() || *end != '\0' || v != v) return "'" + text + "' is not a number; give " + range;
        if (errno == ERANGE || v < lo || v > hi || (lo_open && v == lo)) return text + " is out of range; give " + range;
        return "";
      },
      range);
}

struct Common {
  std::string model;
  std::string layer = "auto";
  std::string device = "cpu";
  int batch = 8;
  int resize = 256;
  int crop = 224;
  std::vector<double> mean = {0.485, 0.456, 0.406};
  std::vector<double> std = {0.229, 0.224, 0.225};
  std::string labels;
  int threads = 0;
  bool quiet = false;
  int64_t max_pixels = gradcam::kMaxImagePixels;
  std::string tokens = "auto";     ///< how the layer's output is read as a grid (--tokens)
  int extra_tokens = -1;           ///< --extra-tokens; -1: cls+grid 1, grid 0, auto inferred
  std::vector<int> token_grid;     ///< --token-grid H W; empty: inferred
  int attention_heads = 0;         ///< --attention-heads (rollout of a traced model); 0: the model's
  std::vector<std::string> ops_libraries;  ///< --ops-library: loaded before the model (torchvision's operators)
  std::string shard;  ///< --shard I/N (shard.hpp), on the subcommands that take it; empty: all images
  bool eigen_smooth = false;  ///< --eigen-smooth, on the subcommands that take it (add_cam_smoothing)
  bool aug_smooth = false;    ///< --aug-smooth (add_cam_smoothing)
  std::vector<double> aug_scales;  ///< --aug-scales (add_cam_smoothing)
  int64_t samples = 0;        ///< --samples (add_cam_smoothing): noise draws or steps (0: the methods' defaults)
  double noise_std = -1;      ///< --noise-std (add_cam_smoothing); -1 (the flag refuses negatives): the methods' defaults
};

/// The flags every subcommand shares (--model unless `with_model` is false, --layer, --device,
/// preprocessing, --tokens...), into `c` (common.cpp).
void add_common(CLI::App* app, Common& c, bool with_model = true);

/// The library's options for the command's layers: the grid layout from --tokens, and "auto"
/// resolved at the input the command gives the model: the crop, else the resized square, else
/// (--resize 0 --crop 0) `own_hw`, an image's own height and width when the caller knows one.
gradcam::GradCAMOptions cam_options(const Common& c, std::vector<std::string> layers,
                                    const std::vector<int64_t>& own_hw = {});

/// --eigen-smooth, --aug-smooth, --samples and --noise-std: the CAM methods' smoothing options, on
/// the subcommands that explain with them.
void add_cam_smoothing(CLI::App* app, Common& c);

/// A layer's grid layout for a JSON record: {"kind": "tokens", "extra_tokens": 1, "grid": [4, 4]}.
inline nlohmann::json layout_json(const gradcam::TokenLayout& t) {
  nlohmann::json j = {{"kind", gradcam::layout_name(t.kind)}};
  if (t.kind == gradcam::TokenLayout::Kind::tokens) j["extra_tokens"] = t.extra;
  if (t.grid_h > 0) j["grid"] = {t.grid_h, t.grid_w};
  return j;
}

inline gradcam::Preprocess preprocess_of(const Common& c) {
  return gradcam::Preprocess().resize(c.resize).crop(c.crop).mean(c.mean).std(c.std);
}

/// True while a progress bar line is on stderr without its newline.
inline bool& progress_line_open() {
  static bool open = false;
  return open;
}

/// What every "gradcam: ..." message on stderr starts with: a newline only when a progress bar
/// line is open, so that the message does not run into the bar (and no blank line otherwise).
inline std::ostream& say() {
  if (progress_line_open()) std::cerr << "\n";
  progress_line_open() = false;
  return std::cerr << "gradcam: ";
}

/// A progress bar with ETA on stderr, only when stderr is a terminal.
class Progress {
 public:
  Progress(size_t total, bool enabled) : total_(total), enabled_(enabled && total > 1 && isatty(2)) {
    start_ = std::chrono::steady_clock::now();
  }
  void update(size_t done) {
    if (!enabled_) return;
    const double elapsed = seconds();
    const double eta = done > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(total_ - done) : 0;
    const int width = 30;
    const int fill = static_cast<int>(width * done / std::max<size_t>(total_, 1));
    std::fprintf(stderr, "\r[%s%s] %zu/%zu images  %.1f images/s  ETA %.0fs ",
                 std::string(static_cast<size_t>(fill), '#').c_str(),
                 std::string(static_cast<size_t>(width - fill), ' ').c_str(), done, total_,
                 elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0, eta);
    if (done == total_) std::fprintf(stderr, "\n");
    std::fflush(stderr);
    progress_line_open() = done != total_;
  }
  /// Seconds since the run's first image was started.
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  /// "in 12.3 s, 24.4 images/s": `images` over the time since the start.
  std::string rate_str(size_t images) const {
    const double s = seconds();
    char buf[96];
    std::snprintf(buf, sizeof buf, "in %.1f s, %.1f images/s", s, s > 0 ? static_cast<double>(images) / s : 0.0);
    return buf;
  }

 private:
  size_t total_;
  bool enabled_;
  std::chrono::steady_clock::time_point start_;
};

/// The class an annotated object names: a name in the labels file, or a class index. A label
/// that is neither is the annotation file's error, named with its file and line.
inline int64_t class_of(const gradcam::Labels& labels, const gradcam::Annotation::Object& object,
                        const std::string& labels_path) {
  const auto c = labels.index(object.label);
  GRADCAM_CHECK(c.has_value(), object.source, ": label '", object.label, "' is ",
                labels_path.empty() ? "not a class index (give --labels FILE to use class names)"
                                    : "neither a class index nor a name in the labels file '" + labels_path + "'");
  return *c;
}

/// LibTorch's warnings (TORCH_WARN, and gradcam's own through it) reach Debian's LibTorch's glog,
/// which prints "WARNING: Logging before InitGoogleLogging() is written to STDERR" and a source
/// location first. The command prints them as its own lines instead. (The handler is per thread in
/// LibTorch: this covers the main thread, where models load and explainers are built.)
class CommandWarnings : public c10::WarningHandler {
 public:
#if TORCH_VERSION_MAJOR >= 2
  void process(const c10::Warning& warning) override { print(warning.msg()); }
#else
  void process(const c10::SourceLocation&, const std::string& msg, const bool) override { print(msg); }
#endif
  static void install() {
    static CommandWarnings handler;
#if TORCH_VERSION_MAJOR >= 2
    c10::WarningUtils::set_warning_handler(&handler);
#else
    c10::Warning::set_warning_handler(&handler);
#endif
  }

 private:
  static void print(std::string msg) {
    if (msg.rfind("gradcam: ", 0) == 0) msg.erase(0, 9);
    say() << "warning: " << msg << "\n";
  }
};

/// A library message turned into advice a command-line user can follow: the library's errors name
/// its API (Target::score, probe_shape), which the command does not expose.
inline std::string for_the_command(std::string message) {
  static const std::pair<const char*, const char*> advice[] = {
      {"; use Target::score to choose what to explain",
       "; the gradcam command explains class scores: export a model whose forward returns them as a "
       "tensor [N, classes] (or a dict with an 'out' tensor); other outputs need the library's Target::score"},
      {" (use Target::score for other outputs)",
       " (the gradcam command explains class scores: export a model whose forward returns them as a tensor "
       "[N, classes]; other outputs need the library's Target::score)"},
      {"; name a layer (see `gradcam layers`) or set probe_shape",
       "; name a layer with --layer (list them with gradcam layers --model MODEL --size H W)"},
      {"(max_pixels; 0: no limit)", "(--max-pixels; 0: no limit)"},
      {" (GradCAMOptions::token_layout)", " (--tokens, --extra-tokens, --token-grid)"},
      {" (or state the layout: GradCAMOptions::token_layout)", " (or state the layout: --tokens)"},
      {"; token_layout says ", "; --tokens says "},
      {", or give attention_heads", ", or give --attention-heads"},
      {"attention_heads is ", "--attention-heads is "},
      {"guided gradients are not averaged that way: compute them without aug_smooth",
       "guided gradients are not averaged that way: give the guided methods without --aug-smooth"},
      {"aug_smooth explains class targets (top-k or classes): a Target::score or Target::ranked function may read "
       "places in the image (boxes, masks), which the flipped copies move",
       "--aug-smooth explains class scores: a detector's boxes do not flip with the image"},
      {"aug_smooth averages", "--aug-smooth averages"},
      {"aug_scales adds input sizes to aug_smooth; set aug_smooth too", "--aug-scales adds input sizes to --aug-smooth; "
       "give --aug-smooth too"},
      {"aug_smooth at scale ", "--aug-smooth at scale "},
  };
  for (const auto& [library, command] : advice) {
    const auto at = message.find(library);
    if (at != std::string::npos) message.replace(at, std::strlen(library), command);
  }
  return message;
}

/// A one-pixel map cannot show where the evidence is. A pooled layer ("pool", [N,C,1,1]) or a
/// layer too deep for a small image gives one, and the run would write uniform overlays and no
/// boxes: refuse it, and name, deepest first, the first layer of each grid size at this input.
inline void check_map_has_extent(const torch::jit::Module& module, const gradcam::GradCAMResult& r,
                                 const at::Tensor& x) {
  for (const auto& lm : r.maps) {
    if (!lm.map.defined() || lm.map.size(2) * lm.map.size(3) > 1) continue;
    const auto listing = gradcam::list_layers(module, x.narrow(0, 0, 1));
    std::vector<std::string> grids;
    std::set<std::pair<int64_t, int64_t>> seen;
    for (const auto& l : listing.layers) {
      if (!l.is_tensor || l.shape.size() != 4 || l.shape[2] * l.shape[3] <= 1) continue;
      if (seen.insert({l.shape[2], l.shape[3]}).second)
        grids.insert(grids.begin(), l.name + " (" + std::to_string(l.shape[2]) + "x" + std::to_string(l.shape[3]) + ")");
    }
    std::string names;
    for (const auto& g : grids) names += (names.empty() ? "" : ", ") + g;
    gradcam::fail("layer '" + lm.layer + "' gives a 1x1 map for this " + std::to_string(x.size(2)) + "x" +
                  std::to_string(x.size(3)) + " input: a map without spatial extent cannot show where " +
                  "the evidence is; " +
                  (names.empty() ? "no layer of this model has a grid at this input size: give larger images"
                                 : "layers with a grid here: " + names + " (all of them: gradcam layers)"));
  }
}

/// The CAM methods of the library, by command-line name.
inline std::vector<std::string> cam_method_names() {
  std::vector<std::string> out;
  for (auto m : gradcam::all_methods()) out.emplace_back(gradcam::method_name(m));
  return out;
}

inline bool is_cam_method(const std::string& name) {
  const auto names = cam_method_names();
  return std::find(names.begin(), names.end(), name) != names.end();
}

/// Why image `n` of `r` explains nothing, or "" when it can be explained: a model output that is
/// NaN or infinite (its "top class" is then arbitrary and its maps NaN), or a map that is.
inline std::string nonfinite_reason(const gradcam::GradCAMResult& r, int64_t n) {
  if (r.logits.defined() && !at::isfinite(r.logits[n]).all().item<bool>())
    return "the model's output for it is NaN or infinite, so there is nothing to explain";
  for (const auto& lm : r.maps)
    if (lm.map.defined() && !at::isfinite(lm.map[n]).all().item<bool>())
      return "its map at layer '" + lm.layer + "' is NaN or infinite";
  return "";
}

/// The image files (by extension) directly in `dir`, sorted; empty if none or not a folder.
inline std::vector<std::string> list_images_or_empty(const std::string& dir) {
  static const std::set<std::string> exts = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"};
  std::error_code ec;
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    // an entry whose type cannot be read (a link loop) stays in the list: loading it then names
    // it and says why, and the run counts it with the unreadable images and goes on
    std::error_code type_ec;
    if (!e.is_regular_file(type_ec) && !type_ec) continue;
    std::string ext = e.path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return std::tolower(ch); });
    if (exts.count(ext)) out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

inline std::vector<std::string> list_images(const std::string& dir) {
  std::error_code ec;
  GRADCAM_CHECK(fs::is_directory(dir, ec), "--images '", dir, "' is not a directory");
  auto out = list_images_or_empty(dir);
  GRADCAM_CHECK(!out.empty(), "--images '", dir, "' contains no image files (.png, .jpg, ...)");
  return out;
}

/// Writes `text` to `path` through a temporary file and a rename, so that an interrupted run never
/// leaves a half-written report; throws gradcam::Error naming the path. The temporary file gets a
/// unique name in the target's folder and is created exclusively (mkstemp: O_CREAT | O_EXCL), so a
/// link planted at a predictable name is never followed; the rename replaces `path` itself, never
/// what a link at `path` points to.
inline void write_atomically(const std::string& path, const std::string& text) {
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::string name = (dir / ("." + target.filename().string() + ".XXXXXX")).string();
  const int fd = ::mkstemp(name.data());
  GRADCAM_CHECK(fd >= 0, "cannot write '", path, "': ", std::strerror(errno));
  const mode_t mask = ::umask(0);  // mkstemp makes 0600; a report gets what open() would give it
  ::umask(mask);
  bool ok = ::fchmod(fd, 0666 & ~mask) == 0;
  for (size_t done = 0; ok && done < text.size();) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) done += static_cast<size_t>(n);
  }
  const int err = errno;
  ok = (::close(fd) == 0) && ok;
  if (!ok || ::rename(name.c_str(), path.c_str()) != 0) {
    const int e = ok ? errno : err;
    ::unlink(name.c_str());
    gradcam::fail(gradcam::detail::concat("cannot write '", path, "': ", std::strerror(e)));
  }
}

/// Set by SIGINT while an InterruptGuard is alive: the subcommands stop after the current batch,
/// keep what they have written, and exit 130.
inline std::atomic<bool> g_interrupted{false};
extern "C" inline void on_sigint(int) { g_interrupted = true; }

class InterruptGuard {
 public:
  InterruptGuard() {
    g_interrupted = false;
    previous_ = std::signal(SIGINT, on_sigint);
  }
  ~InterruptGuard() { std::signal(SIGINT, previous_); }
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

 private:
  void (*previous_)(int) = SIG_DFL;
};

/// An exclusive lock on DIR/.gradcam.lock for the life of a run that writes into DIR, so that two
/// runs never interleave their files and records: the second one is refused, naming the first's
/// process. A POSIX record lock (fcntl), which the kernel releases when the process ends, however
/// it ends, and whose holder F_GETLK reports (a pid written into the file could be stale).
class OutputLock {
 public:
  explicit OutputLock(const std::string& dir) {
    const std::string path = (fs::path(dir) / ".gradcam.lock").string();
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
    GRADCAM_CHECK(fd_ >= 0, "cannot create the lock file '", path, "': ", std::strerror(errno));
    struct flock lk {};
    lk.l_type = F_WRLCK;
    lk.l_whence = SEEK_SET;
    if (::fcntl(fd_, F_SETLK, &lk) != 0) {
      struct flock holder = lk;
      const bool known = ::fcntl(fd_, F_GETLK, &holder) == 0 && holder.l_type != F_UNLCK;
      ::close(fd_);
      gradcam::fail(gradcam::detail::concat("output folder '", dir, "' is in use by another gradcam run",
                                            known ? " (process " + std::to_string(holder.l_pid) + ")" : "",
                                            "; wait for it to finish, or choose another --out"));
    }
  }
  ~OutputLock() { ::close(fd_); }
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;

 private:
  int fd_ = -1;
};

/// A run's id for its records: UTC start time and process id, e.g. "20261202T070102Z-4711".
inline std::string make_run_id() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y%m%dT%H%M%SZ", &utc);
  return std::string(buf) + "-" + std::to_string(::getpid());
}

}  // namespace gradcam_cli
