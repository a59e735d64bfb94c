// The TT core's shape checks, plan (de)serialization and workspace-size queries; see
// tt_core.h and docs/ops.md. The kernels themselves are in tt_core_kernels.h.
#include "tt_core.h"

#include <algorithm>
#include <cstring>

#include "tt_core_internal.h"

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

template <typename Tid>
std::string ValidateIds(const Tid* ids, int64_t nnz, int64_t num_rows) {
  for (int64_t i = 0; i < nnz; ++i) {
    const int64_t id = static_cast<int64_t>(ids[i]);
    if (id < 0 || id >= num_rows) {
      return "indices[" + std::to_string(i) + "] = " + std::to_string(id) +
             " is out of range [0, " + std::to_string(num_rows) + ")";
    }
  }
  return "";
}

template std::string ValidateIds<int32_t>(const int32_t*, int64_t, int64_t);
template std::string ValidateIds<int64_t>(const int64_t*, int64_t, int64_t);

std::string ValidateRowSplits(const int64_t* s, int64_t num_bags, int64_t nnz) {
  if (s[0] != 0) return "row_splits[0] = " + std::to_string(s[0]) + " must be 0";
  for (int64_t b = 0; b < num_bags; ++b) {
    if (s[b + 1] < s[b]) {
      return "row_splits must not decrease: row_splits[" + std::to_string(b + 1) +
             "] = " + std::to_string(s[b + 1]) + " < row_splits[" + std::to_string(b) +
             "] = " + std::to_string(s[b]);
    }
  }
  if (s[num_bags] != nnz) {
    return "row_splits[-1] = " + std::to_string(s[num_bags]) +
           " must equal the number of indices, " + std::to_string(nnz);
  }
  return "";
}

namespace {

namespace in = internal;

// The workspace queries of tt_core_kernels.h's entry points, next to each other: each one
// mirrors the arrays its kernel takes (and tests/cc checks the kernels' peak use against
// them).

size_t SortWorkspaceBytes(int64_t nnz) {
  return std::max(
      ArrayBytes<in::IdPos>(nnz),
      2 * ArrayBytes<uint64_t>(nnz) + ArrayBytes<int64_t>(in::kMaxSortChunks << in::kMaxDigitBits));
}

// The plan's arrays at their largest, as BuildPlan takes them.
size_t PlanArraysBytes(const TTDims& dims, int64_t nnz) {
  size_t bytes = ArrayBytes<int64_t>(nnz) + ArrayBytes<int64_t>(nnz + 1);
  for (int level = 1; level <= dims.k; ++level) {
    const int64_t n = in::MaxNodes(dims, level, nnz);
    bytes += ArrayBytes<int64_t>(n);
    if (level < dims.k) bytes += ArrayBytes<int64_t>(n + 1);
    if (level > 1) bytes += 2 * ArrayBytes<int64_t>(n);
  }
  return bytes;
}

// GroupByDigit: begin (p + 1) and order (one per node), kept; its counters (p + 1), not.
size_t GroupByDigitBytes(const TTDims& dims, const LookupPlan& plan, int level) {
  const int64_t p = dims.p[level - 1];
  return 2 * ArrayBytes<int64_t>(p + 1) + ArrayBytes<int64_t>(plan.num_nodes(level));
}

// ExtendLevel: the digit groups and one row pointer of A and of C per row of a node.
size_t ExtendLevelBytes(const TTDims& dims, const LookupPlan& plan, int level) {
  const int64_t rows = plan.num_nodes(level) * dims.col_prefix[level - 1];
  return GroupByDigitBytes(dims, plan, level) + ArrayBytes<const float*>(rows) +
         ArrayBytes<float*>(rows);
}

// TransposedLastCore: a copy of the last core.
size_t TransposedLastCoreBytes(const TTDims& dims) {
  const int t = dims.k - 1;
  return ArrayBytes<float>(dims.p[t] * dims.CoreSliceSize(t));
}

// BackpropLastLevelBySiblings: the transposed core, the parts and a dG per part.
size_t BackpropLastLevelBySiblingsBytes(const TTDims& dims, const LookupPlan& plan) {
  const int64_t parts = in::LastLevelParts(plan);
  const int t = dims.k - 1;
  return TransposedLastCoreBytes(dims) + ArrayBytes<int64_t>(parts + 1) +
         ArrayBytes<float>(parts * dims.p[t] * dims.CoreSliceSize(t));
}

// One level of BackpropCores: the digit groups, and above level 1 the stacked row
// pointers, the transposed core and dG slices (when not in dot form) and the children's
// shares (when not summed straight into the parents).
size_t LevelBackwardBytes(const TTDims& dims, const LookupPlan& plan, int level) {
  const in::LevelBackward how = in::HowToBackprop(dims, level);
  const int t = level - 1;
  const int64_t core_floats = dims.p[t] * dims.CoreSliceSize(t);
  size_t bytes = GroupByDigitBytes(dims, plan, level);
  if (level == 1) return bytes;
  const int64_t rows = plan.num_nodes(level) * dims.col_prefix[t];
  if (!how.dot_form) bytes += 2 * ArrayBytes<float>(core_floats);
  if (!how.direct_to_parent) {
    bytes += ArrayBytes<float>(plan.num_nodes(level) * dims.PartialSize(level - 1));
  }
  return bytes + 2 * ArrayBytes<const float*>(rows);
}

}  // namespace

