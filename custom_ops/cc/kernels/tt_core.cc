// CPU implementation of the TT embedding-bag math; see tt_core.h and docs/ops.md.
#include "tt_core.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace tt_keras {

std::string TTDims::Finalize() {
  if (k < 2 || k > kMaxCores) return "expected 2 to 4 cores, got " + std::to_string(k);
  if (r[0] != 1 || r[k] != 1) return "the first and last TT ranks must be 1";
  padded_rows = 1;
  dim = 1;
  col_prefix[0] = 1;
  for (int t = 0; t < k; ++t) {
    if (p[t] < 1 || q[t] < 1 || r[t + 1] < 1) {
      return "core " + std::to_string(t) + " has an empty dimension";
    }
    col_prefix[t + 1] = col_prefix[t] * q[t];
    dim *= q[t];
    // Overflow guard: 2^62 rows is far beyond any table, and keeps the arithmetic exact.
    if (padded_rows > (int64_t{1} << 62) / p[t]) return "row factors overflow int64";
    padded_rows *= p[t];
  }
  int64_t stride = 1;
  for (int t = k - 1; t >= 0; --t) {
    row_stride[t] = stride;
    stride *= p[t];
  }
  return "";
}

bool ParseCombiner(const std::string& name, Combiner* out) {
  if (name == "none") *out = Combiner::kNone;
  else if (name == "sum") *out = Combiner::kSum;
  else if (name == "mean") *out = Combiner::kMean;
  else if (name == "sqrtn") *out = Combiner::kSqrtn;
  else return false;
  return true;
}

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
template <typename Tid>
void SortByIds(const Tid* ids, int64_t nnz, int64_t max_id, std::vector<int64_t>* sorted_ids,
               std::vector<int64_t>* sorted_pos) {
  sorted_ids->resize(nnz);
  sorted_pos->resize(nnz);
  const int pos_bits = std::max(1, BitLength(static_cast<uint64_t>(nnz)));
  const int id_bits = std::max(1, BitLength(static_cast<uint64_t>(max_id)));
  if (pos_bits + id_bits > 64 || nnz < 64) {
    std::vector<std::pair<int64_t, int64_t>> pairs(nnz);
    for (int64_t i = 0; i < nnz; ++i) pairs[i] = {static_cast<int64_t>(ids[i]), i};
    std::sort(pairs.begin(), pairs.end());
    for (int64_t i = 0; i < nnz; ++i) {
      (*sorted_ids)[i] = pairs[i].first;
      (*sorted_pos)[i] = pairs[i].second;
    }
    return;
  }
  std::vector<uint64_t> a(nnz), b(nnz);
  for (int64_t i = 0; i < nnz; ++i) {
    a[i] = (static_cast<uint64_t>(ids[i]) << pos_bits) | static_cast<uint64_t>(i);
  }
  const int passes = (id_bits + 10) / 11;
  const int digit_bits = (id_bits + passes - 1) / passes;
  const uint64_t mask = (uint64_t{1} << digit_bits) - 1;
  std::vector<int64_t> count(size_t{1} << digit_bits);
  for (int pass = 0; pass < passes; ++pass) {
    const int shift = pos_bits + pass * digit_bits;
    std::fill(count.begin(), count.end(), 0);
    for (int64_t i = 0; i < nnz; ++i) ++count[(a[i] >> shift) & mask];
    int64_t sum = 0;
    for (auto& c : count) {
      const int64_t n = c;
      c = sum;
      sum += n;
    }
    for (int64_t i = 0; i < nnz; ++i) b[count[(a[i] >> shift) & mask]++] = a[i];
    a.swap(b);
  }
  const uint64_t pos_mask = (uint64_t{1} << pos_bits) - 1;
  for (int64_t i = 0; i < nnz; ++i) {
    (*sorted_ids)[i] = static_cast<int64_t>(a[i] >> pos_bits);
    (*sorted_pos)[i] = static_cast<int64_t>(a[i] & pos_mask);
  }
}

// C (m x n) = A (m x kk) @ B (kk x n), all row-major and contiguous.
inline void MatMul(const float* __restrict A, const float* __restrict B, float* __restrict C,
                   int64_t m, int64_t kk, int64_t n) {
  for (int64_t i = 0; i < m; ++i) {
    float* __restrict c = C + i * n;
    const float* a = A + i * kk;
    {
      const float a0 = a[0];
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) c[j] = a0 * B[j];
    }
    for (int64_t l = 1; l < kk; ++l) {
      const float al = a[l];
      const float* __restrict b = B + l * n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) c[j] += al * b[j];
    }
  }
}

