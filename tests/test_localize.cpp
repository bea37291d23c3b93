// Localization: components and boxes on hand-drawn maps, IoU, the box mapping through resize and
// crop, the annotation readers, and the metrics on a set whose answers are computed by hand.
#include "catch.hpp"

#include <filesystem>
#include <fstream>
#include <limits>

#include <gradcam/gradcam.hpp>

#include "support.hpp"

using test::Contains;
namespace fs = std::filesystem;

namespace {
/// A map from rows of characters: '#' = 1, '+' = 0.5, '.' = 0.
at::Tensor draw(const std::vector<std::string>& rows) {
  at::Tensor m = at::zeros({static_cast<int64_t>(rows.size()), static_cast<int64_t>(rows[0].size())});
  for (size_t y = 0; y < rows.size(); ++y)
    for (size_t x = 0; x < rows[y].size(); ++x)
      m[static_cast<int64_t>(y)][static_cast<int64_t>(x)] = rows[y][x] == '#' ? 1.0 : rows[y][x] == '+' ? 0.5 : 0.0;
  return m;
}
gradcam::Box box(int x0, int y0, int x1, int y1) {
  gradcam::Box b;
  b.x0 = x0;
  b.y0 = y0;
  b.x1 = x1;
  b.y1 = y1;
  return b;
}
std::string write(const std::string& name, const std::string& text) {
  const auto p = test::scratch_root() / ("loc_" + name);
  std::ofstream(p) << text;
  return p.string();
}
}  // namespace

TEST_CASE("components: diagonal touching, 4- and 8-connectivity", "[localize]") {
  const auto m = draw({"#...",
                       ".#..",
                       "..#.",
                       "...."});
  auto eight = gradcam::localize(m);
  REQUIRE(eight[0].box);
  CHECK(eight[0].box->x0 == 0);
  CHECK(eight[0].box->x1 == 2);
  CHECK(eight[0].box->area == 3);
  CHECK(eight[0].components.size() == 1);
  auto four = gradcam::localize(m, gradcam::LocalizeOptions().connectivity(4));
  CHECK(four[0].components.size() == 3);
  CHECK(four[0].box->area == 1);
  CHECK(four[0].box->x0 == 0);  // ties: the first in raster order
}

TEST_CASE("components: largest by pixels or by box area; borders; mean value", "[localize]") {
  const auto m = draw({"##.....#",
                       "##......",
                       ".......#",
                       "+......#"});
  // pixels: the 2x2 block (4) beats the right-hand column pieces; by box: (7,0)-(7,0) is 1 pixel,
  // (7,2)-(7,3) is 2; the 2x2 block is also the largest box.
  auto r = gradcam::localize(m);
  REQUIRE(r[0].box);
  CHECK(r[0].box->x0 == 0);
  CHECK(r[0].box->y1 == 1);
  CHECK(r[0].box->area == 4);
  CHECK(r[0].box->mean_value == Approx(1.0));
  // at threshold 0.5 the '+' in the corner joins nothing (not touching), still a component
  CHECK(r[0].components.size() == 4);
  auto sparse = draw({"#.#.#.#",
                      ".......",
                      "######."});
  auto bybox = gradcam::localize(draw({"##....#", "##....#", "......#", "......#", "......#"}),
                                 gradcam::LocalizeOptions().largest_by_box_area(true));
  CHECK(bybox[0].box->x0 == 6);  // 1x5 column: area 5 pixels and box 5, vs 2x2 block: 4 and 4
  auto pixels = gradcam::localize(sparse);
  CHECK(pixels[0].box->y0 == 2);
  CHECK(pixels[0].box->x1 == 5);
  // min_area filters the reported components only
  auto filtered = gradcam::localize(sparse, gradcam::LocalizeOptions().min_area(2));
  CHECK(filtered[0].components.size() == 1);
}

