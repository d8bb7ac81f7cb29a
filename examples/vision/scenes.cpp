// The synthetic scenes, the CNN encoder and the attention figures shared by captioning.cpp
// and vqa.cpp (see scenes.hpp).
#include "scenes.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>

#include <fmt/format.h>

namespace vision {

namespace {

// RGB of each Colour before jitter: saturated, and far apart even in greyscale-ish terms.
constexpr float kPalette[kColours][3] = {
    {0.92f, 0.16f, 0.14f},  // red
    {0.14f, 0.78f, 0.22f},  // green
    {0.18f, 0.36f, 0.96f},  // blue
    {0.96f, 0.86f, 0.12f},  // yellow
};

// Is the point (x, y) (pixel units) inside a shape centred at (cx, cy) of half-size s?
bool inside(int shape, double x, double y, double cx, double cy, double s) {
  const double dx = x - cx, dy = y - cy;
  switch (shape) {
    case circle: return dx * dx + dy * dy <= s * s;
    case square: return std::abs(dx) <= s * 0.85 && std::abs(dy) <= s * 0.85;  // same area feel as the circle
    default:  // triangle, apex up: half-width grows from 0 at the top to s at the base
      return dy >= -s && dy <= s && std::abs(dx) <= (dy + s) * 0.5 * 1.15;
  }
}

}  // namespace

Scene make_scene(xg::Generator& gen, const SceneOptions& options) {
  Scene scene;
  const int n = static_cast<int>(gen.randint(options.min_objects, options.max_objects + 1));
  // n distinct cells: a partial Fisher-Yates shuffle, then reading order.
  std::array<int, kCells> cells{};
  for (int i = 0; i < kCells; ++i) cells[i] = i;
  for (int i = 0; i < n; ++i) std::swap(cells[i], cells[gen.randint(i, kCells)]);
  std::sort(cells.begin(), cells.begin() + n);

  const float background = static_cast<float>(0.05 + 0.10 * gen.uniform());
  scene.pixels.assign(3 * kImage * kImage, background);
  for (int i = 0; i < n; ++i) {
    Object o;
    o.shape = static_cast<int>(gen.randint(0, kShapes));
    o.colour = static_cast<int>(gen.randint(0, kColours));
    o.row = cells[i] / kGrid;
    o.col = cells[i] % kGrid;
    scene.objects.push_back(o);

    // Half-size 2.6..3.5 px and an offset that keeps the shape inside its 8x8 cell.
    const double s = 2.6 + 0.9 * gen.uniform();
    const double slack = kCell / 2.0 - s;
    const double cx = o.col * kCell + kCell / 2.0 + slack * (2 * gen.uniform() - 1);
    const double cy = o.row * kCell + kCell / 2.0 + slack * (2 * gen.uniform() - 1);
    float rgb[3];
    for (int ch = 0; ch < 3; ++ch) {
      rgb[ch] = std::clamp(kPalette[o.colour][ch] + static_cast<float>(0.12 * (gen.uniform() - 0.5)), 0.0f, 1.0f);
    }
    // 3x3 supersampling inside the cell only: the shape's coverage of each pixel.
    for (int y = o.row * kCell; y < (o.row + 1) * kCell; ++y) {
      for (int x = o.col * kCell; x < (o.col + 1) * kCell; ++x) {
        int hits = 0;
        for (int sy = 0; sy < 3; ++sy) {
          for (int sx = 0; sx < 3; ++sx) hits += inside(o.shape, x + (sx + 0.5) / 3, y + (sy + 0.5) / 3, cx, cy, s);
        }
        if (hits == 0) continue;
        const float a = hits / 9.0f;
        for (int ch = 0; ch < 3; ++ch) {
          float& p = scene.pixels[(ch * kImage + y) * kImage + x];
          p = (1 - a) * p + a * rgb[ch];
        }
      }
    }
  }
  for (float& p : scene.pixels) {
    p = std::clamp(p + static_cast<float>(options.noise * (2 * gen.uniform() - 1)), 0.0f, 1.0f);
  }
  return scene;
}

xg::Tensor image_batch(const std::vector<Scene>& scenes) {
  xg::Tensor images = xg::Tensor::empty({static_cast<std::int64_t>(scenes.size()), 3, kImage, kImage}, xg::f32);
  float* out = images.data<float>();
  for (const Scene& s : scenes) out = std::copy(s.pixels.begin(), s.pixels.end(), out);
  return images;
}

// ---- the CNN ----------------------------------------------------------------------------

SceneEncoder::SceneEncoder(std::int64_t channels) : channels_(channels) {
  using xg::nn::Conv2d;
  conv1_ = register_module("conv1", std::make_shared<Conv2d>(5, 16, 3, 1, 1));
  conv2_ = register_module("conv2", std::make_shared<Conv2d>(16, 32, 3, 1, 1));
  conv3_ = register_module("conv3", std::make_shared<Conv2d>(32, channels, 3, 1, 1));
  conv4_ = register_module("conv4", std::make_shared<Conv2d>(channels, channels, 3, 1, 1));
  pool_ = register_module("pool", std::make_shared<xg::nn::MaxPool2d>(2));
  std::vector<float> c(2 * kImage * kImage);
  for (int y = 0; y < kImage; ++y) {
    for (int x = 0; x < kImage; ++x) {
      c[y * kImage + x] = (y + 0.5f) / kImage * 2 - 1;             // row
      c[(kImage + y) * kImage + x] = (x + 0.5f) / kImage * 2 - 1;  // column
    }
  }
  coords_ = xg::from_vector(c, {1, 2, kImage, kImage});
}

xg::Tensor SceneEncoder::forward(const xg::Tensor& images) const {
  const std::int64_t B = images.size(0);
  xg::Tensor x = xg::concat({images, xg::broadcast_to(coords_, {B, 2, kImage, kImage})}, 1);  // [B, 5, 32, 32]
  x = pool_->forward(xg::relu(conv1_->forward(x)));                                            // [B, 16, 16, 16]
  x = pool_->forward(xg::relu(conv2_->forward(x)));                                            // [B, 32, 8, 8]
  x = pool_->forward(xg::relu(conv3_->forward(x)));                                            // [B, C, 4, 4]
  x = xg::relu(conv4_->forward(x));                                                            // [B, C, 4, 4]
  return xg::transpose(xg::reshape(x, {B, channels_, kCells}), 1, 2);                          // [B, 16, C]
}

// ---- figures ----------------------------------------------------------------------------

double mass_on(const std::vector<float>& weights, const std::vector<int>& cells) {
  double m = 0;
  for (int c : cells) m += weights.at(c);
  return m;
}

void write_attention_svg(const std::string& path, const std::string& caption, const Scene& scene,
                         const std::vector<Panel>& panels) {
  constexpr int px = 4;                    // screen pixels per image pixel
  constexpr int side = kImage * px;        // 128
  constexpr int pad = 14, head = 40, per_row = 6;
  const int n = static_cast<int>(panels.size());
  const int cols = std::min(n, per_row), rows = (n + per_row - 1) / per_row;
  // Wide enough for the caption too (~9 px per character at font-size 17).
  const int width = std::max(pad + cols * (side + pad), 2 * pad + 9 * static_cast<int>(caption.size()));
  const int height = 36 + rows * (side + head + pad);

  // The image once, as a <symbol> every panel reuses.
  std::string pixels;
  for (int y = 0; y < kImage; ++y) {
    for (int x = 0; x < kImage; ++x) {
      auto v = [&](int ch) { return static_cast<int>(std::lround(255 * scene.pixels[(ch * kImage + y) * kImage + x])); };
      pixels += fmt::format("<rect x='{}' y='{}' width='1.05' height='1.05' fill='rgb({},{},{})'/>", x, y, v(0), v(1), v(2));
    }
    pixels += '\n';
  }

  std::string svg = fmt::format(
      "<svg xmlns='http://www.w3.org/2000/svg' xmlns:xlink='http://www.w3.org/1999/xlink' width='{0}' height='{1}' "
      "viewBox='0 0 {0} {1}' font-family='sans-serif'>\n"
      "<rect width='100%' height='100%' fill='white'/>\n"
      "<defs><symbol id='img' viewBox='0 0 {2} {2}' width='{3}' height='{3}'>\n{4}</symbol></defs>\n"
      "<text x='{5}' y='24' font-size='17'>{6}</text>\n",
      width, height, kImage, side, pixels, pad, xg::training::xml_escape(caption));
  for (int i = 0; i < n; ++i) {
    const Panel& p = panels[i];
    const int x0 = pad + (i % per_row) * (side + pad);
    const int y0 = 36 + (i / per_row) * (side + head + pad);
    svg += fmt::format("<text x='{}' y='{}' font-size='15' font-weight='bold'>{}</text>\n", x0, y0 + 16,
                       xg::training::xml_escape(p.title));
    if (!p.subtitle.empty()) {
      svg += fmt::format("<text x='{}' y='{}' font-size='11' fill='#555'>{}</text>\n", x0, y0 + 32,
                         xg::training::xml_escape(p.subtitle));
    }
    const int iy = y0 + head;
    svg += fmt::format("<use xlink:href='#img' href='#img' x='{}' y='{}'/>\n", x0, iy);
    if (p.weights.size() == static_cast<std::size_t>(kCells)) {
      const float wmax = *std::max_element(p.weights.begin(), p.weights.end());
      int best = 0;
      for (int c = 0; c < kCells; ++c) {
        if (p.weights[c] > p.weights[best]) best = c;
        // Dark where the model does not look: opacity 0.85 at weight 0, 0 at the maximum.
        const double dark = 0.85 * (1.0 - (wmax > 0 ? p.weights[c] / wmax : 0.0));
        svg += fmt::format("<rect x='{}' y='{}' width='{}' height='{}' fill='black' fill-opacity='{:.3f}'/>\n",
                           x0 + (c % kGrid) * kCell * px, iy + (c / kGrid) * kCell * px, kCell * px, kCell * px, dark);
      }
      svg += fmt::format("<rect x='{}' y='{}' width='{}' height='{}' fill='none' stroke='white' stroke-width='2'/>\n",
                         x0 + (best % kGrid) * kCell * px + 1, iy + (best / kGrid) * kCell * px + 1, kCell * px - 2,
                         kCell * px - 2);
    }
    svg += fmt::format("<rect x='{}' y='{}' width='{}' height='{}' fill='none' stroke='#888'/>\n", x0, iy, side, side);
  }
  svg += "</svg>\n";
  std::ofstream f(path, std::ios::binary);
  f << svg;
  if (!f) throw xg::IOError(fmt::format("write_attention_svg: cannot write {}", path));
}

}  // namespace vision
