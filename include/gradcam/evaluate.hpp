// gradcam/evaluate.hpp: measuring weakly supervised localization: ground-truth annotations
// (CSV, ImageNet / PASCAL VOC XML), class names, and the metrics of the paper's localization
// study (top-1 / top-5 localization, GT-known localization, mean IoU) plus the pointing game.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <gradcam/localize.hpp>

namespace gradcam {

/// Class names from a labels file: one class a line, in index order. A line may be a name
/// ("tench"), or a WordNet id and a name ("n01440764 tench"); both the id and the name map to
/// the index.
class Labels {
 public:
  Labels() = default;
  /// Reads `path`; throws gradcam::Error naming the file for an unreadable or empty file.
  static Labels read(const std::string& path);
  size_t size() const { return names_.size(); }
  /// The display name of class `index` (its index as text when out of range).
  std::string name(int64_t index) const;
  /// The index of a name, WordNet id, or decimal index; nullopt if unknown.
  std::optional<int64_t> index(const std::string& name_or_id) const;

 private:
  std::vector<std::string> names_;
  std::map<std::string, int64_t> lookup_;
};

/// One annotated image: its path and its ground-truth boxes (inclusive pixels of the original
/// image), each with a class label as written in the file.
struct Annotation {
  std::string image;
  struct Object {
    std::string label;
    Box box;
    std::string source;  ///< where it was read: "a.csv:3" (the row's first line), or the XML file
  };
  std::vector<Object> objects;
};

/// Reads a CSV `file,label,x0,y0,x1,y1` (a header line is optional; several rows per file give
/// several boxes) as RFC 4180 defines CSV: quoted fields may hold commas, line breaks and doubled
/// quotes; CRLF or LF ends a row. A UTF-8 byte order mark, blank lines and lines starting with
/// '#' are skipped; unquoted fields are trimmed. Relative image paths are relative to `images_dir` when it is given, else to the
/// CSV's folder; absolute ones stay. Throws gradcam::Error naming the file and line of a malformed
/// row.
std::vector<Annotation> read_csv_annotations(const std::string& path, const std::string& images_dir = "");

/// Reads one ImageNet / PASCAL VOC XML file (<filename>, <object><name>, <bndbox>). VOC
/// coordinates are 1-based and become 0-based inclusive pixels. The image path is
/// `images_dir/<filename>` (with ".JPEG" appended when the filename has no extension, as in
/// ImageNet). Throws gradcam::Error naming the file and line of what is missing or malformed.
Annotation read_voc_annotation(const std::string& xml_path, const std::string& images_dir);

/// Reads a CSV file, or every *.xml file of a folder (sorted by name).
std::vector<Annotation> read_annotations(const std::string& file_or_dir, const std::string& images_dir);

/// What localization produced for one image (all boxes in original-image pixels).
struct LocSample {
  int64_t true_class = -1;
  std::vector<Box> truth;                ///< ground-truth boxes of the true class
  std::vector<int64_t> predicted;        ///< top-k predicted classes, best first (k <= 5)
  std::vector<std::optional<Box>> boxes; ///< box from each predicted class's map
  std::optional<Box> known_box;          ///< box from the true class's map (GT-known)
  std::optional<std::pair<int, int>> peak;  ///< (x, y) of the true class map's maximum
};

/// Localization metrics over a set, as fractions in [0,1] (accuracies; errors are 1 - these).
struct LocMetrics {
  int64_t n = 0;
  double top1_cls = 0;      ///< top-1 class correct
  double top1_loc = 0;      ///< top-1 class correct and its box has IoU >= iou_threshold
  double top5_loc = 0;      ///< one of the top-5 classes is right, with its own box IoU >= 0.5
  double gt_known_loc = 0;  ///< box from the true class's map has IoU >= 0.5
  double mean_iou = 0;      ///< mean best IoU of the true class's box (0 when no box)
  double pointing_game = 0; ///< the true class map's maximum within a true box (+ tolerance)
};

/// What a LocAccumulator counted, as integers, so that the counts of disjoint parts of a set (the
/// shards of a cluster run) add up to the whole set's exactly, in any order. The IoU sum is kept
/// in units of 2^-40 (kIouUnit): exact and associative where a floating-point sum is neither; the
/// mean it gives is within 1e-12 of a floating-point mean.
struct LocCounts {
  static constexpr double kIouUnit = 1.0 / 1099511627776.0;  ///< 2^-40
  int64_t n = 0, top1_cls = 0, top1_loc = 0, top5_loc = 0, gt_known_loc = 0, pointing_game = 0;
  int64_t iou_sum = 0;  ///< sum of the true class boxes' best IoUs, in units of kIouUnit

  LocCounts& operator+=(const LocCounts& other);
  LocMetrics metrics() const;  ///< the fractions; all 0 when n is 0
};

/// Accumulates LocSamples into LocMetrics.
class LocAccumulator {
 public:
  explicit LocAccumulator(double iou_threshold = 0.5, int pointing_tolerance = 15)
      : iou_threshold_(iou_threshold), tolerance_(pointing_tolerance) {}
  void add(const LocSample& s);
  LocMetrics metrics() const { return counts_.metrics(); }
  const LocCounts& counts() const { return counts_; }

 private:
  double iou_threshold_;
  int tolerance_;
  LocCounts counts_;
};

/// The pointing game's hit (Zhang et al., ECCV 2016): whether `peak` (x, y), a map's maximum, lies
/// in one of `truth` grown by `tolerance` pixels on every side (all in the same pixels).
bool pointing_hit(std::pair<int, int> peak, const std::vector<Box>& truth, int tolerance);

/// The largest IoU of `box` with any of `truth` (0 when `box` is empty or `truth` is).
double best_iou(const std::optional<Box>& box, const std::vector<Box>& truth);

}  // namespace gradcam
