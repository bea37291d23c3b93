// src/cli/bench_core.cpp: the benchmark behind `gradcam bench` and bench/gradcam_bench.
//
// Times, in one run and interleaved (so that drift in the machine's speed affects every mode
// alike), the plain forward pass of the user's module under torch::NoGradGuard, as an application
// runs it, against full explainer calls: GradCAM::compute (forward, partial backward to the layer,
// map), Guided Grad-CAM, and one row per CAM method, each with its own interleaved forward. Score-
// and Ablation-CAM are timed once (one forward pass per channel). With boxes, a torchvision
// detector's forward against Grad-CAM of its K best boxes, per K.
//
// Memory: each mode runs again in a child process of its own (this program, started from
// /proc/self/exe with --memory-child MODE), so that what one mode allocated, or the allocator
// kept, does not count for the next. On the CPU the child resets its peak resident set
// (/proc/self/clear_refs, "5") once the model and input are loaded, and reports the peak (VmHWM)
// over two calls; on CUDA the device memory in use after them (cudaMemGetInfo), which is the
// caching allocator's peak reservation.
#include "bench_core.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/api/include/torch/cuda.h>
#include <torch/csrc/jit/api/module.h>

#include <dlfcn.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>

#include <gradcam/gradcam.hpp>

extern char** environ;

namespace gradcam_bench {

namespace {

using Call = std::function<void()>;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// The methods of K (or S x K) forward passes per sample, timed once.
bool is_perturbation(const std::string& mode) {
  return mode == "scorecam" || mode == "ablationcam" || mode == "sscam" || mode == "iscam";
}

void check(const Options& o) {
  GRADCAM_CHECK(!o.model.empty(), "the benchmark needs a model (--model)");
  GRADCAM_CHECK(o.batch >= 1, "--batch must be at least 1, not ", o.batch);
  GRADCAM_CHECK(o.size >= 1, "--size must be at least 1, not ", o.size);
  GRADCAM_CHECK(o.channels >= 1, "--channels must be at least 1, not ", o.channels);
  GRADCAM_CHECK(o.repeat >= 1, "--repeat must be at least 1, not ", o.repeat);
  GRADCAM_CHECK(o.warmup >= 0, "--warmup must be 0 or more, not ", o.warmup);
  GRADCAM_CHECK(o.perturbation_batch >= 0, "--perturbation-batch must be 0 (the default) or more, not ",
                o.perturbation_batch);
  GRADCAM_CHECK(o.device == "cpu" || o.device == "cuda", "--device must be cpu or cuda, not '", o.device, "'");
  for (int64_t k : o.boxes) GRADCAM_CHECK(k >= 1, "--boxes takes box counts of at least 1, not ", k);
  for (const auto& m : o.methods) (void)gradcam::method_from_name(m);  // names the valid ones
  GRADCAM_CHECK(o.boxes.empty() || o.methods.empty(), "--boxes times Grad-CAM only; leave out --methods");
}

/// The model, its input and a timer, shared by the timing run and the memory child.
struct Bench {
  Options o;
  c10::Device device;
  torch::jit::Module module;
  at::Tensor x;                   ///< [batch, channels, size, size]
  c10::List<at::Tensor> images;   ///< the same batch as a list (torchvision detectors)

  explicit Bench(const Options& options)
      : o(options), device(options.device), module(gradcam::load_model(options.model, device)) {
    const auto opts = at::TensorOptions().device(device);
    // detectors get images in [0, 1]; classifiers standard normal noise, like normalised photos
    x = o.boxes.empty() ? at::randn({o.batch, o.channels, o.size, o.size}, opts)
                        : at::rand({o.batch, o.channels, o.size, o.size}, opts);
    for (const at::Tensor& image : x.unbind(0)) images.push_back(image);
  }