// C (kk x n) += A^T @ G, with A (m x kk), G (m x n).
inline void MatMulTransAAcc(const float* __restrict A, const float* __restrict G,
                            float* __restrict C, int64_t m, int64_t kk, int64_t n) {
  for (int64_t i = 0; i < m; ++i) {
    const float* a = A + i * kk;
    const float* __restrict g = G + i * n;
    for (int64_t l = 0; l < kk; ++l) {
      const float al = a[l];
      float* __restrict c = C + l * n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) c[j] += al * g[j];
    }
  }
}

// C (m x kk) += G (m x n) @ B^T, with B (kk x n).
inline void MatMulTransBAcc(const float* __restrict G, const float* __restrict B,
                            float* __restrict C, int64_t m, int64_t kk, int64_t n) {
  for (int64_t i = 0; i < m; ++i) {
    const float* __restrict g = G + i * n;
    float* c = C + i * kk;
    for (int64_t l = 0; l < kk; ++l) {
      const float* __restrict b = B + l * n;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < n; ++j) s += g[j] * b[j];
      c[l] += s;
    }
  }
}

// Digit of a level-L node (L in 1..k): the index into core L-1.
inline int64_t NodeDigit(const TTDims& dims, const LookupPlan& plan, int level, int64_t n) {
  return plan.key[level][n] % dims.p[level - 1];
}

// Nodes of `level` grouped by digit (counting sort), so one worker owns each core slice.
void GroupByDigit(const TTDims& dims, const LookupPlan& plan, int level,
                  std::vector<int64_t>* begin, std::vector<int64_t>* order) {
  const int64_t p = dims.p[level - 1];
  const int64_t n = plan.num_nodes(level);
  begin->assign(p + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++(*begin)[NodeDigit(dims, plan, level, i) + 1];
  for (int64_t d = 0; d < p; ++d) (*begin)[d + 1] += (*begin)[d];
  std::vector<int64_t> fill(begin->begin(), begin->end() - 1);
  order->resize(n);
  for (int64_t i = 0; i < n; ++i) (*order)[fill[NodeDigit(dims, plan, level, i)]++] = i;
}

}  // namespace

template <typename Tid>
void BuildPlan(const TTDims& dims, const Tid* ids, int64_t nnz, LookupPlan* plan) {
  const int k = dims.k;
  plan->k = k;
  std::vector<int64_t> sorted_ids;
  SortByIds(ids, nnz, dims.padded_rows - 1, &sorted_ids, &plan->sorted_pos);

  auto& leaves = plan->key[k];
  leaves.clear();
  plan->pos_begin.clear();
  for (int64_t i = 0; i < nnz; ++i) {
    if (i == 0 || sorted_ids[i] != sorted_ids[i - 1]) {
      leaves.push_back(sorted_ids[i]);
      plan->pos_begin.push_back(i);
    }
  }
  plan->pos_begin.push_back(nnz);

  for (int level = k - 1; level >= 1; --level) {
    const auto& child_keys = plan->key[level + 1];
    auto& keys = plan->key[level];
    auto& child_begin = plan->child_begin[level];
    auto& child_parent = plan->parent[level + 1];
    keys.clear();
    child_begin.clear();
    child_parent.resize(child_keys.size());
    const int64_t divisor = dims.p[level];
    for (size_t c = 0; c < child_keys.size(); ++c) {
      const int64_t key = child_keys[c] / divisor;
      if (keys.empty() || keys.back() != key) {
        keys.push_back(key);
        child_begin.push_back(static_cast<int64_t>(c));
      }
      child_parent[c] = static_cast<int64_t>(keys.size()) - 1;
    }
    child_begin.push_back(static_cast<int64_t>(child_keys.size()));
  }
}

template void BuildPlan<int32_t>(const TTDims&, const int32_t*, int64_t, LookupPlan*);
template void BuildPlan<int64_t>(const TTDims&, const int64_t*, int64_t, LookupPlan*);

