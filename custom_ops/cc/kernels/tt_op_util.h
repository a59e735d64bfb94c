// Helpers shared by the TT CPU OpKernels: the thread-pool adapter and core pointers.
#ifndef TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_OP_UTIL_H_
#define TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_OP_UTIL_H_

#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>
#include <functional>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/lib/core/threadpool.h"
#include "tt_core.h"

namespace tt_keras {

// The blocks of one parallel loop, shared by the calling thread and its helpers. Held by
// shared_ptr: a helper that wakes after the caller has finished every block still reads
// `next` (finds nothing left) after the loop has returned.
struct ParallelLoop {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  int64_t blocks = 0, block = 0, total = 0;
  const std::function<void(int64_t, int64_t)>* fn = nullptr;

  // Runs blocks until none is left; returns how many this thread ran.
  int64_t Work() {
    int64_t ran = 0;
    for (int64_t b; (b = next.fetch_add(1, std::memory_order_relaxed)) < blocks; ++ran) {
      (*fn)(b * block, std::min(total, (b + 1) * block));
    }
    return ran;
  }
};

// tt_core's ParallelFor on the op's intra-op thread pool. The calling thread starts on the
// blocks at once and pool threads join as they wake, taking blocks from a shared counter;
// the caller then waits only for blocks already running. The pool's own ParallelFor hands
// the whole loop to the pool and sleeps until it is done: a wake-up and a sleep for each
// of the ~20 loops of a lookup, which measured about 10% of the op's forward and backward
// on 2 cores. Block boundaries depend only on the thread count, and every loop body writes
// disjoint outputs per item, so results do not depend on which thread runs which block.
inline ParallelFor CpuParallelFor(tensorflow::OpKernelContext* ctx) {
  tensorflow::thread::ThreadPool* pool =
      ctx->device()->tensorflow_cpu_worker_threads()->workers;
  const int threads = pool->NumThreads();
  return [pool, threads](int64_t total, int64_t cost,
                         const std::function<void(int64_t, int64_t)>& fn) {
    if (total <= 0) return;
    // Small loops run inline: waking a worker costs more than they do.
    constexpr int64_t kInlineFlops = 200000;
    if (threads <= 1 || total * cost < kInlineFlops) {
      fn(0, total);
      return;
    }
    auto loop = std::make_shared<ParallelLoop>();
    loop->blocks = std::min<int64_t>(total, 4 * threads);
    loop->block = (total + loop->blocks - 1) / loop->blocks;
    loop->blocks = (total + loop->block - 1) / loop->block;
    loop->total = total;
    loop->fn = &fn;
    const int helpers = static_cast<int>(std::min<int64_t>(threads - 1, loop->blocks - 1));
    for (int h = 0; h < helpers; ++h) {
      pool->Schedule([loop] {
        const int64_t ran = loop->Work();
        if (ran > 0) loop->done.fetch_add(ran, std::memory_order_acq_rel);
      });
    }
    const int64_t ran = loop->Work();
    loop->done.fetch_add(ran, std::memory_order_acq_rel);
    // Every block is taken; wait for those still running elsewhere (a block's worth).
    for (int spins = 0; loop->done.load(std::memory_order_acquire) < loop->blocks; ++spins) {
      if (spins < 4096) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
      } else {
        std::this_thread::yield();
      }
    }
  };
}

// What every TT bag kernel reads from its attrs: the table's rows and the combiner.
class BagKernelBase : public tensorflow::OpKernel {
 public:
  explicit BagKernelBase(tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_rows", &num_rows_));
    std::string combiner;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("combiner", &combiner));
    OP_REQUIRES(ctx, ParseCombiner(combiner, &combiner_),
                tensorflow::errors::InvalidArgument("combiner = '", combiner,
                                                    "' is not one of none, sum, mean, sqrtn"));
  }

 protected:
  int64_t num_rows_ = 0;
  Combiner combiner_ = Combiner::kNone;
};

// Allocates a forward op's residual outputs for its gradient (first_output: the serialized
// plan, then the partial products, which the caller computes straight into *partials).
// With plan == nullptr both are empty, which tells the gradient to rebuild them.
inline tensorflow::Status AllocateResiduals(tensorflow::OpKernelContext* ctx, int first_output,
                                            const TTDims& dims, const LookupPlan* plan,
                                            float** partials) {
  tensorflow::Tensor* plan_out = nullptr;
  tensorflow::Tensor* partials_out = nullptr;
  const int64_t plan_size = plan ? SerializedPlanSize(*plan) : 0;
  const int64_t partials_size = plan ? PartialsSize(dims, *plan) : 0;
  TF_RETURN_IF_ERROR(ctx->allocate_output(first_output, tensorflow::TensorShape({plan_size}),
                                          &plan_out));
  TF_RETURN_IF_ERROR(ctx->allocate_output(
      first_output + 1, tensorflow::TensorShape({partials_size}), &partials_out));
  if (plan != nullptr) SerializePlan(*plan, plan_out->flat<int64_t>().data());
  if (partials != nullptr) *partials = partials_out->flat<float>().data();
  return tensorflow::OkStatus();
}

// A gradient op's plan: the forward's (inputs "residual_plan" / "residual_partials"), checked,
// when it left one; else built afresh from ids (then *ready_partials stays nullptr and the
// backward recomputes the partial products).
template <typename Tid>
tensorflow::Status ReadOrBuildPlan(tensorflow::OpKernelContext* ctx, const TTDims& dims,
                                   const Tid* ids, int64_t nnz, const ParallelFor& pfor,
                                   LookupPlan* plan, const float** ready_partials) {
  const tensorflow::Tensor* residual_plan;
  const tensorflow::Tensor* residual_partials;
  TF_RETURN_IF_ERROR(ctx->input("residual_plan", &residual_plan));
  TF_RETURN_IF_ERROR(ctx->input("residual_partials", &residual_partials));
  *ready_partials = nullptr;
  if (residual_plan->NumElements() == 0) {
    BuildPlan(dims, ids, nnz, plan, pfor);
    return tensorflow::OkStatus();
  }
  const std::string error =
      DeserializePlan(dims, nnz, residual_plan->flat<int64_t>().data(),
                      residual_plan->NumElements(), plan);
  if (!error.empty()) return tensorflow::errors::InvalidArgument(error);
  if (residual_partials->NumElements() != PartialsSize(dims, *plan)) {
    return tensorflow::errors::InvalidArgument(
        "residual_partials has ", residual_partials->NumElements(),
        " floats; the plan needs ", PartialsSize(dims, *plan));
  }
  *ready_partials = residual_partials->flat<float>().data();
  return tensorflow::OkStatus();
}

inline std::vector<const float*> CorePointers(const tensorflow::OpInputList& cores) {
  std::vector<const float*> ptrs;
  for (int t = 0; t < cores.size(); ++t) ptrs.push_back(cores[t].flat<float>().data());
  return ptrs;
}

}  // namespace tt_keras

#endif  // TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_OP_UTIL_H_
