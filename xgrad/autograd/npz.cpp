#include "xgrad/autograd/io.hpp"
