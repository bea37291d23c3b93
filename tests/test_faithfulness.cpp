// Faithfulness metrics on hand-computed cases (models given as plain functions), ROAD's imputation
// against a dense solve in PyTorch (tests/fixtures/make_method_refs.py), and the randomisation check.
#include "catch.hpp"

#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>

#include <cmath>

#include <gradcam/gradcam.hpp>

#include "support.hpp"

namespace {

/// A "model" whose class 0 score is the sum of the pixels and class 1 score is 0.
at::Tensor sum_model(const at::Tensor& x) {
  at::Tensor s = x.reshape({x.size(0), -1}).sum(1);
  return at::stack({s, at::zeros_like(s)}, 1);
}

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

at::Tensor img(std::vector<double> v, int64_t h, int64_t w) {
  return at::tensor(v, at::kDouble).view({1, 1, h, w});
}

}  // namespace

TEST_CASE("deletion: hand-computed curve and AUC", "[faithfulness]") {
  const at::Tensor x = img({1, 2, 3, 4}, 2, 2);
  const at::Tensor sal = img({4, 3, 2, 1}, 2, 2);  // pixel 0 first
  const at::Tensor cls = at::zeros({1}, at::kLong);
  for (int64_t batch : {1, 2, 100}) {
    auto c = gradcam::deletion_curve(sum_model, x, sal, cls,
                                     gradcam::CurveOptions().steps(4).probabilities(false).batch(batch));
    CHECK(at::allclose(c.scores[0], at::tensor({10.0, 9.0, 7.0, 4.0, 0.0}, at::kDouble)));
    CHECK(c.auc[0].item<double>() == Approx((10 + 9 + 7 + 4 + 0 - 5.0) / 4));
  }
  // probabilities: softmax of [s, 0] is sigmoid(s); the baseline option sets deleted pixels
  auto p = gradcam::deletion_curve(sum_model, x, sal, cls,
                                   gradcam::CurveOptions().steps(2).baseline(1.0));
  CHECK(p.scores[0][0].item<double>() == Approx(sigmoid(10)));
  CHECK(p.scores[0][1].item<double>() == Approx(sigmoid(1 + 1 + 3 + 4)));  // 2 of 4 deleted
  CHECK(p.scores[0][2].item<double>() == Approx(sigmoid(4)));
  // a map at lower resolution is upsampled: a 1x2 map ranks left column before right column
  auto low = gradcam::deletion_curve(sum_model, x, img({1, 0}, 1, 2), cls,
                                     gradcam::CurveOptions().steps(2).probabilities(false));
  CHECK(low.scores[0][1].item<double>() == Approx(10 - 1 - 3));
}

TEST_CASE("insertion starts from the Gaussian-blurred input", "[faithfulness]") {
  const at::Tensor x = img({0, 0, 0, 0, 9, 0, 0, 0, 0}, 3, 3);
  const at::Tensor sal = img({0, 0, 0, 0, 1, 0, 0, 0, 0}, 3, 3);
  const at::Tensor cls = at::zeros({1}, at::kLong);
  // Kernel 3, sigma 1, zero padding: the blurred sum is 9 * (sum of the 1-D kernel)^2 = 9 inside a
  // 3x3 image with the peak in the centre (every tap lands in the image).
  const double g1 = std::exp(-0.5);
  const double k0 = 1 / (1 + 2 * g1);
  const double k1 = g1 / (1 + 2 * g1);
  auto c = gradcam::insertion_curve(sum_model, x, sal, cls,
                                    gradcam::CurveOptions().steps(9).probabilities(false).blur_kernel(3).blur_sigma(1.0));
  CHECK(c.scores[0][0].item<double>() == Approx(9.0 * (k0 + 2 * k1) * (k0 + 2 * k1)));
  // after one pixel (the centre) is inserted: blurred image with the centre replaced by 9
  const double centre_blurred = 9 * k0 * k0;
  CHECK(c.scores[0][1].item<double>() == Approx(9.0 - centre_blurred + 9.0));
  CHECK(c.scores[0][9].item<double>() == Approx(9.0));
  CHECK_THROWS_WITH(gradcam::insertion_curve(sum_model, x, sal, cls, gradcam::CurveOptions().blur_kernel(4)),
                    test::Contains("odd kernel"));
}