TEST_CASE("degenerate maps give no box and a reason", "[localize]") {
  auto zero = gradcam::localize(at::zeros({4, 4}));
  CHECK_FALSE(zero[0].box);
  CHECK_THAT(zero[0].reason, Contains("all zero"));
  auto constant = gradcam::localize(at::full({4, 4}, 0.3));
  CHECK_FALSE(constant[0].box);
  CHECK_THAT(constant[0].reason, Contains("constant"));
  at::Tensor nan = at::ones({3, 3});
  nan[1][1] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THAT(gradcam::localize(nan)[0].reason, Contains("NaN"));
  auto single = gradcam::localize(draw({"...", ".#.", "..."}));
  REQUIRE(single[0].box);
  CHECK(single[0].box->x0 == 1);
  CHECK(single[0].box->x1 == 1);
  CHECK(single[0].box->area == 1);
  // a batch [N,1,h,w] gives N results
  auto batch = gradcam::localize(at::stack({draw({"#.", ".."}), at::zeros({2, 2})}).unsqueeze(1));
  REQUIRE(batch.size() == 2);
  CHECK(batch[0].box);
  CHECK_FALSE(batch[1].box);
  CHECK_THROWS_WITH(gradcam::localize(at::zeros({2, 2, 2})), Contains("[h,w]"));
  CHECK_THROWS_WITH(gradcam::localize(at::ones({2, 2}), gradcam::LocalizeOptions().connectivity(6)),
                    Contains("connectivity must be 4 or 8, got 6"));
}

TEST_CASE("the threshold is relative to the maximum", "[localize]") {
  at::Tensor m = at::tensor({0.0f, 0.1f, 0.2f, 1.0f, 0.14f, 0.16f}).view({1, 6});
  auto r = gradcam::localize(m, gradcam::LocalizeOptions().threshold(0.15));
  // kept: 0.2, 1.0 (x=2..3) and 0.16 (x=5); 0.14 < 0.15 splits them
  REQUIRE(r[0].box);
  CHECK(r[0].box->x0 == 2);
  CHECK(r[0].box->x1 == 3);
  CHECK(r[0].components.size() == 2);
  // upsampling first: a 2x2 map to 4x4
  auto up = gradcam::localize(at::tensor({1.0f, 0.0f, 0.0f, 0.0f}).view({2, 2}),
                              gradcam::LocalizeOptions().size({4, 4}).threshold(0.5));
  REQUIRE(up[0].box);
  CHECK(up[0].box->x0 == 0);
  CHECK(up[0].box->x1 == 1);  // bilinear: values 1, .75, .25, 0 along the first row
}

TEST_CASE("IoU edge cases", "[localize]") {
  CHECK(gradcam::iou(box(0, 0, 9, 9), box(0, 0, 9, 9)) == 1.0);
  CHECK(gradcam::iou(box(0, 0, 9, 9), box(10, 0, 19, 9)) == 0.0);                 // adjacent
  CHECK(gradcam::iou(box(0, 0, 9, 9), box(9, 0, 18, 9)) == Approx(10.0 / 190.0));  // share a column
  CHECK(gradcam::iou(box(0, 0, 9, 9), box(2, 2, 5, 5)) == Approx(16.0 / 100.0));   // contained
  CHECK(gradcam::iou(box(3, 3, 3, 3), box(3, 3, 3, 3)) == 1.0);                    // single pixel
  CHECK(gradcam::best_iou(std::nullopt, {box(0, 0, 1, 1)}) == 0.0);
  CHECK(gradcam::best_iou(box(0, 0, 1, 1), {}) == 0.0);
}

#if defined(GRADCAM_WITH_OPENCV)
TEST_CASE("boxes map back through resize and centre crop", "[localize]") {
  cv::Mat img(300, 400, CV_8UC3, cv::Scalar(10, 20, 30));  // w 400, h 300
  gradcam::Geometry g;
  at::Tensor x = gradcam::to_tensor(img, gradcam::Preprocess().resize(256).crop(224), &g);
  CHECK(x.sizes() == at::IntArrayRef({1, 3, 224, 224}));
  // torchvision: shorter side 300 -> 256, longer int(256 * 400 / 300) = 341; crop offsets
  // round((341 - 224) / 2) = 58 (ties to even), round((256 - 224) / 2) = 16
  CHECK(g.scale_x == Approx(341.0 / 400.0));
  CHECK(g.scale_y == Approx(256.0 / 300.0));
  CHECK(g.crop_x == 58);
  CHECK(g.crop_y == 16);
  // the whole input maps to x 58/0.8525 = 68.0 .. 282/0.8525 = 330.8, y 16/0.8533 = 18.75 .. 240/0.8533 = 281.25
  auto whole = g.to_image({0, 0, 223, 223});
  CHECK(whole == gradcam::Box{68, 18, 330, 281});
  // and back: the original box covers the input box
  auto back = g.to_input(whole);
  CHECK(back.x0 <= 0);
  CHECK(back.x1 >= 223);
  // no resize, no crop: identity
  gradcam::Geometry id;
  (void)gradcam::to_tensor(img, gradcam::Preprocess().resize(0).crop(0), &id);
  CHECK(id.to_image({5, 6, 7, 8}) == gradcam::Box{5, 6, 7, 8});
}
#endif

