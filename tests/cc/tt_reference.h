// The TT lookup written as plainly as possible, in double precision: the oracle of the C++
// unit tests. Each row is the chain of core slices of docs/ops.md, computed per id with no
// plan, no deduplication and no shared prefixes; gradients come from the same chain column
// by column.
#ifndef TT_KERAS_TESTS_CC_TT_REFERENCE_H_
#define TT_KERAS_TESTS_CC_TT_REFERENCE_H_

#include <cmath>
#include <cstdint>
#include <map>
#include <vector>

#include "tt_core.h"

namespace tt_reference {

using tt_keras::Combiner;
using tt_keras::TTDims;

using Cores = std::vector<std::vector<float>>;  // core t: p x r_in x q x r_out, row-major

// Digit t of `id`: (id / prod(p[t+1..])) % p[t].
inline int64_t Digit(const TTDims& dims, int64_t id, int t) {
  return (id / dims.row_stride[t]) % dims.p[t];
}

// Column digits of column j, most significant first.
inline std::vector<int64_t> ColumnDigits(const TTDims& dims, int64_t j) {
  std::vector<int64_t> digits(dims.k);
  for (int t = dims.k - 1; t >= 0; --t) {
    digits[t] = j % dims.q[t];
    j /= dims.q[t];
  }
  return digits;
}

// G_t[d][a, c, b] as stored.
inline double CoreAt(const TTDims& dims, const Cores& cores, int t, int64_t d, int64_t a, int64_t c,
                     int64_t b) {
  const int64_t r_in = dims.r[t], q = dims.q[t], r_out = dims.r[t + 1];
  return cores[t][((d * r_in + a) * q + c) * r_out + b];
}

// W[id, j] = G_1[i_1][0, j_1, :] @ ... @ G_k[i_k][:, j_k, 0].
inline std::vector<double> Row(const TTDims& dims, const Cores& cores, int64_t id) {
  std::vector<double> row(dims.dim);
  for (int64_t j = 0; j < dims.dim; ++j) {
    const std::vector<int64_t> col = ColumnDigits(dims, j);
    std::vector<double> v(1, 1.0);
    for (int t = 0; t < dims.k; ++t) {
      const int64_t d = Digit(dims, id, t);
      std::vector<double> next(dims.r[t + 1], 0.0);
      for (int64_t a = 0; a < dims.r[t]; ++a) {
        for (int64_t b = 0; b < dims.r[t + 1]; ++b) {
          next[b] += v[a] * CoreAt(dims, cores, t, d, a, col[t], b);
        }
      }
      v = next;
    }
    row[j] = v[0];
  }
  return row;
}

// Adds the gradient of W[id] (g: dim values) to core_grads (shaped like the cores):
// dG_t[i_t][:, j_t, :] += g[j] * left_t(j)^T right_t(j), the products of the slices before
// and after core t along column j.
inline void AddRowGradient(const TTDims& dims, const Cores& cores, int64_t id,
                           const std::vector<double>& g,
                           std::vector<std::vector<double>>* core_grads) {
  for (int64_t j = 0; j < dims.dim; ++j) {
    const std::vector<int64_t> col = ColumnDigits(dims, j);
    std::vector<std::vector<double>> left(dims.k + 1), right(dims.k + 1);
    left[0] = {1.0};
    for (int t = 0; t < dims.k; ++t) {
      const int64_t d = Digit(dims, id, t);
      left[t + 1].assign(dims.r[t + 1], 0.0);
      for (int64_t a = 0; a < dims.r[t]; ++a) {
        for (int64_t b = 0; b < dims.r[t + 1]; ++b) {
          left[t + 1][b] += left[t][a] * CoreAt(dims, cores, t, d, a, col[t], b);
        }
      }
    }
    right[dims.k] = {1.0};
    for (int t = dims.k - 1; t >= 0; --t) {
      const int64_t d = Digit(dims, id, t);
      right[t].assign(dims.r[t], 0.0);
      for (int64_t a = 0; a < dims.r[t]; ++a) {
        for (int64_t b = 0; b < dims.r[t + 1]; ++b) {
          right[t][a] += CoreAt(dims, cores, t, d, a, col[t], b) * right[t + 1][b];
        }
      }
    }
    for (int t = 0; t < dims.k; ++t) {
      const int64_t d = Digit(dims, id, t);
      const int64_t r_in = dims.r[t], q = dims.q[t], r_out = dims.r[t + 1];
      for (int64_t a = 0; a < r_in; ++a) {
        for (int64_t b = 0; b < r_out; ++b) {
          (*core_grads)[t][((d * r_in + a) * q + col[t]) * r_out + b] +=
              g[j] * left[t][a] * right[t + 1][b];
        }
      }
    }
  }
}

// Per position: its bag and its weight / norm (0 when the norm is), as
// tf.nn.embedding_lookup_sparse. For Combiner::kNone, bag = position and scale = 1.
struct Scales {
  std::vector<int64_t> bag;
  std::vector<double> scale;
};

inline Scales PositionScales(Combiner combiner, const std::vector<int64_t>& splits,
                             const std::vector<float>& weights, int64_t nnz) {
  Scales s;
  s.bag.resize(nnz);
  s.scale.assign(nnz, 1.0);
  if (combiner == Combiner::kNone) {
    for (int64_t i = 0; i < nnz; ++i) s.bag[i] = i;
    return s;
  }
  for (size_t b = 0; b + 1 < splits.size(); ++b) {
    double norm = 0.0;
    for (int64_t i = splits[b]; i < splits[b + 1]; ++i) {
      const double w = weights.empty() ? 1.0 : weights[i];
      norm += combiner == Combiner::kSqrtn ? w * w : w;
    }
    if (combiner == Combiner::kSum) norm = 1.0;
    if (combiner == Combiner::kSqrtn) norm = std::sqrt(norm);
    for (int64_t i = splits[b]; i < splits[b + 1]; ++i) {
      const double w = weights.empty() ? 1.0 : weights[i];
      s.bag[i] = static_cast<int64_t>(b);
      s.scale[i] = norm == 0.0 ? 0.0 : w / norm;
    }
  }
  return s;
}

// A cache as the cached op sees it: id -> slot for ids below num_rows.
inline std::map<int64_t, int64_t> CacheSlots(const std::vector<int64_t>& cache_ids,
                                             int64_t num_rows) {
  std::map<int64_t, int64_t> slots;
  for (size_t s = 0; s < cache_ids.size(); ++s) {
    if (cache_ids[s] < num_rows) slots[cache_ids[s]] = static_cast<int64_t>(s);
  }
  return slots;
}

// The lookup's output, [out_rows, dim]. Ids in `cache` read cache_rows[slot] instead of W.
inline std::vector<double> Forward(const TTDims& dims, const Cores& cores,
                                   const std::vector<int64_t>& ids, Combiner combiner,
                                   const std::vector<int64_t>& splits,
                                   const std::vector<float>& weights,
                                   const std::map<int64_t, int64_t>& cache = {},
                                   const std::vector<float>& cache_rows = {}) {
  const int64_t nnz = static_cast<int64_t>(ids.size());
  const Scales s = PositionScales(combiner, splits, weights, nnz);
  const int64_t out_rows =
      combiner == Combiner::kNone ? nnz : static_cast<int64_t>(splits.size()) - 1;
  std::vector<double> out(out_rows * dims.dim, 0.0);
  for (int64_t i = 0; i < nnz; ++i) {
    std::vector<double> row;
    const auto hit = cache.find(ids[i]);
    if (hit != cache.end()) {
      row.assign(cache_rows.begin() + hit->second * dims.dim,
                 cache_rows.begin() + (hit->second + 1) * dims.dim);
    } else {
      row = Row(dims, cores, ids[i]);
    }
    for (int64_t j = 0; j < dims.dim; ++j) out[s.bag[i] * dims.dim + j] += s.scale[i] * row[j];
  }
  return out;
}

// Gradients of sum(out * grad) w.r.t. the cores (misses only when there is a cache) and,
// per cache slot hit, w.r.t. its row (slot -> dim values).
struct Gradients {
  std::vector<std::vector<double>> cores;
  std::map<int64_t, std::vector<double>> cache_rows;
};

inline Gradients Backward(const TTDims& dims, const Cores& cores, const std::vector<int64_t>& ids,
                          Combiner combiner, const std::vector<int64_t>& splits,
                          const std::vector<float>& weights, const std::vector<float>& grad,
                          const std::map<int64_t, int64_t>& cache = {}) {
  const int64_t nnz = static_cast<int64_t>(ids.size());
  const Scales s = PositionScales(combiner, splits, weights, nnz);
  // Each row's gradient, summed over its positions before going through the chain.
  std::map<int64_t, std::vector<double>> row_grads;
  Gradients out;
  for (int64_t i = 0; i < nnz; ++i) {
    const auto hit = cache.find(ids[i]);
    std::vector<double>& g = hit != cache.end() ? out.cache_rows[hit->second] : row_grads[ids[i]];
    g.resize(dims.dim, 0.0);
    for (int64_t j = 0; j < dims.dim; ++j) g[j] += s.scale[i] * grad[s.bag[i] * dims.dim + j];
  }
  for (int t = 0; t < dims.k; ++t) out.cores.emplace_back(cores[t].size(), 0.0);
  for (const auto& [id, g] : row_grads) AddRowGradient(dims, cores, id, g, &out.cores);
  return out;
}

}  // namespace tt_reference

#endif  // TT_KERAS_TESTS_CC_TT_REFERENCE_H_
