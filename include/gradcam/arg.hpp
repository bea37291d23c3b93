// gradcam/arg.hpp: the option-field macro used by every options struct (setter chains in the style
// of torch::nn::Conv2dOptions): GRADCAM_ARG(bool, relu) = true; gives relu(v) and relu().
#pragma once

#include <utility>

#define GRADCAM_ARG(T, name)                         \
 public:                                             \
  inline auto name(const T& new_##name)->decltype(*this) { \
    this->name##_ = new_##name;                      \
    return *this;                                    \
  }                                                  \
  inline const T& name() const noexcept {            \
    return this->name##_;                            \
  }                                                  \
                                                     \
 private:                                            \
  T name##_
