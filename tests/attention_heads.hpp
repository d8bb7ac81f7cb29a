#pragma once
// The heads layout the attention op tests build: time-major [L, B, H*d] or batch_first
// [B, L, H*d] queries, keys and values.
#include <cstdint>

#include <xgrad/xgrad.hpp>

namespace xgtest {

inline xg::AttentionHeads heads(bool bf, std::int64_t B, std::int64_t H, std::int64_t L, std::int64_t S,
                                std::int64_t dk, std::int64_t dv) {
  xg::AttentionHeads hd;
  hd.B = B;
  hd.H = H;
  hd.Lq = L;
  hd.S = S;
  hd.dk = dk;
  hd.dv = dv;
  hd.q = xg::head_strides(bf, B, L, H * dk);
  hd.k = xg::head_strides(bf, B, S, H * dk);
  hd.v = xg::head_strides(bf, B, S, H * dv);
  hd.o = xg::head_strides(bf, B, L, H * dv);
  return hd;
}

inline xg::Shape seq(bool bf, std::int64_t B, std::int64_t L, std::int64_t W) {
  return bf ? xg::Shape{B, L, W} : xg::Shape{L, B, W};
}

}  // namespace xgtest
