#pragma once
// Every failure a user can cause is one of these, with a message that names the op
// and the shapes involved, e.g. "matmul: [32,64] x [65,128]: inner dimensions differ".
#include <stdexcept>
#include <string>

namespace xg {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// Shapes that do not fit the op (broadcasting, matmul, reshape, state shapes).
class ShapeError : public Error {
 public:
  using Error::Error;
};
// Mixed dtypes, or a dtype the op cannot take (e.g. int64 into tanh).
class DtypeError : public Error {
 public:
  using Error::Error;
};
// Indices out of range (token ids, class targets, dims).
class IndexError : public Error {
 public:
  using Error::Error;
};
// Misuse of the autograd state: backward through a freed graph, non-scalar without seed.
class StateError : public Error {
 public:
  using Error::Error;
};
// Files: missing, truncated, corrupt, or of the wrong kind.
class IOError : public Error {
 public:
  using Error::Error;
};
// The system refused memory (std::bad_alloc from a tensor's storage): names the op, the
// shape and the bytes. Nothing was recorded, so the tape stays usable after a catch.
class ResourceError : public Error {
 public:
  using Error::Error;
};
// DetectAnomalyGuard found a NaN or Inf.
class AnomalyError : public Error {
 public:
  using Error::Error;
};

}  // namespace xg
