#pragma once
// What the two vision examples (captioning, vqa) share:
//   - a generator of small synthetic scenes: a 32x32 RGB image, split into a 4x4 grid of
//     8x8-pixel cells, with one to three coloured shapes (circle, square, triangle in red,
//     green, blue or yellow), each inside its own cell, plus the ground truth (shape,
//     colour, grid row and column of every object) that captions and questions are made
//     from. The coarse grid makes "above" and "left of" unambiguous, and the CNN below
//     downsamples by exactly the cell size, so feature (r, c) looks at cell (r, c): the
//     attention a model puts on an object can be measured, not just looked at.
//   - SceneEncoder: a small CNN, image -> grid of features (captioning's grid; vqa encodes each cell on its own).
//   - write_attention_svg: the image with one attention map per panel (one per word or
//     question), written by hand as SVG <rect>s.
// Everything is deterministic given the xg::Generator passed in.
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <xgrad/xgrad.hpp>

namespace vision {

inline constexpr int kImage = 32;             // image side in pixels
inline constexpr int kGrid = 4;               // cells per side
inline constexpr int kCell = kImage / kGrid;  // 8 pixels per cell: the CNN pools three times
inline constexpr int kCells = kGrid * kGrid;         // 16 attention positions

enum Shape { circle, square, triangle };
enum Colour { red, green, blue, yellow };
inline constexpr int kShapes = 3;
inline constexpr int kColours = 4;
inline const std::array<const char*, kShapes> shape_names = {"circle", "square", "triangle"};
inline const std::array<const char*, kColours> colour_names = {"red", "green", "blue", "yellow"};

struct Object {
  int shape = 0;   // Shape
  int colour = 0;  // Colour
  int row = 0;     // grid cell, 0 = top
  int col = 0;     // grid cell, 0 = left
  int cell() const { return row * kGrid + col; }
};

struct Scene {
  std::vector<float> pixels;    // [3, kImage, kImage], channel-major, values in [0, 1]
  std::vector<Object> objects;  // in reading order (row, then column)
};

struct SceneOptions {
  int min_objects = 1;
  int max_objects = 3;
  double noise = 0.04;  // uniform pixel noise amplitude (± this), after drawing
};

// One scene: 1..3 objects in distinct cells (reading order), random sizes, small offsets
// inside their cells, colour jitter and pixel noise, all drawn from `gen`.
Scene make_scene(xg::Generator& gen, const SceneOptions& options = {});

// Images of a batch as one tensor [B, 3, kImage, kImage] (float32).
xg::Tensor image_batch(const std::vector<Scene>& scenes);

// The CNN encoder: three (conv 3x3 -> relu -> max-pool 2) blocks take 32x32 to the 4x4
// grid, one more conv 3x3 at 4x4 lets every cell see its neighbours. Two coordinate
// channels (row, column in [-1, 1]) are appended to the RGB input (CoordConv, Liu et al.
// 2018), so the features know where they are: "above" and "left of" need it, and
// mean-pooled features keep some of it. Note the receptive field of a grid feature spans
// its neighbours too (see the captioning report on what the attention does with that).
//   images [B, 3, 32, 32] -> grid [B, 16, C]   (position l = row * 4 + col)
class SceneEncoder : public xg::nn::Module {
 public:
  explicit SceneEncoder(std::int64_t channels);
  xg::Tensor forward(const xg::Tensor& images) const;
  std::int64_t channels() const { return channels_; }

 private:
  std::int64_t channels_;
  std::shared_ptr<xg::nn::Conv2d> conv1_, conv2_, conv3_, conv4_;
  std::shared_ptr<xg::nn::MaxPool2d> pool_;
  xg::Tensor coords_;  // [1, 2, 32, 32], constant
};

// One panel of an attention figure: a title (the word) and weights over the kCells grid
// positions (undefined-length 0 = show the plain image).
struct Panel {
  std::string title;
  std::vector<float> weights;  // kCells values (row-major grid), or empty
  std::string subtitle;        // small text under the title (e.g. "on object 0.93")
};

// Writes an SVG: a caption line on top, then one panel per entry, each the image drawn as
// kImage x kImage <rect> pixels with the attention laid over it: every grid cell is
// darkened by (1 - w / max w) so the attended cells stay bright, and the most attended
// cell is outlined. Throws xg::IOError when the file cannot be written.
void write_attention_svg(const std::string& path, const std::string& caption, const Scene& scene,
                         const std::vector<Panel>& panels);

// Mass of `weights` (kCells values) on the given cells.
double mass_on(const std::vector<float>& weights, const std::vector<int>& cells);

}  // namespace vision
