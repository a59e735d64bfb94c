// Small dense-matrix microkernels of the TT ops (framework-free, header-only).
//
// The matrices here are tiny (2-128 per side), where library GEMMs spend more time
// dispatching than computing; these keep an output panel in registers across the whole
// contraction. GCC vector types compile to AVX where the ISA variant has it and to SSE
// pairs elsewhere.
//
// No include guard: like tt_core_kernels.h, which includes it, this is compiled once per ISA
// variant, in namespace TT_ISA_NAMESPACE, with TT_ISA_HAS_AVX set to 1 where the variant has
// AVX (the target pragma does not reach the preprocessor, so __AVX__ cannot tell).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

namespace tt_keras {
namespace TT_ISA_NAMESPACE {
namespace gemm {

// Loads and stores go through memcpy: the operands are not 32-byte aligned, and memcpy is
// how to say so (it compiles to one unaligned vector move).
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));

template <typename V>
inline V Load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
inline void Store(float* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}
// v, pinned to a register. GCC folds a load into every FMA that reads it (saving a
// register), so a vector shared by several FMAs would be loaded once per FMA and the load
// ports, not the FMAs, would bound the kernels (measured on the 3 x 32 panel of RowsPanel:
// 20 GMAC/s folded, 30 pinned, of a 47 GMAC/s peak per core).
// Without AVX a 32-byte vector is a pair of SSE registers, which the constraint cannot name.
template <typename V>
inline V InRegister(V v) {
#if defined(__x86_64__)
  if constexpr (sizeof(V) == 16 || TT_ISA_HAS_AVX) asm("" : "+x"(v));
#endif
  return v;
}

template <typename V>
inline V Splat(float x) {
  // Not `V{} + x`: adding to -0.f is not an identity, so that form costs a vaddss before
  // each broadcast; this one is a single vbroadcastss, from memory when x is.
  if constexpr (sizeof(V) == 32) {
    return V{x, x, x, x, x, x, x, x};
  } else {
    return V{x, x, x, x};
  }
}

// C[0:m, j0:j0+NB*W] (+)= A[0:m, 0:kk] @ B[0:kk, j0:...]; rows in pairs to share B loads.
// A(i, l) is A[i * a_rs + l * a_cs], so a transposed A costs nothing.
template <typename V, int NB, bool kAcc>
inline void GemmPanel(const float* __restrict A, int64_t a_rs, int64_t a_cs,
                      const float* __restrict B, int64_t ldb, float* __restrict C, int64_t ldc,
                      int64_t m, int64_t kk) {
  constexpr int W = sizeof(V) / sizeof(float);
  int64_t i = 0;
  for (; i + 2 <= m; i += 2) {
    V c0[NB], c1[NB];
    for (int b = 0; b < NB; ++b) {
      c0[b] = kAcc ? Load<V>(C + i * ldc + b * W) : Splat<V>(0.f);
      c1[b] = kAcc ? Load<V>(C + (i + 1) * ldc + b * W) : Splat<V>(0.f);
    }
    const float* a0 = A + i * a_rs;
    const float* a1 = a0 + a_rs;
    for (int64_t l = 0; l < kk; ++l) {
      const V x0 = Splat<V>(a0[l * a_cs]), x1 = Splat<V>(a1[l * a_cs]);
      const float* b = B + l * ldb;
      for (int bb = 0; bb < NB; ++bb) {
        const V y = InRegister(Load<V>(b + bb * W));
        c0[bb] += x0 * y;
        c1[bb] += x1 * y;
      }
    }
    for (int b = 0; b < NB; ++b) {
      Store<V>(C + i * ldc + b * W, c0[b]);
      Store<V>(C + (i + 1) * ldc + b * W, c1[b]);
    }
  }
  for (; i < m; ++i) {
    V c0[NB];
    for (int b = 0; b < NB; ++b) c0[b] = kAcc ? Load<V>(C + i * ldc + b * W) : Splat<V>(0.f);
    const float* a0 = A + i * a_rs;
    for (int64_t l = 0; l < kk; ++l) {
      const V x0 = Splat<V>(a0[l * a_cs]);
      const float* b = B + l * ldb;
      for (int bb = 0; bb < NB; ++bb) c0[bb] += x0 * Load<V>(b + bb * W);
    }
    for (int b = 0; b < NB; ++b) Store<V>(C + i * ldc + b * W, c0[b]);
  }
}

// C_r[col:col+NB*W] = A_r[0:kk] @ B[0:kk, col:...] for MR rows r, A_r and C_r anywhere in
// memory (rows of different nodes that share one core slice B). Three rows at a time keep
// twelve accumulators in flight, enough to cover the FMA latency that two rows leave bare.
template <typename V, int NB, int MR>
inline void RowsPanel(const float* const* a_rows, const float* __restrict B, int64_t ldb,
                      float* const* c_rows, int64_t col, int64_t kk) {
  constexpr int W = sizeof(V) / sizeof(float);
  V acc[MR][NB];
  for (int r = 0; r < MR; ++r) {
    for (int b = 0; b < NB; ++b) acc[r][b] = Splat<V>(0.f);
  }
  for (int64_t l = 0; l < kk; ++l) {
    V x[MR];
    for (int r = 0; r < MR; ++r) x[r] = Splat<V>(a_rows[r][l]);
    const float* b = B + l * ldb + col;
    for (int bb = 0; bb < NB; ++bb) {
      const V y = InRegister(Load<V>(b + bb * W));
      for (int r = 0; r < MR; ++r) acc[r][bb] += x[r] * y;
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int b = 0; b < NB; ++b) Store<V>(c_rows[r] + col + b * W, acc[r][b]);
  }
}

template <typename V, int NB>
inline void RowsPanels(const float* const* a_rows, const float* B, int64_t ldb,
                       float* const* c_rows, int64_t col, int64_t rows, int64_t kk) {
  int64_t r = 0;
  for (; r + 3 <= rows; r += 3) RowsPanel<V, NB, 3>(a_rows + r, B, ldb, c_rows + r, col, kk);
  if (rows - r == 2) RowsPanel<V, NB, 2>(a_rows + r, B, ldb, c_rows + r, col, kk);
  if (rows - r == 1) RowsPanel<V, NB, 1>(a_rows + r, B, ldb, c_rows + r, col, kk);
}

// C_r (n floats) = A_r (kk floats) @ B (kk x n, row-major) for each of `rows` row pairs.
inline void RowsGemm(const float* const* a_rows, const float* B, float* const* c_rows, int64_t rows,
                     int64_t kk, int64_t n) {
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) RowsPanels<v8f, 4>(a_rows, B, n, c_rows, j, rows, kk);
  for (; j + 8 <= n; j += 8) RowsPanels<v8f, 1>(a_rows, B, n, c_rows, j, rows, kk);
  for (; j + 4 <= n; j += 4) RowsPanels<v4f, 1>(a_rows, B, n, c_rows, j, rows, kk);
  for (; j < n; ++j) {
    for (int64_t r = 0; r < rows; ++r) {
      float s = 0.f;
      for (int64_t l = 0; l < kk; ++l) s += a_rows[r][l] * B[l * n + j];
      c_rows[r][j] = s;
    }
  }
}

