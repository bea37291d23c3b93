// src/cli/shard.hpp: --shard I/N, one part of a run split across processes or cluster nodes
// (docs/scale.md). The images are ranked by their path relative to the folder given (so the split
// is the same on every node, whatever order the annotations list them in), and shard I takes the
// images whose rank is I modulo N: the N shards cover every image exactly once, and each gets
// every N-th image of every class folder. `gradcam merge` combines the shards' reports.
#pragma once

#include <CLI/CLI.hpp>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

#include <gradcam/error.hpp>

namespace gradcam_cli {

struct Shard {
  long long index = 0;
  long long count = 1;
  bool on() const { return count > 1 || index > 0; }
  std::string str() const { return std::to_string(index) + "/" + std::to_string(count); }
};

/// "I/N" with 0 <= I < N; empty: the whole run (0/1).
inline Shard parse_shard(const std::string& text) {
  Shard s;
  if (text.empty()) return s;
  const size_t slash = text.find('/');
  auto number = [](const std::string& t, long long* v) {
    if (t.empty() || t.size() > 9 || !std::all_of(t.begin(), t.end(), [](unsigned char c) { return c >= '0' && c <= '9'; })) {
      return false;
    }
    *v = std::stoll(t);
    return true;
  };
  GRADCAM_CHECK(slash != std::string::npos && number(text.substr(0, slash), &s.index) &&
                    number(text.substr(slash + 1), &s.count) && s.count >= 1 && s.index < s.count,
                "--shard '", text, "' is not I/N with 0 <= I < N (shard I of N, counted from 0: 0/4 ... 3/4)");
  return s;
}

inline void add_shard(CLI::App* app, std::string& spec) {
  app->add_option("--shard", spec, "run only shard I of N (I/N, counted from 0): every N-th image by sorted path, "
                  "for cluster array jobs; `gradcam merge` combines the shards' reports (docs/scale.md)")
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            try {
              (void)parse_shard(text);
              return "";
            } catch (const gradcam::Error& e) {
              return e.what();
            }
          },
          "I/N"));
}

/// The path by which an image is ranked: relative to `root` when it lies inside it, else as given.
inline std::string shard_key(const std::string& path, const std::string& root) {
  if (root.empty()) return path;
  const std::string rel = std::filesystem::path(path).lexically_relative(root).generic_string();
  return rel.empty() || rel.rfind("..", 0) == 0 ? path : rel;
}

/// The items of shard `s`, in their original order: those whose rank, in the order of their keys
/// (ties by position), is s.index modulo s.count.
template <class T, class KeyOf>
std::vector<T> take_shard(const std::vector<T>& items, const Shard& s, KeyOf key_of) {
  if (!s.on()) return items;
  std::vector<size_t> order(items.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::vector<std::string> keys;
  keys.reserve(items.size());
  for (const T& item : items) keys.push_back(key_of(item));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return keys[a] < keys[b]; });
  std::vector<char> mine(items.size(), 0);
  for (size_t rank = 0; rank < order.size(); ++rank) {
    mine[order[rank]] = static_cast<long long>(rank % static_cast<size_t>(s.count)) == s.index;
  }
  std::vector<T> out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (mine[i]) out.push_back(items[i]);
  }
  return out;
}

}  // namespace gradcam_cli
