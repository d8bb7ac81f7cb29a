#include "xgrad/train/metrics.hpp"
