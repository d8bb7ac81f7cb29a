#pragma once
// xgrad: define-by-run automatic differentiation for recurrent models.
// This header is all a user program needs; it does not include xtensor.
#include "xgrad/autograd/dtype.hpp"
#include "xgrad/autograd/error.hpp"
#include "xgrad/autograd/factory.hpp"
#include "xgrad/autograd/format.hpp"
#include "xgrad/autograd/gradcheck.hpp"
#include "xgrad/autograd/io.hpp"
#include "xgrad/autograd/ops.hpp"
#include "xgrad/autograd/random.hpp"
#include "xgrad/autograd/runtime.hpp"
#include "xgrad/autograd/shape.hpp"
#include "xgrad/autograd/tape.hpp"
#include "xgrad/autograd/tensor.hpp"