TEST_CASE("Average Drop and Increase in Confidence by hand", "[faithfulness]") {
  const at::Tensor x = at::cat({img({1, 2, 3, 4}, 2, 2), img({1, 2, 3, 4}, 2, 2)});
  const at::Tensor sal = at::cat({img({0, 1, 2, 3}, 2, 2), img({0, 1, 2, 3}, 2, 2)});
  // sample 0 explains class 0 (score falls when masked), sample 1 class 1 (its probability rises)
  const auto r = gradcam::confidence_change(sum_model, x, sal, at::tensor({0, 1}, at::kLong));
  const double masked = 0 + 2.0 / 3 + 2 + 4;
  CHECK(r.full[0].item<double>() == Approx(sigmoid(10)));
  CHECK(r.explained[0].item<double>() == Approx(sigmoid(masked)));
  CHECK(r.drop[0].item<double>() == Approx(100 * (sigmoid(10) - sigmoid(masked)) / sigmoid(10)));
  CHECK_FALSE(r.increase[0].item<bool>());
  CHECK(r.drop[1].item<double>() == 0.0);
  CHECK(r.increase[1].item<bool>());
  // the confidence change (pytorch-grad-cam's CamMultImageConfidenceChange): O_c - Y_c
  CHECK(r.change[0].item<double>() == Approx(sigmoid(masked) - sigmoid(10)));
  CHECK(r.change[1].item<double>() == Approx(r.explained[1].item<double>() - r.full[1].item<double>()));
  CHECK(r.change[1].item<double>() > 0);
}

TEST_CASE("ADCC: average drop, coherency and complexity by hand", "[faithfulness]") {
  // The explain function returns its input as the map, so the second map is L(x * L(x)) itself.
  const gradcam::MapFn echo = [](const at::Tensor& in, const at::Tensor&) { return in; };
  // sample 0: x = 1 2 3 4, map 0 1 2 3 -> L = 0 1/3 2/3 1; x * L = 0 2/3 2 4 -> normalised 0 1/6 1/2 1
  // sample 1: an all-zero map: L = 0, x * L = 0, a constant second map (correlation 0)
  const at::Tensor x = at::cat({img({1, 2, 3, 4}, 2, 2), img({1, 2, 3, 4}, 2, 2)});
  const at::Tensor sal = at::cat({img({0, 1, 2, 3}, 2, 2), img({0, 0, 0, 0}, 2, 2)});
  const auto r = gradcam::adcc(sum_model, x, sal, at::tensor({0, 0}, at::kLong), echo);
  // Pearson of (0, 1/3, 2/3, 1) and (0, 1/6, 1/2, 1): centred sums 5/9 (cross), 5/9 and 7/12
  const double rho = (5.0 / 9) / std::sqrt(5.0 / 9 * 7.0 / 12);
  const double drop0 = (sigmoid(10) - sigmoid(0 + 2.0 / 3 + 2 + 4)) / sigmoid(10);
  const double drop1 = (sigmoid(10) - sigmoid(0)) / sigmoid(10);
  CHECK(r.average_drop[0].item<double>() == Approx(drop0));
  CHECK(r.average_drop[1].item<double>() == Approx(drop1));
  CHECK(r.coherency[0].item<double>() == Approx((1 + rho) / 2));
  CHECK(r.coherency[1].item<double>() == 0.5);
  CHECK(r.complexity[0].item<double>() == Approx(0.5));
  CHECK(r.complexity[1].item<double>() == 0.0);
  CHECK(r.adcc[0].item<double>() == Approx(3 / (2 / (1 + rho) + 1 / 0.5 + 1 / (1 - drop0))));
  CHECK(r.adcc[1].item<double>() == Approx(3 / (1 / 0.5 + 1 / 1.0 + 1 / (1 - drop1))));

  // a map of the masked input that is the first one reversed: correlation -1, coherency 0, ADCC 0
  const at::Tensor flat = img({1, 1, 1, 1}, 2, 2);
  const gradcam::MapFn negate = [](const at::Tensor& in, const at::Tensor&) { return -in; };
  const auto z = gradcam::adcc(sum_model, flat, img({0, 1, 2, 3}, 2, 2), at::tensor({0}, at::kLong), negate);
  CHECK(z.coherency[0].item<double>() == Approx(0.0).margin(1e-12));
  CHECK(z.adcc[0].item<double>() == Approx(0.0).margin(1e-12));

  const gradcam::MapFn wrong = [](const at::Tensor& in, const at::Tensor&) { return in.squeeze(1); };
  CHECK_THROWS_WITH(gradcam::adcc(sum_model, x, sal, at::tensor({0, 0}, at::kLong), wrong),
                    test::Contains("adcc: the explain function returned [2, 2, 2] for a batch of 2; expected maps [N,1,h,w]"));
}

