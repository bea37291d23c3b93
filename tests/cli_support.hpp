// tests/cli_support.hpp: running the gradcam command from the tests (test_cli.cpp,
// test_cli_reliability.cpp, test_examples.cpp): its path, the demo files, a shell runner and scratch folders.
#pragma once

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <sys/wait.h>

#include "support.hpp"

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

/// Runs `cmd` in the background and sends it SIGINT as soon as the shell condition `ready` holds
/// (it may read the process id as $p), or after 120 s; returns its exit code and stdout (as run).
/// Waiting for a condition, not a fixed time, interrupts the run midway on a fast machine and on a
/// loaded one (a sanitizer build loads the model for seconds).
inline Run run_interrupted(const std::string& cmd, const std::string& ready, bool merge = true) {
  return run("{ " + cmd + " & p=$!; i=0; while [ $i -lt 1200 ] && ! { " + ready +
                 "; } && kill -0 $p 2>/dev/null; do sleep 0.1; i=$((i+1)); done; "
                 "kill -INT $p 2>/dev/null; wait $p; }",
             merge);
}
/// A `ready` condition: `path` is not empty (a run's first record is written).
inline std::string written(const std::string& path) { return "[ -s '" + path + "' ]"; }
/// A `ready` condition: the process catches SIGINT (SigCgt bit 2 in /proc), so its interrupt guard
/// is installed: the model is loaded and the images are being processed.
inline std::string catches_sigint() {
  return "grep -qiE '^SigCgt:[[:space:]]*[0-9a-f]*[2367abef]$' /proc/$p/status 2>/dev/null";
}

inline std::string tmpdir(const std::string& name) {
  auto d = scratch_root() / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

}  // namespace test
