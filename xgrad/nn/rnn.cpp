#include "xgrad/nn/rnn.hpp"
