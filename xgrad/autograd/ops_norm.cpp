#include "xgrad/autograd/ops_norm.hpp"
