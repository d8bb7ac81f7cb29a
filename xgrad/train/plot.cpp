#include "xgrad/train/plot.hpp"
