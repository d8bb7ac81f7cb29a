#include "xgrad/optim/rmsprop.hpp"
