// tests/catch.hpp: Catch2 after LibTorch. Debian's LibTorch pulls in glog, whose CHECK macro
// would otherwise replace Catch's.
#pragma once
#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>
#undef CHECK
#include <catch2/catch.hpp>