// C[i0:i0+MR, b_off:b_off+NB*W] = sum over l of outer(a_rows[l][i0:i0+MR], b_rows[l][...]):
// a GEMM whose contraction runs over rows scattered in memory (one per stacked node), so
// the stack is never copied. The MR x NB output panel stays in registers across the whole
// contraction; three rows, as in RowsPanel, keep twelve accumulators in flight.
template <typename V, int NB, int MR>
inline void GatherGemmPanel(const float* const* a_rows, const float* const* b_rows, int64_t b_off,
                            float* __restrict C, int64_t ldc, int64_t i0, int64_t kk) {
  constexpr int W = sizeof(V) / sizeof(float);
  V acc[MR][NB];
  for (int r = 0; r < MR; ++r) {
    for (int b = 0; b < NB; ++b) acc[r][b] = Splat<V>(0.f);
  }
  for (int64_t l = 0; l < kk; ++l) {
    const float* a = a_rows[l] + i0;
    V x[MR];
    for (int r = 0; r < MR; ++r) x[r] = Splat<V>(a[r]);
    const float* b = b_rows[l] + b_off;
    for (int bb = 0; bb < NB; ++bb) {
      const V y = InRegister(Load<V>(b + bb * W));
      for (int r = 0; r < MR; ++r) acc[r][bb] += x[r] * y;
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int b = 0; b < NB; ++b) Store<V>(C + (i0 + r) * ldc + b * W, acc[r][b]);
  }
}

template <typename V, int NB>
inline void GatherGemmPanels(const float* const* a_rows, const float* const* b_rows, int64_t b_off,
                             float* C, int64_t ldc, int64_t m, int64_t kk) {
  // Threes while more than four rows are left, then pairs: four rows as 3 + 1 would run the
  // whole contraction once with a single accumulator row.
  int64_t i = 0;
  for (; m - i >= 3 && m - i != 4; i += 3) {
    GatherGemmPanel<V, NB, 3>(a_rows, b_rows, b_off, C, ldc, i, kk);
  }
  for (; m - i >= 2; i += 2) GatherGemmPanel<V, NB, 2>(a_rows, b_rows, b_off, C, ldc, i, kk);
  if (m - i == 1) GatherGemmPanel<V, NB, 1>(a_rows, b_rows, b_off, C, ldc, i, kk);
}

