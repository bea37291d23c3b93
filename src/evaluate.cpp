// src/evaluate.cpp: annotation and labels readers, localization metrics.
#include <gradcam/evaluate.hpp>

#include <algorithm>
#include <cmath>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include <gradcam/error.hpp>

namespace gradcam {

namespace fs = std::filesystem;
using detail::concat;

namespace {

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

std::optional<int64_t> parse_int(const std::string& s) {
  const std::string t = trim(s);
  if (t.empty()) return std::nullopt;
  size_t pos = 0;
  try {
    const long long v = std::stoll(t, &pos);
    if (pos != t.size()) {
      // accept "12.0"-style integers written by some tools
      const double d = std::stod(t, &pos);
      // range check before the cast: converting an out-of-range double is undefined behaviour
      if (pos != t.size() || !(std::abs(d) < 9.0e18)) return std::nullopt;
      if (d != static_cast<double>(static_cast<long long>(d))) return std::nullopt;
      return static_cast<int64_t>(d);
    }
    return v;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::string read_file(const std::string& path, const char* what) {
  std::error_code ec;
  GRADCAM_CHECK(fs::is_regular_file(path, ec), what, " '", path, "' does not exist or is not a file");
  std::ifstream in(path, std::ios::binary);
  GRADCAM_CHECK(in.good(), "cannot read ", what, " '", path, "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// CSV records as RFC 4180 reads them: fields split at commas outside double quotes; "" inside a
/// quoted field is one quote; a quoted field may hold commas and line breaks; CRLF or LF ends a
/// record. Also: a UTF-8 byte order mark is skipped, lines starting with '#' and blank lines are
/// skipped, and unquoted fields are trimmed (a space after a comma is not part of a name).
/// libcsv is the one CSV parser Debian packages for C/C++, and it has had no release since 2013,
/// so this is our own, small and fuzzed (fuzz_annotations).
class CsvRecords {
 public:
  CsvRecords(std::string text, std::string path) : s_(std::move(text)), path_(std::move(path)) {
    if (s_.rfind("\xEF\xBB\xBF", 0) == 0) pos_ = 3;
  }

  /// The next record's fields and the line it starts on; false at the end.
  bool next(std::vector<std::string>& fields, int& line) {
    skip_blank_and_comments();
    if (pos_ >= s_.size()) return false;
    fields.clear();
    line = line_;
    std::string cell;
    bool quoted = false, closed = false;
    auto push = [&] {
      fields.push_back(quoted ? cell : trim(cell));
      cell.clear();
      quoted = closed = false;
    };
    while (pos_ < s_.size()) {
      const char c = s_[pos_++];
      if (quoted && !closed) {
        if (c != '"') {
          if (c == '\n') ++line_;
          cell += c;
        } else if (pos_ < s_.size() && s_[pos_] == '"') {
          cell += '"';
          ++pos_;
        } else {
          closed = true;
        }
      } else if (c == ',') {
        push();
      } else if (c == '\n' || (c == '\r' && pos_ < s_.size() && s_[pos_] == '\n')) {
        if (c == '\r') ++pos_;
        ++line_;
        push();
        return true;
      } else if (c == '"') {
        GRADCAM_CHECK(!quoted && trim(cell).empty(), path_, ":", line_, ": a double quote inside a field; ",
                      "quote the whole field and double the quotes in it (\"a \"\"b\"\"\")");
        quoted = true;
        cell.clear();
      } else if (closed) {
        GRADCAM_CHECK(c == ' ' || c == '\t' || c == '\r', path_, ":", line_,
                      ": text after the closing quote of a field");
      } else {
        cell += c;
      }
    }
    GRADCAM_CHECK(!quoted || closed, path_, ":", line, ": a quoted field is never closed");
    push();
    return true;
  }

 private:
  void skip_blank_and_comments() {
    while (pos_ < s_.size()) {
      size_t end = s_.find('\n', pos_);
      if (end == std::string::npos) end = s_.size();
      const std::string t = trim(s_.substr(pos_, end - pos_));
      if (!t.empty() && t[0] != '#') return;
      pos_ = end + 1;
      ++line_;
    }
  }

  std::string s_, path_;
  size_t pos_ = 0;
  int line_ = 1;
};

}  // namespace

Labels Labels::read(const std::string& path) {
  std::istringstream in(read_file(path, "labels file"));
  Labels l;
  std::string line;
  while (std::getline(in, line)) l.names_.push_back(trim(line));
  while (!l.names_.empty() && l.names_.back().empty()) l.names_.pop_back();
  GRADCAM_CHECK(!l.names_.empty(), "labels file '", path, "' is empty");
  for (size_t i = 0; i < l.names_.size(); ++i) {
    const std::string& s = l.names_[i];
    const auto idx = static_cast<int64_t>(i);
    l.lookup_.emplace(s, idx);
    const auto sp = s.find(' ');
    if (sp != std::string::npos) {  // "n01440764 tench, Tinca tinca"
      l.lookup_.emplace(s.substr(0, sp), idx);
      l.lookup_.emplace(trim(s.substr(sp + 1)), idx);
    }
  }
  return l;
}

std::string Labels::name(int64_t index) const {
  if (index < 0 || index >= static_cast<int64_t>(names_.size())) return std::to_string(index);
  return names_[static_cast<size_t>(index)];
}

std::optional<int64_t> Labels::index(const std::string& key) const {
  auto it = lookup_.find(trim(key));
  if (it != lookup_.end()) return it->second;
  if (auto v = parse_int(key); v && *v >= 0 && (names_.empty() || *v < static_cast<int64_t>(names_.size()))) return v;
  return std::nullopt;
}

std::vector<Annotation> read_csv_annotations(const std::string& path, const std::string& images_dir) {
  // joined by path, never through fs::relative: a bare "a.csv" has an empty folder
  const fs::path base = images_dir.empty() ? fs::path(path).parent_path() : fs::path(images_dir);
  std::vector<Annotation> out;
  std::map<std::string, size_t> index;
  CsvRecords records(read_file(path, "annotations file"), path);
  std::vector<std::string> f;
  int lineno = 0;
  bool first = true;
  while (records.next(f, lineno)) {
    if (std::exchange(first, false) && f.size() == 6 && f[0] == "file") continue;  // header
    GRADCAM_CHECK(f.size() == 6, path, ":", lineno, ": expected 6 fields file,label,x0,y0,x1,y1, got ",
                  f.size());
    GRADCAM_CHECK(!f[0].empty(), path, ":", lineno, ": empty file name");
    GRADCAM_CHECK(!f[1].empty(), path, ":", lineno, ": empty label");
    int v[4];
    for (int k = 0; k < 4; ++k) {
      auto n = parse_int(f[static_cast<size_t>(2 + k)]);
      GRADCAM_CHECK(n.has_value(), path, ":", lineno, ": '", f[static_cast<size_t>(2 + k)],
                    "' is not an integer pixel coordinate");
      v[k] = static_cast<int>(*n);
    }
    GRADCAM_CHECK(v[0] >= 0 && v[1] >= 0 && v[2] >= v[0] && v[3] >= v[1], path, ":", lineno, ": box ",
                  v[0], ",", v[1], ",", v[2], ",", v[3], " is not x0<=x1, y0<=y1 with non-negative coordinates");
    const std::string image = fs::path(f[0]).is_absolute() ? f[0] : (base / f[0]).string();
    auto [it, fresh] = index.emplace(image, out.size());
    if (fresh) out.push_back({image, {}});
    Box b;
    b.x0 = v[0];
    b.y0 = v[1];
    b.x1 = v[2];
    b.y1 = v[3];
    out[it->second].objects.push_back({f[1], b, concat(path, ":", lineno)});
  }
  GRADCAM_CHECK(!out.empty(), "annotations file '", path, "' has no rows");
  return out;
}

namespace {

/// The text of the first <tag>...</tag> in [from, to) of `xml`; npos-safe.
struct Found {
  std::string text;
  size_t begin = std::string::npos, end = std::string::npos;
};

Found find_tag(const std::string& xml, const std::string& tag, size_t from, size_t to) {
  Found f;
  const std::string open = "<" + tag + ">", close = "</" + tag + ">";
  const size_t a = xml.find(open, from);
  if (a == std::string::npos || a >= to) return f;
  const size_t b = xml.find(close, a + open.size());
  if (b == std::string::npos || b > to) {
    f.begin = a;  // opened, never closed
    return f;
  }
  f.text = trim(xml.substr(a + open.size(), b - a - open.size()));
  f.begin = a;
  f.end = b + close.size();
  return f;
}

int line_of(const std::string& xml, size_t pos) {
  return 1 + static_cast<int>(std::count(xml.begin(), xml.begin() + static_cast<std::ptrdiff_t>(std::min(pos, xml.size())), '\n'));
}

}  // namespace

Annotation read_voc_annotation(const std::string& xml_path, const std::string& images_dir) {
  const std::string xml = read_file(xml_path, "annotation file");
  GRADCAM_CHECK(xml.find("<annotation") != std::string::npos, xml_path,
                ":1: not a VOC/ImageNet annotation (no <annotation> element)");
  Found fn = find_tag(xml, "filename", 0, xml.size());
  GRADCAM_CHECK(fn.end != std::string::npos && !fn.text.empty(), xml_path, ":",
                line_of(xml, fn.begin == std::string::npos ? 0 : fn.begin), ": missing or unclosed <filename>");
  std::string file = fn.text;
  if (fs::path(file).extension().empty()) file += ".JPEG";
  Annotation a;
  a.image = (fs::path(images_dir) / file).string();
  size_t pos = 0;
  while (true) {
    const size_t start = xml.find("<object>", pos);
    if (start == std::string::npos) break;
    const size_t stop = xml.find("</object>", start);
    GRADCAM_CHECK(stop != std::string::npos, xml_path, ":", line_of(xml, start), ": <object> is never closed");
    Found name = find_tag(xml, "name", start, stop);
    GRADCAM_CHECK(name.end != std::string::npos && !name.text.empty(), xml_path, ":", line_of(xml, start),
                  ": <object> without a <name>");
    Found bb = find_tag(xml, "bndbox", start, stop);
    GRADCAM_CHECK(bb.end != std::string::npos, xml_path, ":", line_of(xml, start), ": <object> without a <bndbox>");
    int v[4];
    const char* tags[4] = {"xmin", "ymin", "xmax", "ymax"};
    for (int k = 0; k < 4; ++k) {
      Found c = find_tag(xml, tags[k], bb.begin, bb.end);
      GRADCAM_CHECK(c.end != std::string::npos, xml_path, ":", line_of(xml, bb.begin), ": <bndbox> without <",
                    tags[k], ">");
      auto n = parse_int(c.text);
      GRADCAM_CHECK(n.has_value(), xml_path, ":", line_of(xml, c.begin), ": <", tags[k], "> '", c.text,
                    "' is not an integer");
      v[k] = static_cast<int>(*n) - 1;  // VOC is 1-based
    }
    GRADCAM_CHECK(v[2] >= v[0] && v[3] >= v[1] && v[0] >= 0 && v[1] >= 0, xml_path, ":", line_of(xml, bb.begin),
                  ": box is not xmin<=xmax, ymin<=ymax with coordinates >= 1");
    Box b;
    b.x0 = v[0];
    b.y0 = v[1];
    b.x1 = v[2];
    b.y1 = v[3];
    a.objects.push_back({name.text, b, xml_path});
    pos = stop + 9;
  }
  GRADCAM_CHECK(!a.objects.empty(), xml_path, ": no <object> with a box");
  return a;
}

std::vector<Annotation> read_annotations(const std::string& file_or_dir, const std::string& images_dir) {
  std::error_code ec;
  if (fs::is_directory(file_or_dir, ec)) {
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(file_or_dir, ec)) {
      if (e.is_regular_file() && e.path().extension() == ".xml") files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
    GRADCAM_CHECK(!files.empty(), "annotation folder '", file_or_dir, "' has no .xml files");
    GRADCAM_CHECK(!images_dir.empty(), "XML annotations need --images DIR (the folder of the images)");
    std::vector<Annotation> out;
    for (const auto& f : files) out.push_back(read_voc_annotation(f, images_dir));
    return out;
  }
  GRADCAM_CHECK(fs::exists(file_or_dir, ec), "annotations '", file_or_dir, "' do not exist");
  if (fs::path(file_or_dir).extension() == ".xml") {
    return {read_voc_annotation(file_or_dir, images_dir.empty() ? fs::path(file_or_dir).parent_path().string() : images_dir)};
  }
  return read_csv_annotations(file_or_dir, images_dir);  // --images overrides the CSV's folder
}

double best_iou(const std::optional<Box>& box, const std::vector<Box>& truth) {
  if (!box) return 0.0;
  double best = 0.0;
  for (const auto& t : truth) best = std::max(best, iou(*box, t));
  return best;
}

void LocAccumulator::add(const LocSample& s) {
  LocCounts& c = counts_;
  ++c.n;
  const bool top1_right = !s.predicted.empty() && s.predicted[0] == s.true_class;
  if (top1_right) {
    ++c.top1_cls;
    if (!s.boxes.empty() && best_iou(s.boxes[0], s.truth) >= iou_threshold_) ++c.top1_loc;
  }
  for (size_t k = 0; k < s.predicted.size() && k < 5; ++k) {
    if (s.predicted[k] == s.true_class && k < s.boxes.size() && best_iou(s.boxes[k], s.truth) >= iou_threshold_) {
      ++c.top5_loc;
      break;
    }
  }
  const double known_iou = best_iou(s.known_box, s.truth);
  if (known_iou >= iou_threshold_) ++c.gt_known_loc;
  c.iou_sum += std::llround(known_iou / LocCounts::kIouUnit);
  if (s.peak && pointing_hit(*s.peak, s.truth, tolerance_)) ++c.pointing_game;
}

bool pointing_hit(std::pair<int, int> peak, const std::vector<Box>& truth, int tolerance) {
  const auto [x, y] = peak;
  for (const auto& t : truth) {
    if (x >= t.x0 - tolerance && x <= t.x1 + tolerance && y >= t.y0 - tolerance && y <= t.y1 + tolerance) return true;
  }
  return false;
}

LocCounts& LocCounts::operator+=(const LocCounts& o) {
  n += o.n;
  top1_cls += o.top1_cls;
  top1_loc += o.top1_loc;
  top5_loc += o.top5_loc;
  gt_known_loc += o.gt_known_loc;
  pointing_game += o.pointing_game;
  iou_sum += o.iou_sum;
  return *this;
}

LocMetrics LocCounts::metrics() const {
  LocMetrics m;
  m.n = n;
  if (n == 0) return m;
  const double d = static_cast<double>(n);
  m.top1_cls = static_cast<double>(top1_cls) / d;
  m.top1_loc = static_cast<double>(top1_loc) / d;
  m.top5_loc = static_cast<double>(top5_loc) / d;
  m.gt_known_loc = static_cast<double>(gt_known_loc) / d;
  m.mean_iou = static_cast<double>(iou_sum) * kIouUnit / d;
  m.pointing_game = static_cast<double>(pointing_game) / d;
  return m;
}

}  // namespace gradcam
