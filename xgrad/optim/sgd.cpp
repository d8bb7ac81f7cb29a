#include "xgrad/optim/sgd.hpp"
