// Framework-free CPU math of the cached TT lookup (docs/cache.md): a sorted cache of
// uncompressed hot rows in front of the TT chain of tt_core.h.
//
// Positions whose id is in the cache read the cache row; the others ("misses") are compacted
// and run through tt_core's plan / rows / backward unchanged, so everything tt_core does for
// speed (each distinct id once, prefix reuse) applies to the misses as they are.
#ifndef TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_CACHED_CORE_H_
#define TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_CACHED_CORE_H_

#include <cstdint>
#include <string>

#include "tt_core.h"

namespace tt_keras {

// Checks the cache's ids: non-negative, non-decreasing, and entries below num_rows distinct.
// Entries >= num_rows (the layer uses INT64_MAX) mark empty slots and never match an id.
// Returns an error message naming the slot and value, or "".
std::string ValidateCacheIds(const int64_t* cache_ids, int64_t cache_size, int64_t num_rows);

// slots[i] = the cache slot holding ids[i], or -1: a hash index of the cache built per call
// in `ws`, or for a batch much smaller than the cache a search of the sorted cache_ids (the
// index costs O(C) per call). Returns the number of hits.
// Ids must be range-checked; cache_ids valid (ValidateCacheIds).
size_t FindCacheSlotsWorkspaceBytes(int64_t cache_size, int64_t nnz);
template <typename Tid>
int64_t FindCacheSlots(const int64_t* cache_ids, int64_t cache_size, const Tid* ids, int64_t nnz,
                       int32_t* slots, Workspace* ws, const ParallelFor& pfor);

// The misses of a batch (num_misses of them: nnz less FindCacheSlots' hits), compacted:
// their positions (ascending) and ids, num_misses entries each.
template <typename Tid>
void CollectMisses(const Tid* ids, const int32_t* slots, int64_t nnz, int64_t num_misses,
                   int64_t* miss_pos, Tid* miss_ids);

// Pools a batch whose rows come from two places: cache_rows[slots[i]] for hits, and the
// TT rows of the misses' plan (tt_rows: miss_plan.num_nodes(k) x dim, in plan order) for
// the others; miss_plan's positions index miss_pos. Semantics as tt_core's PoolRows.
size_t PoolCachedRowsWorkspaceBytes(int64_t nnz);
void PoolCachedRows(const TTDims& dims, const int32_t* slots, const float* cache_rows,
                    const LookupPlan& miss_plan, const int64_t* miss_pos, const float* tt_rows,
                    Combiner combiner, const int64_t* row_splits, int64_t num_bags,
                    const float* weights, int64_t nnz, float* out, Workspace* ws,
                    const ParallelFor& pfor);

// The batch's positions grouped by cache slot: order[0 .. num_misses) are the misses, then
// for the n-th slot hit (slots: ascending, distinct) its positions order[begin[n] ..
// begin[n+1]); ascending within each group. The arrays live where the plan was built.
struct CacheGradPlan {
  const int64_t* order = nullptr;  // [nnz]
  int64_t num_misses = 0;
  int64_t num_slots = 0;
  const int64_t* slots = nullptr;  // [num_slots]
  const int64_t* begin = nullptr;  // [num_slots + 1]
};

// Counting sort of the positions by slot, O(cache_size + nnz); for a batch much smaller than
// the cache (as FindCacheSlots decides) a comparison sort, O(nnz log nnz). The plan's arrays
// are taken from `ws` and stay there.
size_t BuildCacheGradPlanWorkspaceBytes(int64_t nnz, int64_t cache_size);
void BuildCacheGradPlan(const int32_t* slots, int64_t nnz, int64_t cache_size, Workspace* ws,
                        CacheGradPlan* plan, const ParallelFor& pfor);

// values[n] = sum over the positions i of plan slot n of scale[i] * grad[bag_of_pos[i]]
// (values: plan.num_slots x dim, every element written; fixed summation order).
void AccumulateCacheGrads(int64_t dim, const CacheGradPlan& plan, const float* grad,
                          const float* scale, const int64_t* bag_of_pos, float* values,
                          const ParallelFor& pfor);

}  // namespace tt_keras

#endif  // TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_CACHED_CORE_H_