inline void GatherGemm(const float* const* a_rows, const float* const* b_rows, float* C, int64_t m,
                       int64_t kk, int64_t n) {
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) GatherGemmPanels<v8f, 4>(a_rows, b_rows, j, C + j, n, m, kk);
  for (; j + 8 <= n; j += 8) GatherGemmPanels<v8f, 1>(a_rows, b_rows, j, C + j, n, m, kk);
  for (; j + 4 <= n; j += 4) GatherGemmPanels<v4f, 1>(a_rows, b_rows, j, C + j, n, m, kk);
  for (; j < n; ++j) {
    for (int64_t i = 0; i < m; ++i) {
      float s = 0.f;
      for (int64_t l = 0; l < kk; ++l) s += a_rows[l][i] * b_rows[l][j];
      C[i * n + j] = s;
    }
  }
}

// C (m x n) (+)= A (m x kk) @ B (kk x n); B and C row-major and contiguous, A(i, l) at
// A[i * a_rs + l * a_cs].
template <bool kAcc>
inline void Gemm(const float* __restrict A, int64_t a_rs, int64_t a_cs, const float* __restrict B,
                 float* __restrict C, int64_t m, int64_t kk, int64_t n) {
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) GemmPanel<v8f, 4, kAcc>(A, a_rs, a_cs, B + j, n, C + j, n, m, kk);
  for (; j + 8 <= n; j += 8) GemmPanel<v8f, 1, kAcc>(A, a_rs, a_cs, B + j, n, C + j, n, m, kk);
  for (; j + 4 <= n; j += 4) GemmPanel<v4f, 1, kAcc>(A, a_rs, a_cs, B + j, n, C + j, n, m, kk);
  for (; j < n; ++j) {
    for (int64_t i = 0; i < m; ++i) {
      float s = kAcc ? C[i * n + j] : 0.f;
      for (int64_t l = 0; l < kk; ++l) s += A[i * a_rs + l * a_cs] * B[l * n + j];
      C[i * n + j] = s;
    }
  }
}

inline void MatMulAcc(const float* A, const float* B, float* C, int64_t m, int64_t kk, int64_t n) {
  Gemm<true>(A, kk, 1, B, C, m, kk, n);
}

inline void MatMul(const float* A, const float* B, float* C, int64_t m, int64_t kk, int64_t n) {
  Gemm<false>(A, kk, 1, B, C, m, kk, n);
}

// One core slice transposed: (r_in, q*r_out) -> (q*r_out, r_in), so that the backward's
// G @ slice^T becomes a plain GEMM whose r_in output columns vectorise.
inline void TransposeSlice(const float* src, int64_t rows, int64_t cols, float* dst) {
  for (int64_t a = 0; a < rows; ++a) {
    for (int64_t b = 0; b < cols; ++b) dst[b * rows + a] = src[a * cols + b];
  }
}

// The sums of eight vectors' lanes, as one vector: lane x = sum of a[x]'s lanes.
inline v8f LaneSums8(const v8f* a) {
#if TT_ISA_HAS_AVX
  const __m256 t0 = _mm256_hadd_ps(__m256(a[0]), __m256(a[1]));
  const __m256 t1 = _mm256_hadd_ps(__m256(a[2]), __m256(a[3]));
  const __m256 t2 = _mm256_hadd_ps(__m256(a[4]), __m256(a[5]));
  const __m256 t3 = _mm256_hadd_ps(__m256(a[6]), __m256(a[7]));
  // u0 = [sums of a0..a3 over lanes 0-3 | the same over lanes 4-7]; u1 likewise for a4..a7.
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return v8f(
      _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31)));
#else
  v8f out;
  for (int x = 0; x < 8; ++x) {
    float s = 0.f;
    for (int lane = 0; lane < 8; ++lane) s += a[x][lane];
    out[x] = s;
  }
  return out;
#endif
}

