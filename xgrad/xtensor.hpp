#pragma once
// Opt-in interop: xg::Tensor <-> xtensor. Including this pulls in xtensor (slow to
// compile), which is why xgrad/xgrad.hpp does not.
#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>

#include "xgrad/xgrad.hpp"
