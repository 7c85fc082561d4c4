// l2kd::top_k_sample: schema, input checks and the CPU kernel.
//
//   top_k_sample(Tensor logits, int k, float top_p, float temperature, Tensor uniforms) -> Tensor
//   top_k_sample_seeded(Tensor logits, int k, float top_p, float temperature, Generator? generator) -> Tensor
//
// logits [B, V] fp32/fp16/bf16, uniforms fp32 [B] in [0, 1) (drawn by the Python face from
// the torch generator). Returns int64 [B]. Deterministic given the uniforms.
// The seeded variant draws row r's uniform itself: tks::philox_uniform(seed, offset, r). On CUDA
// (seed, offset) come from the generator's Philox state (no launch, allocation or host sync for
// them); on CPU the seed is one 64-bit draw of the CPU generator and the offset 0.
//
// CPU kernel, per row (OpenMP over rows): one vectorised pass keeps a min-heap of the k
// largest values and appends every element >= the running k-th value to a small candidate
// list (ties included; typically ~k*(1+ln(V/k)) entries); NaNs are detected in the same pass.
// The rest (threshold, softmax weights, nucleus cut, inverse-CDF draw) works on the candidates
// with the shared arithmetic of top_k_sample_math.h. No [B, V] temporary.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <limits>
#include <mutex>
#include <optional>
#include <vector>

#if defined(L2KD_AVX2) && L2KD_AVX2
#include <immintrin.h>
#define L2KD_TKS_AVX2 1
#else
#define L2KD_TKS_AVX2 0
#endif

#include "top_k_sample/top_k_sample_math.h"

namespace l2kd {

// Shared by the CPU and CUDA entry points (both ops).
void top_k_sample_check_args(const at::Tensor& logits, int64_t k, double top_p, double temperature) {
  TORCH_CHECK(logits.dim() == 2, "top_k_sample: logits must be 2-D [B, V], got ", logits.dim(), "-D");
  const auto dt = logits.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "top_k_sample: logits must be float32, float16 or bfloat16, got ", dt);
  const int64_t V = logits.size(1);
  TORCH_CHECK(V >= 1 && V < std::numeric_limits<int32_t>::max(), "top_k_sample: logits must have 1 <= V < 2^31 columns, got ", V);
  TORCH_CHECK(k >= 1 && k <= V, "top_k_sample: k must satisfy 1 <= k <= V (= ", V, "), got k = ", k);
  TORCH_CHECK(temperature > 0.0 && std::isfinite(temperature), "top_k_sample: temperature must be finite and > 0, got ",
              temperature);
  TORCH_CHECK(top_p >= 0.0 && top_p <= 1.0, "top_k_sample: top_p must be in [0, 1], got ", top_p);
}

void top_k_sample_check(const at::Tensor& logits, int64_t k, double top_p, double temperature,
                        const at::Tensor& uniforms) {
  top_k_sample_check_args(logits, k, top_p, temperature);
  TORCH_CHECK(uniforms.scalar_type() == at::kFloat, "top_k_sample: uniforms must be float32, got ", uniforms.scalar_type());
  TORCH_CHECK(uniforms.dim() == 1 && uniforms.size(0) == logits.size(0), "top_k_sample: uniforms must have shape [B] = [",
              logits.size(0), "], got ", uniforms.sizes());
  TORCH_CHECK(uniforms.device() == logits.device(), "top_k_sample: uniforms must be on the logits' device (",
              logits.device(), "), got ", uniforms.device());
}

namespace {

struct Cand {
  int64_t idx;
  float x;     // raw logit (fp32)
  uint32_t key;  // key_of(y), y = x / temperature
  float w;     // exp(y - max y)
};

// Min-heap of the k largest values seen: replace the root and sift down.
inline void heap_replace_root(float* h, int64_t k, float v) {
  int64_t i = 0;
  for (;;) {
    const int64_t l = 2 * i + 1;
    if (l >= k) break;
    const int64_t r = l + 1;
    const int64_t c = (r < k && h[r] < h[l]) ? r : l;
    if (!(h[c] < v)) break;
    h[i] = h[c];
    i = c;
  }
  h[i] = v;
}

inline float to_f(float v) { return v; }
inline float to_f(c10::Half v) { return static_cast<float>(v); }
inline float to_f(c10::BFloat16 v) { return static_cast<float>(v); }

#if L2KD_TKS_AVX2
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m256 load8(const c10::BFloat16* p) {
  const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}
#endif

// Serial reductions over the candidates, for tks::nucleus_cut.
struct CpuRed {
  const Cand* c;
  int64_t n;
  float mass_above(uint32_t K) const {
    float s = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      if (c[j].key > K) s += c[j].w;
    }
    return s;
  }
  int64_t count_eq(uint32_t K) const {
    int64_t s = 0;
    for (int64_t j = 0; j < n; ++j) s += (c[j].key == K);
    return s;
  }
  int64_t count_eq_below(uint32_t K, int64_t I) const {
    int64_t s = 0;
    for (int64_t j = 0; j < n; ++j) s += (c[j].key == K && c[j].idx < I);
    return s;
  }
};

