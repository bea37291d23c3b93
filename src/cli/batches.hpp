// src/cli/batches.hpp: what the subcommands that run a list of images share (batches.cpp): the
// image-batch reader, which decodes the next batch on another thread while the network runs, and
// the check of a labels file against the model.
#pragma once

#include <ATen/ATen.h>
#include <opencv2/core.hpp>

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gradcam/gradcam.hpp>

#include "common.hpp"

namespace gradcam_cli {

/// One image read and preprocessed; `index` is its place in the run's list.
struct LoadedImage {
  size_t index = 0;
  std::string path;
  cv::Mat image;               ///< as decoded (BGR), for overlays and panels
  gradcam::Geometry geometry;  ///< how `input` maps back onto `image`
  at::Tensor input;            ///< [1,3,H,W]
};

/// An image that could not be read or preprocessed, and the library's message saying why.
struct Unreadable {
  size_t index = 0;
  std::string path;
  std::string why;
};

/// The next images of a run, in list order: up to --batch consecutive readable images whose
/// inputs have one shape (one network pass takes one shape), and the unreadable ones met on the way.
struct ImageBatch {
  std::vector<LoadedImage> images;
  std::vector<Unreadable> unreadable;

  /// The inputs as one tensor [N,3,H,W] on `device`; N >= 1 (callers skip a batch of no images).
  at::Tensor inputs(const c10::Device& device) const;

  /// Says "gradcam: <lead><path>: <why>" for each unreadable image; returns how many there were.
  size_t say_unreadable(const std::string& lead) const;
};

/// One long-lived thread that runs the tasks given to it one at a time, in order. The command's
/// reader and writer use it rather than std::async, which starts a thread per task: each new
/// thread that runs a LibTorch op builds its own OpenMP team, and on the demo model a thread per
/// batch halved explain's images/s (docs/performance.md, "Folder throughput"). The destructor runs
/// what is queued, then joins.
class Worker {
 public:
  Worker() : thread_([this] { loop(); }) {}
  ~Worker() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  /// Queues `f`; its result (or exception) comes through the future.
  template <class F>
  auto submit(F f) -> std::future<decltype(f())> {
    auto task = std::make_shared<std::packaged_task<decltype(f())()>>(std::move(f));
    auto result = task->get_future();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      tasks_.push_back([task] { (*task)(); });
    }
    wake_.notify_one();
    return result;
  }

 private:
  void loop() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
        if (tasks_.empty()) return;  // stopping, and nothing left
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  bool stop_ = false;
  std::thread thread_;  // last: starts once the rest is made
};

/// Reads a run's images batch by batch (Common's --batch, preprocessing and --max-pixels). While
/// the caller runs the network on one batch, the next is decoded on another thread. An image
/// whose input shape differs from the batch's starts the next batch. Not copyable; the destructor
/// waits for a read in flight.
class ImageBatches {
 public:
  ImageBatches(std::vector<std::string> paths, const Common& common);
  ~ImageBatches();
  ImageBatches(const ImageBatches&) = delete;
  ImageBatches& operator=(const ImageBatches&) = delete;

  /// The next batch into `batch`; false when every image has been handed out.
  bool next(ImageBatch& batch);

 private:
  ImageBatch read();  // on the reader thread: the only place cursor_ and held_ change

  std::vector<std::string> paths_;
  gradcam::Preprocess preprocess_;
  size_t batch_;
  int64_t max_pixels_;
  size_t cursor_ = 0;                 // the next path to read
  std::optional<LoadedImage> held_;   // read, but of another shape than the last batch
  std::future<ImageBatch> pending_;
  Worker reader_;  // last: destroyed first, after the read in flight
};

/// Runs `each` on every batch of `paths` that has readable images, in order, until the end or
/// Ctrl-C (g_interrupted). Says each unreadable image ("gradcam: <lead><path>: <why>") and adds it
/// to `unreadable` and `done`; shows `done` on the progress bar after each batch. `each` adds the
/// images it handles to `done` itself.
void for_each_batch(const std::vector<std::string>& paths, const Common& common, const std::string& lead,
                    size_t& unreadable, size_t& done, Progress& progress,
                    const std::function<void(const ImageBatch&)>& each);

/// Refuses a labels file (`labels` read from `path`; empty: none given) whose number of names is
/// not the model's number of classes.
void check_label_count(const gradcam::Labels& labels, const std::string& path, int64_t classes);

}  // namespace gradcam_cli