  void sync() const {
    if (device.is_cuda()) torch::cuda::synchronize();
  }
  double time_ms(const Call& f) const {
    sync();
    const auto t0 = std::chrono::steady_clock::now();
    f();
    sync();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
  void forward() {
    c10::NoGradGuard no_grad;
    if (o.boxes.empty()) (void)module.forward({x});
    else (void)module.forward({images});
  }
  gradcam::GradCAMOptions cam_options() const {
    return gradcam::GradCAMOptions(o.layer)
        .probe_shape({1, o.channels, o.size, o.size})
        .perturbation_batch(o.perturbation_batch);
  }
  /// The explainer call of one mode (the forward is forward()).
  Call call_of(const std::string& mode) {
    auto options = cam_options();
    std::shared_ptr<gradcam::GradCAM> cam;
    if (mode == "guided_gradcam") options.guided(gradcam::GuidedMode::guided);
    if (mode == "all_gradient_methods") {
      std::vector<gradcam::Method> gradient;
      for (auto m : gradcam::all_methods())
        if (gradcam::uses_gradients(m)) gradient.push_back(m);
      options.methods(gradient);
    } else if (mode != "gradcam" && mode != "guided_gradcam" && mode.rfind("boxes:", 0) != 0) {
      options.methods({gradcam::method_from_name(mode)});
    }
    cam = std::make_shared<gradcam::GradCAM>(module, options);
    if (mode.rfind("boxes:", 0) == 0) {
      const auto target = gradcam::detection::boxes(
          gradcam::detection::DetectionOptions().score_threshold(0).max_boxes(std::stoll(mode.substr(6))));
      return [cam, target, this] { (void)cam->compute(x, target); };
    }
    return [cam, this] { (void)cam->compute(x); };
  }
};

/// Times the modes' calls interleaved with the forward: round r runs the forward, then each mode
/// once. Returns the forward's median and each mode's.
std::vector<double> interleaved(Bench& b, std::vector<Call>& calls, int repeat, int warmup,
                                std::vector<double>* forward_ms) {
  for (int i = 0; i < warmup; ++i) {
    b.forward();
    for (auto& c : calls) c();
  }
  std::vector<double> tf;
  std::vector<std::vector<double>> tm(calls.size());
  for (int r = 0; r < repeat; ++r) {
    tf.push_back(b.time_ms([&] { b.forward(); }));
    for (size_t i = 0; i < calls.size(); ++i) tm[i].push_back(b.time_ms(calls[i]));
  }
  *forward_ms = tf;
  std::vector<double> medians;
  for (auto& t : tm) medians.push_back(median(t));
  return medians;
}

/// The modes to time, in order: the first group shares one interleaved forward; every later mode
/// (the methods, the box counts) gets its own.
std::vector<std::string> later_modes(const Options& o) {
  std::vector<std::string> modes;
  for (int64_t k : o.boxes) modes.push_back("boxes:" + std::to_string(k));
  for (const auto& m : o.methods) modes.emplace_back(gradcam::method_name(gradcam::method_from_name(m)));
  if (!o.methods.empty()) modes.emplace_back("all_gradient_methods");
  return modes;
}

void time_modes(Bench& b, Report& report, void (*progress)(const Row&)) {
  auto emit = [&](Row row) {
    if (progress) progress(row);
    report.rows.push_back(std::move(row));
  };
  std::vector<std::string> first = {"gradcam"};
  if (b.o.boxes.empty() && b.o.guided) first.emplace_back("guided_gradcam");
  if (!b.o.boxes.empty()) first.clear();
  std::vector<Call> calls;
  for (const auto& m : first) calls.push_back(b.call_of(m));
  std::vector<double> tf;
  const auto ms = interleaved(b, calls, b.o.repeat, b.o.warmup, &tf);
  const double f = median(tf);
  emit({"forward", f, f});
  for (size_t i = 0; i < first.size(); ++i) emit({first[i], ms[i], f});
  for (const auto& mode : later_modes(b.o)) {
    std::vector<Call> one = {b.call_of(mode)};
    const bool once = is_perturbation(mode);  // minutes per call on the CPU
    std::vector<double> mf;
    const auto m = interleaved(b, one, once ? 1 : b.o.repeat, once ? 0 : b.o.warmup, &mf);
    emit({mode, m[0], median(mf)});
  }
}

/// Runs `argv` with its stdout read into `out`; returns its exit status.
int run_child(const std::vector<std::string>& args, std::string* out) {
  int fds[2];
  GRADCAM_CHECK(pipe(fds) == 0, "cannot make a pipe for the memory child");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int err = posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  if (err != 0) {
    close(fds[0]);
    return -1;
  }
  char buf[256];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) out->append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/// Each row's peak memory, from a child process per mode.
void measure_memory(Report& report) {
  const Options& o = report.options;
  for (Row& row : report.rows) {
    std::vector<std::string> args = {"gradcam"};
    args.insert(args.end(), o.relaunch.begin(), o.relaunch.end());
    for (const std::string& a :
         {std::string("--model"), o.model, std::string("--layer"), o.layer, std::string("--device"), o.device,
          std::string("--batch"), std::to_string(o.batch), std::string("--size"), std::to_string(o.size),
          std::string("--channels"), std::to_string(o.channels), std::string("--threads"),
          std::to_string(at::get_num_threads()), std::string("--perturbation-batch"),
          std::to_string(o.perturbation_batch), std::string("--memory-child"), row.mode})
      args.push_back(a);
    if (!o.boxes.empty()) {  // the child reads its box count from the mode; this says it is a detector
      args.push_back("--boxes");
      args.push_back(row.mode.rfind("boxes:", 0) == 0 ? row.mode.substr(6) : "1");
    }
    std::string out;
    const int status = run_child(args, &out);
    double before = -1, peak = -1;
    std::istringstream in(out);
    GRADCAM_CHECK(status == 0 && (in >> before >> peak), "the memory child for mode '", row.mode,
                  "' failed (exit status ", status, "); output: '", out, "'");
    row.before_mib = before / (1024.0 * 1024.0);
    row.peak_mib = peak / (1024.0 * 1024.0);
  }
}

/// The GPU's memory in use (total - free, cudaMemGetInfo of the current device), or -1 without the
/// CUDA runtime. Looked up at run time, so that this file needs no CUDA headers and builds against
/// any LibTorch. LibTorch's caching allocator never returns what it reserved (no empty_cache here),
/// so after the calls this is its peak reservation, plus the CUDA context.
double cuda_bytes_in_use() {
  using MemGetInfo = int (*)(size_t*, size_t*);  // cudaMemGetInfo and cuMemGetInfo_v2 alike
  static const auto get = [] {
    // the runtime's, where LibTorch links it dynamically; else the driver's (a runtime linked
    // statically hides its symbols; the driver library is always shared, and LibTorch's runtime
    // has made the device's primary context current on this thread)
    if (void* f = dlsym(RTLD_DEFAULT, "cudaMemGetInfo")) return reinterpret_cast<MemGetInfo>(f);
    void* driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD);
    return driver ? reinterpret_cast<MemGetInfo>(dlsym(driver, "cuMemGetInfo_v2")) : nullptr;
  }();
  size_t free = 0, total = 0;
  if (get == nullptr || get(&free, &total) != 0) return -1;
  return static_cast<double>(total - free);
}

/// A /proc/self/status field in bytes (VmRSS, VmHWM), or -1.
double status_bytes(const std::string& field) {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind(field + ":", 0) == 0) return std::stod(line.substr(field.size() + 1)) * 1024.0;
  }
  return -1;
}

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;
  }
  return out + "\"";
}

}  // namespace

