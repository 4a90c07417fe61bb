// Serial CPU emulation of the CUDA features the kernels in kernels/*.cu use.
// g++ compiles a kernel file with `-include emulation.h`; the generated
// launcher sets gridDim/blockDim and calls the kernel once for every
// (blockIdx.x, threadIdx.x), one after the other, so a grid-stride loop visits
// each index exactly once, as on the GPU. Only 1-D launches, no shared memory,
// no __syncthreads, no warp intrinsics: kernels needing those cannot build here.
#pragma once
#include <cmath>
#include <cuda_fp16.h>  // __half and its host conversions (round to nearest)

// cuda_fp16.h defines these for a host compiler already; keep them if so.
#ifndef __global__
#define __global__
#endif
#ifndef __device__
#define __device__
#endif
#ifndef __forceinline__
#define __forceinline__ inline
#endif

struct emu_dim3 {
  unsigned int x, y, z;
};
// thread_local: two Python threads may run emulated launches at once.
static thread_local emu_dim3 blockIdx = {0, 0, 0};
static thread_local emu_dim3 threadIdx = {0, 0, 0};
static thread_local emu_dim3 blockDim = {1, 1, 1};
static thread_local emu_dim3 gridDim = {1, 1, 1};

using std::fabs;
using std::isfinite;
using std::sqrt;

// Threads run one at a time, so plain read-modify-write is atomic here.
static inline int atomicMax(int* address, int value) {
  int old = *address;
  if (value > old) *address = value;
  return old;
}
static inline int atomicOr(int* address, int value) {
  int old = *address;
  *address = old | value;
  return old;
}
