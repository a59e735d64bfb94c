// The hot kernels of the TT core (tt_core.h), compiled once per instruction set.
//
// No include guard on purpose: tt_core_dispatch.cc includes this file once per ISA variant,
// each time inside `#pragma GCC target(...)` and with TT_ISA_NAMESPACE naming the variant's
// namespace (tt_gemm.h likewise), so every function here, lambdas and the microkernels they
// inline included, exists once per variant. Functions defined elsewhere (the standard
// library, tt_core.h, tt_core_internal.h) are compiled for the baseline only: they may be
// inlined into a variant, never the other way round, so no variant's instructions leak
// into code the baseline runs. The public entry points in tt_core_dispatch.cc call the
// variant tt_isa.h selects.
//
// Each entry point takes its scratch as tt_core.cc's matching *WorkspaceBytes() query
// says; the two must change together.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "tt_core.h"
#include "tt_core_internal.h"
#include "tt_gemm.h"

namespace tt_keras {
namespace TT_ISA_NAMESPACE {

using gemm::GatherGemm;
using gemm::MatMul;
using gemm::MatMulAcc;
using gemm::TransposeSlice;
using internal::Divider;
using internal::IdPos;
using internal::kMaxDigitBits;
using internal::kMaxSortChunks;
using internal::LastLevelBySiblings;
using internal::LastLevelParts;
using internal::LevelBackward;
using internal::MaxNodes;

namespace {

int BitLength(uint64_t x) {
  int bits = 0;
  while (x) {
    ++bits;
    x >>= 1;
  }
  return bits;
}

// Sorts (id, position) pairs by id. When both fit in 64 bits they are packed into one word
// and LSD-radix-sorted on the id bits only (stable, so positions stay ascending per id).
// Each pass splits the keys into a few contiguous chunks, counted and scattered in parallel;
// chunk c's keys of a digit go after those of chunks < c, which keeps the sort stable.
template <typename Tid>
void SortByIds(const Tid* ids, int64_t nnz, int64_t max_id, int64_t* sorted_ids,
               int64_t* sorted_pos, Workspace* ws, const ParallelFor& pfor) {
  ScratchScope scratch(ws);
  const int pos_bits = std::max(1, BitLength(static_cast<uint64_t>(nnz)));
  const int id_bits = std::max(1, BitLength(static_cast<uint64_t>(max_id)));
  if (pos_bits + id_bits > 64 || nnz < 64) {
    IdPos* pairs = ws->Take<IdPos>(nnz);
    for (int64_t i = 0; i < nnz; ++i) pairs[i] = {static_cast<int64_t>(ids[i]), i};
    std::sort(pairs, pairs + nnz, [](const IdPos& a, const IdPos& b) {
      return a.id < b.id || (a.id == b.id && a.pos < b.pos);
    });
    for (int64_t i = 0; i < nnz; ++i) {
      sorted_ids[i] = pairs[i].id;
      sorted_pos[i] = pairs[i].pos;
    }
    return;
  }
  uint64_t* a = ws->Take<uint64_t>(nnz);
  uint64_t* b = ws->Take<uint64_t>(nnz);
  const int passes = (id_bits + kMaxDigitBits - 1) / kMaxDigitBits;
  const int digit_bits = (id_bits + passes - 1) / passes;
  const uint64_t mask = (uint64_t{1} << digit_bits) - 1;
  const int64_t buckets = int64_t{1} << digit_bits;
  const int64_t chunks = std::min<int64_t>(kMaxSortChunks, (nnz + 8191) / 8192);
  const int64_t chunk = (nnz + chunks - 1) / chunks;
  int64_t* count = ws->Take<int64_t>(chunks * buckets);
  pfor(chunks, 4 * chunk, [&](int64_t lo, int64_t hi) {
    uint64_t* dst = a;
    const int64_t end = std::min(nnz, hi * chunk);
    for (int64_t i = lo * chunk; i < end; ++i) {
      dst[i] = (static_cast<uint64_t>(ids[i]) << pos_bits) | static_cast<uint64_t>(i);
    }
  });
  for (int pass = 0; pass < passes; ++pass) {
    const int shift = pos_bits + pass * digit_bits;
    // The loops read captured pointers into locals first: through the lambda's references
    // every store would force them to be reloaded (measured: 3x slower).
    pfor(chunks, 4 * chunk, [&](int64_t lo, int64_t hi) {
      const uint64_t* src = a;
      for (int64_t c = lo; c < hi; ++c) {
        int64_t* cnt = count + c * buckets;
        std::fill(cnt, cnt + buckets, 0);
        const int64_t end = std::min(nnz, (c + 1) * chunk);
        for (int64_t i = c * chunk; i < end; ++i) ++cnt[(src[i] >> shift) & mask];
      }
    });
    int64_t sum = 0;
    for (int64_t x = 0; x < buckets; ++x) {
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t n = count[c * buckets + x];
        count[c * buckets + x] = sum;
        sum += n;
      }
    }
    pfor(chunks, 8 * chunk, [&](int64_t lo, int64_t hi) {
      const uint64_t* src = a;
      uint64_t* dst = b;
      for (int64_t c = lo; c < hi; ++c) {
        int64_t* next = count + c * buckets;
        const int64_t end = std::min(nnz, (c + 1) * chunk);
        for (int64_t i = c * chunk; i < end; ++i) dst[next[(src[i] >> shift) & mask]++] = src[i];
      }
    });
    std::swap(a, b);
  }
  const uint64_t pos_mask = (uint64_t{1} << pos_bits) - 1;
  pfor(chunks, 4 * chunk, [&](int64_t lo, int64_t hi) {
    const uint64_t* src = a;
    int64_t* ids_dst = sorted_ids;
    int64_t* pos_dst = sorted_pos;
    const int64_t end = std::min(nnz, hi * chunk);
    for (int64_t i = lo * chunk; i < end; ++i) {
      ids_dst[i] = static_cast<int64_t>(src[i] >> pos_bits);
      pos_dst[i] = static_cast<int64_t>(src[i] & pos_mask);
    }
  });
}

// The cost per digit of a loop over a core's p digits that does `work` in all: what lets
// the pool run a small batch's loop inline. (Rounding the nodes per digit up to one priced
// 128 ids over a 220-digit core as 220 nodes' work and woke the pool for less work than a
// wake-up costs.)
inline int64_t PerDigit(int64_t work, int64_t p) { return std::max<int64_t>(1, work / p); }

// Digit of a level-L node (L in 1..k): the index into core L-1.
inline int64_t NodeDigit(const TTDims& dims, const LookupPlan& plan, int level, int64_t n) {
  return plan.digit[level][n];
}

// Nodes of `level` grouped by digit (counting sort), so one worker owns each core slice:
// digit d's nodes are order[begin[d] .. begin[d+1]). begin and order are taken from ws and
// kept (GroupByDigitBytes).
void GroupByDigit(const TTDims& dims, const LookupPlan& plan, int level, int64_t** begin_out,
                  int64_t** order_out, Workspace* ws) {
  const int64_t p = dims.p[level - 1];
  const int64_t n = plan.num_nodes(level);
  int64_t* begin = ws->Take<int64_t>(p + 1);
  int64_t* order = ws->Take<int64_t>(n);
  ScratchScope scratch(ws);
  std::fill(begin, begin + p + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++begin[NodeDigit(dims, plan, level, i) + 1];
  for (int64_t d = 0; d < p; ++d) begin[d + 1] += begin[d];
  int64_t* fill = ws->Take<int64_t>(p + 1);
  std::copy(begin, begin + p, fill);
  for (int64_t i = 0; i < n; ++i) order[fill[NodeDigit(dims, plan, level, i)]++] = i;
  *begin_out = begin;
  *order_out = order;
}

// P_L[n] = P_{L-1}[parent(n)] @ G_{L-1}[digit(n)] for every node of `level` (2..k). Nodes are
// visited grouped by digit so each core slice is loaded once and then served from L1: in
// key order, consecutive nodes hit different slices of a megabyte-sized core.
void ExtendLevel(const TTDims& dims, const float* const* cores, const LookupPlan& plan, int level,
                 const float* prev, float* dst, Workspace* ws, const ParallelFor& pfor) {
  const int t = level - 1;
  const int64_t n = plan.num_nodes(level);
  const int64_t out_size = dims.PartialSize(level);
  const int64_t prev_size = dims.PartialSize(level - 1);
  const int64_t slice = dims.CoreSliceSize(t);
  const int64_t m = dims.col_prefix[t], kk = dims.r[t], nn = dims.q[t] * dims.r[t + 1];
  ScratchScope scratch(ws);
  int64_t* digit_begin = nullptr;
  int64_t* order = nullptr;
  GroupByDigit(dims, plan, level, &digit_begin, &order, ws);
  const float** a_rows = ws->Take<const float*>(n * m);
  float** c_rows = ws->Take<float*>(n * m);
  const int64_t* parent = plan.parent[level];
  const float* core = cores[t];
  pfor(dims.p[t], PerDigit(2 * n * m * kk * nn, dims.p[t]), [&](int64_t lo, int64_t hi) {
    // The rows of all nodes of digit d form one GEMM with slice d (see RowsGemm).
    for (int64_t d = lo; d < hi; ++d) {
      const int64_t begin = digit_begin[d], count = digit_begin[d + 1] - begin;
      const float** a = a_rows + begin * m;
      float** c = c_rows + begin * m;
      for (int64_t j = 0; j < count; ++j) {
        const int64_t node = order[begin + j];
        for (int64_t i = 0; i < m; ++i) {
          a[j * m + i] = prev + parent[node] * prev_size + i * kk;
          c[j * m + i] = dst + node * out_size + i * nn;
        }
      }
      gemm::RowsGemm(a, core + d * slice, c, count * m, kk, nn);
    }
  });
}

// Asks for the cache lines of floats [p, p + n) ahead of their use.
inline void PrefetchBlock(const float* p, int64_t n) {
  for (int64_t x = 0; x < n; x += 16) __builtin_prefetch(p + x);
}
// How many nodes ahead a digit-grouped loop prefetches.
constexpr int64_t kPrefetchAhead = 2;

// The last core with each slice transposed, (q, r) per digit: the layout both passes read.
const float* TransposedLastCore(const TTDims& dims, const float* core, Workspace* ws) {
  const int t = dims.k - 1;
  const int64_t slice = dims.CoreSliceSize(t);
  float* transposed = ws->Take<float>(dims.p[t] * slice);
  for (int64_t d = 0; d < dims.p[t]; ++d) {
    TransposeSlice(core + d * slice, dims.r[t], dims.q[t], transposed + d * slice);
  }
  return transposed;
}

// Rows of the leaves, parent by parent (LastLevelBySiblings).
void ExtendLastLevelBySiblings(const TTDims& dims, const float* const* cores,
                               const LookupPlan& plan, const float* prev, float* out, Workspace* ws,
                               const ParallelFor& pfor) {
  const int k = dims.k, t = k - 1;
  const int64_t m = dims.col_prefix[t], kk = dims.r[t], nn = dims.q[t];
  const int64_t slice = dims.CoreSliceSize(t), prev_size = dims.PartialSize(k - 1);
  ScratchScope scratch(ws);
  const float* gt = TransposedLastCore(dims, cores[t], ws);
  const int64_t num_parents = plan.num_nodes(k - 1);
  const int64_t* child_begin = plan.child_begin[k - 1];
  const int64_t per_parent =
      2 * m * kk * nn * std::max<int64_t>(1, plan.num_nodes(k) / std::max<int64_t>(1, num_parents));
  pfor(num_parents, per_parent, [&](int64_t lo, int64_t hi) {
    for (int64_t par = lo; par < hi; ++par) {
      for (int64_t c = child_begin[par]; c < child_begin[par + 1]; ++c) {
        gemm::MatMulBt<false>(prev + par * prev_size, gt + NodeDigit(dims, plan, k, c) * slice,
                              out + c * dims.dim, m, kk, nn);
      }
    }
  });
}

// Backward of ExtendLastLevelBySiblings, one pass over the parents: each child's row
// gradient g (Q x q) adds g @ G[d] to its parent's dP (parent_grads) and g^T @ P into dG[d].
// The latter is accumulated per part of the parents (each part has its own copy of dG, so
// that no two workers write the same slice) and the copies are summed at the end.
void BackpropLastLevelBySiblings(const TTDims& dims, const float* const* cores,
                                 const LookupPlan& plan, const float* prev, const float* leaf_grads,
                                 float* core_grad, float* parent_grads, Workspace* ws,
                                 const ParallelFor& pfor) {
  const int k = dims.k, t = k - 1;
  const int64_t m = dims.col_prefix[t], kk = dims.r[t], nn = dims.q[t];
  const int64_t slice = dims.CoreSliceSize(t), prev_size = dims.PartialSize(k - 1);
  const int64_t core_size = dims.p[t] * slice, dim = dims.dim;
  ScratchScope scratch(ws);
  const float* gt = TransposedLastCore(dims, cores[t], ws);
  const int64_t num_parents = plan.num_nodes(k - 1), num_leaves = plan.num_nodes(k);
  const int64_t* child_begin = plan.child_begin[k - 1];
  const int64_t parts = LastLevelParts(plan);
  int64_t* part_begin = ws->Take<int64_t>(parts + 1);
  std::fill(part_begin, part_begin + parts + 1, num_parents);
  part_begin[0] = 0;
  for (int64_t s = 1, par = 0; s < parts; ++s) {
    while (par < num_parents && child_begin[par] < s * num_leaves / parts) ++par;
    part_begin[s] = par;
  }
  float* part_grads = ws->Take<float>(parts * core_size);
  float* upper = parent_grads;
  pfor(parts, 4 * m * kk * nn * num_leaves / parts, [&](int64_t lo, int64_t hi) {
    for (int64_t s = lo; s < hi; ++s) {
      float* dgt = part_grads + s * core_size;
      std::fill(dgt, dgt + core_size, 0.f);
      for (int64_t par = part_begin[s]; par < part_begin[s + 1]; ++par) {
        const float* p = prev + par * prev_size;
        float* dp = upper + par * prev_size;
        for (int64_t c = child_begin[par]; c < child_begin[par + 1]; ++c) {
          const float* g = leaf_grads + c * dim;
          const int64_t off = NodeDigit(dims, plan, k, c) * slice;
          if (c == child_begin[par]) {
            gemm::Gemm<false>(g, nn, 1, gt + off, dp, m, nn, kk);
          } else {
            gemm::Gemm<true>(g, nn, 1, gt + off, dp, m, nn, kk);
          }
          gemm::Gemm<true>(g, 1, nn, p, dgt + off, nn, m, kk);
        }
      }
    }
  });
  pfor(dims.p[t], 2 * parts * slice, [&](int64_t lo, int64_t hi) {
    for (int64_t d = lo; d < hi; ++d) {
      for (int64_t j = 0; j < nn; ++j) {
        for (int64_t l = 0; l < kk; ++l) {
          float sum = 0.f;
          for (int64_t s = 0; s < parts; ++s)
            sum += part_grads[s * core_size + d * slice + j * kk + l];
          core_grad[d * slice + l * nn + j] = sum;
        }
      }
    }
  });
}

// Where each level's partials start in a buffer that holds levels 1..k-1 back to back.
template <typename T>
void PartialOffsets(const TTDims& dims, const LookupPlan& plan, T* partials, T** at) {
  for (int level = 1; level < dims.k; ++level) {
    at[level] = partials;
    partials += plan.num_nodes(level) * dims.PartialSize(level);
  }
}

}  // namespace

template <typename Tid>
void BuildPlan(const TTDims& dims, const Tid* ids, int64_t nnz, Workspace* ws, LookupPlan* plan,
               const ParallelFor& pfor) {
  const int k = dims.k;
  *plan = LookupPlan();
  plan->k = k;
  plan->nnz = nnz;
  // The plan's arrays (kept), sized for the most nodes each level can have.
  int64_t* sorted_pos = ws->Take<int64_t>(nnz);
  int64_t* pos_begin = ws->Take<int64_t>(nnz + 1);
  int64_t* key[kMaxCores + 1] = {nullptr};
  int64_t* child_begin[kMaxCores + 1] = {nullptr};
  int64_t* parent[kMaxCores + 1] = {nullptr};
  int64_t* digit[kMaxCores + 1] = {nullptr};
  for (int level = 1; level <= k; ++level) {
    const int64_t n = MaxNodes(dims, level, nnz);
    key[level] = ws->Take<int64_t>(n);
    if (level < k) child_begin[level] = ws->Take<int64_t>(n + 1);
    if (level > 1) {
      parent[level] = ws->Take<int64_t>(n);
      digit[level] = ws->Take<int64_t>(n);
    }
  }
  ScratchScope scratch(ws);
  int64_t* sorted_ids = ws->Take<int64_t>(nnz);
  SortByIds(ids, nnz, dims.padded_rows - 1, sorted_ids, sorted_pos, ws, pfor);

  int64_t leaves = 0;
  for (int64_t i = 0; i < nnz; ++i) {
    if (i == 0 || sorted_ids[i] != sorted_ids[i - 1]) {
      key[k][leaves] = sorted_ids[i];
      pos_begin[leaves++] = i;
    }
  }
  pos_begin[leaves] = nnz;
  plan->nodes[k] = leaves;

  for (int level = k - 1; level >= 1; --level) {
    const int64_t* child_keys = key[level + 1];
    const int64_t num_children = plan->nodes[level + 1];
    int64_t* keys = key[level];
    int64_t* begin = child_begin[level];
    int64_t* child_parent = parent[level + 1];
    int64_t* child_digit = digit[level + 1];
    const int64_t divisor = dims.p[level];
    const Divider divide(divisor);
    int64_t n = 0;
    for (int64_t c = 0; c < num_children; ++c) {
      const int64_t prefix = divide.Div(child_keys[c]);
      child_digit[c] = child_keys[c] - prefix * divisor;
      if (n == 0 || keys[n - 1] != prefix) {
        keys[n] = prefix;
        begin[n++] = c;
      }
      child_parent[c] = n - 1;
    }
    begin[n] = num_children;
    plan->nodes[level] = n;
  }
  digit[1] = key[1];  // level-1 keys are the first digits themselves
  plan->sorted_pos = sorted_pos;
  plan->pos_begin = pos_begin;
  for (int level = 1; level <= k; ++level) {
    plan->key[level] = key[level];
    plan->child_begin[level] = child_begin[level];
    plan->parent[level] = parent[level];
    plan->digit[level] = digit[level];
  }
}

void PositionScales(Combiner combiner, const int64_t* row_splits, int64_t num_bags,
                    const float* weights, int64_t nnz, float* scale, int64_t* bag_of_pos,
                    const ParallelFor& pfor) {
  if (combiner == Combiner::kNone) {
    pfor(nnz, 2, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        scale[i] = 1.f;
        bag_of_pos[i] = i;
      }
    });
    return;
  }
  const int64_t avg_bag = num_bags > 0 ? std::max<int64_t>(1, nnz / num_bags) : 1;
  pfor(num_bags, 4 * avg_bag, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t first = row_splits[b], last = row_splits[b + 1];
      double norm = 1.0;
      if (combiner == Combiner::kMean) {
        norm = 0.0;
        for (int64_t i = first; i < last; ++i) norm += weights ? weights[i] : 1.0;
      } else if (combiner == Combiner::kSqrtn) {
        norm = 0.0;
        for (int64_t i = first; i < last; ++i) {
          norm += weights ? double(weights[i]) * weights[i] : 1.0;
        }
        norm = std::sqrt(norm);
      }
      const float inv = norm == 0.0 ? 0.f : static_cast<float>(1.0 / norm);
      for (int64_t i = first; i < last; ++i) {
        scale[i] = (weights ? weights[i] : 1.f) * inv;
        bag_of_pos[i] = b;
      }
    }
  });
}

