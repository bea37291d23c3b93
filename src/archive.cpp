// src/archive.cpp: the zip integrity check of a TorchScript file (see archive.hpp for why).
//
// It reads the archive the way LibTorch's miniz does: the last end-of-central-directory record
// (with its zip64 form when the zip64 locator precedes it), the central directory's sizes, sums
// and offsets, and each local header only for the length of its name and extra field. So a record
// that passes here is the record LibTorch reads.
#include "archive.hpp"

#include <zlib.h>

#include <algorithm>
#include <iomanip>
#include <limits>
#include <vector>

#include <gradcam/error.hpp>

namespace gradcam::detail {
namespace {

constexpr std::uint32_t kEndSig = 0x06054b50;
constexpr std::uint32_t kZip64EndSig = 0x06064b50;
constexpr std::uint32_t kZip64LocatorSig = 0x07064b50;
constexpr std::uint32_t kCentralSig = 0x02014b50;
constexpr std::uint32_t kLocalSig = 0x04034b50;
constexpr std::size_t kEndSize = 22, kZip64EndSize = 56, kLocatorSize = 20;
constexpr std::size_t kCentralSize = 46, kLocalSize = 30;
constexpr std::uint32_t kSaturated = 0xffffffff;  // "the real value is in the zip64 extra field"
constexpr std::size_t kChunk = 1 << 20;

std::uint64_t le(const char* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
std::uint16_t u16(const std::string& s, std::size_t at) { return static_cast<std::uint16_t>(le(&s[at], 2)); }
std::uint32_t u32(const std::string& s, std::size_t at) { return static_cast<std::uint32_t>(le(&s[at], 4)); }
std::uint64_t u64(const std::string& s, std::size_t at) { return le(&s[at], 8); }

std::string hex(std::uint32_t v) {
  std::ostringstream out;
  out << "0x" << std::hex << std::setw(8) << std::setfill('0') << v;
  return out.str();
}

struct Record {
  std::string name;
  std::uint16_t flags = 0, method = 0;
  std::uint32_t crc = 0;
  std::uint64_t packed = 0, unpacked = 0, local = 0;
};

class Archive {
 public:
  Archive(std::uint64_t size, const ReadAt& read_at, const std::string& what)
      : size_(size), read_at_(read_at), what_(what) {}

  /// Finds the central directory. False when there is no end record: not a zip archive.
  bool locate() {
    const std::uint64_t tail = std::min<std::uint64_t>(size_, kEndSize + 0xffff);
    if (tail < kEndSize) return false;
    const std::string t = bytes(size_ - tail, tail, "end of the file");
    std::size_t at = tail - kEndSize + 1;
    do {
      --at;
      if (u32(t, at) == kEndSig) break;
    } while (at > 0);
    if (u32(t, at) != kEndSig) return false;
    const std::uint64_t end = size_ - tail + at;
    count_ = u16(t, at + 10);
    dir_size_ = u32(t, at + 12);
    dir_offset_ = u32(t, at + 16);
    if (end >= kLocatorSize) {
      const std::string loc = bytes(end - kLocatorSize, kLocatorSize, "zip64 locator");
      if (u32(loc, 0) == kZip64LocatorSig) read_zip64_end(u64(loc, 8));
    }
    if (count_ > dir_size_ / kCentralSize)
      damaged(concat("its directory lists ", count_, " records in ", dir_size_, " bytes"));
    return true;
  }

  std::vector<Record> records() {
    const std::string dir = bytes(dir_offset_, dir_size_, "central directory");
    std::vector<Record> out;
    std::size_t at = 0;
    for (std::uint64_t i = 0; i < count_; ++i) {
      if (dir.size() - at < kCentralSize || u32(dir, at) != kCentralSig)
        damaged(concat("directory entry ", i + 1, " of ", count_, " is not where the directory says"));
      Record r;
      r.flags = u16(dir, at + 8);
      r.method = u16(dir, at + 10);
      r.crc = u32(dir, at + 16);
      r.packed = u32(dir, at + 20);
      r.unpacked = u32(dir, at + 24);
      r.local = u32(dir, at + 42);
      const std::size_t name = u16(dir, at + 28), extra = u16(dir, at + 30), comment = u16(dir, at + 32);
      if (dir.size() - at - kCentralSize < name + extra + comment)
        damaged(concat("directory entry ", i + 1, " runs past the directory's end"));
      r.name = dir.substr(at + kCentralSize, name);
      read_zip64_sizes(dir.substr(at + kCentralSize + name, extra), r);
      out.push_back(std::move(r));
      at += kCentralSize + name + extra + comment;
    }
    return out;
  }

  void check(const Record& r) {
    if (r.flags & 1) damaged(concat("record '", r.name, "' is encrypted, which LibTorch cannot read"));
    if (r.method != 0 && r.method != Z_DEFLATED)
      damaged(concat("record '", r.name, "' uses compression method ", r.method,
                     "; LibTorch reads stored (0) and deflated (8) records"));
    const std::string head = bytes(r.local, kLocalSize, concat("local header of '", r.name, "'"));
    if (u32(head, 0) != kLocalSig)
      damaged(concat("record '", r.name, "' has no local header at byte ", r.local));
    const std::uint64_t data = r.local + kLocalSize + u16(head, 26) + u16(head, 28);
    if (data > size_ || r.packed > size_ - data)
      damaged(concat("record '", r.name, "' (", r.packed, " bytes at byte ", data,
                     ") extends past the end of the file (", size_, " bytes)"));
    if (r.method == 0 && r.packed != r.unpacked)
      damaged(concat("stored record '", r.name, "' has two sizes, ", r.packed, " and ", r.unpacked));
    const std::uint32_t crc = r.method == 0 ? stored_crc(data, r.packed) : inflated_crc(data, r);
    if (crc != r.crc)
      damaged(concat("record '", r.name, "' does not match its CRC-32 checksum (stored ", hex(r.crc),
                     ", computed ", hex(crc), ")"));
  }

 private:
  [[noreturn]] void damaged(const std::string& detail) const {
    fail(concat(what_, " is damaged: ", detail,
                "; the file changed after it was saved: copy it again, or export it again"));
  }

  std::string bytes(std::uint64_t offset, std::uint64_t n, const std::string& part) const {
    if (offset > size_ || n > size_ - offset)
      damaged(concat("its ", part, " (", n, " bytes at byte ", offset,
                     ") extends past the end of the file (", size_, " bytes)"));
    std::string out(static_cast<std::size_t>(n), '\0');
    if (n > 0) read_at_(offset, out.data(), out.size());
    return out;
  }

  void read_zip64_end(std::uint64_t offset) {
    const std::string e = bytes(offset, kZip64EndSize, "zip64 end record");
    if (u32(e, 0) != kZip64EndSig) damaged(concat("its zip64 end record at byte ", offset, " is missing"));
    count_ = u64(e, 32);
    dir_size_ = u64(e, 40);
    dir_offset_ = u64(e, 48);
  }

  /// Sizes and offsets too large for 32 bits are 0xffffffff in the entry, and the real values
  /// follow in order (size, packed size, offset) in the extra field with id 1.
  void read_zip64_sizes(const std::string& extra, Record& r) const {
    std::uint64_t* wide[] = {&r.unpacked, &r.packed, &r.local};
    if (std::none_of(std::begin(wide), std::end(wide), [](auto* v) { return *v == kSaturated; })) return;
    for (std::size_t at = 0; extra.size() - at >= 4;) {
      const std::size_t id = u16(extra, at), len = u16(extra, at + 2);
      if (extra.size() - at - 4 < len) break;
      if (id == 1) {
        std::size_t field = at + 4;
        for (auto* v : wide) {
          if (*v != kSaturated) continue;
          if (field + 8 > at + 4 + len) damaged(concat("record '", r.name, "' has a short zip64 field"));
          *v = u64(extra, field);
          field += 8;
        }
        return;
      }
      at += 4 + len;
    }
    damaged(concat("record '", r.name, "' lacks the zip64 field its sizes point to"));
  }

  std::uint32_t stored_crc(std::uint64_t data, std::uint64_t n) const {
    uLong crc = crc32(0L, Z_NULL, 0);
    std::vector<char> buf(static_cast<std::size_t>(std::min<std::uint64_t>(n, kChunk)));
    for (std::uint64_t done = 0; done < n;) {
      const std::size_t step = static_cast<std::size_t>(std::min<std::uint64_t>(n - done, kChunk));
      read_at_(data + done, buf.data(), step);
      crc = crc32(crc, reinterpret_cast<const Bytef*>(buf.data()), static_cast<uInt>(step));
      done += step;
    }
    return static_cast<std::uint32_t>(crc);
  }

  std::uint32_t inflated_crc(std::uint64_t data, const Record& r) const;

  std::uint64_t size_;
  const ReadAt& read_at_;
  std::string what_;
  std::uint64_t count_ = 0, dir_size_ = 0, dir_offset_ = 0;
};

/// Inflates a deflated record in chunks, summing what comes out; the output must end exactly at
/// the size the directory gives.
std::uint32_t Archive::inflated_crc(std::uint64_t data, const Record& r) const {
  z_stream z{};
  if (inflateInit2(&z, -MAX_WBITS) != Z_OK) fail("zlib could not start inflating (out of memory?)");
  std::vector<char> in(kChunk), out(kChunk);
  uLong crc = crc32(0L, Z_NULL, 0);
  std::uint64_t done = 0, produced = 0;
  int rc = Z_OK;
  std::string problem;
  while (rc != Z_STREAM_END && problem.empty()) {
    if (z.avail_in == 0 && done < r.packed) {
      const std::size_t step = static_cast<std::size_t>(std::min<std::uint64_t>(r.packed - done, kChunk));
      read_at_(data + done, in.data(), step);
      z.next_in = reinterpret_cast<Bytef*>(in.data());
      z.avail_in = static_cast<uInt>(step);
      done += step;
    }
    z.next_out = reinterpret_cast<Bytef*>(out.data());
    z.avail_out = static_cast<uInt>(out.size());
    rc = inflate(&z, Z_NO_FLUSH);
    const std::size_t got = out.size() - z.avail_out;
    crc = crc32(crc, reinterpret_cast<const Bytef*>(out.data()), static_cast<uInt>(got));
    produced += got;
    const bool input_left = z.avail_in > 0 || done < r.packed;
    if (rc == Z_BUF_ERROR && !input_left)
      problem = "its deflate stream ends early";
    else if (rc != Z_OK && rc != Z_STREAM_END && !(rc == Z_BUF_ERROR && got > 0))
      problem = concat("its deflate stream is corrupt (zlib: ", z.msg ? z.msg : "no detail", ")");
    else if (produced > r.unpacked)
      problem = concat("it inflates to more than the ", r.unpacked, " bytes the directory gives");
  }
  inflateEnd(&z);
  if (problem.empty() && produced != r.unpacked)
    problem = concat("it inflates to ", produced, " bytes, not the ", r.unpacked, " the directory gives");
  if (!problem.empty()) damaged(concat("record '", r.name, "': ", problem));
  return static_cast<std::uint32_t>(crc);
}

/// ROOT/data/KEY or ROOT/constants/KEY: a tensor's storage (not data.pkl, not constants.pkl).
bool is_tensor_storage(const std::string& name) {
  const std::size_t first = name.find('/');
  if (first == std::string::npos) return false;
  const std::size_t second = name.find('/', first + 1);
  if (second == std::string::npos || second + 1 == name.size()) return false;
  if (name.find('/', second + 1) != std::string::npos) return false;
  const std::string folder = name.substr(first + 1, second - first - 1);
  return folder == "data" || folder == "constants";
}

}  // namespace

void verify_archive(std::uint64_t size, const ReadAt& read_at, const std::string& what,
                    Records which) {
  Archive archive(size, read_at, what);
  if (!archive.locate()) return;
  for (const Record& r : archive.records())
    if (is_tensor_storage(r.name) == (which == Records::tensors)) archive.check(r);
}

}  // namespace gradcam::detail
