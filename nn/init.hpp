#pragma once
// Parameter initialisation, PyTorch's torch.nn.init: the same formulas and fan rules.
//
// Each function fills the tensor in place through data<T>() (not recorded on the tape,
// like PyTorch's no_grad initialisers) and returns the same handle, so both
//   init::xavier_uniform_(lin.weight);   and   Tensor w = init::zeros_(Tensor::empty(...));
// work. Random ones draw from `gen`, or from xg::default_generator() (seeded by
// xg::manual_seed) when gen is null, in row-major element order: a seed reproduces a
// model. The tensor must be float32 or float64 (int64: DtypeError; undefined: StateError).
#include <cstdint>

#include "../autograd/random.hpp"
#include "../autograd/tensor.hpp"

namespace xg::nn::init {

enum class Nonlinearity {
  linear, conv1d, conv2d, conv3d, conv_transpose1d, conv_transpose2d, conv_transpose3d,
  sigmoid, tanh, relu, leaky_relu, selu,
};
enum class FanMode { fan_in, fan_out };

// PyTorch's recommended gain: 1 for linear / conv / sigmoid, 5/3 for tanh, sqrt(2) for
// relu, sqrt(2 / (1 + param^2)) for leaky_relu (param = negative slope), 3/4 for selu.
// A NaN or infinite param is an Error.
double calculate_gain(Nonlinearity nonlinearity, double param = 0.01);

struct Fans {
  std::int64_t fan_in = 0;
  std::int64_t fan_out = 0;
};
// For a weight [out, in, k...]: fan_in = in * prod(k), fan_out = out * prod(k).
// Fewer than 2 dims is a ShapeError (PyTorch raises ValueError).
Fans fan_in_and_fan_out(const Tensor& t);

// U[a, b): a > b (or non-finite bounds) is an Error.
Tensor uniform_(Tensor t, double a = 0.0, double b = 1.0, Generator* gen = nullptr);
// N(mean, std^2): std < 0 is an Error.
Tensor normal_(Tensor t, double mean = 0.0, double std = 1.0, Generator* gen = nullptr);
Tensor constant_(Tensor t, double value);
Tensor zeros_(Tensor t);
Tensor ones_(Tensor t);

// Glorot: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out)); normal: std = gain *
// sqrt(2 / (fan_in + fan_out)). Needs >= 2 dims (ShapeError). All-zero fans (an empty
// tensor) leave it unchanged.
Tensor xavier_uniform_(Tensor t, double gain = 1.0, Generator* gen = nullptr);
Tensor xavier_normal_(Tensor t, double gain = 1.0, Generator* gen = nullptr);

// He: std = calculate_gain(nonlinearity, a) / sqrt(fan); uniform bound sqrt(3) * std.
// `a` is the negative slope of leaky_relu. Needs >= 2 dims (ShapeError). A tensor with
// a zero-size dim is left unchanged (PyTorch warns and does nothing).
// kaiming_uniform_(w, sqrt(5)) is the default init of Linear and Conv: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
Tensor kaiming_uniform_(Tensor t, double a = 0.0, FanMode mode = FanMode::fan_in,
                        Nonlinearity nonlinearity = Nonlinearity::leaky_relu, Generator* gen = nullptr);
Tensor kaiming_normal_(Tensor t, double a = 0.0, FanMode mode = FanMode::fan_in,
                       Nonlinearity nonlinearity = Nonlinearity::leaky_relu, Generator* gen = nullptr);

// A (semi-)orthogonal matrix times gain, like torch.nn.init.orthogonal_: the tensor is
// viewed as [rows = size(0), cols = numel / rows], filled with N(0, 1), the larger side
// orthogonalised by a Householder QR in double (no LAPACK), and each column of Q
// multiplied by sign(diag(R)) so the result is uniformly (Haar) distributed. Rows are
// orthonormal when rows <= cols, columns when rows >= cols (QᵀQ = I). Needs >= 2 dims
// (ShapeError); an empty tensor is left unchanged.
Tensor orthogonal_(Tensor t, double gain = 1.0, Generator* gen = nullptr);

}  // namespace xg::nn::init
