#include "xgrad/optim/adagrad.hpp"