std::vector<std::string> all_method_names() {
  std::vector<std::string> names;
  for (auto m : gradcam::all_methods())
    if (m != gradcam::Method::rollout) names.emplace_back(gradcam::method_name(m));
  return names;
}

Report run(const Options& options, void (*progress)(const Row& row)) {
  check(options);
  Bench b(options);
  Report report;
  // auto resolved once, so that the rows and the memory children explain the same layer
  b.o.layer = gradcam::GradCAM(b.module, b.cam_options()).layers().front();
  time_modes(b, report, progress);
  report.options = b.o;
  if (!options.memory) return report;
  if (b.device.is_cuda()) {
    if (cuda_bytes_in_use() < 0) {
      report.memory_note = "neither cudaMemGetInfo nor cuMemGetInfo_v2 is loaded in this process";
      return report;
    }
    report.memory_kind = "cuda_in_use";
  } else {
    report.memory_kind = "rss";
  }
  measure_memory(report);
  return report;
}

int memory_child(const Options& options, const std::string& mode) {
  check(options);
  Bench b(options);
  Call call = mode == "forward" ? Call([&b] { b.forward(); }) : b.call_of(mode);
  const int calls = is_perturbation(mode) ? 1 : 2;
  double before = 0, peak = 0;
  if (b.device.is_cuda()) {
    b.sync();
    before = cuda_bytes_in_use();
    GRADCAM_CHECK(before >= 0, "cannot read the GPU's memory: neither cudaMemGetInfo nor cuMemGetInfo_v2 is loaded");
    for (int i = 0; i < calls; ++i) call();
    b.sync();
    peak = cuda_bytes_in_use();  // the caching allocator keeps its peak: it never gives memory back
  } else {
    {
      std::ofstream reset("/proc/self/clear_refs");
      reset << "5";  // resets VmHWM to the current resident set (Linux 4.0 on)
    }
    before = status_bytes("VmRSS");
    for (int i = 0; i < calls; ++i) call();
    peak = status_bytes("VmHWM");
  }
  std::printf("%.0f %.0f\n", before, peak);
  return 0;
}

