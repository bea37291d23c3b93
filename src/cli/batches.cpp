// src/cli/batches.cpp: the image-batch reader and the labels check (batches.hpp).
#include "batches.hpp"

#include <utility>

namespace gradcam_cli {

at::Tensor ImageBatch::inputs(const c10::Device& device) const {
  std::vector<at::Tensor> xs;
  xs.reserve(images.size());
  for (const auto& im : images) xs.push_back(im.input);
  return at::cat(xs, 0).to(device);
}

size_t ImageBatch::say_unreadable(const std::string& lead) const {
  for (const auto& u : unreadable) say() << lead << u.path << ": " << for_the_command(u.why) << "\n";
  return unreadable.size();
}

ImageBatches::ImageBatches(std::vector<std::string> paths, const Common& common)
    : paths_(std::move(paths)),
      preprocess_(preprocess_of(common)),
      batch_(static_cast<size_t>(std::max(common.batch, 1))),
      max_pixels_(common.max_pixels) {
  pending_ = reader_.submit([this] { return read(); });
}

ImageBatches::~ImageBatches() {
  if (pending_.valid()) pending_.wait();
}

bool ImageBatches::next(ImageBatch& batch) {
  if (!pending_.valid()) return false;
  batch = pending_.get();  // rethrows what the reader could not handle
  if (cursor_ < paths_.size() || held_) pending_ = reader_.submit([this] { return read(); });
  return !batch.images.empty() || !batch.unreadable.empty();
}

ImageBatch ImageBatches::read() {
  ImageBatch b;
  if (held_) {
    b.images.push_back(std::move(*held_));
    held_.reset();
  }
  while (cursor_ < paths_.size() && b.images.size() < batch_) {
    const size_t i = cursor_++;
    try {
      LoadedImage im;
      im.index = i;
      im.path = paths_[i];
      im.image = gradcam::load_image(paths_[i], max_pixels_);
      im.input = gradcam::to_tensor(im.image, preprocess_, &im.geometry);
      if (!b.images.empty() && im.input.sizes() != b.images.front().input.sizes()) {
        held_ = std::move(im);
        break;
      }
      b.images.push_back(std::move(im));
    } catch (const gradcam::Error& e) {
      b.unreadable.push_back({i, paths_[i], e.what()});
    }
  }
  return b;
}

void for_each_batch(const std::vector<std::string>& paths, const Common& common, const std::string& lead,
                    size_t& unreadable, size_t& done, Progress& progress,
                    const std::function<void(const ImageBatch&)>& each) {
  ImageBatches batches(paths, common);
  for (ImageBatch batch; !g_interrupted && batches.next(batch);) {
    const size_t n = batch.say_unreadable(lead);
    unreadable += n;
    done += n;
    if (!batch.images.empty()) each(batch);
    progress.update(done);
  }
}

void check_label_count(const gradcam::Labels& labels, const std::string& path, int64_t classes) {
  GRADCAM_CHECK(labels.size() == 0 || static_cast<int64_t>(labels.size()) == classes, "labels file '", path,
                "' has ", labels.size(), " names but the model has ", classes, " classes");
}

}  // namespace gradcam_cli
