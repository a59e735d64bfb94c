// CPU OpKernels of TTKeras>TTEmbeddingBagCached and its gradient (docs/cache.md): validate,
// split the batch into cache hits and misses, run tt_core on the misses only.
#include <algorithm>
#include <atomic>
#include <limits>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/lib/core/threadpool.h"
#include "tt_cached_core.h"
#include "tt_core.h"
#include "tt_op_util.h"
#include "tt_validation.h"

namespace tensorflow {
namespace {

using tt_keras::AllocateWorkspace;
using tt_keras::ArrayBytes;
using tt_keras::Workspace;

// The cache's inputs, shapes checked (tt_keras::ReadCacheInputs) and its ids read here on
// the host (the GPU kernels check them on the device); and the batch, whose positions the
// cached kernels count in int32 (slots, the gradient's slot sort).
template <typename Tid>
absl::Status ReadCache(OpKernelContext* ctx, const tt_keras::BagOpInputs<Tid>& in, int64_t num_rows,
                       const Tensor** cache_ids, const Tensor* cache_rows) {
  TF_RETURN_IF_ERROR(tt_keras::ReadCacheInputs(ctx, in.dims.dim, cache_ids, cache_rows));
  const std::string error = tt_keras::ValidateCacheIds((*cache_ids)->flat<int64_t>().data(),
                                                       (*cache_ids)->dim_size(0), num_rows);
  if (!error.empty()) return errors::InvalidArgument(error);
  if (in.bags.nnz > std::numeric_limits<int32_t>::max()) {
    return errors::InvalidArgument("indices has ", in.bags.nnz,
                                   " entries; the cached lookup takes at most 2^31 - 1 per call");
  }
  return absl::OkStatus();
}

// Copies the forward's slots into `slots`, checking each against the cache: a slot must be
// -1 or one whose id is the position's id (the slots index cache rows).
template <typename Tid>
absl::Status CheckResidualSlots(const Tensor& residual_slots, const int64_t* cache_ids,
                                int64_t cache_size, const Tid* ids, int64_t nnz, int32_t* slots,
                                const tt_keras::ParallelFor& pfor) {
  if (residual_slots.dims() != 1 || residual_slots.dim_size(0) != nnz) {
    return errors::InvalidArgument("residual_slots has shape ",
                                   residual_slots.shape().DebugString(), "; expected [", nnz,
                                   "], one slot per index");
  }
  const int32_t* in = residual_slots.flat<int32_t>().data();
  std::atomic<int64_t> first_bad{nnz};
  pfor(nnz, 4, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int32_t s = in[i];
      // The range check comes first: only an in-range slot may index cache_ids.
      const bool bad =
          s < -1 || s >= cache_size || (s >= 0 && cache_ids[s] != static_cast<int64_t>(ids[i]));
      if (bad) {
        int64_t seen = first_bad.load();
        while (i < seen && !first_bad.compare_exchange_weak(seen, i)) {
        }
        return;
      }
      slots[i] = s;
    }
  });
  const int64_t i = first_bad.load();
  if (i < nnz) {
    return errors::InvalidArgument("residual_slots[", i, "] = ", in[i],
                                   " is not the cache slot of indices[", i,
                                   "] = ", static_cast<int64_t>(ids[i]));
  }
  return absl::OkStatus();
}

template <typename Tid>
class TTEmbeddingBagCachedOp : public tt_keras::BagKernelBase {
 public:
  using BagKernelBase::BagKernelBase;

