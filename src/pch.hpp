// src/pch.hpp (private): the heavy LibTorch headers, precompiled once for every translation unit.
#pragma once
#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>