std::string to_json(const Report& r) {
  const Options& o = r.options;
  std::ostringstream j;
  j << "{\"model\": " << quoted(o.model) << ", \"layer\": " << quoted(o.layer) << ", \"device\": "
    << quoted(o.device) << ", \"batch\": " << o.batch << ", \"size\": " << o.size
    << ", \"threads\": " << at::get_num_threads() << ", \"repeat\": " << o.repeat
    << ", \"malloc\": " << quoted(o.malloc_policy);
  const double f = r.rows.front().ms;
  j << ", \"forward_ms\": " << fmt("%.3f", f);
  std::string methods, boxes, memory;
  for (const Row& row : r.rows) {
    const double ratio = row.ms / row.forward_ms;
    if (row.mode == "gradcam") {
      j << ", \"gradcam_ms\": " << fmt("%.3f", row.ms) << ", \"ratio\": " << fmt("%.3f", ratio)
        << ", \"gradcam_images_per_s\": " << fmt("%.1f", 1000.0 * static_cast<double>(o.batch) / row.ms);
    } else if (row.mode == "guided_gradcam") {
      j << ", \"guided_gradcam_ms\": " << fmt("%.3f", row.ms) << ", \"guided_ratio\": " << fmt("%.3f", ratio);
    } else if (row.mode != "forward") {
      const bool box = row.mode.rfind("boxes:", 0) == 0;
      std::string& list = box ? boxes : methods;
      list += (list.empty() ? "" : ", ") + quoted(box ? row.mode.substr(6) : row.mode) + ": {\"ms\": " +
              fmt("%.3f", row.ms) + ", \"forward_ms\": " + fmt("%.3f", row.forward_ms) + ", \"ratio\": " +
              fmt("%.3f", ratio) + "}";
    }
    if (row.peak_mib >= 0) {
      memory += (memory.empty() ? "" : ", ") + quoted(row.mode) + ": {\"peak_mib\": " + fmt("%.1f", row.peak_mib) +
                ", \"before_mib\": " + fmt("%.1f", row.before_mib) + ", \"working_mib\": " +
                fmt("%.1f", row.peak_mib - row.before_mib) + ", \"peak_ratio\": " +
                fmt("%.3f", row.peak_mib / r.rows.front().peak_mib) + "}";
    }
  }
  if (!methods.empty()) j << ", \"methods\": {" << methods << "}";
  if (!boxes.empty()) j << ", \"boxes\": {" << boxes << "}";
  if (!r.memory_kind.empty()) j << ", \"memory\": {\"kind\": " << quoted(r.memory_kind) << ", " << memory << "}";
  if (!r.memory_note.empty()) j << ", \"memory_note\": " << quoted(r.memory_note);
  j << "}\n";
  return j.str();
}

std::string to_table(const Report& r) {
  const Options& o = r.options;
  std::ostringstream t;
  t << o.model << ", layer " << o.layer << ", " << o.device << ", batch " << o.batch << ", " << o.channels << "x"
    << o.size << "x" << o.size << " noise, " << at::get_num_threads() << " threads, median of " << o.repeat
    << " interleaved calls (Score-/Ablation-CAM: 1), freed memory " << o.malloc_policy << "\n\n";
  const bool mem = !r.memory_kind.empty();
  const std::string mem_name = r.memory_kind == "rss" ? "peak RSS MiB" : "GPU MiB in use";
  t << "| mode | ms | forward ms | ratio | images/s |"
    << (mem ? " " + mem_name + " | peak / forward's | peak - before MiB |" : "")
    << "\n| --- | --- | --- | --- | --- |" << (mem ? " --- | --- | --- |" : "") << "\n";
  for (const Row& row : r.rows) {
    t << "| " << row.mode << " | " << fmt("%.2f", row.ms) << " | " << fmt("%.2f", row.forward_ms) << " | "
      << fmt("%.3f", row.ms / row.forward_ms) << " | " << fmt("%.1f", 1000.0 * static_cast<double>(o.batch) / row.ms)
      << " |";
    if (mem) {
      t << " " << fmt("%.1f", row.peak_mib) << " | " << fmt("%.3f", row.peak_mib / r.rows.front().peak_mib) << " | "
        << fmt("%.1f", row.peak_mib - row.before_mib) << " |";
    }
    t << "\n";
  }
  if (mem) {
    t << "\nMemory: each mode in a child process of its own; "
      << (r.memory_kind == "rss" ? "peak resident set over two calls, the model and input included (before the first call: "
                                  : "GPU memory in use after two calls, which the caching allocator holds at its peak, the CUDA context included (before the first call: ")
      << fmt("%.1f", r.rows.front().before_mib) << " MiB).\n";
  } else if (!r.memory_note.empty()) {
    t << "\nMemory not measured: " << r.memory_note << "\n";
  }
  return t.str();
}

}  // namespace gradcam_bench