TEST_CASE("linear imputation equals a dense solve", "[faithfulness][road]") {
  const test::Ref ref("road");
  const at::Tensor got = gradcam::linear_impute(ref.get("image"), ref.get("removed"));
  CHECK(test::rel_err(got, ref.get("imputed")) < 1e-8);
  // float32 in, float32 out, same values
  const at::Tensor got32 = gradcam::linear_impute(ref.get("image").to(at::kFloat), ref.get("removed"));
  CHECK(got32.scalar_type() == at::kFloat);
  CHECK(test::rel_err(got32, ref.get("imputed")) < 1e-5);
  // known pixels are untouched
  const at::Tensor keep = ~ref.get("removed").expand_as(got);
  CHECK(at::equal(got.masked_select(keep), ref.get("image").masked_select(keep)));
  CHECK_THROWS_WITH(gradcam::linear_impute(ref.get("image"), at::zeros({2, 1, 3, 3}, at::kBool)),
                    test::Contains("must be [N,1,H,W]"));
}

TEST_CASE("ROAD: most and least relevant first, by hand", "[faithfulness][road]") {
  std::vector<double> v(9, 1.0);
  v[4] = 10;
  const at::Tensor x = img(v, 3, 3);
  const at::Tensor sal = img({0, 0, 0, 0, 1, 0, 0, 0, 0}, 3, 3);
  const at::Tensor cls = at::zeros({1}, at::kLong);
  const auto r = gradcam::road(sum_model, x, sal, cls,
                               gradcam::RoadOptions().fractions({1.0 / 9}).noise(0).probabilities(false));
  CHECK(r.full[0].item<double>() == Approx(18));
  // MoRF removes the centre: its neighbours are all 1
  CHECK(r.most_relevant_first[0][0].item<double>() == Approx(9));
  // LeRF removes the last pixel in rank order (bottom-right corner): (1/6 + 1/6 + 10/12) / (5/12)
  CHECK(r.least_relevant_first[0][0].item<double>() == Approx(18 - 1 + 2.8));
  // noise: reproducible for one seed, different for another, only on removed pixels
  auto noisy = [&](uint64_t seed) {
    return gradcam::road(sum_model, x, sal, cls,
                         gradcam::RoadOptions().fractions({1.0 / 9, 0.5}).seed(seed).probabilities(false));
  };
  const auto a = noisy(1), b = noisy(1), c = noisy(2);
  CHECK(at::equal(a.most_relevant_first, b.most_relevant_first));
  CHECK_FALSE(at::equal(a.most_relevant_first, c.most_relevant_first));
  CHECK(std::abs(a.most_relevant_first[0][0].item<double>() - 9) < 0.1);  // one pixel, noise 0.01
  CHECK_THROWS_WITH(gradcam::road(sum_model, x, sal, cls, gradcam::RoadOptions().fractions({1.5})),
                    test::Contains("1.5"));
}

