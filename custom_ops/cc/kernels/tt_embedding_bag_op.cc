// CPU OpKernels of TTKeras>TTEmbeddingBag and its gradient: validate, then call tt_core.
#include <string>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/lib/core/threadpool.h"
#include "tt_core.h"
#include "tt_op_util.h"
#include "tt_validation.h"

namespace tensorflow {
namespace {

using tt_keras::AllocateWorkspace;
using tt_keras::ArrayBytes;
using tt_keras::Workspace;

template <typename Tid>
class TTEmbeddingBagOp : public tt_keras::BagKernelBase {
 public:
  using BagKernelBase::BagKernelBase;

  void Compute(OpKernelContext* ctx) override {
    tt_keras::BagOpInputs<Tid> in;
    OP_REQUIRES_OK(ctx, ReadInputs(ctx, /*host_contents=*/true, &in));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, AllocateOutput(ctx, in, &output));
    float* out = output->flat<float>().data();
    if (in.bags.nnz == 0) {
      std::fill(out, out + output->NumElements(), 0.f);
      OP_REQUIRES_OK(ctx, tt_keras::AllocateResiduals(ctx, 1, in.dims, nullptr, nullptr));
      return;
    }

    const auto pfor = tt_keras::CpuParallelFor(ctx);
    tt_keras::LookupPlan plan;
    Tensor plan_memory;
    Workspace plan_ws;
    OP_REQUIRES_OK(ctx,
                   AllocateWorkspace(ctx, tt_keras::BuildPlanWorkspaceBytes(in.dims, in.bags.nnz),
                                     &plan_memory, &plan_ws));
    tt_keras::BuildPlan(in.dims, in.bags.ids, in.bags.nnz, &plan_ws, &plan, pfor);
    const std::vector<const float*> core_ptrs = tt_keras::CorePointers(in.cores);
    // The partial products go straight into the residual output for the gradient, which
    // then skips the sort and the leading cores' GEMMs.
    float* partials = nullptr;
    OP_REQUIRES_OK(ctx, tt_keras::AllocateResiduals(ctx, 1, in.dims, &plan, &partials));
    const int64_t rows_size = plan.num_nodes(in.dims.k) * in.dims.dim;
    Tensor memory;
    Workspace ws;
    OP_REQUIRES_OK(ctx, AllocateWorkspace(ctx,
                                          ArrayBytes<float>(rows_size) +
                                              tt_keras::ComputeRowsWorkspaceBytes(in.dims, plan) +
                                              tt_keras::PoolRowsWorkspaceBytes(in.bags.nnz),
                                          &memory, &ws));
    float* rows = ws.Take<float>(rows_size);
    tt_keras::ComputeRows(in.dims, core_ptrs.data(), plan, partials, rows, &ws, pfor);
    tt_keras::PoolRows(in.dims, plan, combiner_, in.bags.row_splits, in.bags.num_bags,
                       in.bags.weights, in.bags.nnz, rows, out, &ws, pfor);
  }
};

template <typename Tid>
class TTEmbeddingBagGradOp : public tt_keras::BagKernelBase {
 public:
  using BagKernelBase::BagKernelBase;

  void Compute(OpKernelContext* ctx) override {
    tt_keras::BagOpInputs<Tid> in;
    OP_REQUIRES_OK(ctx, ReadInputs(ctx, /*host_contents=*/true, &in));
    const Tensor* grad = nullptr;
    OP_REQUIRES_OK(ctx, ReadGrad(ctx, in, &grad));

    // An empty batch has no gradient; otherwise BackpropCores writes every element.
    std::vector<float*> grad_ptrs;
    OP_REQUIRES_OK(ctx, tt_keras::AllocateCoreGrads(ctx, in.cores, in.bags.nnz == 0, &grad_ptrs));
    if (in.bags.nnz == 0) return;

    const auto pfor = tt_keras::CpuParallelFor(ctx);
    // The forward's residuals, when it left them, spare the sort and the leading GEMMs.
    tt_keras::LookupPlan plan;
    Tensor plan_memory;
    const float* ready_partials = nullptr;
    OP_REQUIRES_OK(ctx, tt_keras::ReadOrBuildPlan(ctx, in.dims, in.bags.ids, in.bags.nnz, pfor,
                                                  &plan_memory, &plan, &ready_partials));
    const int64_t num_leaf_grads = plan.num_nodes(in.dims.k) * in.dims.dim;
    Tensor memory;
    Workspace ws;
    OP_REQUIRES_OK(
        ctx, AllocateWorkspace(ctx,
                               ArrayBytes<float>(in.bags.nnz) + ArrayBytes<int64_t>(in.bags.nnz) +
                                   ArrayBytes<float>(num_leaf_grads) +
                                   tt_keras::BackpropCoresWorkspaceBytes(in.dims, plan,
                                                                         ready_partials != nullptr),
                               &memory, &ws));
    float* scale = ws.Take<float>(in.bags.nnz);
    int64_t* bag_of_pos = ws.Take<int64_t>(in.bags.nnz);
    float* leaf_grads = ws.Take<float>(num_leaf_grads);
    tt_keras::PositionScales(combiner_, in.bags.row_splits, in.bags.num_bags, in.bags.weights,
                             in.bags.nnz, scale, bag_of_pos, pfor);
    tt_keras::AggregateLeafGrads(in.dims, plan, grad->flat<float>().data(), scale, bag_of_pos,
                                 leaf_grads, pfor);
    const std::vector<const float*> core_ptrs = tt_keras::CorePointers(in.cores);
    tt_keras::BackpropCores(in.dims, core_ptrs.data(), plan, leaf_grads, grad_ptrs.data(), &ws,
                            pfor, ready_partials);
  }
};

TT_REGISTER_BAG_KERNELS(DEVICE_CPU, "TTKeras>TTEmbeddingBag", TTEmbeddingBagOp,
                        TTEmbeddingBagGradOp);

}  // namespace
}  // namespace tensorflow