void PositionScales(Combiner combiner, const int64_t* row_splits, int64_t num_bags,
                    const float* weights, int64_t nnz, std::vector<float>* scale,
                    std::vector<int64_t>* bag_of_pos) {
  scale->resize(nnz);
  bag_of_pos->resize(nnz);
  if (combiner == Combiner::kNone) {
    for (int64_t i = 0; i < nnz; ++i) {
      (*scale)[i] = 1.f;
      (*bag_of_pos)[i] = i;
    }
    return;
  }
  for (int64_t b = 0; b < num_bags; ++b) {
    const int64_t lo = row_splits[b], hi = row_splits[b + 1];
    double norm = 1.0;
    if (combiner == Combiner::kMean) {
      norm = 0.0;
      for (int64_t i = lo; i < hi; ++i) norm += weights ? weights[i] : 1.0;
    } else if (combiner == Combiner::kSqrtn) {
      norm = 0.0;
      for (int64_t i = lo; i < hi; ++i) norm += weights ? double(weights[i]) * weights[i] : 1.0;
      norm = std::sqrt(norm);
    }
    const float inv = norm == 0.0 ? 0.f : static_cast<float>(1.0 / norm);
    for (int64_t i = lo; i < hi; ++i) {
      (*scale)[i] = (weights ? weights[i] : 1.f) * inv;
      (*bag_of_pos)[i] = b;
    }
  }
}

void ComputePartials(const TTDims& dims, const float* const* cores, const LookupPlan& plan,
                     int last_level, std::vector<float>* partials, const ParallelFor& pfor) {
  for (int level = 1; level <= last_level; ++level) {
    const int t = level - 1;
    const int64_t n = plan.num_nodes(level);
    const int64_t out_size = dims.PartialSize(level);
    const int64_t slice = dims.CoreSliceSize(t);
    partials[level].resize(n * out_size);
    float* out = partials[level].data();
    const float* core = cores[t];
    if (level == 1) {
      // P_1 is the core slice itself: (1 x q_0 r_1) read as (q_0 x r_1).
      for (int64_t i = 0; i < n; ++i) {
        std::memcpy(out + i * out_size, core + NodeDigit(dims, plan, 1, i) * slice,
                    sizeof(float) * out_size);
      }
      continue;
    }
    const float* prev = partials[level - 1].data();
    const int64_t m = dims.col_prefix[t], kk = dims.r[t], nn = dims.q[t] * dims.r[t + 1];
    const auto& parent = plan.parent[level];
    pfor(n, 2 * m * kk * nn, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        MatMul(prev + parent[i] * dims.PartialSize(level - 1),
               core + NodeDigit(dims, plan, level, i) * slice, out + i * out_size, m, kk, nn);
      }
    });
  }
}

void ComputeRows(const TTDims& dims, const float* const* cores, const LookupPlan& plan,
                 std::vector<float>* partials, std::vector<float>* rows,
                 const ParallelFor& pfor) {
  ComputePartials(dims, cores, plan, dims.k - 1, partials, pfor);
  const int k = dims.k;
  const int t = k - 1;
  const int64_t n = plan.num_nodes(k);
  rows->resize(n * dims.dim);
  const float* prev = partials[k - 1].data();
  const float* core = cores[t];
  const int64_t slice = dims.CoreSliceSize(t);
  const int64_t m = dims.col_prefix[t], kk = dims.r[t], nn = dims.q[t];
  const auto& parent = plan.parent[k];
  float* out = rows->data();
  pfor(n, 2 * m * kk * nn, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      MatMul(prev + parent[i] * dims.PartialSize(k - 1),
             core + NodeDigit(dims, plan, k, i) * slice, out + i * dims.dim, m, kk, nn);
    }
  });
}

void PoolRows(const TTDims& dims, const LookupPlan& plan, Combiner combiner,
              const int64_t* row_splits, int64_t num_bags, const float* weights,
              int64_t nnz, const float* rows, float* out, const ParallelFor& pfor) {
  const int64_t D = dims.dim;
  std::vector<int64_t> leaf_of_pos(nnz);
  for (int64_t leaf = 0; leaf < plan.num_nodes(dims.k); ++leaf) {
    for (int64_t j = plan.pos_begin[leaf]; j < plan.pos_begin[leaf + 1]; ++j) {
      leaf_of_pos[plan.sorted_pos[j]] = leaf;
    }
  }
  if (combiner == Combiner::kNone) {
    pfor(nnz, D, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        std::memcpy(out + i * D, rows + leaf_of_pos[i] * D, sizeof(float) * D);
      }
    });
    return;
  }
  const int64_t avg_bag = num_bags > 0 ? std::max<int64_t>(1, nnz / num_bags) : 1;
  pfor(num_bags, 2 * avg_bag * D, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      float* o = out + b * D;
      std::fill(o, o + D, 0.f);
      double norm = 0.0;
      for (int64_t i = row_splits[b]; i < row_splits[b + 1]; ++i) {
        const float w = weights ? weights[i] : 1.f;
        norm += combiner == Combiner::kSqrtn ? double(w) * w : w;
        const float* row = rows + leaf_of_pos[i] * D;
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) o[j] += w * row[j];
      }
      if (combiner == Combiner::kSum) continue;
      if (combiner == Combiner::kSqrtn) norm = std::sqrt(norm);
      const float inv = norm == 0.0 ? 0.f : static_cast<float>(1.0 / norm);
      for (int64_t j = 0; j < D; ++j) o[j] *= inv;
    }
  });
}