void ComputePartials(const TTDims& dims, const float* const* cores, const LookupPlan& plan,
                     float* partials, Workspace* ws, const ParallelFor& pfor) {
  float* at[kMaxCores + 1] = {nullptr};
  PartialOffsets(dims, plan, partials, at);
  // P_1 is the core slice itself: (1 x q_0 r_1) read as (q_0 x r_1).
  const int64_t size = dims.PartialSize(1);
  for (int64_t i = 0; i < plan.num_nodes(1); ++i) {
    std::memcpy(at[1] + i * size, cores[0] + NodeDigit(dims, plan, 1, i) * dims.CoreSliceSize(0),
                sizeof(float) * size);
  }
  for (int level = 2; level < dims.k; ++level) {
    ExtendLevel(dims, cores, plan, level, at[level - 1], at[level], ws, pfor);
  }
}

void ComputeRows(const TTDims& dims, const float* const* cores, const LookupPlan& plan,
                 float* partials, float* rows, Workspace* ws, const ParallelFor& pfor) {
  TT_ISA_NAMESPACE::ComputePartials(dims, cores, plan, partials, ws, pfor);
  float* at[kMaxCores + 1] = {nullptr};
  PartialOffsets(dims, plan, partials, at);
  // With r_k = 1 the last partial product is the row itself.
  if (LastLevelBySiblings(dims)) {
    ExtendLastLevelBySiblings(dims, cores, plan, at[dims.k - 1], rows, ws, pfor);
  } else {
    ExtendLevel(dims, cores, plan, dims.k, at[dims.k - 1], rows, ws, pfor);
  }
}

