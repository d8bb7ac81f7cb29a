#include "xgrad/optim/scheduler.hpp"