  void Compute(OpKernelContext* ctx) override {
    tt_keras::BagOpInputs<Tid> in;
    OP_REQUIRES_OK(ctx, ReadInputs(ctx, /*host_contents=*/true, &in, {"cache_rows"}));
    const Tensor* cache_ids = nullptr;
    const Tensor* cache_rows = &in.values.values().back();
    OP_REQUIRES_OK(ctx, ReadCache(ctx, in, num_rows_, &cache_ids, cache_rows));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, AllocateOutput(ctx, in, &output));
    Tensor* num_hits = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &num_hits));
    num_hits->scalar<int64_t>()() = 0;
    // The residuals for the gradient: every position's slot now, the misses' plan and
    // partials once they exist (left empty when there are no misses).
    Tensor* slots_out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({in.bags.nnz}), &slots_out));
    if (in.bags.nnz == 0) {
      std::fill(output->flat<float>().data(), output->flat<float>().data() + output->NumElements(),
                0.f);
      OP_REQUIRES_OK(ctx, tt_keras::AllocateResiduals(ctx, 3, in.dims, nullptr, nullptr));
      return;
    }
    float* out = output->flat<float>().data();
    int32_t* slots = slots_out->flat<int32_t>().data();

    const auto pfor = tt_keras::CpuParallelFor(ctx);
    const int64_t cache_size = cache_ids->dim_size(0);
    {
      Tensor memory;
      Workspace ws;
      OP_REQUIRES_OK(ctx, AllocateWorkspace(
                              ctx, tt_keras::FindCacheSlotsWorkspaceBytes(cache_size, in.bags.nnz),
                              &memory, &ws));
      num_hits->scalar<int64_t>()() =
          tt_keras::FindCacheSlots(cache_ids->flat<int64_t>().data(), cache_size, in.bags.ids,
                                   in.bags.nnz, slots, &ws, pfor);
    }
    const int64_t num_misses = in.bags.nnz - num_hits->scalar<int64_t>()();
    // The misses, compacted, and their plan.
    Tensor miss_memory;
    Workspace miss_ws;
    OP_REQUIRES_OK(ctx,
                   AllocateWorkspace(ctx,
                                     ArrayBytes<int64_t>(num_misses) + ArrayBytes<Tid>(num_misses) +
                                         tt_keras::BuildPlanWorkspaceBytes(in.dims, num_misses),
                                     &miss_memory, &miss_ws));
    int64_t* miss_pos = miss_ws.Take<int64_t>(num_misses);
    Tid* miss_ids = miss_ws.Take<Tid>(num_misses);
    tt_keras::CollectMisses(in.bags.ids, slots, in.bags.nnz, num_misses, miss_pos, miss_ids);
    tt_keras::LookupPlan plan;
    tt_keras::BuildPlan(in.dims, miss_ids, num_misses, &miss_ws, &plan, pfor);
    const int64_t rows_size = plan.num_nodes(in.dims.k) * in.dims.dim;
    Tensor memory;
    Workspace ws;
    OP_REQUIRES_OK(ctx, AllocateWorkspace(ctx,
                                          ArrayBytes<float>(rows_size) +
                                              tt_keras::ComputeRowsWorkspaceBytes(in.dims, plan) +
                                              tt_keras::PoolCachedRowsWorkspaceBytes(in.bags.nnz),
                                          &memory, &ws));
    const float* tt_rows = nullptr;
    if (num_misses > 0) {
      const std::vector<const float*> core_ptrs = tt_keras::CorePointers(in.cores);
      float* partials = nullptr;
      OP_REQUIRES_OK(ctx, tt_keras::AllocateResiduals(ctx, 3, in.dims, &plan, &partials));
      float* rows = ws.Take<float>(rows_size);
      tt_keras::ComputeRows(in.dims, core_ptrs.data(), plan, partials, rows, &ws, pfor);
      tt_rows = rows;
    }
    tt_keras::PoolCachedRows(in.dims, slots, cache_rows->flat<float>().data(), plan, miss_pos,
                             tt_rows, combiner_, in.bags.row_splits, in.bags.num_bags,
                             in.bags.weights, in.bags.nnz, out, &ws, pfor);
    if (num_misses == 0) {
      OP_REQUIRES_OK(ctx, tt_keras::AllocateResiduals(ctx, 3, in.dims, nullptr, nullptr));
    }
  }
};

template <typename Tid>
class TTEmbeddingBagCachedGradOp : public tt_keras::BagKernelBase {
 public:
  using BagKernelBase::BagKernelBase;

