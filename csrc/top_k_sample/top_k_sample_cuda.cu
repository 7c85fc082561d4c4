// l2kd::top_k_sample, CUDA kernel: one launch, one block per row, fp32 math, sm_70-clean.
//
// Per row:
//   1. radix select (4 passes of 8 bits over ordered float keys, shared-memory histogram)
//      finds the k-th largest logit xk; the first pass also takes the row max and NaN flag.
//      Every pass over the row is a sweep of 16-byte loads, four in flight per thread (a
//      row-per-block kernel is bound by load latency, not bandwidth); in the first pass, where
//      most keys share a few bins, lanes of a warp with the same bin add once (match.any);
//   2. kept set = {key(x) >= key(lo)}, lo = tks::kept_lower_bound(xk, temperature);
//   3. the kept entries (usually ~k) are compacted into shared memory in index order (a
//      rank sort keeps it deterministic); a row keeping more than kCap entries works on the
//      global row instead (same code through the Src template);
//   4. nucleus cut by tks::nucleus_cut with block reductions (no sort), then an inverse-CDF
//      draw with the row's uniform over the members in a fixed (strided) order. When at most
//      32 entries are kept (top-k with a small k, the decoding case) one warp does step 4 with
//      shuffles, no block barrier.
// The row's uniform: from the uniforms tensor (top_k_sample), or, for top_k_sample_seeded,
// tks::philox_uniform(seed, offset, row) with (seed, offset) reserved from the CUDA generator on
// the host (graph-safe unpack): no extra launch, allocation or host sync.
// Rows that contain NaN, are all -inf, or overflow to +inf after scaling get id -1 (no host
// sync to raise an error; the Python face documents it).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <mutex>
#include <optional>
#include <tuple>

#include "top_k_sample/top_k_sample_math.h"

namespace l2kd {

void top_k_sample_check(const at::Tensor& logits, int64_t k, double top_p, double temperature,
                        const at::Tensor& uniforms);
void top_k_sample_check_args(const at::Tensor& logits, int64_t k, double top_p, double temperature);

namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kCap = 2048;  // kept entries held in shared memory
constexpr unsigned kFull = 0xFFFFFFFFu;

template <typename U>
__device__ __forceinline__ U warp_sum(U v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// Block-wide sum, identical in every thread; fixed order, so deterministic. sh: kWarps slots.
template <typename U>
__device__ __forceinline__ U block_sum(U v, U* sh) {
  v = warp_sum(v);
  __syncthreads();  // previous users of sh are done
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
  __syncthreads();
  U r = U(0);
#pragma unroll
  for (int w = 0; w < kWarps; ++w) r += sh[w];
  return r;
}

__device__ __forceinline__ uint32_t block_max_u32(uint32_t v, uint32_t* sh) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFull, v, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
  __syncthreads();
  uint32_t r = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) r = max(r, sh[w]);
  return r;
}

__device__ __forceinline__ int block_min_int(int v, int* sh) {
  for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(kFull, v, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
  __syncthreads();
  int r = sh[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) r = min(r, sh[w]);
  return r;
}

__device__ __forceinline__ int block_max_int(int v, int* sh) { return -block_min_int(-v, sh); }

// Exclusive block scan of v (thread order); *total = sum over the block.
__device__ __forceinline__ float block_excl_scan(float v, float* sh, float* total) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  float inc = v;
  for (int o = 1; o < 32; o <<= 1) {
    const float n = __shfl_up_sync(kFull, inc, o);
    if (lane >= o) inc += n;
  }
  float excl = __shfl_up_sync(kFull, inc, 1);
  if (lane == 0) excl = 0.0f;
  __syncthreads();
  if (lane == 31) sh[wid] = inc;
  __syncthreads();
  float off = 0.0f, tot = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    if (w < wid) off += sh[w];
    tot += sh[w];
  }
  *total = tot;
  return off + excl;
}

// Kept entries held in shared memory, in index order.
struct SmemSrc {
  int n;
  const int* idx;
  const uint32_t* key;
  const float* w;
  __device__ __forceinline__ int64_t count() const { return n; }
  __device__ __forceinline__ bool get(int64_t j, int64_t* i, uint32_t* k, float* wt) const {
    *i = idx[j];
    *k = key[j];
    *wt = w[j];
    return true;
  }
};

