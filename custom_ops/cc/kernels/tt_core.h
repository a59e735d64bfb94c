// Framework-free CPU implementation of the TT embedding-bag math (docs/ops.md).
//
// Kept free of TensorFlow headers so the same code serves the plain op, the cached op,
// the C++ unit tests (tests/cc) and the profiling driver (custom_ops/cc/standalone); the
// OpKernels only unpack tensors, validate, allocate, and supply a thread pool.
//
// Memory: nothing here allocates. Outputs go to arrays the caller sizes; scratch comes
// from a Workspace (tt_workspace.h) of at least the bytes the matching *WorkspaceBytes()
// query returns.
#ifndef TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_CORE_H_
#define TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_CORE_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "tt_parallel.h"
#include "tt_workspace.h"

namespace tt_keras {

constexpr int kMaxCores = 4;

// One TT shape: k cores, core t of shape (p[t], r[t], q[t], r[t+1]), r[0] = r[k] = 1.
struct TTDims {
  int k = 0;
  int64_t p[kMaxCores] = {0};
  int64_t q[kMaxCores] = {0};
  int64_t r[kMaxCores + 1] = {0};
  // row_stride[t] = prod(p[t+1..k-1]): digit t of an id is (id / row_stride[t]) % p[t].
  int64_t row_stride[kMaxCores] = {0};
  // col_prefix[t] = prod(q[0..t-1]): rows of the partial product after t cores.
  int64_t col_prefix[kMaxCores + 1] = {0};
  int64_t padded_rows = 0;
  int64_t dim = 0;