  void Compute(OpKernelContext* ctx) override {
    tt_keras::BagOpInputs<Tid> in;
    OP_REQUIRES_OK(ctx, ReadInputs(ctx, /*host_contents=*/true, &in));
    const Tensor* cache_ids = nullptr;
    OP_REQUIRES_OK(ctx, ReadCache(ctx, in, num_rows_, &cache_ids, nullptr));
    const Tensor* grad = nullptr;
    OP_REQUIRES_OK(ctx, ReadGrad(ctx, in, &grad));
    const int64_t cache_size = cache_ids->dim_size(0);
    const float* g = grad->flat<float>().data();
    const auto pfor = tt_keras::CpuParallelFor(ctx);

    const Tensor* residual_slots;
    OP_REQUIRES_OK(ctx, ctx->input("residual_slots", &residual_slots));
    // Each position's slot and scale, and the positions grouped by slot.
    Tensor memory;
    Workspace ws;
    OP_REQUIRES_OK(ctx, AllocateWorkspace(
                            ctx,
                            ArrayBytes<int32_t>(in.bags.nnz) + ArrayBytes<float>(in.bags.nnz) +
                                ArrayBytes<int64_t>(in.bags.nnz) +
                                tt_keras::FindCacheSlotsWorkspaceBytes(cache_size, in.bags.nnz) +
                                tt_keras::BuildCacheGradPlanWorkspaceBytes(in.bags.nnz, cache_size),
                            &memory, &ws));
    int32_t* slots = ws.Take<int32_t>(in.bags.nnz);
    float* scale = ws.Take<float>(in.bags.nnz);
    int64_t* bag_of_pos = ws.Take<int64_t>(in.bags.nnz);
    if (residual_slots->NumElements() > 0) {
      // The forward's slots, checked: they index cache rows.
      OP_REQUIRES_OK(ctx, CheckResidualSlots(*residual_slots, cache_ids->flat<int64_t>().data(),
                                             cache_size, in.bags.ids, in.bags.nnz, slots, pfor));
    } else {
      tt_keras::FindCacheSlots(cache_ids->flat<int64_t>().data(), cache_size, in.bags.ids,
                               in.bags.nnz, slots, &ws, pfor);
    }
    tt_keras::PositionScales(combiner_, in.bags.row_splits, in.bags.num_bags, in.bags.weights,
                             in.bags.nnz, scale, bag_of_pos, pfor);

    // Cache rows: one gradient row per distinct slot hit (an IndexedSlices in Python).
    tt_keras::CacheGradPlan cache_plan;
    tt_keras::BuildCacheGradPlan(slots, in.bags.nnz, cache_size, &ws, &cache_plan, pfor);
    const int64_t num_hit_slots = cache_plan.num_slots;
    Tensor* hit_slots = nullptr;
    Tensor* hit_values = nullptr;
    OP_REQUIRES_OK(
        ctx, ctx->allocate_output("cache_grad_slots", TensorShape({num_hit_slots}), &hit_slots));
    OP_REQUIRES_OK(
        ctx, ctx->allocate_output("cache_grad_values", TensorShape({num_hit_slots, in.dims.dim}),
                                  &hit_values));
    std::copy(cache_plan.slots, cache_plan.slots + num_hit_slots,
              hit_slots->flat<int64_t>().data());
    tt_keras::AccumulateCacheGrads(in.dims.dim, cache_plan, g, scale, bag_of_pos,
                                   hit_values->flat<float>().data(), pfor);

    // Cores: the misses only, through tt_core's backward.
    // Without misses the cores get no gradient; otherwise BackpropCores writes every element.
    const int64_t num_misses = cache_plan.num_misses;
    std::vector<float*> grad_ptrs;
    OP_REQUIRES_OK(ctx, tt_keras::AllocateCoreGrads(ctx, in.cores, num_misses == 0, &grad_ptrs));
    if (num_misses == 0) return;
    // The misses' ids, scales and in.bags, in position order (the first bucket of the cache
    // plan): AggregateLeafGrads indexes them by the misses' plan's positions.
    Tensor miss_memory;
    Workspace miss_ws;
    OP_REQUIRES_OK(ctx,
                   AllocateWorkspace(ctx,
                                     ArrayBytes<Tid>(num_misses) + ArrayBytes<float>(num_misses) +
                                         ArrayBytes<int64_t>(num_misses),
                                     &miss_memory, &miss_ws));
    Tid* miss_ids = miss_ws.Take<Tid>(num_misses);
    float* miss_scale = miss_ws.Take<float>(num_misses);
    int64_t* miss_bag = miss_ws.Take<int64_t>(num_misses);
    for (int64_t m = 0; m < num_misses; ++m) {
      const int64_t pos = cache_plan.order[m];
      miss_ids[m] = in.bags.ids[pos];
      miss_scale[m] = scale[pos];
      miss_bag[m] = bag_of_pos[pos];
    }
    tt_keras::LookupPlan plan;
    Tensor plan_memory;
    const float* ready_partials = nullptr;
    OP_REQUIRES_OK(ctx, tt_keras::ReadOrBuildPlan(ctx, in.dims, miss_ids, num_misses, pfor,
                                                  &plan_memory, &plan, &ready_partials));
    const int64_t num_leaf_grads = plan.num_nodes(in.dims.k) * in.dims.dim;
    Tensor grad_memory;
    Workspace grad_ws;
    OP_REQUIRES_OK(ctx, AllocateWorkspace(ctx,
                                          ArrayBytes<float>(num_leaf_grads) +
                                              tt_keras::BackpropCoresWorkspaceBytes(
                                                  in.dims, plan, ready_partials != nullptr),
                                          &grad_memory, &grad_ws));
    float* leaf_grads = grad_ws.Take<float>(num_leaf_grads);
    tt_keras::AggregateLeafGrads(in.dims, plan, g, miss_scale, miss_bag, leaf_grads, pfor);
    const std::vector<const float*> core_ptrs = tt_keras::CorePointers(in.cores);
    tt_keras::BackpropCores(in.dims, core_ptrs.data(), plan, leaf_grads, grad_ptrs.data(), &grad_ws,
                            pfor, ready_partials);
  }
};

TT_REGISTER_BAG_KERNELS(DEVICE_CPU, "TTKeras>TTEmbeddingBagCached", TTEmbeddingBagCachedOp,
                        TTEmbeddingBagCachedGradOp);

}  // namespace
}  // namespace tensorflow