void AggregateLeafGrads(const TTDims& dims, const LookupPlan& plan, const float* grad,
                        const std::vector<float>& scale,
                        const std::vector<int64_t>& bag_of_pos,
                        std::vector<float>* leaf_grads, const ParallelFor& pfor) {
  const int64_t D = dims.dim;
  const int64_t n = plan.num_nodes(dims.k);
  leaf_grads->assign(n * D, 0.f);
  float* out = leaf_grads->data();
  pfor(n, 4 * D, [&](int64_t lo, int64_t hi) {
    for (int64_t leaf = lo; leaf < hi; ++leaf) {
      float* o = out + leaf * D;
      for (int64_t j = plan.pos_begin[leaf]; j < plan.pos_begin[leaf + 1]; ++j) {
        const int64_t pos = plan.sorted_pos[j];
        const float s = scale[pos];
        const float* g = grad + bag_of_pos[pos] * D;
#pragma omp simd
        for (int64_t c = 0; c < D; ++c) o[c] += s * g[c];
      }
    }
  });
}

void BackpropCores(const TTDims& dims, const float* const* cores, const LookupPlan& plan,
                   std::vector<float>* partials, std::vector<float>* leaf_grads,
                   float* const* core_grads, const ParallelFor& pfor) {
  const int k = dims.k;
  // The forward's partial products are recomputed rather than kept between the ops: they
  // cost one small GEMM per distinct prefix, far less than keeping them alive in TF.
  ComputePartials(dims, cores, plan, k - 1, partials, pfor);
  std::vector<float> upper_grads;  // gradient of the partials one level up
  std::vector<float>* grads = leaf_grads;
  std::vector<int64_t> digit_begin, order;
  for (int level = k; level >= 1; --level) {
    const int t = level - 1;
    const int64_t slice = dims.CoreSliceSize(t);
    const int64_t m = dims.col_prefix[t], kk = dims.r[t], nn = dims.q[t] * dims.r[t + 1];
    const int64_t size = dims.PartialSize(level);
    const float* g = grads->data();
    float* dcore = core_grads[t];
    std::memset(dcore, 0, sizeof(float) * dims.p[t] * slice);

    // dG_t[d] = sum over nodes n with digit d of P_{L-1}[parent(n)]^T @ dP_L[n]; grouping by
    // digit gives each worker its own slices, so no atomics and a deterministic sum order.
    GroupByDigit(dims, plan, level, &digit_begin, &order);
    const float* prev = level > 1 ? partials[level - 1].data() : nullptr;
    const int64_t prev_size = level > 1 ? dims.PartialSize(level - 1) : 0;
    const int64_t avg = std::max<int64_t>(1, plan.num_nodes(level) / dims.p[t]);
    pfor(dims.p[t], 2 * avg * m * kk * nn, [&](int64_t lo, int64_t hi) {
      for (int64_t d = lo; d < hi; ++d) {
        float* dst = dcore + d * slice;
        for (int64_t j = digit_begin[d]; j < digit_begin[d + 1]; ++j) {
          const int64_t node = order[j];
          if (level == 1) {
            const float* src = g + node * size;
            for (int64_t c = 0; c < slice; ++c) dst[c] += src[c];
          } else {
            MatMulTransAAcc(prev + plan.parent[level][node] * prev_size, g + node * size,
                            dst, m, kk, nn);
          }
        }
      }
    });
    if (level == 1) break;

    // dP_{L-1}[m] = sum over children n of dP_L[n] @ G_t[digit(n)]^T; children are contiguous.
    const int64_t num_parents = plan.num_nodes(level - 1);
    upper_grads.assign(num_parents * prev_size, 0.f);
    const float* core = cores[t];
    const auto& child_begin = plan.child_begin[level - 1];
    const int64_t avg_children = std::max<int64_t>(1, plan.num_nodes(level) / num_parents);
    float* up = upper_grads.data();
    pfor(num_parents, 2 * avg_children * m * kk * nn, [&](int64_t lo, int64_t hi) {
      for (int64_t par = lo; par < hi; ++par) {
        for (int64_t c = child_begin[par]; c < child_begin[par + 1]; ++c) {
          MatMulTransBAcc(g + c * size, core + NodeDigit(dims, plan, level, c) * slice,
                          up + par * prev_size, m, kk, nn);
        }
      }
    });
    grads->swap(upper_grads);
  }
}

}  // namespace tt_keras