  // Fills the derived fields; returns an error message, or "" when the shape is valid.
  std::string Finalize();
  // Floats in the partial product after `level` cores (level 1..k): Q_level * r_level.
  int64_t PartialSize(int level) const { return col_prefix[level] * r[level]; }
  int64_t CoreSliceSize(int t) const { return r[t] * q[t] * r[t + 1]; }
  // Most distinct leading-`level`-digit prefixes a table of this shape has.
  int64_t MaxPrefixes(int level) const { return padded_rows / row_stride[level - 1]; }
};

enum class Combiner { kNone, kSum, kMean, kSqrtn };
bool ParseCombiner(const std::string& name, Combiner* out);

// Checks of a batch's contents. Each returns "" or the message the ops raise, naming the
// argument, the position and the value.
// Every id in [0, num_rows).
template <typename Tid>
std::string ValidateIds(const Tid* ids, int64_t nnz, int64_t num_rows);
// row_splits[0 .. num_bags]: starts at 0, never decreases, ends at nnz.
std::string ValidateRowSplits(const int64_t* row_splits, int64_t num_bags, int64_t nnz);

// The distinct ids of a batch arranged as a prefix tree: level L (1..k) holds the distinct
// values of id / row_stride[L-1], i.e. the distinct leading-L-digit prefixes, sorted.
// Nodes of level L that share a parent at level L-1 are contiguous, which is what lets every
// reduction below run without atomics. The arrays live in whatever memory the plan was built
// in (a Workspace, or a serialized plan); the plan only points at them.
struct LookupPlan {
  int k = 0;
  int64_t nnz = 0;
  int64_t nodes[kMaxCores + 1] = {0};              // nodes[L]: node count of level L
  const int64_t* sorted_pos = nullptr;             // [nnz]: positions of the batch, sorted by id
  const int64_t* pos_begin = nullptr;              // [nodes[k] + 1]: leaf n's positions are
                                                   // sorted_pos[pos_begin[n] .. [n+1])
  const int64_t* key[kMaxCores + 1] = {};          // key[L][n]: prefix of node n at level L
  const int64_t* child_begin[kMaxCores + 1] = {};  // L < k, [nodes[L] + 1]: children of node
                                                   // n are level L+1 nodes [cb[n], cb[n+1])
  const int64_t* parent[kMaxCores + 1] = {};       // L > 1: parent[L][n], a level L-1 node
  const int64_t* digit[kMaxCores + 1] = {};        // digit[L][n]: node n's index into core L-1,
                                                   // kept so no kernel divides per node
  int64_t num_nodes(int level) const { return nodes[level]; }
};

// Builds the plan for `ids` (already range-checked). Ids are radix-sorted: a comparison sort
// of a 50k-id batch costs more than the whole TT forward. The plan's arrays are taken from
// `ws` and stay there; the sort's scratch is given back.
size_t BuildPlanWorkspaceBytes(const TTDims& dims, int64_t nnz);
template <typename Tid>
void BuildPlan(const TTDims& dims, const Tid* ids, int64_t nnz, Workspace* ws, LookupPlan* plan,
               const ParallelFor& pfor);

// The plan as one int64 array, so a forward op can hand it to its gradient op:
// [k, nnz, n_1..n_k], sorted_pos, pos_begin, then per level L: key[L], and for L < k
// child_begin[L], for L > 1 parent[L].
int64_t SerializedPlanSize(const LookupPlan& plan);
void SerializePlan(const LookupPlan& plan, int64_t* out);
// Reads a serialized plan back, checking every size and index against dims and nnz (the
// array may come from anywhere); returns an error message, or "" on success. The plan then
// points into `data`, which must outlive it; the digits are computed into `ws`.
size_t DeserializePlanWorkspaceBytes(const TTDims& dims, int64_t nnz);
std::string DeserializePlan(const TTDims& dims, int64_t nnz, const int64_t* data, int64_t size,
                            Workspace* ws, LookupPlan* plan);
// Floats in partials[1..k-1] of a plan: what a forward op hands over with it.
int64_t PartialsSize(const TTDims& dims, const LookupPlan& plan);

// Per-position scale of a pooled lookup: w_i / norm(bag of i) (1 / norm without weights),
// zero where the norm is zero, as tf.nn.embedding_lookup_sparse with div_no_nan.
// Also each position's bag. For Combiner::kNone: scale 1, bag = position. scale and
// bag_of_pos hold nnz entries each.
void PositionScales(Combiner combiner, const int64_t* row_splits, int64_t num_bags,
                    const float* weights, int64_t nnz, float* scale, int64_t* bag_of_pos,
                    const ParallelFor& pfor);

// Partial products of every level 1..k-1 (the leaves' rows are level k) into `partials`:
// PartialsSize floats, level by level, num_nodes(L) blocks of PartialSize(L) floats each.
size_t ComputePartialsWorkspaceBytes(const TTDims& dims, const LookupPlan& plan);
void ComputePartials(const TTDims& dims, const float* const* cores, const LookupPlan& plan,
                     float* partials, Workspace* ws, const ParallelFor& pfor);

// Rows (dim floats) of every distinct id, in plan order, into rows (num_nodes(k) * dim
// floats); fills `partials` on the way (as ComputePartials), which is what a forward op
// hands to its gradient.
size_t ComputeRowsWorkspaceBytes(const TTDims& dims, const LookupPlan& plan);
void ComputeRows(const TTDims& dims, const float* const* cores, const LookupPlan& plan,
                 float* partials, float* rows, Workspace* ws, const ParallelFor& pfor);

// Pools the row of each position (row_of_pos[i], dim floats) into out: [num_bags, dim], or
// [nnz, dim] for Combiner::kNone. The one pooling routine every op uses.
void PoolRowPointers(int64_t dim, const float* const* row_of_pos, Combiner combiner,
                     const int64_t* row_splits, int64_t num_bags, const float* weights, int64_t nnz,
                     float* out, const ParallelFor& pfor);

// Pools the plan's rows (one per distinct id) into out, as PoolRowPointers.
size_t PoolRowsWorkspaceBytes(int64_t nnz);
void PoolRows(const TTDims& dims, const LookupPlan& plan, Combiner combiner,
              const int64_t* row_splits, int64_t num_bags, const float* weights, int64_t nnz,
              const float* rows, float* out, Workspace* ws, const ParallelFor& pfor);

// Core gradients from the gradient of each distinct id's row (leaf_grads: num_nodes(k) x dim).
// core_grads[t] must hold p[t] * CoreSliceSize(t) floats; every element is written.
// The partial products of levels 1..k-1 are read from `residual_partials` (the forward's,
// as ComputePartials lays them out) when given, else recomputed; the query must be told
// which.
size_t BackpropCoresWorkspaceBytes(const TTDims& dims, const LookupPlan& plan, bool have_partials);
void BackpropCores(const TTDims& dims, const float* const* cores, const LookupPlan& plan,
                   const float* leaf_grads, float* const* core_grads, Workspace* ws,
                   const ParallelFor& pfor, const float* residual_partials = nullptr);

// Sums of output-gradient rows per group of positions: out[n] (dim floats) = sum over
// j in [group_begin[n], group_begin[n+1]) of scale[i] * grad[bag_of_pos[i]], i = positions[j],
// in j order. What AggregateLeafGrads does per distinct id, and the cached op per cache slot.
void SumGradRows(int64_t dim, int64_t num_groups, const int64_t* group_begin,
                 const int64_t* positions, const float* grad, const float* scale,
                 const int64_t* bag_of_pos, float* out, const ParallelFor& pfor);

// Sums each distinct id's output gradient: leaf_grads[n] = sum over the positions i of id n
// of scale[i] * grad[bag_of_pos[i]]; leaf_grads holds num_nodes(k) * dim floats.
void AggregateLeafGrads(const TTDims& dims, const LookupPlan& plan, const float* grad,
                        const float* scale, const int64_t* bag_of_pos, float* leaf_grads,
                        const ParallelFor& pfor);

}  // namespace tt_keras

#endif  // TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_CORE_H_
