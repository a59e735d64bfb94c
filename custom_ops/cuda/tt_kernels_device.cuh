// Device code of the TT embedding-bag kernels; included by tt_kernels.cu only.
//
// Pipeline of one lookup (forward and backward share steps 1-2):
//   1. PrepareKeys: range-check ids and row_splits (first offender -> TTCudaErrorInfo),
//      turn ids into radix-sort keys (bad ids -> the sentinel key num_rows).
//   2. Radix sort (key, position), then Mark + inclusive scan + Scatter: distinct ids in
//      increasing order ("slots" u), each position's slot (and each sorted position's), and
//      "groups": runs of slots whose ids share all digits but the last.
//   3. Chain: a block walks a contiguous range of groups. Per group it builds the partial
//      product P of the leading k-1 cores once (prefix reuse) and then computes the last
//      step for every id of the group in parallel. Leading partials (levels < k-2) stay in
//      shared memory while consecutive groups share them, since sorted ids that share
//      leading digits are adjacent.
//   4. Forward: segment-reduce the distinct rows into bags (no atomics, deterministic).
//      Backward: aggregate each distinct id's output gradient (weights and the combiner's
//      norm folded in) over its run of sorted positions, in even chunks (hot ids have long
//      runs) with one atomicAdd per run piece, then run the chain backwards per group,
//      accumulating the gradient of each shared partial in shared memory and flushing it
//      once per prefix; core gradients are added with atomicAdd into the dense buffers.
//
// No warp-level intrinsics are used, so the same code runs under the host-thread emulator
// (emu/cuda_emu.h) that tests it on machines without a GPU.
#ifndef TT_KERAS_CUSTOM_OPS_CUDA_TT_KERNELS_DEVICE_CUH_
#define TT_KERAS_CUSTOM_OPS_CUDA_TT_KERNELS_DEVICE_CUH_

#include <stdint.h>

#include "tt_kernels.h"

