// tests/pch.hpp: what every test file includes (LibTorch, Catch2 through catch.hpp, the public
// API), precompiled once and reused by every test executable (tests/CMakeLists.txt).
#pragma once
#include "catch.hpp"  // first: after LibTorch, before anything that includes glog

#include <gradcam/gradcam.hpp>