void PoolRowPointers(int64_t dim, const float* const* row_of_pos, Combiner combiner,
                     const int64_t* row_splits, int64_t num_bags, const float* weights, int64_t nnz,
                     float* out, const ParallelFor& pfor) {
  const int64_t D = dim;
  if (combiner == Combiner::kNone) {
    pfor(nnz, D, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        std::memcpy(out + i * D, row_of_pos[i], sizeof(float) * D);
      }
    });
    return;
  }
  const int64_t avg_bag = num_bags > 0 ? std::max<int64_t>(1, nnz / num_bags) : 1;
  gemm::WithRowWidth(D, [&](auto width) {
    pfor(num_bags, 2 * avg_bag * D, [&](int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b) {
        const int64_t first = row_splits[b], count = row_splits[b + 1] - first;
        // The norm is accumulated in double so long bags lose nothing to rounding.
        double norm = 0.0;
        if (combiner != Combiner::kSum) {
          for (int64_t i = first; i < first + count; ++i) {
            const double w = weights ? weights[i] : 1.0;
            norm += combiner == Combiner::kSqrtn ? w * w : w;
          }
          if (combiner == Combiner::kSqrtn) norm = std::sqrt(norm);
        }
        const float inv = norm == 0.0 ? 0.f : static_cast<float>(1.0 / norm);
        gemm::SumRows(
            width, D, count,
            [&](int64_t j) {
              return std::make_pair(weights ? weights[first + j] : 1.f, row_of_pos[first + j]);
            },
            combiner != Combiner::kSum, inv, out + b * D);
      }
    });
  });
}