// C[i][j] (+)= dot(A[i][0:kk], B[j][0:kk]) for i < MI, j < NJ: an MI x NJ tile of A @ B^T
// with both operands contiguous along the contraction. This is how a short output with a
// long contraction (the last TT core: q-wide rows, rank-long sums) vectorises 8-wide, and
// how dP @ G^T needs no transposed copy of the core. kk % 8 == 0.
template <int MI, int NJ, bool kAcc>
__attribute__((always_inline)) inline void DotTile(const float* __restrict A, int64_t lda,
                                                   const float* __restrict B, int64_t ldb,
                                                   int64_t kk, float* __restrict C, int64_t ldc) {
  static_assert(MI >= 1 && MI <= 2 && NJ >= 1 && NJ <= 4, "tile of at most 2 x 4");
  v8f acc[8];
  for (int x = 0; x < 8; ++x) acc[x] = Splat<v8f>(0.f);
  for (int64_t l = 0; l < kk; l += 8) {
    v8f b[NJ];
    for (int j = 0; j < NJ; ++j) b[j] = InRegister(Load<v8f>(B + j * ldb + l));
    for (int i = 0; i < MI; ++i) {
      const v8f a = InRegister(Load<v8f>(A + i * lda + l));
      for (int j = 0; j < NJ; ++j) acc[4 * i + j] += a * b[j];
    }
  }
  const v8f sums = LaneSums8(acc);
  if constexpr (NJ == 4) {
    // Row i of the tile is lanes 4i..4i+3: one 4-wide store per row, not a lane extract
    // per element (which cost more than the tile's FMAs).
    for (int i = 0; i < MI; ++i) {
      v4f row = {sums[4 * i], sums[4 * i + 1], sums[4 * i + 2], sums[4 * i + 3]};
      if (kAcc) row += Load<v4f>(C + i * ldc);
      Store<v4f>(C + i * ldc, row);
    }
  } else {
    for (int i = 0; i < MI; ++i) {
      for (int j = 0; j < NJ; ++j) {
        C[i * ldc + j] = kAcc ? C[i * ldc + j] + sums[4 * i + j] : sums[4 * i + j];
      }
    }
  }
}

template <int MI, bool kAcc>
inline void DotRows(const float* A, int64_t lda, const float* B, int64_t kk, float* C, int64_t n) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) DotTile<MI, 4, kAcc>(A, lda, B + j * kk, kk, kk, C + j, n);
  switch (n - j) {
    case 3:
      DotTile<MI, 3, kAcc>(A, lda, B + j * kk, kk, kk, C + j, n);
      break;
    case 2:
      DotTile<MI, 2, kAcc>(A, lda, B + j * kk, kk, kk, C + j, n);
      break;
    case 1:
      DotTile<MI, 1, kAcc>(A, lda, B + j * kk, kk, kk, C + j, n);
      break;
  }
}

// C (m x n) (+)= A (m x kk) @ Bt^T, Bt (n x kk): both row-major and contiguous; kk % 8 == 0.
template <bool kAcc>
inline void MatMulBt(const float* A, const float* Bt, float* C, int64_t m, int64_t kk, int64_t n) {
  int64_t i = 0;
  for (; i + 2 <= m; i += 2) DotRows<2, kAcc>(A + i * kk, kk, Bt, kk, C + i * n, n);
  if (i < m) DotRows<1, kAcc>(A + i * kk, kk, Bt, kk, C + i * n, n);
}

// Weighted sums of rows, the pooling and gradient-aggregation step of every lookup:
// out[0:dim] = post * sum over j < count of w_j * row_j[0:dim], with (w_j, row_j) = term(j),
// summed in j order (one FMA per term and element, as the scalar loop would). For dim a
// multiple of 8 up to 128 the sum stays in registers (RowWidth<dim / 8>); otherwise
// (RowWidth<0>) it accumulates in `out`. Same order and rounding either way.
template <int NV>
using RowWidth = std::integral_constant<int, NV>;

// Calls fn(RowWidth<NV>()) with the register width for rows of `dim` floats.
template <typename Fn>
inline void WithRowWidth(int64_t dim, const Fn& fn) {
  switch (dim) {
    case 8:
      fn(RowWidth<1>());
      break;
    case 16:
      fn(RowWidth<2>());
      break;
    case 32:
      fn(RowWidth<4>());
      break;
    case 64:
      fn(RowWidth<8>());
      break;
    case 128:
      fn(RowWidth<16>());
      break;
    default:
      fn(RowWidth<0>());
      break;
  }
}

template <int NV, typename Term>
inline void SumRows(RowWidth<NV>, int64_t dim, int64_t count, const Term& term, bool scale,
                    float post, float* __restrict out) {
  if constexpr (NV > 0) {
    v8f acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = Splat<v8f>(0.f);
    for (int64_t j = 0; j < count; ++j) {
      const auto [w, row] = term(j);
      const v8f ws = Splat<v8f>(w);
      for (int v = 0; v < NV; ++v) acc[v] += ws * Load<v8f>(row + 8 * v);
    }
    if (scale) {
      const v8f s = Splat<v8f>(post);
      for (int v = 0; v < NV; ++v) acc[v] *= s;
    }
    for (int v = 0; v < NV; ++v) Store<v8f>(out + 8 * v, acc[v]);
  } else {
    std::fill(out, out + dim, 0.f);
    for (int64_t j = 0; j < count; ++j) {
      const auto [w, row] = term(j);
#pragma omp simd
      for (int64_t c = 0; c < dim; ++c) out[c] += w * row[c];
    }
    if (scale) {
      for (int64_t c = 0; c < dim; ++c) out[c] *= post;
    }
  }
}

}  // namespace gemm
}  // namespace TT_ISA_NAMESPACE
}  // namespace tt_keras
