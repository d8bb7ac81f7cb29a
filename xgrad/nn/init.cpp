#include "xgrad/nn/init.hpp"
