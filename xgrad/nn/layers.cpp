#include "xgrad/nn/layers.hpp"