// The whole row; entries outside the kept set report false.
template <typename T>
struct GlobalSrc {
  const T* x;
  int64_t V;
  uint32_t lokey;
  float temp, m;
  __device__ __forceinline__ int64_t count() const { return V; }
  __device__ __forceinline__ bool get(int64_t j, int64_t* i, uint32_t* k, float* wt) const {
    const float v = static_cast<float>(x[j]);
    const uint32_t kx = tks::key_of(v);
    if (kx < lokey || kx <= tks::kNegInfKey || tks::key_is_nan(kx)) return false;
    const float y = tks::scale(v, temp);
    *i = j;
    *k = tks::key_of(y);
    *wt = tks::weight(y, m);
    return true;
  }
};

// Block reductions for tks::nucleus_cut. Host stubs only exist to satisfy the
// __host__ __device__ template; they are never called on the host.
template <class Src>
struct BlockRed {
  Src src;
  float* shf;
  long long* shl;
  __host__ __device__ float mass_above(uint32_t K) {
#if defined(__CUDA_ARCH__)
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < src.count(); j += kThreads) {
      int64_t i;
      uint32_t k;
      float w;
      if (src.get(j, &i, &k, &w) && k > K) s += w;
    }
    return block_sum(s, shf);
#else
    (void)K;
    return 0.0f;
#endif
  }
  __host__ __device__ int64_t count_eq(uint32_t K) { return count_eq_below(K, INT64_MAX); }
  __host__ __device__ int64_t count_eq_below(uint32_t K, int64_t I) {
#if defined(__CUDA_ARCH__)
    long long s = 0;
    for (int64_t j = threadIdx.x; j < src.count(); j += kThreads) {
      int64_t i;
      uint32_t k;
      float w;
      if (src.get(j, &i, &k, &w) && k == K && i < I) ++s;
    }
    return block_sum(s, shl);
#else
    (void)K;
    (void)I;
    return 0;
#endif
  }
};

// Nucleus cut (when active) and inverse-CDF draw over src; returns the id (same in all threads
// only for the writer: thread 0 writes it).
template <class Src>
__device__ void cut_and_draw(const Src& src, float top_p, float m, int64_t V, float u, float* shf, long long* shl,
                             int* shi, int64_t* s_pick, int64_t* out) {
  uint32_t cut_key = 0;
  int64_t cut_idx = tks::kNoIndexCut;
  BlockRed<Src> red{src, shf, shl};
  if (tks::nucleus_active(top_p)) {
    const float Z = red.mass_above(0u);
    tks::nucleus_cut(red, tks::key_of(m), m, top_p * Z, V, &cut_key, &cut_idx);
  }
  // Per-thread mass of the members it owns (strided), then a block scan.
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < src.count(); j += kThreads) {
    int64_t i;
    uint32_t k;
    float w;
    if (src.get(j, &i, &k, &w) && tks::in_nucleus(k, i, cut_key, cut_idx)) s += w;
  }
  float total;
  const float excl = block_excl_scan(s, shf, &total);
  const float target = tks::sample_target(u, total);
  const int claim = (s > 0.0f && tks::pick_here(excl + s, target)) ? static_cast<int>(threadIdx.x) : kThreads;
  int chosen = block_min_int(claim, shi);
  if (chosen == kThreads) chosen = block_max_int(s > 0.0f ? static_cast<int>(threadIdx.x) : -1, shi);
  if (threadIdx.x == 0) *s_pick = -1;
  __syncthreads();
  if (static_cast<int>(threadIdx.x) == chosen) {
    float running = excl;
    int64_t pick = -1, last = -1;
    for (int64_t j = threadIdx.x; j < src.count(); j += kThreads) {
      int64_t i;
      uint32_t k;
      float w;
      if (!src.get(j, &i, &k, &w) || !(w > 0.0f) || !tks::in_nucleus(k, i, cut_key, cut_idx)) continue;
      running += w;
      last = i;
      if (tks::pick_here(running, target)) {
        pick = i;
        break;
      }
    }
    *s_pick = pick >= 0 ? pick : last;
  }
  __syncthreads();
  if (threadIdx.x == 0) *out = *s_pick;
}