void PoolRows(const TTDims& dims, const LookupPlan& plan, Combiner combiner,
              const int64_t* row_splits, int64_t num_bags, const float* weights, int64_t nnz,
              const float* rows, float* out, Workspace* ws, const ParallelFor& pfor) {
  const int64_t D = dims.dim;
  ScratchScope scratch(ws);
  const float** row_ptr = ws->Take<const float*>(nnz);
  const int64_t leaves = plan.num_nodes(dims.k);
  pfor(leaves, 8 * std::max<int64_t>(1, nnz / std::max<int64_t>(1, leaves)),
       [&](int64_t lo, int64_t hi) {
         for (int64_t leaf = lo; leaf < hi; ++leaf) {
           for (int64_t j = plan.pos_begin[leaf]; j < plan.pos_begin[leaf + 1]; ++j) {
             row_ptr[plan.sorted_pos[j]] = rows + leaf * D;
           }
         }
       });
  TT_ISA_NAMESPACE::PoolRowPointers(D, row_ptr, combiner, row_splits, num_bags, weights, nnz, out,
                                    pfor);
}

void SumGradRows(int64_t dim, int64_t num_groups, const int64_t* group_begin,
                 const int64_t* positions, const float* grad, const float* scale,
                 const int64_t* bag_of_pos, float* out, const ParallelFor& pfor) {
  const int64_t avg =
      num_groups > 0 ? std::max<int64_t>(1, group_begin[num_groups] / num_groups) : 1;
  const float* sc = scale;
  const int64_t* bag = bag_of_pos;
  gemm::WithRowWidth(dim, [&](auto width) {
    pfor(num_groups, 2 * avg * dim, [&](int64_t lo, int64_t hi) {
      for (int64_t n = lo; n < hi; ++n) {
        const int64_t* pos = positions + group_begin[n];
        gemm::SumRows(
            width, dim, group_begin[n + 1] - group_begin[n],
            [&](int64_t j) { return std::make_pair(sc[pos[j]], grad + bag[pos[j]] * dim); }, false,
            1.f, out + n * dim);
      }
    });
  });
}