enum RowError : int { kOk = 0, kNaN = 1, kNoFinite = 2, kOverflow = 3 };

// One row. heap: scratch of k floats; buf: candidate scratch (reused across rows).
template <typename T>
int sample_row(const T* x, int64_t V, int64_t k, float top_p, float temp, float u, std::vector<float>& heap,
               std::vector<Cand>& buf, int64_t* out) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  float* h = heap.data();
  std::fill(h, h + k, -kInf);
  float thr = -kInf;  // == h[0], the running k-th largest
  buf.clear();
  bool has_nan = false;

  // Element v (not NaN, not -inf) that may belong to the kept set.
  auto visit = [&](int64_t i, float v) {
    if (v >= thr) {
      buf.push_back({i, v, 0u, 0.0f});
      if (v > thr) {
        heap_replace_root(h, k, v);
        thr = h[0];
      }
    }
  };

  int64_t i = 0;
#if L2KD_TKS_AVX2
  {
    // Compare against max(thr, -FLT_MAX) so that -inf never passes the vector test.
    __m256 vthr = _mm256_set1_ps(std::max(thr, -FLT_MAX));
    __m256 nan_acc = _mm256_setzero_ps();
    alignas(32) float lanes[8];
    auto lanes_of = [&](__m256 a, int64_t base) {
      int m = _mm256_movemask_ps(_mm256_cmp_ps(a, vthr, _CMP_GE_OQ));
      if (!m) return;
      _mm256_store_ps(lanes, a);
      while (m) {
        const int l = __builtin_ctz(static_cast<unsigned>(m));
        m &= m - 1;
        visit(base + l, lanes[l]);
      }
      vthr = _mm256_set1_ps(std::max(thr, -FLT_MAX));
    };
    for (; i + 32 <= V; i += 32) {
      const __m256 a0 = load8(x + i), a1 = load8(x + i + 8), a2 = load8(x + i + 16), a3 = load8(x + i + 24);
      nan_acc = _mm256_or_ps(nan_acc, _mm256_or_ps(_mm256_or_ps(_mm256_cmp_ps(a0, a0, _CMP_UNORD_Q),
                                                                 _mm256_cmp_ps(a1, a1, _CMP_UNORD_Q)),
                                                   _mm256_or_ps(_mm256_cmp_ps(a2, a2, _CMP_UNORD_Q),
                                                                _mm256_cmp_ps(a3, a3, _CMP_UNORD_Q))));
      const __m256 g = _mm256_or_ps(
          _mm256_or_ps(_mm256_cmp_ps(a0, vthr, _CMP_GE_OQ), _mm256_cmp_ps(a1, vthr, _CMP_GE_OQ)),
          _mm256_or_ps(_mm256_cmp_ps(a2, vthr, _CMP_GE_OQ), _mm256_cmp_ps(a3, vthr, _CMP_GE_OQ)));
      if (_mm256_movemask_ps(g)) {
        lanes_of(a0, i);
        lanes_of(a1, i + 8);
        lanes_of(a2, i + 16);
        lanes_of(a3, i + 24);
      }
    }
    for (; i + 8 <= V; i += 8) {
      const __m256 a = load8(x + i);
      nan_acc = _mm256_or_ps(nan_acc, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
      lanes_of(a, i);
    }
    has_nan = _mm256_movemask_ps(nan_acc) != 0;
  }
#endif
  for (; i < V; ++i) {
    const float v = to_f(x[i]);
    if (v != v) {
      has_nan = true;
    } else if (v > -kInf) {
      visit(i, v);
    }
  }
  if (has_nan) return kNaN;
  if (buf.empty()) return kNoFinite;  // every logit is -inf

  // Kept set = {x >= lo}; every such x >= xk was appended (the running threshold never
  // exceeds xk). lo < xk only when x / temperature rounds neighbours of xk together.
  const float xk = h[0];
  const float lo = tks::kept_lower_bound(xk, temp);
  int64_t n = 0;
  for (const Cand& c : buf) {
    if (c.x >= xk) buf[n++] = c;
  }
  buf.resize(n);
  if (lo < xk) {
    for (int64_t j = 0; j < V; ++j) {
      const float v = to_f(x[j]);
      if (v >= lo && v < xk && v > -kInf) buf.push_back({j, v, 0u, 0.0f});
    }
    n = static_cast<int64_t>(buf.size());
  }

  float m = -kInf;
  for (Cand& c : buf) {
    const float y = tks::scale(c.x, temp);
    c.key = tks::key_of(y);
    m = std::max(m, y);
  }
  if (!(m < kInf)) return kOverflow;  // +inf logit, or x / temperature overflowed
  if (!(m > -kInf)) return kNoFinite;
  float Z = 0.0f;
  for (Cand& c : buf) {
    c.w = tks::weight(tks::float_of(c.key), m);
    Z += c.w;
  }

  uint32_t cut_key = 0;
  int64_t cut_idx = tks::kNoIndexCut;
  if (tks::nucleus_active(top_p)) {
    CpuRed red{buf.data(), n};
    tks::nucleus_cut(red, tks::key_of(m), m, top_p * Z, V, &cut_key, &cut_idx);
  }

  float ZN = 0.0f;
  for (const Cand& c : buf) {
    if (tks::in_nucleus(c.key, c.idx, cut_key, cut_idx)) ZN += c.w;
  }
  const float target = tks::sample_target(u, ZN);
  float running = 0.0f;
  int64_t last = -1;
  for (const Cand& c : buf) {
    if (!(c.w > 0.0f) || !tks::in_nucleus(c.key, c.idx, cut_key, cut_idx)) continue;
    running += c.w;
    last = c.idx;
    if (tks::pick_here(running, target)) {
      *out = c.idx;
      return kOk;
    }
  }
  *out = last;  // rounding: u * ZN reached the total
  return kOk;
}

