#include "xgrad/train/tbptt.hpp"
