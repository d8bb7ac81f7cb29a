#include "xgrad/optim/clip.hpp"