// f(i, value) for every element of the row x[0, V): a scalar head up to 16-byte alignment, then
// 16-byte loads (4 in flight per thread), then a scalar tail. Which thread sees which index is
// fixed, so per-thread partial results do not depend on timing.
template <typename T, typename F>
__device__ __forceinline__ void sweep_row(const T* __restrict__ x, int64_t V, F&& f) {
  constexpr int kVec = 16 / sizeof(T);
  const int tid = threadIdx.x;
  int64_t head = static_cast<int64_t>((16u - (reinterpret_cast<uintptr_t>(x) & 15u)) & 15u) / static_cast<int64_t>(sizeof(T));
  if (head > V) head = V;
  for (int64_t i = tid; i < head; i += kThreads) f(i, static_cast<float>(x[i]));
  const int64_t nvec = (V - head) / kVec;
  const uint4* xv = reinterpret_cast<const uint4*>(x + head);
  int64_t j = tid;
  for (; j + 3 * kThreads < nvec; j += 4 * kThreads) {
    uint4 r[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) r[q] = __ldg(xv + j + q * kThreads);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const T* e = reinterpret_cast<const T*>(&r[q]);
      const int64_t base = head + (j + q * kThreads) * kVec;
#pragma unroll
      for (int c = 0; c < kVec; ++c) f(base + c, static_cast<float>(e[c]));
    }
  }
  for (; j < nvec; j += kThreads) {
    const uint4 r = __ldg(xv + j);
    const T* e = reinterpret_cast<const T*>(&r);
    const int64_t base = head + j * kVec;
#pragma unroll
    for (int c = 0; c < kVec; ++c) f(base + c, static_cast<float>(e[c]));
  }
  for (int64_t i = head + nvec * kVec + tid; i < V; i += kThreads) f(i, static_cast<float>(x[i]));
}

// Reductions for tks::nucleus_cut over at most 32 kept entries, one per lane of one warp
// (lane j holds entry j in index order; lanes >= n hold none). Host stubs as in BlockRed.
struct WarpRed {
  bool valid;
  uint32_t key;
  int64_t idx;
  float w;
  __host__ __device__ float mass_above(uint32_t K) {
#if defined(__CUDA_ARCH__)
    return warp_sum((valid && key > K) ? w : 0.0f);
#else
    (void)K;
    return 0.0f;
#endif
  }
  __host__ __device__ int64_t count_eq(uint32_t K) { return count_eq_below(K, INT64_MAX); }
  __host__ __device__ int64_t count_eq_below(uint32_t K, int64_t I) {
#if defined(__CUDA_ARCH__)
    return warp_sum((valid && key == K && idx < I) ? 1 : 0);
#else
    (void)K;
    (void)I;
    return 0;
#endif
  }
};

