// src/archive.hpp: the integrity check of a TorchScript file before LibTorch parses it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace gradcam::detail {

/// Random access to the bytes of a model: copies `n` bytes at `offset` into `out`. Callers keep
/// offset + n within the size they passed along with it.
using ReadAt = std::function<void(std::uint64_t offset, char* out, std::size_t n)>;

/// Verifies a TorchScript file, a zip archive, before `torch::jit::load` sees it: every record
/// lies inside the file, is stored or deflated (what LibTorch reads), is not encrypted, and matches
/// the CRC-32 the archive keeps for it.
///
/// Why: PyTorch builds its zip reader (miniz) with MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS, so
/// LibTorch never checks those sums. A flipped bit in a weight then loads as a silently wrong
/// weight, and one in the pickles or the code reaches LibTorch's unpickler and TorchScript parser,
/// which on some damaged inputs free memory twice and abort the process (found by fuzz_model,
/// docs/reliability.md). Bytes without a zip end record are left to LibTorch, which refuses them
/// with its own message or reads them as another format.
///
/// `which` picks the records: those LibTorch parses (pickles, code, version and other small
/// records), which must be checked before it reads them, or the tensor storage (`ROOT/data/KEY`,
/// `ROOT/constants/KEY`), raw bytes that cannot upset the loader and hold nearly all of the file,
/// so their sums can be summed while it loads (model.cpp).
///
/// `what` names the model in messages ("'m.pt'", "the data"). Throws gradcam::Error.
enum class Records { parsed, tensors };
void verify_archive(std::uint64_t size, const ReadAt& read_at, const std::string& what,
                    Records which);

}  // namespace gradcam::detail
