#include "xgrad/nn/attention.hpp"