// Step 4 for n <= 32 kept entries (in shared memory, index order), run by warp 0 alone: the same
// nucleus cut and inverse-CDF rule as cut_and_draw, with shuffles instead of block barriers.
__device__ void warp_cut_and_draw(const int* s_idx, const uint32_t* s_key, const float* s_w, int n, float top_p,
                                  float m, int64_t V, float u, int64_t* out) {
  const int lane = threadIdx.x & 31;
  WarpRed red{lane < n, lane < n ? s_key[lane] : 0u, lane < n ? static_cast<int64_t>(s_idx[lane]) : 0,
              lane < n ? s_w[lane] : 0.0f};
  uint32_t cut_key = 0;
  int64_t cut_idx = tks::kNoIndexCut;
  if (tks::nucleus_active(top_p)) {
    const float Z = red.mass_above(0u);
    tks::nucleus_cut(red, tks::key_of(m), m, top_p * Z, V, &cut_key, &cut_idx);
  }
  const float s = (red.valid && red.w > 0.0f && tks::in_nucleus(red.key, red.idx, cut_key, cut_idx)) ? red.w : 0.0f;
  float inc = s;  // inclusive scan in index order
  for (int o = 1; o < 32; o <<= 1) {
    const float nb = __shfl_up_sync(kFull, inc, o);
    if (lane >= o) inc += nb;
  }
  const float total = __shfl_sync(kFull, inc, 31);
  const float target = tks::sample_target(u, total);
  const unsigned claims = __ballot_sync(kFull, s > 0.0f && tks::pick_here(inc, target));
  const unsigned members = __ballot_sync(kFull, s > 0.0f);
  // rounding: u * total reached the total; the last member is drawn (as cut_and_draw does)
  const int src = claims ? __ffs(claims) - 1 : (members ? 31 - __clz(members) : 0);
  const int64_t pick = __shfl_sync(kFull, red.idx, src);
  if (lane == 0) *out = members ? pick : -1;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) top_k_sample_kernel(const T* __restrict__ logits, int64_t V, int64_t k,
                                                                float top_p, float temp,
                                                                const float* __restrict__ uniforms,
                                                                at::PhiloxCudaState rng,
                                                                int64_t* __restrict__ out) {
  __shared__ int hist[256];
  __shared__ int s_digit, s_kk, s_count;
  __shared__ float shf[kWarps];
  __shared__ long long shl[kWarps];
  __shared__ int shi[kWarps];
  __shared__ uint32_t shu[kWarps];
  __shared__ int64_t s_pick;
  __shared__ int s_stage[kCap];
  __shared__ int s_idx[kCap];
  __shared__ uint32_t s_key[kCap];
  __shared__ float s_w[kCap];

  const int64_t row = blockIdx.x;
  const T* x = logits + row * V;
  const int tid = threadIdx.x;

  // 1. Radix select of the k-th largest key (NaNs excluded), row max and NaN flag.
  uint32_t prefix = 0, mask = 0;
  int kk = static_cast<int>(k);
  uint32_t local_max = 0;
  int local_nan = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = tid; b < 256; b += kThreads) hist[b] = 0;
    if (tid == 0) {
      s_digit = 0;
      s_kk = 1;
    }
    __syncthreads();
    if (shift == 24) {
      // every key is counted here and most share a few bins: one atomic per bin per warp
      sweep_row(x, V, [&](int64_t, float v) {
        const uint32_t key = tks::key_of(v);
        const bool nan = tks::key_is_nan(key);
        local_nan |= nan ? 1 : 0;
        local_max = nan ? local_max : max(local_max, key);
        const unsigned bin = nan ? 256u : (key >> 24);
        const unsigned peers = __match_any_sync(__activemask(), bin);
        if (!nan && (threadIdx.x & 31) == static_cast<unsigned>(__ffs(peers) - 1)) atomicAdd(&hist[bin], __popc(peers));
      });
    } else {
      sweep_row(x, V, [&](int64_t, float v) {
        const uint32_t key = tks::key_of(v);
        if (!tks::key_is_nan(key) && (key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1);
      });
    }
    __syncthreads();
    if (tid < 32) {
      // Lane l owns bins 255-8l .. 248-8l (descending); find the bin holding the kk-th largest.
      int cnt[8];
      int sum = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        cnt[j] = hist[255 - (tid * 8 + j)];
        sum += cnt[j];
      }
      int inc = sum;
      for (int o = 1; o < 32; o <<= 1) {
        const int n = __shfl_up_sync(kFull, inc, o);
        if (tid >= o) inc += n;
      }
      const int excl = inc - sum;
      if (excl < kk && kk <= inc) {
        int run = excl;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          if (run < kk && run + cnt[j] >= kk) {
            s_digit = 255 - (tid * 8 + j);
            s_kk = kk - run;
          }
          run += cnt[j];
        }
      }
    }
    __syncthreads();
    prefix |= static_cast<uint32_t>(s_digit) << shift;
    mask |= 255u << shift;
    kk = s_kk;
    __syncthreads();
  }
  const int any_nan = __syncthreads_or(local_nan);
  const uint32_t max_key = block_max_u32(local_max, shu);
  const float xmax = tks::float_of(max_key);
  const float m = tks::scale(xmax, temp);
  if (any_nan || !(m > -INFINITY) || !(m < INFINITY)) {
    if (tid == 0) out[row] = -1;
    return;  // uniform across the block
  }

  // 2. Kept set {key(x) >= key(lo)}, finite entries only.
  const float xk = tks::float_of(prefix);
  const uint32_t lokey = tks::key_of(tks::kept_lower_bound(xk, temp));
  float u;
  if (uniforms != nullptr) {
    u = uniforms[row];
  } else {
    const auto seed_offset = at::cuda::philox::unpack(rng);
    u = tks::philox_uniform(std::get<0>(seed_offset), std::get<1>(seed_offset), static_cast<uint64_t>(row));
  }

  // 3. Compact into shared memory in index order when it fits.
  if (tid == 0) s_count = 0;
  __syncthreads();
  sweep_row(x, V, [&](int64_t i, float v) {
    const uint32_t key = tks::key_of(v);
    if (key >= lokey && key > tks::kNegInfKey && !tks::key_is_nan(key)) {
      const int pos = atomicAdd(&s_count, 1);
      if (pos < kCap) s_stage[pos] = static_cast<int>(i);
    }
  });
  __syncthreads();
  const int n = s_count;
  if (n <= kCap) {
    for (int j = tid; j < n; j += kThreads) {
      const int mine = s_stage[j];
      int rank = 0;
      for (int l = 0; l < n; ++l) rank += (s_stage[l] < mine);
      const float y = tks::scale(static_cast<float>(x[mine]), temp);
      s_idx[rank] = mine;
      s_key[rank] = tks::key_of(y);
      s_w[rank] = tks::weight(y, m);
    }
    __syncthreads();
    if (n <= 32) {
      if (tid < 32) warp_cut_and_draw(s_idx, s_key, s_w, n, top_p, m, V, u, out + row);
      return;  // uniform across the block: n is read from shared memory after a barrier
    }
    const SmemSrc src{n, s_idx, s_key, s_w};
    cut_and_draw(src, top_p, m, V, u, shf, shl, shi, &s_pick, out + row);
  } else {
    const GlobalSrc<T> src{x, V, lokey, temp, m};
    cut_and_draw(src, top_p, m, V, u, shf, shl, shi, &s_pick, out + row);
  }
}