void AggregateLeafGrads(const TTDims& dims, const LookupPlan& plan, const float* grad,
                        const float* scale, const int64_t* bag_of_pos, float* leaf_grads,
                        const ParallelFor& pfor) {
  TT_ISA_NAMESPACE::SumGradRows(dims.dim, plan.num_nodes(dims.k), plan.pos_begin, plan.sorted_pos,
                                grad, scale, bag_of_pos, leaf_grads, pfor);
}

void BackpropCores(const TTDims& dims, const float* const* cores, const LookupPlan& plan,
                   const float* leaf_grads, float* const* core_grads, Workspace* ws,
                   const ParallelFor& pfor, const float* residual_partials) {
  const int k = dims.k;
  ScratchScope scratch(ws);
  if (residual_partials == nullptr) {
    float* partials = ws->Take<float>(PartialsSize(dims, plan));
    TT_ISA_NAMESPACE::ComputePartials(dims, cores, plan, partials, ws, pfor);
    residual_partials = partials;
  }
  const float* partial_ptrs[kMaxCores + 1] = {nullptr};
  PartialOffsets(dims, plan, residual_partials, partial_ptrs);
  // level_grads[L] is dL/dP_L of level L's nodes (the leaves' is leaf_grads), laid out as
  // the partials.
  float* level_grads[kMaxCores + 1] = {nullptr};
  PartialOffsets(dims, plan, ws->Take<float>(PartialsSize(dims, plan)), level_grads);
  int top = k;
  if (LastLevelBySiblings(dims)) {
    BackpropLastLevelBySiblings(dims, cores, plan, partial_ptrs[k - 1], leaf_grads,
                                core_grads[k - 1], level_grads[k - 1], ws, pfor);
    top = k - 1;
  }
  for (int level = top; level >= 1; --level) {
    ScratchScope level_scratch(ws);
    const int t = level - 1;
    const int64_t slice = dims.CoreSliceSize(t);
    const int64_t m = dims.col_prefix[t], kk = dims.r[t], nn = dims.q[t] * dims.r[t + 1];
    const int64_t size = dims.PartialSize(level);
    const int64_t prev_size = level > 1 ? dims.PartialSize(level - 1) : 0;
    const int64_t num_nodes = plan.num_nodes(level);
    const float* g = level == k ? leaf_grads : level_grads[level];
    const float* core = cores[t];
    float* dcore = core_grads[t];
    const LevelBackward how = internal::HowToBackprop(dims, level);
    const bool direct_to_parent = how.direct_to_parent;
    const bool dot_form = how.dot_form;
    int64_t* digit_begin = nullptr;
    int64_t* order = nullptr;
    GroupByDigit(dims, plan, level, &digit_begin, &order, ws);
    float* transposed = nullptr;
    float* contrib = nullptr;
    float* dgt_all = nullptr;
    const float** grad_rows = nullptr;
    const float** prev_rows = nullptr;
    if (level > 1) {
      if (!dot_form) {
        transposed = ws->Take<float>(dims.p[t] * slice);
        dgt_all = ws->Take<float>(dims.p[t] * slice);
        pfor(dims.p[t], 2 * slice, [&](int64_t lo, int64_t hi) {
          for (int64_t d = lo; d < hi; ++d) {
            TransposeSlice(core + d * slice, kk, nn, transposed + d * slice);
          }
        });
      }
      if (!direct_to_parent) contrib = ws->Take<float>(num_nodes * prev_size);
      grad_rows = ws->Take<const float*>(num_nodes * m);
      prev_rows = ws->Take<const float*>(num_nodes * m);
    }
    // out (+)= dP_L[node] @ G_t[d]^T: node's share of its parent's gradient.
    auto parent_share = [&](int64_t node, int64_t d, bool accumulate, float* out) {
      const float* dp = g + node * size;
      if (dot_form) {
        if (accumulate) {
          gemm::MatMulBt<true>(dp, core + d * slice, out, m, nn, kk);
        } else {
          gemm::MatMulBt<false>(dp, core + d * slice, out, m, nn, kk);
        }
      } else if (accumulate) {
        MatMulAcc(dp, transposed + d * slice, out, m, nn, kk);
      } else {
        MatMul(dp, transposed + d * slice, out, m, nn, kk);
      }
    };

    // Per digit d (one worker owns slice d: no atomics, a fixed summation order, and each
    // slice of dG written exactly once):
    //   dG_t[d] = sum over nodes n with digit d of P_{L-1}[parent(n)]^T @ dP_L[n]
    //   contrib[n] = dP_L[n] @ G_t[d]^T, summed into the parent's gradient below.
    // The first is one GEMM over the group's nodes stacked along the contraction, so that the
    // output panel stays in registers for the whole group instead of being re-read for
    // every node; when q r_out is not a multiple of 8 it is computed transposed,
    // (q r_out x r_in) = dP_stack^T @ P_stack, for 8-wide panels along r_in. Digit d's
    // stacked row pointers are rows [begin * m, (begin + count) * m) of grad_rows /
    // prev_rows, its transposed result slice d of dgt_all: no two workers share them.
    const float* prev = level > 1 ? partial_ptrs[level - 1] : nullptr;
    const int64_t* parent = plan.parent[level];
    pfor(dims.p[t], PerDigit(4 * num_nodes * m * kk * nn, dims.p[t]), [&](int64_t lo, int64_t hi) {
      for (int64_t d = lo; d < hi; ++d) {
        const int64_t begin = digit_begin[d], count = digit_begin[d + 1] - begin;
        float* dst = dcore + d * slice;
        if (count == 0) {
          std::fill(dst, dst + slice, 0.f);
          continue;
        }
        if (level == 1) {
          std::memcpy(dst, g + order[begin] * size, sizeof(float) * slice);
          for (int64_t j = begin + 1; j < begin + count; ++j) {
            const float* src = g + order[j] * size;
            for (int64_t c = 0; c < slice; ++c) dst[c] += src[c];
          }
          continue;
        }
        // Row x of the stack is row i of node j's dP (nn wide) and of its parent's P (kk).
        const float** gr = grad_rows + begin * m;
        const float** pr = prev_rows + begin * m;
        for (int64_t j = 0; j < count; ++j) {
          const int64_t node = order[begin + j];
          // Nodes of a digit are scattered over a dP buffer of megabytes: fetch a later
          // node's block while this one computes (the loads stalled on L3 otherwise).
          if (j + kPrefetchAhead < count) {
            PrefetchBlock(g + order[begin + j + kPrefetchAhead] * size, size);
          }
          for (int64_t i = 0; i < m; ++i) {
            gr[j * m + i] = g + node * size + i * nn;
            pr[j * m + i] = prev + parent[node] * prev_size + i * kk;
          }
          if (!direct_to_parent) parent_share(node, d, false, contrib + node * prev_size);
        }
        if (dot_form) {
          GatherGemm(pr, gr, dst, kk, count * m, nn);
          continue;
        }
        float* dgt = dgt_all + d * slice;
        GatherGemm(gr, pr, dgt, nn, count * m, kk);
        for (int64_t a = 0; a < kk; ++a) {
          for (int64_t b = 0; b < nn; ++b) dst[a * nn + b] = dgt[b * kk + a];
        }
      }
    });
    if (level == 1) break;

    // Children of a parent are contiguous, so each parent sums its own range.
    const int64_t num_parents = plan.num_nodes(level - 1);
    const int64_t* child_begin = plan.child_begin[level - 1];
    float* upper = level_grads[level - 1];
    const int64_t per_child = direct_to_parent ? 2 * m * nn * kk : prev_size;
    pfor(num_parents,
         per_child * std::max<int64_t>(1, num_nodes / std::max<int64_t>(1, num_parents)),
         [&](int64_t lo, int64_t hi) {
           for (int64_t par = lo; par < hi; ++par) {
             float* dst = upper + par * prev_size;
             const int64_t first = child_begin[par], last = child_begin[par + 1];
             if (direct_to_parent) {
               for (int64_t c = first; c < last; ++c) {
                 parent_share(c, NodeDigit(dims, plan, level, c), c != first, dst);
               }
               continue;
             }
             std::memcpy(dst, contrib + first * prev_size, sizeof(float) * prev_size);
             for (int64_t c = first + 1; c < last; ++c) {
               const float* src = contrib + c * prev_size;
               for (int64_t x = 0; x < prev_size; ++x) dst[x] += src[x];
             }
           }
         });
  }
}

}  // namespace TT_ISA_NAMESPACE
}  // namespace tt_keras
