#include "xgrad/optim/adam.hpp"
