// Helpers shared by the TT CPU OpKernels: the thread-pool adapter and core pointers.
#ifndef TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_OP_UTIL_H_
#define TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_OP_UTIL_H_

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/lib/core/threadpool.h"
#include "tt_core.h"

namespace tt_keras {

// tt_core's ParallelFor on the op's intra-op thread pool.
inline ParallelFor CpuParallelFor(tensorflow::OpKernelContext* ctx) {
  tensorflow::thread::ThreadPool* pool =
      ctx->device()->tensorflow_cpu_worker_threads()->workers;
  const int threads = pool->NumThreads();
  return [pool, threads](int64_t total, int64_t cost,
                         const std::function<void(int64_t, int64_t)>& fn) {
    if (total <= 0) return;
    // Fewer, larger shards than the adaptive cost model picks: with a handful of cores,
    // waking a worker per tiny shard costs more than the shard (measured: the adaptive
    // split made 2 threads slower than 1). Small loops run inline.
    constexpr int64_t kInlineFlops = 200000;
    if (threads <= 1 || total * cost < kInlineFlops) {
      fn(0, total);
      return;
    }
    const int64_t shards = std::min<int64_t>(total, 2 * threads);
    pool->ParallelFor(
        total,
        tensorflow::thread::ThreadPool::SchedulingParams::Fixed((total + shards - 1) / shards),
        fn);
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

inline std::vector<const float*> CorePointers(const tensorflow::OpInputList& cores) {
  std::vector<const float*> ptrs;
  for (int t = 0; t < cores.size(); ++t) ptrs.push_back(cores[t].flat<float>().data());
  return ptrs;
}

}  // namespace tt_keras

#endif  // TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_OP_UTIL_H_