TEST_CASE("CSV annotations", "[localize][annotations]") {
  const auto ok = write("ok.csv", "file,label,x0,y0,x1,y1\na.png,three,1,2,3,4\na.png,three,5,6,7,8\nsub/b.png,1,0,0,9,9\n");
  auto rows = gradcam::read_csv_annotations(ok);
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].image == (fs::path(ok).parent_path() / "a.png").string());
  CHECK(rows[0].objects.size() == 2);
  CHECK(rows[0].objects[1].box.x1 == 7);
  CHECK(rows[1].objects[0].label == "1");
  const auto few = write("few.csv", "file,label,x0,y0,x1,y1\na.png,three,1,2,3\n");
  CHECK_THROWS_WITH(gradcam::read_csv_annotations(few), Contains(few + ":2") && Contains("expected 6 fields"));
  const auto notint = write("notint.csv", "a.png,three,1,2,x,4\n");
  CHECK_THROWS_WITH(gradcam::read_csv_annotations(notint), Contains(notint + ":1") && Contains("'x' is not an integer"));
  const auto inverted = write("inv.csv", "a.png,three,5,2,1,4\n");
  CHECK_THROWS_WITH(gradcam::read_csv_annotations(inverted), Contains(inverted + ":1") && Contains("x0<=x1"));
  const auto empty = write("empty.csv", "file,label,x0,y0,x1,y1\n");
  CHECK_THROWS_WITH(gradcam::read_csv_annotations(empty), Contains("no rows"));
  CHECK_THROWS_WITH(gradcam::read_csv_annotations("/no/such.csv"), Contains("/no/such.csv"));
}

// RFC 4180, section 2: quoted fields hold commas (rule 6), line breaks (6) and doubled quotes (7);
// CRLF ends a record (1). Each case below was misread by the line-splitting reader before.
TEST_CASE("CSV annotations are read as RFC 4180 says", "[localize][annotations]") {
  const auto bom = write("bom.csv", "\xEF\xBB\xBF" "file,label,x0,y0,x1,y1\r\na.png,zero,1,2,3,4\r\n");
  auto rows = gradcam::read_csv_annotations(bom);
  REQUIRE(rows.size() == 1);  // the header is recognised behind the byte order mark
  CHECK(rows[0].image == (fs::path(bom).parent_path() / "a.png").string());
  CHECK(rows[0].objects[0].label == "zero");
  CHECK(rows[0].objects[0].box.y1 == 4);
  CHECK(rows[0].objects[0].source == bom + ":2");

  const auto quoted = write("quoted.csv",
                            "\"a, b.png\",\"zero\",1,2,3,4\n"
                            "# a comment\n"
                            "\n"
                            "c.png,\"say \"\"hi\"\"\",\"5\",6,7,8\n"
                            "\"two\nlines.png\",one,0,0,1,1\n"
                            "d.png,  spaced  ,0,0,1,1\n");
  rows = gradcam::read_csv_annotations(quoted);
  REQUIRE(rows.size() == 4);
  CHECK(rows[0].image == (fs::path(quoted).parent_path() / "a, b.png").string());
  CHECK(rows[0].objects[0].label == "zero");
  CHECK(rows[1].objects[0].label == "say \"hi\"");
  CHECK(rows[1].objects[0].box.x0 == 5);
  CHECK(rows[1].objects[0].source == quoted + ":4");
  CHECK(rows[2].image == (fs::path(quoted).parent_path() / "two\nlines.png").string());
  CHECK(rows[3].objects[0].label == "spaced");
  CHECK(rows[3].objects[0].source == quoted + ":7");  // the record after a two-line field

  const auto open_quote = write("open.csv", "a.png,zero,0,0,1,1\n\"b.png,zero,0,0,1,1\n");
  CHECK_THROWS_WITH(gradcam::read_csv_annotations(open_quote), open_quote + ":2: a quoted field is never closed");
  const auto stray = write("stray.csv", "a\"b.png,zero,0,0,1,1\n");
  CHECK_THROWS_WITH(gradcam::read_csv_annotations(stray),
                    stray + ":1: a double quote inside a field; quote the whole field and double the quotes "
                            "in it (\"a \"\"b\"\"\")");
  const auto after = write("after.csv", "\"a.png\"x,zero,0,0,1,1\n");
  CHECK_THROWS_WITH(gradcam::read_csv_annotations(after), after + ":1: text after the closing quote of a field");
}

