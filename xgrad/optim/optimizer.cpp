#include "xgrad/optim/optimizer.hpp"
