// l2kd::gem_project CUDA kernels (schema and input checks live in gem_project.cpp).
//
// 1. gram_partial_kernel: a grid of blocks; each block walks column tiles of [G; g]
//    (grid-stride), stages a tile in shared memory as fp64 and accumulates its share of the
//    packed upper triangle of the augmented Gram in fp64 registers; per-block partials go to a
//    [blocks, np] buffer (no atomics).
// 2. solve_kernel (one block): sums the partials over blocks in a fixed order (deterministic),
//    then one thread runs gem_small_step (gem_project_math.h, the very code the CPU runs).
// 3. The host reads one status int (the only synchronisation) to raise errors and to skip the
//    update when nothing is violated; update_kernel writes out = g + G^T v in fp64.
// Only sm_60+ features are used (fp64 arithmetic, no fp64 atomics), so the source is sm_70-clean.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "gem_project/gem_project_math.h"

namespace l2kd {
namespace gem {

// Defined in gem_project.cpp.
void check_inputs(const at::Tensor& grad, const at::Tensor& memory_grads, double margin, double eps);
bool handle_status(int status, double eps);
void check_out(const at::Tensor& grad, const at::Tensor& memory_grads, const at::Tensor& out);

namespace {

constexpr int kThreads = 256;
constexpr int kMaxItems = 9;  // ceil(packed_size(kMaxT + 1) / kThreads)

template <typename T>
__device__ __forceinline__ double to_d(T x) {
  return static_cast<double>(static_cast<float>(x));
}
template <>
__device__ __forceinline__ double to_d<double>(double x) {
  return x;
}
template <typename T>
__device__ __forceinline__ T from_d(double x) {
  return static_cast<T>(static_cast<float>(x));
}
template <>
__device__ __forceinline__ double from_d<double>(double x) {
  return x;
}

// Shared memory: tile [n][tw + 1] doubles, red [W] doubles, pair rows pi [np], pj [np] bytes.
template <typename T>
__global__ void gram_partial_kernel(const T* __restrict__ G, const T* __restrict__ g, int t, int64_t P, int tw,
                                    int S, int64_t ntiles, double* __restrict__ partial) {
  extern __shared__ double smem[];
  const int n = t + 1;
  const int np = packed_size(n);
  const int W = np * S;
  const int ld = tw + 1;
  double* tile = smem;
  double* red = tile + n * ld;
  unsigned char* pi = reinterpret_cast<unsigned char*>(red + W);
  unsigned char* pj = pi + np;
  for (int i = 0, q = 0; i < n; ++i) {
    for (int j = i; j < n; ++j, ++q) {
      if (q % static_cast<int>(blockDim.x) == static_cast<int>(threadIdx.x)) {
        pi[q] = static_cast<unsigned char>(i);
        pj[q] = static_cast<unsigned char>(j);
      }
    }
  }
  double acc[kMaxItems];
#pragma unroll
  for (int k = 0; k < kMaxItems; ++k) acc[k] = 0.0;

  for (int64_t tile_id = blockIdx.x; tile_id < ntiles; tile_id += gridDim.x) {
    __syncthreads();
    const int64_t col0 = tile_id * tw;
    for (int e = threadIdx.x; e < n * tw; e += blockDim.x) {
      const int r = e / tw;
      const int col = e - r * tw;
      const int64_t gc = col0 + col;
      double val = 0.0;
      if (gc < P) val = to_d(r < t ? G[static_cast<int64_t>(r) * P + gc] : g[gc]);
      tile[r * ld + col] = val;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kMaxItems; ++k) {
      const int w = threadIdx.x + k * blockDim.x;
      if (w < W) {
        const int pair = w / S;
        const int s = w - pair * S;
        const double* ri = tile + pi[pair] * ld;
        const double* rj = tile + pj[pair] * ld;
        double a = acc[k];
        for (int col = s; col < tw; col += S) a = fma(ri[col], rj[col], a);
        acc[k] = a;
      }
    }
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < kMaxItems; ++k) {
    const int w = threadIdx.x + k * blockDim.x;
    if (w < W) red[w] = acc[k];
  }
  __syncthreads();
  for (int pair = threadIdx.x; pair < np; pair += blockDim.x) {
    double s = 0.0;
    for (int q = 0; q < S; ++q) s += red[pair * S + q];
    partial[static_cast<int64_t>(blockIdx.x) * np + pair] = s;
  }
}

// scratch: gram [np] | A [t*t] | c [t] | v [t] | ws [solve_workspace_size(t)].
__global__ void solve_kernel(const double* __restrict__ partial, int nblocks, int t, double margin, double eps,
                             double* __restrict__ scratch, int* __restrict__ status) {
  const int np = packed_size(t + 1);
  double* gram = scratch;
  for (int pair = threadIdx.x; pair < np; pair += blockDim.x) {
    double s = 0.0;
    for (int b = 0; b < nblocks; ++b) s += partial[static_cast<int64_t>(b) * np + pair];
    gram[pair] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double* A = gram + np;
    double* c = A + t * t;
    double* v = c + t;
    double* ws = v + t;
    *status = gem_small_step(t, gram, margin, eps, A, c, v, ws);
  }
}

template <typename T>
// g and out may be the same array (in-place projection): no __restrict__ on them; each thread
// reads g[p] before it writes out[p], and no other thread touches p.
__global__ void update_kernel(const T* __restrict__ G, const T* g, const double* __restrict__ v_in, int t,
                              int64_t P, T* out) {
  __shared__ double v[kMaxT];
  for (int i = threadIdx.x; i < t; i += blockDim.x) v[i] = v_in[i];
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < P; p += stride) {
    double acc = to_d(g[p]);
    for (int i = 0; i < t; ++i) acc = fma(v[i], to_d(G[static_cast<int64_t>(i) * P + p]), acc);
    out[p] = from_d<T>(acc);
  }
}

// Writes into out (contiguous [P]); out may be grad itself (see gem_project.cpp).
void gem_project_cuda_into(const at::Tensor& grad, const at::Tensor& memory_grads, double margin, double eps,
                           at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = grad.contiguous();
  const at::Tensor G = memory_grads.contiguous();
  const int t = static_cast<int>(G.size(0));
  const int64_t P = g.size(0);
  const bool same = out.data_ptr() == g.data_ptr();
  if (t == 0 || P == 0) {
    if (!same) out.copy_(g);
    return;
  }
  const int n = t + 1;
  const int np = packed_size(n);
  int tw = 256;
  while (tw > 32 && n * tw > 2048) tw /= 2;
  int S = tw;
  while (S > 1 && np * S > kThreads * kMaxItems) S /= 2;
  const int64_t ntiles = (P + tw - 1) / tw;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int nblocks = static_cast<int>(std::min<int64_t>(ntiles, std::min(4 * sms, 1024)));
  const size_t smem = static_cast<size_t>(n) * (tw + 1) * sizeof(double) + static_cast<size_t>(np) * S * sizeof(double) +
                      2 * static_cast<size_t>(np);
  const auto dopt = g.options().dtype(at::kDouble);
  at::Tensor partial = at::empty({static_cast<int64_t>(nblocks) * np}, dopt);
  at::Tensor scratch = at::empty({np + t * t + 2 * t + solve_workspace_size(t)}, dopt);
  at::Tensor status = at::empty({1}, g.options().dtype(at::kInt));
  const auto stream = at::cuda::getCurrentCUDAStream();
  bool project = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "gem_project_cuda", [&] {
    gram_partial_kernel<scalar_t><<<nblocks, kThreads, smem, stream>>>(
        G.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), t, P, tw, S, ntiles,
        partial.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    solve_kernel<<<1, kThreads, 0, stream>>>(partial.const_data_ptr<double>(), nblocks, t, margin, eps,
                                             scratch.mutable_data_ptr<double>(), status.mutable_data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int st = status.item<int>();  // the one host synchronisation
    project = handle_status(st, eps);
    if (project) {
      const double* v = scratch.const_data_ptr<double>() + np + t * t + t;
      const int ublocks = static_cast<int>(std::min<int64_t>((P + kThreads - 1) / kThreads, 8 * sms));
      update_kernel<scalar_t><<<ublocks, kThreads, 0, stream>>>(G.const_data_ptr<scalar_t>(),
                                                                g.const_data_ptr<scalar_t>(), v, t, P,
                                                                out.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  if (!project && !same) out.copy_(g);
}

at::Tensor gem_project_cuda(const at::Tensor& grad, const at::Tensor& memory_grads, double margin, double eps) {
  check_inputs(grad, memory_grads, margin, eps);
  TORCH_CHECK(grad.is_cuda(), "gem_project: CUDA kernel called with grad on ", grad.device());
  at::Tensor out = at::empty({grad.size(0)}, grad.options().memory_format(at::MemoryFormat::Contiguous));
  gem_project_cuda_into(grad, memory_grads, margin, eps, out);
  return out;
}

at::Tensor& gem_project_out_cuda(const at::Tensor& grad, const at::Tensor& memory_grads, double margin, double eps,
                                 at::Tensor& out) {
  check_inputs(grad, memory_grads, margin, eps);
  check_out(grad, memory_grads, out);
  TORCH_CHECK(grad.is_cuda(), "gem_project: CUDA kernel called with grad on ", grad.device());
  gem_project_cuda_into(grad, memory_grads, margin, eps, out);
  return out;
}

}  // namespace
}  // namespace gem
}  // namespace l2kd

TORCH_LIBRARY_IMPL(l2kd, CUDA, m) {
  m.impl("gem_project", &l2kd::gem::gem_project_cuda);
  m.impl("gem_project.out", &l2kd::gem::gem_project_out_cuda);
}
