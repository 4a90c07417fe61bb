// Damped inverses of symmetric 2x2 blocks F_c = [[a, b], [b, c]] (a fisher
// row of 4 values a, b, b', c; b' is not read), all arithmetic in T.
//   level 0: lam = damping; a' = a + lam, c' = c + lam, det = a' c' - b b;
//            positive definite iff a' > 0, det > 0 and det finite; then
//            inverse = [[c', -b], [-b, a']] / det.
//   level 1: otherwise, with base = max(damping, relative |a + c| / 2,
//            tiny), lam = base * 10^k for k = 0..tries-1 (10^k by repeated
//            multiplication in T), the first positive definite one
//            (chainerkfac.linalg.RECOVERY_*: the rule of every block).
//   level 2: none was (or a + c is not finite): the identity.
// status[slot] = max(status[slot], level) for the levels above 0 (atomicMax).
// Build with --fmad=false so that det is not contracted to a multiply-add.
#include <cuda_fp16.h>

template <typename T>
__device__ __forceinline__ bool damped_inverse(T a, T b, T c, T lam, T* out) {
  T ap = a + lam;
  T cp = c + lam;
  T det = ap * cp - b * b;
  if (!(ap > (T)0 && det > (T)0 && isfinite(det))) return false;
  out[0] = cp / det;
  out[1] = -b / det;
  out[2] = -b / det;
  out[3] = ap / det;
  return true;
}

template <typename T>
__device__ __forceinline__ void unit_inverse_body(const T* fisher, T* inverse,
                                                  long long n, T damping,
                                                  T relative, T tiny,
                                                  int tries, int* status,
                                                  int n_status, int slot) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)blockDim.x * gridDim.x) {
    T a = fisher[4 * i];
    T b = fisher[4 * i + 1];
    T c = fisher[4 * i + 3];
    T* out = inverse + 4 * i;
    if (damped_inverse(a, b, c, damping, out)) continue;
    int level = 2;
    T sum = a + c;
    if (isfinite(sum)) {
      T base = damping;
      T scaled = relative * fabs(sum) / (T)2;
      if (scaled > base) base = scaled;
      if (tiny > base) base = tiny;
      T power = (T)1;
      for (int k = 0; k < tries; ++k) {
        if (damped_inverse(a, b, c, base * power, out)) {
          level = 1;
          break;
        }
        power = power * (T)10;
      }
    }
    if (level == 2) {
      out[0] = (T)1;
      out[1] = (T)0;
      out[2] = (T)0;
      out[3] = (T)1;
    }
    if (slot >= 0 && slot < n_status) atomicMax(status + slot, level);
  }
}

extern "C" __global__ void unit_fisher_inverse_f32(
    const float* fisher /* [4 * n] */, float* inverse /* [4 * n] */,
    long long n, float damping, float relative, float tiny, int tries,
    int* status /* [n_status] */, int n_status, int slot) {
  unit_inverse_body(fisher, inverse, n, damping, relative, tiny, tries,
                    status, n_status, slot);
}

extern "C" __global__ void unit_fisher_inverse_f64(
    const double* fisher /* [4 * n] */, double* inverse /* [4 * n] */,
    long long n, double damping, double relative, double tiny, int tries,
    int* status /* [n_status] */, int n_status, int slot) {
  unit_inverse_body(fisher, inverse, n, damping, relative, tiny, tries,
                    status, n_status, slot);
}
