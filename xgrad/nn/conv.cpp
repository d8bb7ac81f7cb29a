#include "xgrad/nn/conv.hpp"
