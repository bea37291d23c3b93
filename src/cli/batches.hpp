// src/cli/batches.hpp: what the subcommands that run a list of images share (batches.cpp): the
// image-batch reader, which decodes the next batch on another thread while the network runs, and
// the check of a labels file against the model.
#pragma once

#include <ATen/ATen.h>
#include <opencv2/core.hpp>

#include <cstddef>
#include <functional>
#include <future>
#include <optional>
#include <string>
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