void launch(const at::Tensor& x, int64_t k, float top_p, float temp, const float* uniforms, at::PhiloxCudaState rng,
            at::Tensor& out) {
  const int64_t B = x.size(0), V = x.size(1);
  TORCH_CHECK(B <= 2147483647LL, "top_k_sample: at most 2^31-1 rows on CUDA, got ", B);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(B));
  int64_t* o = out.data_ptr<int64_t>();
  switch (x.scalar_type()) {
    case at::kFloat:
      top_k_sample_kernel<float><<<grid, kThreads, 0, stream>>>(x.data_ptr<float>(), V, k, top_p, temp, uniforms, rng, o);
      break;
    case at::kHalf:
      top_k_sample_kernel<at::Half><<<grid, kThreads, 0, stream>>>(x.data_ptr<at::Half>(), V, k, top_p, temp, uniforms,
                                                                   rng, o);
      break;
    case at::kBFloat16:
      top_k_sample_kernel<at::BFloat16><<<grid, kThreads, 0, stream>>>(x.data_ptr<at::BFloat16>(), V, k, top_p, temp,
                                                                       uniforms, rng, o);
      break;
    default:
      TORCH_CHECK(false, "top_k_sample: unsupported dtype ", x.scalar_type());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor top_k_sample_cuda(const at::Tensor& logits, int64_t k, double top_p, double temperature,
                             const at::Tensor& uniforms) {
  top_k_sample_check(logits, k, top_p, temperature, uniforms);
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor x = logits.contiguous();
  const at::Tensor u = uniforms.contiguous();
  at::Tensor out = at::empty({x.size(0)}, logits.options().dtype(at::kLong));
  if (x.size(0) == 0) return out;
  launch(x, k, static_cast<float>(top_p), static_cast<float>(temperature), u.data_ptr<float>(), at::PhiloxCudaState(),
         out);
  return out;
}

at::Tensor top_k_sample_seeded_cuda(const at::Tensor& logits, int64_t k, double top_p, double temperature,
                                    std::optional<at::Generator> generator) {
  top_k_sample_check_args(logits, k, top_p, temperature);
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor x = logits.contiguous();
  at::Tensor out = at::empty({x.size(0)}, logits.options().dtype(at::kLong));
  if (x.size(0) == 0) return out;
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(generator, at::cuda::detail::getDefaultCUDAGenerator());
  at::PhiloxCudaState rng;
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);
    rng = gen->philox_cuda_state(4);  // one counter word per row: (offset, row) never repeats
  }
  launch(x, k, static_cast<float>(top_p), static_cast<float>(temperature), nullptr, rng, out);
  return out;
}

}  // namespace
}  // namespace l2kd

TORCH_LIBRARY_IMPL(l2kd, CUDA, m) {
  m.impl("top_k_sample", &l2kd::top_k_sample_cuda);
  m.impl("top_k_sample_seeded", &l2kd::top_k_sample_seeded_cuda);
}