#ifdef TT_CUDA_EMULATION
#define TT_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::tt_emu::g_dynamic_smem)
#else
#define TT_DYNAMIC_SHARED(type, name)    \
  extern __shared__ float4 name##_raw[]; \
  type* name = reinterpret_cast<type*>(name##_raw)
#endif

namespace tt_cuda {

constexpr int kMaxCores = TT_CUDA_MAX_CORES;
constexpr int kChainMaxThreads = 256;

struct DedupCounts {
  int32_t num_unique;
  int32_t num_groups;
};

__device__ __forceinline__ int64_t GlobalThread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t GlobalStride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// ------------------------------------------------------------------------------------------
// Deduplication
// ------------------------------------------------------------------------------------------

// num_splits is num_bags + 1, or 0 when the bags are not used (combiner none).
template <typename TIdx, typename TKey>
__global__ void __launch_bounds__(256)
    PrepareKeysKernel(const TIdx* __restrict__ ids, int64_t nnz, int64_t num_rows,
                      TKey* __restrict__ keys, int32_t* __restrict__ positions,
                      const int64_t* __restrict__ splits, int64_t num_splits,
                      TTCudaErrorInfo* error) {
  const int64_t total = nnz > num_splits ? nnz : num_splits;
  for (int64_t i = GlobalThread(); i < total; i += GlobalStride()) {
    if (i < nnz) {
      const int64_t id = static_cast<int64_t>(ids[i]);
      const bool ok = id >= 0 && id < num_rows;
      // All bad ids share the sentinel key num_rows: it sorts last, so it is one extra slot
      // that the chain kernels skip, and no bad value is ever used as an address.
      keys[i] = static_cast<TKey>(ok ? id : num_rows);
      positions[i] = static_cast<int32_t>(i);
      if (!ok) {
        atomicMin(reinterpret_cast<unsigned long long*>(&error->index_position),
                  static_cast<unsigned long long>(i));
      }
    }
    if (i < num_splits) {
      const int64_t v = splits[i];
      bool bad = i == 0 ? v != 0 : v < splits[i - 1];
      if (i == num_splits - 1 && v != nnz) bad = true;
      if (bad) {
        atomicMin(reinterpret_cast<unsigned long long*>(&error->split_position),
                  static_cast<unsigned long long>(i));
      }
    }
  }
}

// The positions were found with atomicMin; the values are fetched afterwards because a
// 64-bit atomic cannot carry both.
template <typename TIdx>
__global__ void FinalizeErrorKernel(const TIdx* __restrict__ ids,
                                    const int64_t* __restrict__ splits, TTCudaErrorInfo* error) {
  if (GlobalThread() != 0) return;
  if (error->index_position >= 0) {
    error->index_value = static_cast<int64_t>(ids[error->index_position]);
  }
  if (error->split_position >= 0) {
    const int64_t b = error->split_position;
    error->split_value = splits[b];
    error->split_previous = b > 0 ? splits[b - 1] : 0;
  }
}

// flags[i]: bit 0 = first sorted position of a distinct id, bit 32 = first of a group
// (distinct id / group_divisor). One 64-bit inclusive scan then numbers slots and groups.
template <typename TKey>
__global__ void __launch_bounds__(256)
    MarkKernel(const TKey* __restrict__ sorted, int64_t nnz, uint64_t group_divisor,
               uint64_t* __restrict__ flags) {
  for (int64_t i = GlobalThread(); i < nnz; i += GlobalStride()) {
    const uint64_t key = static_cast<uint64_t>(sorted[i]);
    uint64_t head = 1, group_head = 1;
    if (i > 0) {
      const uint64_t prev = static_cast<uint64_t>(sorted[i - 1]);
      head = key != prev;
      group_head = head && key / group_divisor != prev / group_divisor;
    }
    flags[i] = head | (group_head << 32);
  }
}

// group_start may be null (plain deduplication).
template <typename TKey>
__global__ void __launch_bounds__(256)
    ScatterKernel(const TKey* __restrict__ sorted, const int32_t* __restrict__ sorted_pos,
                  const uint64_t* __restrict__ flags, const uint64_t* __restrict__ scan,
                  int64_t nnz, int64_t* __restrict__ unique_ids, int32_t* __restrict__ inverse,
                  int32_t* __restrict__ group_start, DedupCounts* counts) {
  for (int64_t i = GlobalThread(); i < nnz; i += GlobalStride()) {
    const uint64_t v = scan[i];
    const int32_t u = static_cast<int32_t>(v & 0xffffffffu) - 1;
    const int32_t g = static_cast<int32_t>(v >> 32) - 1;
    const uint64_t f = flags[i];
    inverse[sorted_pos[i]] = u;
    if (f & 1u) unique_ids[u] = static_cast<int64_t>(sorted[i]);
    if ((f >> 32) && group_start) group_start[g] = u;
    if (i == nnz - 1) {
      counts->num_unique = u + 1;
      counts->num_groups = g + 1;
      if (group_start) group_start[g + 1] = u + 1;
    }
  }
}

// ------------------------------------------------------------------------------------------
// The TT chain
// ------------------------------------------------------------------------------------------
//
// Levels are 0-based: P_t is the product of the leading t + 1 core slices of an id, a
// rows[t] x r[t+1] matrix (rows[t] = q_0 * ... * q_t) whose row index is the column digits
// (j_0 .. j_t), most significant first. The ids of a group share P_top, top = k - 2.
// Scratch (shared memory, or global memory when it does not fit) holds P_t and, backward,
// dP_t for t <= top, plus an optional staging buffer for one core slice. Row strides are odd
// so that threads walking a column of P or of a staged slice hit distinct banks.

struct ChainParams {
  const float* cores[kMaxCores];
  float* core_grads[kMaxCores];
  int64_t p[kMaxCores];
  int64_t suffix[kMaxCores];  // prod p[t+1 .. k-1]: prefix of an id at level t = id / suffix[t]
  int32_t q[kMaxCores];
  int32_t r[kMaxCores + 1];
  int32_t rows[kMaxCores];   // rows of P_t
  int32_t ld[kMaxCores];     // row stride of P_t and dP_t in scratch
  int32_t ldg[kMaxCores];    // row stride of the staged slice of core t
  int32_t off_p[kMaxCores];  // float offsets in scratch
  int32_t off_dp[kMaxCores];
  int32_t off_stage;
  int32_t stage;  // stage the slices of cores 1 .. top in scratch
  int32_t k;
  int32_t dim;
  int64_t num_rows;
  int64_t scratch_floats;  // per block
  float* global_scratch;   // non-null: per-block scratch in global memory
  int64_t cost_group;      // relative cost of a group's prefix and of one id's last step,
  int64_t cost_id;         // used to split the groups evenly between blocks
  const int64_t* unique_ids;
  const int32_t* group_start;
  const DedupCounts* counts;
  float* rows_out;         // forward: [num_unique, dim]
  const float* row_grads;  // backward: [num_unique, dim]
};

// First group of block b when the groups are split into nb ranges of about equal cost.
// Cumulative cost up to group g is g * cost_group + group_start[g] * cost_id: strictly
// increasing, so a binary search finds the boundary and block ranges tile [0, num_groups).
__device__ __forceinline__ int64_t GroupBoundary(const ChainParams& c, int64_t num_groups,
                                                 int64_t num_unique, uint64_t b, uint64_t nb) {
  const uint64_t total = static_cast<uint64_t>(num_groups) * c.cost_group +
                         static_cast<uint64_t>(num_unique) * c.cost_id;
  const uint64_t target = total / nb * b + total % nb * b / nb;
  int64_t lo = 0, hi = num_groups;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    const uint64_t cum = static_cast<uint64_t>(mid) * c.cost_group +
                         static_cast<uint64_t>(c.group_start[mid]) * c.cost_id;
    if (cum < target) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

__device__ __forceinline__ void StageSlice(const float* __restrict__ g, int rows, int cols,
                                           float* __restrict__ stage, int ldg) {
  const int n = rows * cols;
  for (int e = threadIdx.x; e < n; e += blockDim.x) {
    const int c = e / cols;
    stage[c * ldg + (e - c * cols)] = g[e];
  }
}

// P_out[a*q + j][s] = sum_c P_in[a][c] * G[c][j*S + s]; zeroes dP_out alongside.
// Consecutive threads take consecutive s: G is read along a row (coalesced / conflict-free)
// and P_in[a][c] is the same address for the whole run (broadcast).
__device__ __forceinline__ void ChainStep(const float* P_in, int rows_in, int R, int ld_in,
                                          const float* G, int ldg, int q, int S, float* P_out,
                                          float* dP_out, int ld_out) {
  const int qS = q * S;
  const int n = rows_in * qS;
  for (int o = threadIdx.x; o < n; o += blockDim.x) {
    const int row = o / S;
    const int s = o - row * S;
    const int a = row / q;
    const float* pa = P_in + a * ld_in;
    const float* g = G + (o - a * qS);
    float acc = 0.f;
    for (int c = 0; c < R; ++c) acc = fmaf(pa[c], g[c * ldg], acc);
    P_out[row * ld_out + s] = acc;
    if (dP_out) dP_out[row * ld_out + s] = 0.f;
  }
}

// Backward of ChainStep: dG[c][j*S + s] += sum_a P_in[a][c] * dP_out[a*q + j][s] (atomics
// into the dense core gradient, which other blocks update too) and
// dP_in[a][c] += sum_{j,s} dP_out[a*q + j][s] * G[c][j*S + s] (owned by this block).
__device__ __forceinline__ void ChainStepBackward(const float* P_in, float* dP_in, int rows_in,
                                                  int R, int ld_in, const float* G, int ldg, int q,
                                                  int S, const float* dP_out, int ld_out,
                                                  float* dG) {
  const int qS = q * S;
  const int n1 = R * qS;
  for (int o = threadIdx.x; o < n1; o += blockDim.x) {
    const int c = o / qS;
    const int js = o - c * qS;
    const int j = js / S;
    const float* d = dP_out + j * ld_out + (js - j * S);
    float acc = 0.f;
    for (int a = 0; a < rows_in; ++a) acc = fmaf(P_in[a * ld_in + c], d[a * q * ld_out], acc);
    if (acc != 0.f) atomicAdd(dG + o, acc);
  }
  const int n2 = rows_in * R;
  for (int o = threadIdx.x; o < n2; o += blockDim.x) {
    const int a = o / R;
    const int c = o - a * R;
    const float* d = dP_out + a * q * ld_out;
    const float* g = G + c * ldg;
    float acc = 0.f;
    for (int j = 0; j < q; ++j) {
      for (int s = 0; s < S; ++s) acc = fmaf(d[j * ld_out + s], g[j * S + s], acc);
    }
    dP_in[a * ld_in + c] += acc;
  }
}

// Makes P_t (and a zero dP_t) for the prefix `prefix` at level t, from P_{t-1}.
template <bool kBackward>
__device__ void ComputeLevel(const ChainParams& c, float* scratch, int t, int64_t prefix) {
  const int64_t digit = prefix % c.p[t];
  const int R = c.r[t], q = c.q[t], S = c.r[t + 1];
  const float* slice = c.cores[t] + digit * (static_cast<int64_t>(R) * q * S);
  float* P = scratch + c.off_p[t];
  float* dP = kBackward ? scratch + c.off_dp[t] : nullptr;
  if (t == 0) {
    // r_0 = 1: the slice is already the q_0 x r_1 matrix P_0.
    const int n = q * S;
    for (int o = threadIdx.x; o < n; o += blockDim.x) {
      const int j = o / S;
      const int e = j * c.ld[0] + (o - j * S);
      P[e] = slice[o];
      if (kBackward) dP[e] = 0.f;
    }
  } else {
    const float* G = slice;
    int ldg = q * S;
    if (c.stage) {
      StageSlice(slice, R, q * S, scratch + c.off_stage, c.ldg[t]);
      __syncthreads();
      G = scratch + c.off_stage;
      ldg = c.ldg[t];
    }
    ChainStep(scratch + c.off_p[t - 1], c.rows[t - 1], R, c.ld[t - 1], G, ldg, q, S, P, dP,
              c.ld[t]);
  }
  __syncthreads();
}

// Pushes the accumulated dP_t of prefix `prefix` into dG_t and dP_{t-1}.
__device__ void FlushLevel(const ChainParams& c, float* scratch, int t, int64_t prefix) {
  const int64_t digit = prefix % c.p[t];
  const int R = c.r[t], q = c.q[t], S = c.r[t + 1];
  const int64_t slice_size = static_cast<int64_t>(R) * q * S;
  float* dG = c.core_grads[t] + digit * slice_size;
  const float* dP = scratch + c.off_dp[t];
  if (t == 0) {
    const int n = q * S;
    for (int o = threadIdx.x; o < n; o += blockDim.x) {
      const int j = o / S;
      const float v = dP[j * c.ld[0] + (o - j * S)];
      if (v != 0.f) atomicAdd(dG + o, v);
    }
  } else {
    const float* slice = c.cores[t] + digit * slice_size;
    const float* G = slice;
    int ldg = q * S;
    if (c.stage) {
      StageSlice(slice, R, q * S, scratch + c.off_stage, c.ldg[t]);
      __syncthreads();
      G = scratch + c.off_stage;
      ldg = c.ldg[t];
    }
    ChainStepBackward(scratch + c.off_p[t - 1], scratch + c.off_dp[t - 1], c.rows[t - 1], R,
                      c.ld[t - 1], G, ldg, q, S, dP, c.ld[t], dG);
  }
  __syncthreads();
}

// Last core for the ids u0 .. u0+n_total of a group (the first n_valid are in range):
// row[u][a*q + j] = sum_c P_top[a][c] * G_last[digit(u)][c][j]. Out-of-range ids get zeros.
__device__ void LastLevelForward(const ChainParams& c, const float* P, int32_t u0, int32_t n_valid,
                                 int32_t n_total) {
  const int t = c.k - 1;
  const int R = c.r[t], q = c.q[t], D = c.dim, ld = c.ld[t - 1];
  const int64_t slice_size = static_cast<int64_t>(R) * q;
  const int64_t n = static_cast<int64_t>(n_total) * D;
  for (int64_t o = threadIdx.x; o < n; o += blockDim.x) {
    const int v = static_cast<int>(o / D);
    const int col = static_cast<int>(o - static_cast<int64_t>(v) * D);
    float acc = 0.f;
    if (v < n_valid) {
      const int64_t id = c.unique_ids[u0 + v];
      const int a = col / q;
      const float* g = c.cores[t] + (id % c.p[t]) * slice_size + (col - a * q);
      const float* pa = P + a * ld;
      for (int cc = 0; cc < R; ++cc) acc = fmaf(pa[cc], g[cc * q], acc);
    }
    c.rows_out[static_cast<int64_t>(u0) * D + o] = acc;
  }
}

// Backward of the last core for the group's valid ids: dG_last[digit(u)][c][j] +=
// sum_a P_top[a][c] * gU[u][a*q + j] per id (distinct ids of a group have distinct last
// digits, so atomics only meet those of other blocks), and dP_top[a][c] += the gradient
// summed over all ids of the group: the shared prefix is back-propagated once per group.
__device__ void LastLevelBackward(const ChainParams& c, const float* P, float* dP, int32_t u0,
                                  int32_t n_valid) {
  const int t = c.k - 1;
  const int R = c.r[t], q = c.q[t], D = c.dim, ld = c.ld[t - 1], rows_in = c.rows[t - 1];
  const int64_t slice_size = static_cast<int64_t>(R) * q;
  const int64_t n1 = static_cast<int64_t>(n_valid) * R * q;
  for (int64_t o = threadIdx.x; o < n1; o += blockDim.x) {
    const int v = static_cast<int>(o / slice_size);
    const int e = static_cast<int>(o - v * slice_size);
    const int cc = e / q;
    const int j = e - cc * q;
    const int64_t u = u0 + v;
    const float* gu = c.row_grads + u * D + j;
    float acc = 0.f;
    for (int a = 0; a < rows_in; ++a) acc = fmaf(P[a * ld + cc], gu[a * q], acc);
    if (acc != 0.f) {
      atomicAdd(c.core_grads[t] + (c.unique_ids[u] % c.p[t]) * slice_size + e, acc);
    }
  }
  const int n2 = rows_in * R;
  for (int o = threadIdx.x; o < n2; o += blockDim.x) {
    const int a = o / R;
    const int cc = o - a * R;
    float acc = 0.f;
    for (int v = 0; v < n_valid; ++v) {
      const int64_t u = u0 + v;
      const float* g = c.cores[t] + (c.unique_ids[u] % c.p[t]) * slice_size + cc * q;
      const float* gu = c.row_grads + u * D + a * q;
      for (int j = 0; j < q; ++j) acc = fmaf(gu[j], g[j], acc);
    }
    dP[a * ld + cc] += acc;
  }
}

// One block walks a contiguous range of groups (contiguous so that consecutive groups can
// share the cached leading partials). All control flow below depends only on values that
// every thread of the block reads identically, so every __syncthreads() is reached by all.
template <bool kBackward>
__global__ void __launch_bounds__(kChainMaxThreads) ChainKernel(const ChainParams c) {
  TT_DYNAMIC_SHARED(float, smem);
  float* scratch = c.global_scratch ? c.global_scratch + blockIdx.x * c.scratch_floats : smem;
  const int64_t num_groups = c.counts->num_groups;
  const int64_t num_unique = c.counts->num_unique;
  const int64_t g_begin = GroupBoundary(c, num_groups, num_unique, blockIdx.x, gridDim.x);
  const int64_t g_end = GroupBoundary(c, num_groups, num_unique, blockIdx.x + 1, gridDim.x);
  const int top = c.k - 2;
  int64_t cached[kMaxCores] = {-1, -1, -1, -1};  // prefix held in P_t, -1: none

  for (int64_t g = g_begin; g < g_end; ++g) {
    const int32_t u0 = c.group_start[g];
    const int32_t u1 = c.group_start[g + 1];
    const int64_t id0 = c.unique_ids[u0];
    if (id0 >= c.num_rows) {
      // The slot of all out-of-range ids (the sentinel sorts last): a zero row, no gradient.
      if (!kBackward) {
        const int64_t n = static_cast<int64_t>(u1 - u0) * c.dim;
        for (int64_t o = threadIdx.x; o < n; o += blockDim.x) {
          c.rows_out[static_cast<int64_t>(u0) * c.dim + o] = 0.f;
        }
      }
      continue;
    }
    // Only the last slot of the last group can be the sentinel.
    const int32_t n_valid = c.unique_ids[u1 - 1] >= c.num_rows ? u1 - 1 - u0 : u1 - u0;
    int64_t prefix[kMaxCores];
    for (int t = 0; t <= top; ++t) prefix[t] = id0 / c.suffix[t];
    // Groups differ at level top, so `level` stops there at the latest.
    int level = 0;
    while (level < top && cached[level] == prefix[level]) ++level;
    if (kBackward) {
      for (int t = top - 1; t >= level; --t) {
        if (cached[t] >= 0) FlushLevel(c, scratch, t, cached[t]);
      }
    }
    for (int t = level; t <= top; ++t) {
      ComputeLevel<kBackward>(c, scratch, t, prefix[t]);
      cached[t] = prefix[t];
    }
    if (kBackward) {
      LastLevelBackward(c, scratch + c.off_p[top], scratch + c.off_dp[top], u0, n_valid);
      __syncthreads();
      FlushLevel(c, scratch, top, prefix[top]);
    } else {
      LastLevelForward(c, scratch + c.off_p[top], u0, n_valid, u1 - u0);
      __syncthreads();
    }
  }
  if (kBackward) {
    for (int t = top - 1; t >= 0; --t) {
      if (cached[t] >= 0) FlushLevel(c, scratch, t, cached[t]);
    }
  }
}

// ------------------------------------------------------------------------------------------
// Pooling and gradient aggregation
// ------------------------------------------------------------------------------------------

__device__ __forceinline__ void ClampBag(const int64_t* splits, int64_t b, int64_t nnz,
                                         int64_t* begin, int64_t* end) {
  // Malformed splits are reported by PrepareKeys; clamping keeps every read in bounds.
  int64_t s = splits[b], e = splits[b + 1];
  s = s < 0 ? 0 : (s > nnz ? nnz : s);
  e = e < s ? s : (e > nnz ? nnz : e);
  *begin = s;
  *end = e;
}

// One thread per (bag, column): the threads of a bag read the same inverse/weight entries
// (broadcast) and consecutive columns of a row (coalesced); the sum runs in position order.
// With a cache (unique_slot non-null), a distinct id whose slot is >= 0 reads its row from
// cache_rows instead of the TT rows.
__device__ __forceinline__ const float* SourceRow(const float* rows, int32_t u,
                                                  const int32_t* unique_slot,
                                                  const float* cache_rows, int dim) {
  const int32_t slot = unique_slot ? unique_slot[u] : -1;
  return slot >= 0 ? cache_rows + static_cast<int64_t>(slot) * dim
                   : rows + static_cast<int64_t>(u) * dim;
}

__global__ void __launch_bounds__(256)
    PoolKernel(const float* __restrict__ rows, const int32_t* __restrict__ inverse,
               const int64_t* __restrict__ splits, int64_t num_bags, int64_t nnz,
               const float* __restrict__ weights, int combiner, int dim,
               const int32_t* __restrict__ unique_slot, const float* __restrict__ cache_rows,
               float* __restrict__ out) {
  const int64_t n = num_bags * dim;
  for (int64_t o = GlobalThread(); o < n; o += GlobalStride()) {
    const int64_t b = o / dim;
    const int col = static_cast<int>(o - b * dim);
    int64_t begin, end;
    ClampBag(splits, b, nnz, &begin, &end);
    float acc = 0.f, wsum = 0.f, w2sum = 0.f;
    for (int64_t i = begin; i < end; ++i) {
      const float w = weights ? weights[i] : 1.f;
      acc = fmaf(w, SourceRow(rows, inverse[i], unique_slot, cache_rows, dim)[col], acc);
      wsum += w;
      w2sum = fmaf(w, w, w2sum);
    }
    float norm = 1.f;
    if (combiner == TT_CUDA_COMBINER_MEAN) norm = wsum;
    if (combiner == TT_CUDA_COMBINER_SQRTN) norm = sqrtf(w2sum);
    out[o] = (end > begin && norm != 0.f) ? acc / norm : 0.f;
  }
}

__global__ void __launch_bounds__(256)
    GatherKernel(const float* __restrict__ rows, const int32_t* __restrict__ inverse, int64_t nnz,
                 int dim, const int32_t* __restrict__ unique_slot,
                 const float* __restrict__ cache_rows, float* __restrict__ out) {
  const int64_t n = nnz * dim;
  for (int64_t o = GlobalThread(); o < n; o += GlobalStride()) {
    const int64_t i = o / dim;
    out[o] = SourceRow(rows, inverse[i], unique_slot, cache_rows, dim)[o - i * dim];
  }
}

// Backward of pooling, per position: its bag and its coefficient w_i / norm(bag). Positions
// in no bag (malformed splits) keep bag -1 from the memset and get no gradient.
__global__ void __launch_bounds__(256)
    BagScaleKernel(const int64_t* __restrict__ splits, int64_t num_bags, int64_t nnz,
                   const float* __restrict__ weights, int combiner, int32_t* __restrict__ bag_of,
                   float* __restrict__ coef) {
  for (int64_t b = GlobalThread(); b < num_bags; b += GlobalStride()) {
    int64_t begin, end;
    ClampBag(splits, b, nnz, &begin, &end);
    float inv_norm = 1.f;
    if (combiner != TT_CUDA_COMBINER_SUM) {
      float wsum = 0.f, w2sum = 0.f;
      for (int64_t i = begin; i < end; ++i) {
        const float w = weights ? weights[i] : 1.f;
        wsum += w;
        w2sum = fmaf(w, w, w2sum);
      }
      const float norm = combiner == TT_CUDA_COMBINER_MEAN ? wsum : sqrtf(w2sum);
      inv_norm = norm != 0.f ? 1.f / norm : 0.f;
    }
    for (int64_t i = begin; i < end; ++i) {
      bag_of[i] = static_cast<int32_t>(b);
      coef[i] = (weights ? weights[i] : 1.f) * inv_norm;
    }
  }
}

// gU[u][col] = sum over the positions i of slot u of coef[i] * grad[bag_of[i]][col]
// (bag_of null: combiner none, grad row i, coefficient 1); row_grads must be zero.
// A hot id owns a long run of the sorted positions (under Zipf(1.1) one id can hold a tenth
// of a batch), so one thread per slot would serialize it. Each thread instead sums a fixed
// chunk of sorted positions for one column and adds every run piece it sees with one
// atomicAdd: the work is even, and an address receives at most one add per chunk.
constexpr int kAggregateChunk = 32;

__global__ void __launch_bounds__(256)
    AggregateGradKernel(const float* __restrict__ grad, const int32_t* __restrict__ sorted_pos,
                        const uint64_t* __restrict__ slot_scan, const int32_t* __restrict__ bag_of,
                        const float* __restrict__ coef, int64_t nnz, int dim,
                        float* __restrict__ row_grads) {
  const int64_t chunks = (nnz + kAggregateChunk - 1) / kAggregateChunk;
  const int64_t n = chunks * dim;
  for (int64_t o = GlobalThread(); o < n; o += GlobalStride()) {
    const int64_t chunk = o / dim;
    const int col = static_cast<int>(o - chunk * dim);
    const int64_t begin = chunk * kAggregateChunk;
    const int64_t end = begin + kAggregateChunk < nnz ? begin + kAggregateChunk : nnz;
    int64_t slot = -1;
    float acc = 0.f;
    for (int64_t s = begin; s < end; ++s) {
      // The inclusive scan of the slot-start flags numbers the slots (low 32 bits).
      const int64_t u = static_cast<int64_t>(slot_scan[s] & 0xffffffffu) - 1;
      if (u != slot) {
        if (slot >= 0 && acc != 0.f) atomicAdd(row_grads + slot * dim + col, acc);
        slot = u;
        acc = 0.f;
      }
      const int64_t i = sorted_pos[s];
      if (bag_of == nullptr) {
        acc += grad[i * dim + col];
      } else {
        const int64_t b = bag_of[i];
        if (b >= 0) acc = fmaf(coef[i], grad[b * dim + col], acc);
      }
    }
    if (slot >= 0 && acc != 0.f) atomicAdd(row_grads + slot * dim + col, acc);
  }
}

// ------------------------------------------------------------------------------------------
// The hot-row cache (docs/cache.md)
// ------------------------------------------------------------------------------------------
//
// A cached lookup deduplicates and runs the chain exactly as a plain one; then each distinct
// id looks itself up in the sorted cache ids (one binary search per distinct id, not per
// position), pooling reads cached ids' rows from the cache, and the backward moves cached
// ids' gradient rows out of the chain's input into the cache rows' gradient.

// The first cache slot that breaks the rules of TTCudaCache goes to the error info.
__global__ void __launch_bounds__(256)
    CheckCacheKernel(const int64_t* __restrict__ cache_ids, int64_t size, int64_t num_rows,
                     TTCudaErrorInfo* error) {
  for (int64_t s = GlobalThread(); s < size; s += GlobalStride()) {
    const int64_t id = cache_ids[s];
    bool bad = id < 0;
    if (!bad && s > 0) {
      const int64_t prev = cache_ids[s - 1];
      bad = id < prev || (id == prev && id < num_rows);
    }
    if (bad) {
      atomicMin(reinterpret_cast<unsigned long long*>(&error->cache_position),
                static_cast<unsigned long long>(s));
    }
  }
}

__global__ void FinalizeCacheErrorKernel(const int64_t* __restrict__ cache_ids,
                                         TTCudaErrorInfo* error) {
  if (GlobalThread() != 0) return;
  const int64_t s = error->cache_position;
  if (s >= 0) {
    error->cache_value = cache_ids[s];
    error->cache_previous = s > 0 ? cache_ids[s - 1] : 0;
  }
}

// unique_slot[u]: the cache slot of distinct id u, or -1. Every probe of the binary search
// stays in [0, size) whatever the cache holds; the sentinel of bad ids (num_rows) and empty
// slots (ids >= num_rows) never match.
__global__ void __launch_bounds__(256)
    UniqueSlotKernel(const int64_t* __restrict__ unique_ids, const DedupCounts* counts,
                     const int64_t* __restrict__ cache_ids, int64_t size, int64_t num_rows,
                     int32_t* __restrict__ unique_slot) {
  const int64_t n = counts->num_unique;
  for (int64_t u = GlobalThread(); u < n; u += GlobalStride()) {
    const int64_t id = unique_ids[u];
    int32_t slot = -1;
    if (id < num_rows) {
      int64_t lo = 0, hi = size;  // the first slot whose id is >= id
      while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (cache_ids[mid] < id) {
          lo = mid + 1;
        } else {
          hi = mid;
        }
      }
      if (lo < size && cache_ids[lo] == id) slot = static_cast<int32_t>(lo);
    }
    unique_slot[u] = slot;
  }
}

// Each position's cache slot (the forward's residual for the gradient) and, added into
// *num_hits, how many positions hit: one atomic per thread, integers, so the sum is exact.
__global__ void __launch_bounds__(256)
    PositionSlotsKernel(const int32_t* __restrict__ inverse,
                        const int32_t* __restrict__ unique_slot, int64_t nnz,
                        int32_t* __restrict__ slots, unsigned long long* num_hits) {
  unsigned long long hits = 0;
  for (int64_t i = GlobalThread(); i < nnz; i += GlobalStride()) {
    const int32_t slot = unique_slot[inverse[i]];
    slots[i] = slot;
    hits += slot >= 0;
  }
  if (hits != 0) atomicAdd(num_hits, hits);
}

// flags[u] = 1 for a cached distinct id (u < num_unique), else 0, for the scan that gives
// cached ids their place in the cache gradient.
__global__ void __launch_bounds__(256)
    HitFlagsKernel(const int32_t* __restrict__ unique_slot, const DedupCounts* counts, int64_t nnz,
                   uint64_t* __restrict__ flags) {
  const int64_t n = counts->num_unique;
  for (int64_t u = GlobalThread(); u < nnz; u += GlobalStride()) {
    flags[u] = u < n && unique_slot[u] >= 0 ? 1u : 0u;
  }
}

// One thread per (distinct id, column): a cached id's summed gradient row moves to place
// scan[u] - 1 of the cache gradient and is zeroed in row_grads, so the chain gives the cores
// nothing from cache hits. Distinct ids ascend, and so do the cache slots they map to.
__global__ void __launch_bounds__(256)
    MoveHitGradsKernel(const int32_t* __restrict__ unique_slot, const uint64_t* __restrict__ scan,
                       const DedupCounts* counts, int dim, float* __restrict__ row_grads,
                       int64_t* __restrict__ hit_slots, float* __restrict__ hit_values,
                       int64_t* num_hit_slots) {
  const int64_t n = counts->num_unique;
  if (GlobalThread() == 0) *num_hit_slots = n > 0 ? static_cast<int64_t>(scan[n - 1]) : 0;
  for (int64_t o = GlobalThread(); o < n * dim; o += GlobalStride()) {
    const int64_t u = o / dim;
    const int32_t slot = unique_slot[u];
    if (slot < 0) continue;
    const int64_t h = static_cast<int64_t>(scan[u]) - 1;
    const int64_t col = o - u * dim;
    hit_values[h * dim + col] = row_grads[o];
    row_grads[o] = 0.f;
    if (col == 0) hit_slots[h] = slot;
  }
}

}  // namespace tt_cuda

#endif  // TT_KERAS_CUSTOM_OPS_CUDA_TT_KERNELS_DEVICE_CUH_
