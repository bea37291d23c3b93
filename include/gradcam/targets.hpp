// gradcam/targets.hpp: targets beyond a class score, built on Target::score.
//
// Grad-CAM works for any differentiable scalar of the output (paper, sections 7-8: captioning,
// VQA). These helpers build the common ones:
//  - segmentation: the sum or mean of class c's logits over a region (a mask, a box, or the pixels
//    the model predicts as c), for models returning [N,C,H,W] or a dict with "out" (torchvision's
//    FCN / DeepLab when scripted);
//  - similarity: the cosine similarity between the model's embedding of the input and a reference
//    embedding (of a second image, say), for re-identification and face matching;
//  - output: one element of a tuple / dict output, optionally indexed further;
//  - finer: Finer-CAM's contrast of a class with the classes whose scores are nearest to it.
// See docs/targets.md.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include <gradcam/grad_cam.hpp>

namespace gradcam::targets {

/// How a region's logits become one score.
enum class Reduction { sum, mean };

/// Segmentation: class `cls`'s logits summed (or averaged) over `mask` ([H,W] or [N,H,W], bool or
/// 0/1 float, at the output's resolution). An undefined mask means "the pixels the model predicts
/// as `cls`" (argmax over classes, taken without gradient). `key` picks the dict entry (default
/// "out"); a tensor output is used as is. compute() throws gradcam::Error for an output that is
/// not [N,C,H,W], a class out of range, a mask of the wrong size, or an empty region.
Target segmentation(int64_t cls, at::Tensor mask = at::Tensor(), Reduction reduction = Reduction::sum,
                    std::string key = "out");

/// Segmentation over a box [x0, y0, x1, y1] (inclusive, output pixels).
Target segmentation_box(int64_t cls, std::vector<int64_t> box, Reduction reduction = Reduction::sum,
                        std::string key = "out");

/// Embedding similarity: cosine similarity between the output embedding ([N,D], or [N,D,...]
/// flattened; `key`/index select it in a dict or tuple, see output()) and `reference` ([D] for all
/// samples, or [N,D]).
Target similarity(at::Tensor reference, std::string key = "");

/// Any scalar: `key` selects a dict entry by name or a tuple / list element by index ("" = the
/// output itself), then `index` picks one element of each sample's tensor (empty: the sample's
/// tensor must hold exactly one value). Example: output("1", {4}) explains out[1][:, 4].
Target output(std::string key, std::vector<int64_t> index = {});

/// Finer-CAM (Zhang et al., CVPR 2025, as pytorch-grad-cam's FinerWeightedTarget): the score of
/// class n contrasted with the `references` classes whose scores are nearest to n's (|y_i - y_n|
/// smallest, ties to the lower index; chosen without gradient):
///   sum_i p_i (y_n - alpha y_i) / (sum_i p_i + 1e-9),  p = softmax(y),
/// differentiated through p as well. n is `classes` (one per sample, or one for all), or each
/// sample's top-1 class when empty. The output (`key` as in output(); a tuple's first element by
/// default) must be class scores [N, classes]. A ranked target of one rank: the result's classes
/// are the n explained. With any method that reads a gradient (a Target::ranked target: not the
/// perturbation methods).
Target finer(std::vector<int64_t> classes = {}, int64_t references = 3, double alpha = 1.0, std::string key = "");

/// The tensor output() and similarity() read: `key` as in output(). Throws gradcam::Error naming
/// the available keys / the output's size.
at::Tensor select_output(const c10::IValue& out, const std::string& key);

}  // namespace gradcam::targets
