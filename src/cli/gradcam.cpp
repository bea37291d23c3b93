// src/cli/gradcam.cpp: the `gradcam` executable. Everything else is the gradcam_command library,
// which the command-line fuzzer links too.
#include "entry.hpp"

int main(int argc, char** argv) { return gradcam_cli::gradcam_main(argc, argv); }
