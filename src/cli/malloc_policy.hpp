// src/cli/malloc_policy.hpp: how the gradcam command (and bench/gradcam_bench) have glibc's malloc
// treat large blocks. Header only: main.cpp and bench/bench.cpp call it first thing.
//
// Why: LibTorch's CPU allocator takes every tensor from malloc. glibc serves a block above its
// mmap threshold (128 KiB at first, rising to at most 32 MiB) with fresh mmap'd pages and unmaps
// it on free, and trims the heap's top as soon as 128 KiB are free there; so each large activation
// of each forward pass is zero-filled again by the kernel, page by page. On the 2-core machine
// (`gradcam bench --model resnet50.pt --layer layer4 --threads 2`, docs/performance.md) the plain
// forward took 712 ms at batch 8 with glibc's defaults and 293 ms with freed memory kept, 6,804
// against 1,396 ms at batch 32, the same at batch 1. So the command keeps freed memory for reuse:
// no mmap'd blocks and no trimming below 2 GiB. The price is that the process holds on to its
// peak resident set, as PyTorch's CUDA caching allocator does on a GPU. A library cannot make this
// choice for its host process; docs/performance.md tells applications how (GLIBC_TUNABLES).
#pragma once

#include <climits>
#include <cstdlib>
#include <string>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace gradcam_cli {

/// True when the command keeps freed memory (glibc, and GRADCAM_MALLOC is not "default").
inline bool freed_memory_kept() {
#if defined(__GLIBC__)
  const char* env = std::getenv("GRADCAM_MALLOC");
  return env == nullptr || std::string(env) != "default";
#else
  return false;
#endif
}

/// "kept" when freed memory is kept for reuse, "default" with GRADCAM_MALLOC=default (glibc's
/// own behaviour, to measure it) or where malloc is not glibc's.
inline const char* apply_malloc_policy() {
#if defined(__GLIBC__)
  if (!freed_memory_kept()) return "default";
  mallopt(M_MMAP_MAX, 0);             // large blocks come from the heap, whose pages stay mapped
  mallopt(M_TRIM_THRESHOLD, INT_MAX); // and the heap's top is not given back after each pass
  return "kept";
#else
  return "default";
#endif
}

/// --perturbation-batch as the command uses it: 0 means 32 where the command keeps freed memory
/// (malloc_policy.hpp), else the library's default (1 on the CPU, 32 on a GPU). The library's 1
/// was chosen under glibc's defaults, where larger batches page-fault; with memory kept, Score-CAM
/// on resnet18's layer4 takes 15.2 ms per masked image at 32 against 21.2 at 1 (docs/performance.md).
inline int command_perturbation_batch(int asked) { return asked > 0 ? asked : freed_memory_kept() ? 32 : 0; }

}  // namespace gradcam_cli