at::Tensor top_k_sample_cpu(const at::Tensor& logits, int64_t k, double top_p, double temperature,
                            const at::Tensor& uniforms) {
  top_k_sample_check(logits, k, top_p, temperature, uniforms);
  const at::Tensor x = logits.contiguous();
  const at::Tensor u = uniforms.contiguous();
  const int64_t B = x.size(0), V = x.size(1);
  at::Tensor out = at::empty({B}, logits.options().dtype(at::kLong));
  if (B == 0) return out;
  const float tp = static_cast<float>(top_p), temp = static_cast<float>(temperature);
  const float* up = u.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  std::atomic<int> err{kOk};
  std::atomic<int64_t> err_row{-1};
  auto run = [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> heap(static_cast<size_t>(k));
      std::vector<Cand> buf;
      buf.reserve(static_cast<size_t>(std::min<int64_t>(V, 8 * k + 256)));
      for (int64_t r = begin; r < end; ++r) {
        const int e = sample_row<scalar_t>(xp + r * V, V, k, tp, temp, up[r], heap, buf, op + r);
        if (e != kOk) {
          int expected = kOk;
          if (err.compare_exchange_strong(expected, e)) err_row.store(r);
        }
      }
    });
  };
  switch (x.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kHalf: run(c10::Half{}); break;
    case at::kBFloat16: run(c10::BFloat16{}); break;
    default: TORCH_CHECK(false, "top_k_sample: unsupported dtype ", x.scalar_type());
  }
  const int e = err.load();
  TORCH_CHECK(e != kNaN, "top_k_sample: logits contain NaN (row ", err_row.load(), ")");
  TORCH_CHECK(e != kNoFinite, "top_k_sample: every logit of row ", err_row.load(), " is -inf; nothing to sample");
  TORCH_CHECK(e != kOverflow, "top_k_sample: logits / temperature is +inf in row ", err_row.load(),
              " (a +inf logit, or overflow from a small temperature)");
  return out;
}

at::Tensor top_k_sample_seeded_cpu(const at::Tensor& logits, int64_t k, double top_p, double temperature,
                                   std::optional<at::Generator> generator) {
  top_k_sample_check_args(logits, k, top_p, temperature);
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  uint64_t seed;
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);
    seed = gen->random64();
  }
  const int64_t B = logits.size(0);
  at::Tensor u = at::empty({B}, logits.options().dtype(at::kFloat));
  float* up = u.data_ptr<float>();
  for (int64_t r = 0; r < B; ++r) up[r] = tks::philox_uniform(seed, 0, static_cast<uint64_t>(r));
  return top_k_sample_cpu(logits, k, top_p, temperature, u);
}

}  // namespace

}  // namespace l2kd

TORCH_LIBRARY_FRAGMENT(l2kd, m) {
  m.def("top_k_sample(Tensor logits, int k, float top_p, float temperature, Tensor uniforms) -> Tensor");
  m.def("top_k_sample_seeded(Tensor logits, int k, float top_p, float temperature, Generator? generator=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(l2kd, CPU, m) {
  m.impl("top_k_sample", &l2kd::top_k_sample_cpu);
  m.impl("top_k_sample_seeded", &l2kd::top_k_sample_seeded_cpu);
}