TEST_CASE("VOC / ImageNet XML annotations", "[localize][annotations]") {
  const auto ok = write("ok.xml",
                        "<annotation>\n <filename>ILSVRC2012_val_00000001</filename>\n"
                        " <object>\n  <name>n01751748</name>\n  <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20</ymax></bndbox>\n </object>\n"
                        " <object>\n  <name>n01751748</name>\n  <bndbox><xmin>30</xmin><ymin>30</ymin><xmax>40</xmax><ymax>41</ymax></bndbox>\n </object>\n"
                        "</annotation>\n");
  auto a = gradcam::read_voc_annotation(ok, "/images");
  CHECK(a.image == "/images/ILSVRC2012_val_00000001.JPEG");
  REQUIRE(a.objects.size() == 2);
  CHECK(a.objects[0].box.x0 == 0);  // 1-based -> 0-based
  CHECK(a.objects[0].box.y1 == 19);
  CHECK(a.objects[1].label == "n01751748");
  const auto nobox = write("nobox.xml", "<annotation>\n<filename>x.jpg</filename>\n<object>\n<name>cat</name>\n</object>\n</annotation>\n");
  CHECK_THROWS_WITH(gradcam::read_voc_annotation(nobox, "."), Contains(nobox + ":3") && Contains("without a <bndbox>"));
  const auto badnum = write("badnum.xml", "<annotation><filename>x.jpg</filename>\n<object><name>cat</name>\n<bndbox><xmin>a</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>");
  CHECK_THROWS_WITH(gradcam::read_voc_annotation(badnum, "."), Contains(badnum + ":3") && Contains("<xmin> 'a' is not an integer"));
  const auto unclosed = write("unclosed.xml", "<annotation><filename>x.jpg</filename>\n\n<object><name>cat</name></annotation>");
  CHECK_THROWS_WITH(gradcam::read_voc_annotation(unclosed, "."), Contains(unclosed + ":3") && Contains("never closed"));
  const auto notvoc = write("notvoc.xml", "<html></html>");
  CHECK_THROWS_WITH(gradcam::read_voc_annotation(notvoc, "."), Contains("no <annotation>"));
}

TEST_CASE("labels map names, WordNet ids and indices", "[localize][annotations]") {
  const auto path = write("labels.txt", "n01440764 tench\nn01443537 goldfish\ngreat white shark\n");
  auto l = gradcam::Labels::read(path);
  CHECK(l.size() == 3);
  CHECK(l.index("n01443537") == 1);
  CHECK(l.index("goldfish") == 1);
  CHECK(l.index("great white shark") == 2);
  CHECK(l.index("2") == 2);
  CHECK_FALSE(l.index("7").has_value());
  CHECK_FALSE(l.index("whale").has_value());
  CHECK(l.index("2.0") == 2);
  // found by the fuzzer: a huge "integer" once reached an out-of-range double -> long long cast
  CHECK_FALSE(l.index("22e144").has_value());
  CHECK_FALSE(l.index("-1e30").has_value());
  CHECK_FALSE(l.index("1e400").has_value());
  CHECK_THROWS_WITH(gradcam::Labels::read(write("nolabels.txt", "\n\n")), Contains("is empty"));
}

