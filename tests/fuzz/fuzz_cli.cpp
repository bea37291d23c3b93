// libFuzzer target: the gradcam command line. The input is split into arguments at newlines;
// parsing must end in success or a clear error, never a crash. Nothing is executed.
#include <gradcam/error.hpp>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "../../src/cli/commands.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> args = {"gradcam"};
  std::string cur;
  for (size_t i = 0; i < size && args.size() < 40; ++i) {
    const char c = static_cast<char>(data[i]);
    if (c == '\n') {
      args.push_back(cur);
      cur.clear();
    } else if (c != '\0') {
      cur += c;
    }
  }
  if (!cur.empty()) args.push_back(cur);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // CLI11 prints help and errors; keep the fuzzer's output readable
  static FILE* quiet = [] { std::freopen("/dev/null", "w", stdout); return stdout; }();
  (void)quiet;
  try {
    (void)gradcam_cli::gradcam_main(static_cast<int>(args.size()), argv.data(), /*parse_only=*/true);
  } catch (const gradcam::Error&) {
  }
  return 0;
}
