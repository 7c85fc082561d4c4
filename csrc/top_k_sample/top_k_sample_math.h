// Per-row arithmetic of l2kd::top_k_sample, shared by the CPU kernel (.cpp) and the
// CUDA kernel (.cu) so that the CPU tests exercise the arithmetic the GPU runs.
//
// Semantics (LAMOL's top_k_logits + multinomial, HF's nucleus filter):
//   y_i = x_i / temperature (fp32, IEEE division)
//   S   = { i : y_i >= y_(k) }                 (k-th largest; ties at y_(k) are kept)
//   w_i = exp(y_i - max y)                     (-inf entries have w = 0: never sampled)
//   nucleus (0 < top_p < 1): order S by (y descending, index ascending); entry j is kept
//   iff the mass strictly before it is <= top_p * sum(w) (the first entry always is).
//   Sample i with probability w_i / sum over the kept set, by one uniform u in [0, 1).
//
// Floats are compared through "ordered keys": a monotone map float -> uint32 (with -0
// folded onto +0), so value order = unsigned key order and NaNs sit outside
// [key(-inf), key(+inf)].
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/l2kd_hd.h"

namespace l2kd {
namespace tks {

constexpr uint32_t kNegInfKey = 0x007FFFFFu;  // key_of(-inf)
constexpr uint32_t kPosInfKey = 0xFF800000u;  // key_of(+inf)
constexpr int64_t kNoIndexCut = INT64_MAX;

L2KD_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t b;
  std::memcpy(&b, &x, sizeof(b));
  return b;
#endif
}

L2KD_HD float bits_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float x;
  std::memcpy(&x, &b, sizeof(x));
  return x;
#endif
}

// Monotone key: a < b (as floats) <=> key_of(a) < key_of(b); -0 and +0 share a key.
L2KD_HD uint32_t key_of(float x) {
  x = x + 0.0f;  // -0 -> +0 (not folded away without fast-math)
  const uint32_t b = float_bits(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

L2KD_HD float float_of(uint32_t key) {
  return bits_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

L2KD_HD bool key_is_nan(uint32_t key) { return key < kNegInfKey || key > kPosInfKey; }

// Temperature scaling, exactly as the reference: fp32 IEEE division.
L2KD_HD float scale(float x, float temperature) { return x / temperature; }

// Smallest float lo with scale(lo) >= scale(xk): the kept set {scale(x) >= scale(xk)}
// equals {x >= lo}. lo == xk unless rounding of x/t merges neighbours of xk (then a few
// ulps below). Binary search over ordered keys; scale is monotone non-decreasing.
L2KD_HD float kept_lower_bound(float xk, float temperature) {
  if (temperature == 1.0f || !(xk > -INFINITY)) return xk;
  const float yk = scale(xk, temperature);
  uint32_t lo = kNegInfKey, hi = key_of(xk);
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if (scale(float_of(mid), temperature) >= yk) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return float_of(lo);
}

// Unnormalised probability of a kept entry; m = max of y over the row (finite).
L2KD_HD float weight(float y, float m) { return expf(y - m); }

L2KD_HD bool nucleus_active(float top_p) { return top_p > 0.0f && top_p < 1.0f; }

// How many members of a tie group (cnt entries, each of weight w) stay in the nucleus
// when the mass of all entries ranked before the group is A: member j (index order)
// stays iff A + j * w <= pz. Requires A <= pz (the group's first member stays).
L2KD_HD int64_t group_keep(float A, float w, int64_t cnt, float pz) {
  if (cnt <= 0) return 0;
  if (!(w > 0.0f)) return cnt;
  double j = floor((static_cast<double>(pz) - static_cast<double>(A)) / static_cast<double>(w)) + 1.0;
  if (j < 1.0) j = 1.0;
  return j >= static_cast<double>(cnt) ? cnt : static_cast<int64_t>(j);
}

// Membership of a kept entry in the nucleus, given the cut from nucleus_cut. Without
// nucleus filtering the cut is (0, kNoIndexCut): every kept entry is a member.
L2KD_HD bool in_nucleus(uint32_t ykey, int64_t idx, uint32_t cut_key, int64_t cut_idx) {
  return ykey > cut_key || (ykey == cut_key && idx < cut_idx);
}

// Inverse-CDF step: the entry whose running mass first exceeds target is drawn.
L2KD_HD float sample_target(float u, float total) { return u * total; }
L2KD_HD bool pick_here(float running, float target) { return running > target; }

// The nucleus as a cut in (value desc, index asc) order, without sorting:
//   K0   = smallest key with mass_above(K0) <= pz (the last group that keeps a member),
//   then the lowest-index group_keep(...) members of that group (index < cut_idx).
// Red supplies reductions over the kept entries (serial on CPU, block-wide on CUDA;
// all threads of a block call this with identical arguments):
//   float   mass_above(uint32_t K)            sum of w over entries with key(y) > K
//   int64_t count_eq(uint32_t K)               entries with key(y) == K
//   int64_t count_eq_below(uint32_t K, int64_t I)  entries with key(y) == K and index < I
template <class Red>
L2KD_HD void nucleus_cut(Red& red, uint32_t max_key, float m, float pz, int64_t V,
                         uint32_t* cut_key, int64_t* cut_idx) {
  uint32_t lo = kNegInfKey, hi = max_key;  // mass_above(max_key) == 0 <= pz
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if (red.mass_above(mid) <= pz) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  const float A = red.mass_above(lo);
  const int64_t cnt = red.count_eq(lo);
  const int64_t keep = group_keep(A, weight(float_of(lo), m), cnt, pz);
  *cut_key = lo;
  if (keep >= cnt) {
    *cut_idx = kNoIndexCut;
    return;
  }
  int64_t a = 0, b = V;  // smallest I with count_eq_below(lo, I) >= keep
  while (a < b) {
    const int64_t mid = a + (b - a) / 2;
    if (red.count_eq_below(lo, mid) >= keep) {
      b = mid;
    } else {
      a = mid + 1;
    }
  }
  *cut_idx = a;
}

// ---- the row's uniform when the op draws it itself (top_k_sample_seeded) ----------------------
// Philox4x32-10 (Salmon et al., SC'11), a counter-based generator: the uniform of row r of a call
// with (seed, offset) is a pure function of (seed, offset, r), so every CUDA thread block computes
// its own without a launch, an allocation or shared state, and the CPU computes the same numbers.
struct Philox4 {
  uint32_t v[4];
};

L2KD_HD Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * ctr.v[0];
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * ctr.v[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    ctr = Philox4{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
    k0 += 0x9E3779B9u;  // Weyl key schedule
    k1 += 0xBB67AE85u;
  }
  return ctr;
}

// Uniform in [0, 1) of row `row`: counter (offset, row), key seed; the top 24 bits of the first
// output word, so every value is an exact float and 1 is never reached.
L2KD_HD float philox_uniform(uint64_t seed, uint64_t offset, uint64_t row) {
  const Philox4 ctr{{static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32), static_cast<uint32_t>(row),
                     static_cast<uint32_t>(row >> 32)}};
  const Philox4 out = philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return static_cast<float>(out.v[0] >> 8) * (1.0f / 16777216.0f);
}

}  // namespace tks
}  // namespace l2kd
