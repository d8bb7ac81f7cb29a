#include "xgrad/train/progress.hpp"
