// tests/cli_support.hpp: running the gradcam command from the tests (test_cli.cpp,
// test_cli_reliability.cpp): its path, the demo files, a shell runner and scratch folders.
#pragma once

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <sys/wait.h>

namespace fs = std::filesystem;

namespace test {

inline std::string env(const char* name) {
  const char* v = std::getenv(name);
  REQUIRE(v != nullptr);
  return v;
}
inline std::string demo(const std::string& rel) { return env("GRADCAM_SOURCE_DIR") + "/examples/demo/" + rel; }
inline std::string cli() { return env("GRADCAM_CLI"); }

struct Run {
  int code;
  std::string out;
};

/// Runs a shell command; returns its exit code and stdout (stderr too when `merge`).
inline Run run(const std::string& cmd, bool merge = true) {
  FILE* p = popen((cmd + (merge ? " 2>&1" : " 2>/dev/null")).c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

inline std::string tmpdir(const std::string& name) {
  auto d = fs::temp_directory_path() / ("gradcam_test_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

}  // namespace test