TEST_CASE("Spearman rank correlation with ties", "[faithfulness]") {
  const at::Tensor a = at::tensor({1.0, 2.0, 3.0, 4.0}).view({1, 4});
  CHECK(gradcam::spearman(a, a * 10 + 3)[0].item<double>() == Approx(1.0));
  CHECK(gradcam::spearman(a, -a.pow(3))[0].item<double>() == Approx(-1.0));
  const at::Tensor tied = at::tensor({1.0, 1.0, 2.0, 3.0}).view({1, 4});
  CHECK(gradcam::spearman(tied, a)[0].item<double>() == Approx(4.5 / std::sqrt(22.5)));
  CHECK(gradcam::spearman(at::ones({1, 4}), a)[0].item<double>() == 0.0);
  CHECK_THROWS_WITH(gradcam::spearman(a, at::ones({1, 5})), test::Contains("same shape"));
}

TEST_CASE("bad arguments to the metrics name the bad shape", "[faithfulness][errors]") {
  const at::Tensor x = at::rand({2, 1, 4, 4});
  const at::Tensor cls = at::zeros({2}, at::kLong);
  CHECK_THROWS_WITH(gradcam::deletion_curve(sum_model, x, at::rand({1, 1, 4, 4}), cls),
                    test::Contains("saliency must be [N,1,h,w] with N = 2"));
  CHECK_THROWS_WITH(gradcam::deletion_curve(sum_model, x, at::rand({2, 1, 4, 4}), at::zeros({3}, at::kLong)),
                    test::Contains("classes must be [N]"));
  CHECK_THROWS_WITH(gradcam::confidence_change(sum_model, x, at::full({2, 1, 4, 4}, NAN), cls),
                    test::Contains("NaN"));
  CHECK_THROWS_WITH(gradcam::deletion_curve(sum_model, x, at::rand({2, 1, 4, 4}), at::full({2}, 7, at::kLong)),
                    test::Contains("class index 7"));
}

TEST_CASE("parameter randomisation: cascade from the top, the user's model untouched", "[faithfulness][sanity]") {
  auto toy = test::model("methods_toy");
  const at::Tensor x = at::randn({2, 3, 16, 16});
  const at::Tensor cls = at::tensor({0, 3}, at::kLong);
  std::vector<at::Tensor> before;
  for (const auto& p : toy.parameters()) before.push_back(p.clone());

  auto gradcam_fn = [](const torch::jit::Module& m, const at::Tensor& in, const at::Tensor& c) {
    gradcam::GradCAM cam(m, gradcam::GradCAMOptions("stem"));
    std::vector<int64_t> idx(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
    return cam.compute(in, gradcam::Target::classes(idx)).maps[0].map;
  };
  const auto steps = gradcam::randomization_check(toy, x, cls, gradcam_fn);
  REQUIRE(steps.size() == 4);  // head, block.bn, block.conv, stem: top first
  CHECK(steps[0].module == "head");
  CHECK(steps[1].module == "block.bn");
  CHECK(steps[2].module == "block.conv");
  CHECK(steps[3].module == "stem");
  for (const auto& s : steps) {
    REQUIRE(s.correlation.sizes() == at::IntArrayRef({2}));
    CHECK(s.correlation.abs().max().item<double>() <= 1.0 + 1e-12);
  }
  // A random head gives different channel weights: the maps no longer match the original.
  CHECK(steps[0].correlation.max().item<double>() < 0.999);
  size_t i = 0;
  for (const auto& p : toy.parameters()) CHECK(at::equal(p, before[i++]));

  // A "map" that ignores the weights keeps correlation 1 at every step.
  auto input_fn = [](const torch::jit::Module&, const at::Tensor& in, const at::Tensor&) {
    return in.abs().sum(1, true);
  };
  for (const auto& s : gradcam::randomization_check(toy, x, cls, input_fn)) {
    CHECK(s.correlation.min().item<double>() == Approx(1.0));
  }
  CHECK_THROWS_WITH(gradcam::randomization_check(test::model("resnet18_frozen"), x, cls, input_fn),
                    test::Contains("frozen"));
}
