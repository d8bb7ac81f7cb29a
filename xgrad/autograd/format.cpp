#include "xgrad/autograd/ops.hpp"
