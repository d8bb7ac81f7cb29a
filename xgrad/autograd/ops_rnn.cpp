#include "xgrad/autograd/ops_rnn.hpp"
