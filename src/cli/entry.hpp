// src/cli/entry.hpp: the entry point of the gradcam_command library, apart from commands.hpp so
// that the executable's one-line main (and the fuzzer) compile without LibTorch's headers.
#pragma once

namespace gradcam_cli {

/// The whole command; with parse_only, stops after parsing (the command-line fuzzer uses this).
int gradcam_main(int argc, char** argv, bool parse_only = false);

}  // namespace gradcam_cli
