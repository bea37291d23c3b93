// gradcam/faithfulness.hpp: metrics that say which explanation to trust on a given model.
//
// Each metric perturbs the input according to a saliency map and measures how the model's score
// for the explained class responds, with batched forward passes and no gradients:
//  - deletion / insertion curves and their AUC (Petsiuk et al., RISE, BMVC 2018);
//  - Average Drop and Increase in Confidence (Chattopadhyay et al., Grad-CAM++, WACV 2018);
//  - ROAD, most- and least-relevant-first removal with noisy linear imputation (Rong et al.,
//    ICML 2022);
//  - the model-parameter randomisation sanity check (Adebayo et al., NeurIPS 2018).
// Saliency maps are [N,1,h,w] (any resolution; bilinearly upsampled to the input) as GradCAM
// returns them. Results are per sample so that callers can aggregate over a data set. See
// docs/methods.md for definitions and the figures on the demo model.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <gradcam/arg.hpp>

namespace torch::jit {
struct Module;
}

namespace gradcam {

/// The model as a function from an input batch [N,C,H,W] to class scores [N, classes]
/// (pre-softmax). Called with gradients disabled.
using ScoreModel = std::function<at::Tensor(const at::Tensor& input)>;

/// A ScoreModel running `module.forward` (the module is held by reference-counted handle; it must
/// be in eval mode). Its output may be a tensor, a tuple (first tensor) or a dict ("out").
ScoreModel score_model(const torch::jit::Module& module);

/// Options of deletion_curve / insertion_curve.
class CurveOptions {
  /// Number of steps: the curve has steps + 1 points, after 0, 1/steps, ..., all pixels changed.
  GRADCAM_ARG(int64_t, steps) = 50;
  /// Perturbed images per forward pass (the result does not depend on it). Default 32.
  GRADCAM_ARG(int64_t, batch) = 32;
  /// Score softmax probabilities (as RISE does; default) or raw class scores.
  GRADCAM_ARG(bool, probabilities) = true;
  /// Deletion: the value deleted pixels take (0 = the data set mean for normalised inputs).
  GRADCAM_ARG(double, baseline) = 0.0;
  /// Insertion starts from the input blurred by a Gaussian of this kernel size and sigma
  /// (RISE: 11 and 5), with zero padding.
  GRADCAM_ARG(int64_t, blur_kernel) = 11;
  GRADCAM_ARG(double, blur_sigma) = 5.0;
};

/// A deletion or insertion curve.
struct Curve {
  at::Tensor scores;  ///< [N, steps+1] class score (or probability) after i/steps of the pixels
  at::Tensor auc;     ///< [N] area under the curve over [0, 1] (trapezoid rule)
};

/// Deletion: pixels are set to the baseline in decreasing order of saliency (ties: lower index
/// first). A faithful map makes the score fall fast: lower AUC is better.
Curve deletion_curve(const ScoreModel& model, const at::Tensor& input, const at::Tensor& saliency,
                     const at::Tensor& classes, const CurveOptions& options = {});
/// Insertion: starting from the blurred input, original pixels come back in decreasing order of
/// saliency. Higher AUC is better.
Curve insertion_curve(const ScoreModel& model, const at::Tensor& input, const at::Tensor& saliency,
                      const at::Tensor& classes, const CurveOptions& options = {});

/// Average Drop / Increase in Confidence for one batch (Chattopadhyay et al., section 5.1): the
/// model sees the input multiplied by the min-max normalised, upsampled map.
struct ConfidenceChange {
  at::Tensor full;       ///< [N] Y_c: probability of the class on the input
  at::Tensor explained;  ///< [N] O_c: probability on input * map
  at::Tensor drop;       ///< [N] 100 * max(0, Y_c - O_c) / Y_c; the Average Drop is its mean
  at::Tensor increase;   ///< [N] bool, O_c > Y_c; Increase in Confidence is 100 * its mean
  /// [N] O_c - Y_c: the change in the class's probability when the model sees input * map
  /// (pytorch-grad-cam's CamMultImageConfidenceChange, there in the target's own score); higher is
  /// better.
  at::Tensor change;
};
ConfidenceChange confidence_change(const ScoreModel& model, const at::Tensor& input,
                                   const at::Tensor& saliency, const at::Tensor& classes);

/// Returns maps [N,1,h,w] of `input` for `classes` [N], made as the maps under test were (ADCC
/// explains the masked input again).
using MapFn = std::function<at::Tensor(const at::Tensor& input, const at::Tensor& classes)>;

/// ADCC (Poppi et al., "Revisiting the evaluation of class activation mapping for explainability",
/// CVPR workshops 2021), per sample. L(x) is the map min-max normalised and upsampled to the input,
/// as for Average Drop; the model sees x * L(x).
struct Adcc {
  at::Tensor average_drop;  ///< [N] max(0, Y_c - O_c) / Y_c, in [0, 1] (lower is better)
  /// [N] (1 + Pearson(L(x), L(x * L(x)))) / 2, in [0, 1]: the map of the masked input agrees with
  /// the map (higher is better). A constant map correlates 0 with anything: coherency 1/2.
  at::Tensor coherency;
  at::Tensor complexity;    ///< [N] the mean of L(x) (its L1 norm over the pixels), in [0, 1] (lower is better)
  /// [N] 3 / (1 / coherency + 1 / (1 - complexity) + 1 / (1 - average_drop)), the harmonic mean of
  /// the three as each is better higher; 0 where one of them is 0 (higher is better). The paper
  /// reports the mean over images.
  at::Tensor adcc;
};
Adcc adcc(const ScoreModel& model, const at::Tensor& input, const at::Tensor& saliency,
          const at::Tensor& classes, const MapFn& explain);

/// Options of road().
class RoadOptions {
  /// Fractions of pixels removed. Default 0.1, 0.2, ..., 0.9.
  GRADCAM_ARG(std::vector<double>, fractions) =
      std::vector<double>{0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9};
  /// Standard deviation of the Gaussian noise added to imputed pixels (ROAD's "noisy" linear
  /// imputation; 0 for the plain linear imputation). Default 0.01.
  GRADCAM_ARG(double, noise) = 0.01;
  /// Seed of that noise (results are reproducible). Default 0.
  GRADCAM_ARG(uint64_t, seed) = 0;
  /// Imputed images per forward pass. Default 32.
  GRADCAM_ARG(int64_t, batch) = 32;
  /// Score probabilities (default) or raw class scores.
  GRADCAM_ARG(bool, probabilities) = true;
};

/// ROAD scores per sample and fraction.
struct RoadResult {
  at::Tensor full;                  ///< [N] score on the input
  at::Tensor most_relevant_first;   ///< [N,F] after removing the most salient fraction (lower is better)
  at::Tensor least_relevant_first;  ///< [N,F] after removing the least salient fraction (higher is better)
};
RoadResult road(const ScoreModel& model, const at::Tensor& input, const at::Tensor& saliency,
                const at::Tensor& classes, const RoadOptions& options = {});

/// ROAD's linear imputation: every removed pixel ([N,1,H,W] bool, true = removed) becomes the
/// weighted mean of its in-image 8 neighbours (1/6 edge, 1/12 diagonal), known pixels fixed; the
/// sparse system is solved per image and channel by preconditioned conjugate gradients to a
/// relative residual of `tolerance`. Returns the image [N,C,H,W] with the removed pixels filled.
at::Tensor linear_impute(const at::Tensor& image, const at::Tensor& removed,
                         double tolerance = 1e-8, int64_t max_iterations = 5000);

/// Spearman rank correlation of each sample's values (ties get their average rank): a, b
/// [N,...] of equal shape; returns [N] float64. A constant sample has correlation 0 (undefined).
at::Tensor spearman(const at::Tensor& a, const at::Tensor& b);

/// Returns maps [N,...] for `input` explaining `classes` [N] with `module` (for the randomisation
/// check: called once on the original module and once per randomisation step).
using ExplainFn = std::function<at::Tensor(const torch::jit::Module& module, const at::Tensor& input,
                                           const at::Tensor& classes)>;

/// Options of randomization_check().
class RandomizationOptions {
  /// Seed of the random weights. Default 0.
  GRADCAM_ARG(uint64_t, seed) = 0;
  /// Compare absolute values of the maps (as Adebayo et al. do for signed maps). Default true.
  GRADCAM_ARG(bool, absolute) = true;
};

/// One step of the cascading randomisation.
struct RandomizationStep {
  std::string module;      ///< the module randomised at this step (with every one above it)
  at::Tensor correlation;  ///< [N] Spearman correlation with the original model's maps
};

/// Cascading model-parameter randomisation (Adebayo et al., section 3): the modules that own
/// parameters are randomised one after the other from the output down (each parameter replaced
/// by Gaussian noise of the same root-mean-square; all-zero parameters stay zero), cumulatively,
/// on a private copy of the module, and after each step the maps are compared with the original
/// ones. A map that depends on what the model learned decorrelates quickly. The user's module is
/// not modified.
std::vector<RandomizationStep> randomization_check(const torch::jit::Module& module,
                                                   const at::Tensor& input, const at::Tensor& classes,
                                                   const ExplainFn& explain,
                                                   const RandomizationOptions& options = {});

}  // namespace gradcam
