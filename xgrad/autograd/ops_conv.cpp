#include "xgrad/autograd/ops_conv.hpp"