TEST_CASE("metrics on a hand-computed set", "[localize][metrics]") {
  // truth box 0..9 (100 px). Box A = same (IoU 1), box B = 0..9 x 0..4 (IoU 0.5), box C = far (0).
  const auto truth = box(0, 0, 9, 9);
  const auto A = box(0, 0, 9, 9), B = box(0, 0, 9, 4), C = box(50, 50, 59, 59);
  gradcam::LocAccumulator acc(0.5, 2);
  // 1: top-1 right, box A                 -> cls, top1 loc, top5 loc, known (A), IoU 1, peak in
  acc.add({1, {truth}, {1, 2}, {A, C}, A, std::make_pair(5, 5)});
  // 2: top-1 wrong, class 1 second with B -> top5 loc only, known B (IoU .5 counts), peak at 11 (tolerance 2: in)
  acc.add({1, {truth}, {2, 1}, {C, B}, B, std::make_pair(11, 5)});
  // 3: top-1 right but box C              -> cls only; known C: IoU 0; peak at 12 (out)
  acc.add({1, {truth}, {1, 3}, {C, A}, C, std::make_pair(12, 5)});
  // 4: wrong and no box at all            -> nothing; no peak
  acc.add({1, {truth}, {3, 4}, {std::nullopt, std::nullopt}, std::nullopt, std::nullopt});
  auto m = acc.metrics();
  CHECK(m.n == 4);
  CHECK(m.top1_cls == Approx(2.0 / 4));
  CHECK(m.top1_loc == Approx(1.0 / 4));
  CHECK(m.top5_loc == Approx(2.0 / 4));
  CHECK(m.gt_known_loc == Approx(2.0 / 4));
  CHECK(m.mean_iou == Approx((1.0 + 0.5 + 0 + 0) / 4));
  CHECK(m.pointing_game == Approx(2.0 / 4));
  CHECK(gradcam::LocAccumulator().metrics().n == 0);

  // the counts behind the fractions, and the counts of two halves add up to the whole's exactly
  const gradcam::LocCounts& c = acc.counts();
  CHECK((c.n == 4 && c.top1_cls == 2 && c.top1_loc == 1 && c.top5_loc == 2 && c.gt_known_loc == 2 &&
         c.pointing_game == 2));
  CHECK(c.iou_sum == 3 * (int64_t{1} << 39));  // 1.5 in units of 2^-40
  gradcam::LocAccumulator first(0.5, 2), second(0.5, 2);
  first.add({1, {truth}, {1, 2}, {A, C}, A, std::make_pair(5, 5)});
  first.add({1, {truth}, {3, 4}, {std::nullopt, std::nullopt}, std::nullopt, std::nullopt});
  second.add({1, {truth}, {2, 1}, {C, B}, B, std::make_pair(11, 5)});
  second.add({1, {truth}, {1, 3}, {C, A}, C, std::make_pair(12, 5)});
  gradcam::LocCounts sum = second.counts();
  sum += first.counts();
  CHECK((sum.n == c.n && sum.top1_cls == c.top1_cls && sum.top1_loc == c.top1_loc && sum.top5_loc == c.top5_loc &&
         sum.gt_known_loc == c.gt_known_loc && sum.pointing_game == c.pointing_game && sum.iou_sum == c.iou_sum));
  CHECK(sum.metrics().mean_iou == m.mean_iou);
}

TEST_CASE("pointing_hit: inside a true box grown by the tolerance, edges included", "[localize][metrics]") {
  const std::vector<gradcam::Box> truth = {box(10, 10, 19, 19), box(40, 0, 49, 9)};
  CHECK(gradcam::pointing_hit({10, 19}, truth, 0));   // the first box's corner pixel
  CHECK(gradcam::pointing_hit({45, 5}, truth, 0));    // in the second box only
  CHECK_FALSE(gradcam::pointing_hit({20, 15}, truth, 0));  // one pixel right of the first
  CHECK(gradcam::pointing_hit({22, 15}, truth, 3));   // within 3
  CHECK_FALSE(gradcam::pointing_hit({23, 15}, truth, 3));
  CHECK(gradcam::pointing_hit({7, 7}, truth, 3));     // diagonally: x and y each within 3
  CHECK_FALSE(gradcam::pointing_hit({15, 15}, {}, 100));  // no box: never a hit
}

TEST_CASE("the IoU sum in units of 2^-40 keeps the mean within 1e-12", "[localize][metrics]") {
  // truth 0..8 x 0..8 (81 px); box 0..8 x 0..2 (27 px): IoU 1/3, which no binary sum holds exactly
  gradcam::LocAccumulator acc;
  for (int i = 0; i < 1000; ++i) acc.add({1, {box(0, 0, 8, 8)}, {1}, {box(0, 0, 8, 2)}, box(0, 0, 8, 2), std::nullopt});
  CHECK(std::abs(acc.metrics().mean_iou - 1.0 / 3) < 1e-12);
}