size_t BuildPlanWorkspaceBytes(const TTDims& dims, int64_t nnz) {
  return PlanArraysBytes(dims, nnz) + ArrayBytes<int64_t>(nnz) + SortWorkspaceBytes(nnz);
}

size_t ComputePartialsWorkspaceBytes(const TTDims& dims, const LookupPlan& plan) {
  size_t bytes = 0;
  for (int level = 2; level < dims.k; ++level) {
    bytes = std::max(bytes, ExtendLevelBytes(dims, plan, level));
  }
  return bytes;
}

size_t ComputeRowsWorkspaceBytes(const TTDims& dims, const LookupPlan& plan) {
  const size_t last = in::LastLevelBySiblings(dims) ? TransposedLastCoreBytes(dims)
                                                    : ExtendLevelBytes(dims, plan, dims.k);
  return std::max(ComputePartialsWorkspaceBytes(dims, plan), last);
}

size_t PoolRowsWorkspaceBytes(int64_t nnz) { return ArrayBytes<const float*>(nnz); }

size_t BackpropCoresWorkspaceBytes(const TTDims& dims, const LookupPlan& plan, bool have_partials) {
  size_t bytes = ArrayBytes<float>(PartialsSize(dims, plan));  // the levels' dP
  if (!have_partials) {
    bytes +=
        ArrayBytes<float>(PartialsSize(dims, plan)) + ComputePartialsWorkspaceBytes(dims, plan);
  }
  size_t levels = in::LastLevelBySiblings(dims) ? BackpropLastLevelBySiblingsBytes(dims, plan) : 0;
  for (int level = 1; level <= dims.k; ++level) {
    levels = std::max(levels, LevelBackwardBytes(dims, plan, level));
  }
  return bytes + levels;
}

size_t DeserializePlanWorkspaceBytes(const TTDims& dims, int64_t nnz) {
  size_t bytes = 0;
  for (int level = 2; level <= dims.k; ++level) {
    bytes += ArrayBytes<int64_t>(in::MaxNodes(dims, level, nnz));
  }
  return bytes;
}

int64_t SerializedPlanSize(const LookupPlan& plan) {
  const int k = plan.k;
  int64_t size = 2 + k + plan.nnz + plan.num_nodes(k) + 1;
  for (int level = 1; level <= k; ++level) {
    size += plan.num_nodes(level);
    if (level < k) size += plan.num_nodes(level) + 1;
    if (level > 1) size += plan.num_nodes(level);
  }
  return size;
}

