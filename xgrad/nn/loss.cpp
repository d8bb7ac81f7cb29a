#include "xgrad/nn/loss.hpp"
