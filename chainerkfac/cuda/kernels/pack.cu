// Packing a list of arrays into one flat communication buffer, and back.
//
// The arrays are described by a table of 4 long longs per array:
//   table[4 a + 0]  address of array a's first element (C order),
//   table[4 a + 1]  offset of array a in the buffer (non-decreasing in a),
//   table[4 a + 2]  d if array a is a symmetric (d, d) matrix that travels as
//                   its upper triangle, row-major, d (d + 1) / 2 values; else 0,
//   table[4 a + 3]  dtype code: 0 float32, 1 float64, 2 float16.
// Each buffer element i belongs to the last array a with offset_a <= i (binary
// search; empty arrays are skipped that way). Within a triangle, the packed
// index t of (r, j), j >= r, is row_start(r) + j - r with
// row_start(r) = r d - r (r - 1) / 2; the row is recovered from t in closed
// form (no index arrays).
#include <cuda_fp16.h>

__device__ __forceinline__ int find_array(const long long* table, int n_arrays,
                                          long long i) {
  int lo = 0;
  int hi = n_arrays - 1;
  while (lo < hi) {
    int mid = lo + (hi - lo + 1) / 2;
    if (table[4 * mid + 1] <= i) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

__device__ __forceinline__ long long row_start(long long r, long long d) {
  return r * d - r * (r - 1) / 2;
}

// Row r of packed index t (0 <= t < d (d + 1) / 2): the largest r with
// row_start(r) <= t, i.e. r = floor(((2d + 1) - sqrt((2d + 1)^2 - 8t)) / 2),
// corrected by whole steps for the rounding of the square root.
__device__ __forceinline__ long long triangle_row(long long t, long long d) {
  long long e = 2 * d + 1;
  double root = sqrt((double)(e * e - 8 * t));
  long long r = (long long)(((double)e - root) * 0.5);
  if (r < 0) r = 0;
  if (r > d - 1) r = d - 1;
  while (r > 0 && row_start(r, d) > t) --r;
  while (r + 1 < d && row_start(r + 1, d) <= t) ++r;
  return r;
}

__device__ __forceinline__ float load_float(const float* p) { return *p; }
__device__ __forceinline__ float load_float(const __half* p) {
  return __half2float(*p);
}
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) {
  *p = __float2half_rn(v);
}
__device__ __forceinline__ void store(float* p, double v) { *p = (float)v; }
__device__ __forceinline__ void store(__half* p, double v) {
  *p = __double2half(v);
}

// Where buffer position i comes from: array a (binary search of the
// table's offsets) and its element k; for a symmetric d x d array the packed
// triangle index t maps to (r, j), j >= r, so k = r d + j and its mirror
// k_mirror = j d + r; other arrays are flat (k = k_mirror = t).
struct Position {
  int a;
  long long k;
  long long k_mirror;
};

__device__ __forceinline__ Position locate(const long long* table,
                                           int n_arrays, long long i) {
  Position p;
  p.a = find_array(table, n_arrays, i);
  const long long* entry = table + 4 * p.a;
  const long long t = i - entry[1];
  const long long d = entry[2];
  p.k = t;
  p.k_mirror = t;
  if (d > 0) {
    const long long r = triangle_row(t, d);
    const long long j = r + (t - row_start(r, d));
    p.k = r * d + j;
    p.k_mirror = j * d + r;
  }
  return p;
}

// buffer[i] = cast(scale_a * x_a[k]); the product is taken in float32 for
// float16/float32 arrays and in float64 for float64 ones; no scales: cast(x).
template <typename B>
__device__ __forceinline__ void pack_body(const long long* table, int n_arrays,
                                          const float* scales, B* buffer,
                                          long long total) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
       i < total; i += (long long)blockDim.x * gridDim.x) {
    const Position p = locate(table, n_arrays, i);
    const int a = p.a;
    const long long k = p.k;
    const long long* entry = table + 4 * a;
    unsigned long long address = (unsigned long long)entry[0];
    if (entry[3] == 1) {
      double v = ((const double*)address)[k];
      if (scales) v = v * (double)scales[a];
      store(buffer + i, v);
    } else {
      float v = entry[3] == 2 ? load_float((const __half*)address + k)
                              : ((const float*)address)[k];
      if (scales) v = v * scales[a];
      store(buffer + i, v);
    }
  }
}

// x_a[k] = cast(buffer[i] / divisor_a), computed in float32 for float16/float32
// outputs and in float64 for float64 outputs; a triangle value is written to
// (r, j) and (j, r).
template <typename B>
__device__ __forceinline__ void unpack_body(const B* buffer, long long total,
                                            const long long* table,
                                            int n_arrays,
                                            const float* divisors) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
       i < total; i += (long long)blockDim.x * gridDim.x) {
    const Position p = locate(table, n_arrays, i);
    const int a = p.a;
    const long long k = p.k;
    const long long k_mirror = p.k_mirror;
    const long long* entry = table + 4 * a;
    unsigned long long address = (unsigned long long)entry[0];
    if (entry[3] == 1) {
      double v = (double)load_float(buffer + i);
      if (divisors) v = v / (double)divisors[a];
      double* out = (double*)address;
      out[k] = v;
      out[k_mirror] = v;
    } else {
      float v = load_float(buffer + i);
      if (divisors) v = v / divisors[a];
      if (entry[3] == 2) {
        __half h = __float2half_rn(v);
        __half* out = (__half*)address;
        out[k] = h;
        out[k_mirror] = h;
      } else {
        float* out = (float*)address;
        out[k] = v;
        out[k_mirror] = v;
      }
    }
  }
}

extern "C" __global__ void pack_f32(const long long* table /* [4 * n_arrays] */,
                                    int n_arrays,
                                    const float* scales /* [n_arrays] or null */,
                                    float* buffer /* [total] */,
                                    long long total) {
  pack_body(table, n_arrays, scales, buffer, total);
}

extern "C" __global__ void pack_f16(const long long* table /* [4 * n_arrays] */,
                                    int n_arrays,
                                    const float* scales /* [n_arrays] or null */,
                                    __half* buffer /* [total] */,
                                    long long total) {
  pack_body(table, n_arrays, scales, buffer, total);
}

extern "C" __global__ void unpack_f32(
    const float* buffer /* [total] */, long long total,
    const long long* table /* [4 * n_arrays] */, int n_arrays,
    const float* divisors /* [n_arrays] or null */) {
  unpack_body(buffer, total, table, n_arrays, divisors);
}

extern "C" __global__ void unpack_f16(
    const __half* buffer /* [total] */, long long total,
    const long long* table /* [4 * n_arrays] */, int n_arrays,
    const float* divisors /* [n_arrays] or null */) {
  unpack_body(buffer, total, table, n_arrays, divisors);
}