void SerializePlan(const LookupPlan& plan, int64_t* out) {
  const int k = plan.k;
  *out++ = k;
  *out++ = plan.nnz;
  for (int level = 1; level <= k; ++level) *out++ = plan.num_nodes(level);
  auto put = [&out](const int64_t* v, int64_t count) {
    if (count > 0) std::memcpy(out, v, sizeof(int64_t) * count);
    out += count;
  };
  put(plan.sorted_pos, plan.nnz);
  put(plan.pos_begin, plan.num_nodes(k) + 1);
  for (int level = 1; level <= k; ++level) {
    put(plan.key[level], plan.num_nodes(level));
    if (level < k) put(plan.child_begin[level], plan.num_nodes(level) + 1);
    if (level > 1) put(plan.parent[level], plan.num_nodes(level));
  }
}

std::string DeserializePlan(const TTDims& dims, int64_t nnz, const int64_t* data, int64_t size,
                            Workspace* ws, LookupPlan* plan) {
  const int k = dims.k;
  if (size < 2 + k || data[0] != k || data[1] != nnz) {
    return "residual_plan does not belong to these cores and indices";
  }
  int64_t n[kMaxCores + 1] = {0};
  int64_t expected = 2 + k + nnz;
  for (int level = 1; level <= k; ++level) {
    n[level] = data[1 + level];
    if (n[level] < 0 || n[level] > in::MaxNodes(dims, level, nnz)) {
      return "residual_plan has a bad node count";
    }
    expected += n[level] + (level < k ? n[level] + 1 : 0) + (level > 1 ? n[level] : 0);
  }
  expected += n[k] + 1;
  if (size != expected) return "residual_plan has the wrong size";
  const int64_t* p = data + 2 + k;
  // Every value is range-checked: the backward indexes arrays with them.
  auto take = [&p](const int64_t** v, int64_t count, int64_t lo, int64_t hi) {
    *v = p;
    p += count;
    for (int64_t i = 0; i < count; ++i) {
      if ((*v)[i] < lo || (*v)[i] > hi) return false;
    }
    return true;
  };
  *plan = LookupPlan();
  plan->k = k;
  plan->nnz = nnz;
  for (int level = 1; level <= k; ++level) plan->nodes[level] = n[level];
  if (!take(&plan->sorted_pos, nnz, 0, nnz - 1) || !take(&plan->pos_begin, n[k] + 1, 0, nnz)) {
    return "residual_plan has an out-of-range position";
  }
  for (int64_t i = 0; i < n[k]; ++i) {
    if (plan->pos_begin[i] > plan->pos_begin[i + 1]) return "residual_plan is not ordered";
  }
  for (int level = 1; level <= k; ++level) {
    const int64_t key_limit = dims.MaxPrefixes(level) - 1;
    if (!take(&plan->key[level], n[level], 0, key_limit)) return "residual_plan has a bad key";
    if (level < k) {
      if (!take(&plan->child_begin[level], n[level] + 1, 0, n[level + 1])) {
        return "residual_plan has a bad child range";
      }
      for (int64_t i = 0; i < n[level]; ++i) {
        if (plan->child_begin[level][i] > plan->child_begin[level][i + 1]) {
          return "residual_plan is not ordered";
        }
      }
    }
    if (level > 1 && !take(&plan->parent[level], n[level], 0, n[level - 1] - 1)) {
      return "residual_plan has a bad parent";
    }
    // Digits are not serialized: derived from the (range-checked) keys they are in range.
    if (level == 1) {
      plan->digit[1] = plan->key[1];  // below p[0]: the first digits themselves
      continue;
    }
    const in::Divider divide(dims.p[level - 1]);
    int64_t* digit = ws->Take<int64_t>(n[level]);
    for (int64_t i = 0; i < n[level]; ++i) {
      const int64_t key = plan->key[level][i];
      digit[i] = key - divide.Div(key) * dims.p[level - 1];
    }
    plan->digit[level] = digit;
  }
  return "";
}

int64_t PartialsSize(const TTDims& dims, const LookupPlan& plan) {
  int64_t size = 0;
  for (int level = 1; level < dims.k; ++level) {
    size += plan.num_nodes(level) * dims.PartialSize(level);
  }
  return size;
}

}  // namespace tt_keras
