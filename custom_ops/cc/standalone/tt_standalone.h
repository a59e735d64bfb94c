// The TT core without TensorFlow: a std::thread pool behind its ParallelFor, and the plain
// and cached lookups, forward and backward, run call for call as the OpKernels run them
// (custom_ops/cc/kernels/tt_embedding_bag_op.cc, tt_cached_op.cc), each workspace sized by
// the core's own queries. Used by the C++ unit tests (tests/cc) and the profiling driver
// (tt_driver.cc); inputs are assumed valid, as the ops check them first.
#ifndef TT_KERAS_CUSTOM_OPS_CC_STANDALONE_TT_STANDALONE_H_
#define TT_KERAS_CUSTOM_OPS_CC_STANDALONE_TT_STANDALONE_H_

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tt_cached_core.h"
#include "tt_core.h"

namespace tt_keras {
namespace standalone {

// threads - 1 workers; the calling thread is the other one (MakeParallelFor).
class ThreadPool {
 public:
  explicit ThreadPool(int threads) : threads_(threads < 1 ? 1 : threads) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { Run(); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& w : workers_) w.join();
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  ParallelFor parallel_for() {
    return MakeParallelFor(threads_, [this](std::function<void()> task) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        tasks_.push_back(std::move(task));
      }
      wake_.notify_one();
    });
  }

 private:
  void Run() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
        if (tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  bool stop_ = false;
};

// One lookup's inputs (as the ops take them, already validated).
template <typename Tid>
struct Lookup {
  TTDims dims;
  const float* const* cores = nullptr;
  const Tid* ids = nullptr;
  int64_t nnz = 0;
  const int64_t* row_splits = nullptr;  // num_bags + 1 entries; unused for kNone
  int64_t num_bags = 0;
  const float* weights = nullptr;  // nullptr: all ones
  Combiner combiner = Combiner::kSum;

  int64_t out_rows() const { return combiner == Combiner::kNone ? nnz : num_bags; }
};

// A hot-row cache: sorted ids (ValidateCacheIds) and their rows.
struct Cache {
  const int64_t* ids = nullptr;
  const float* rows = nullptr;
  int64_t size = 0;
};

// What a forward op hands its gradient op.
struct Residuals {
  std::vector<int64_t> plan;
  std::vector<float> partials;
  std::vector<int32_t> slots;  // the cached lookup's
};

// The plain forward: out [out_rows, dim].
template <typename Tid>
void PlainForward(const Lookup<Tid>& in, float* out, Residuals* residuals,
                  const ParallelFor& pfor) {
  WorkspaceBuffer plan_memory(BuildPlanWorkspaceBytes(in.dims, in.nnz));
  LookupPlan plan;
  BuildPlan(in.dims, in.ids, in.nnz, plan_memory.get(), &plan, pfor);
  residuals->plan.resize(SerializedPlanSize(plan));
  SerializePlan(plan, residuals->plan.data());
  residuals->partials.resize(PartialsSize(in.dims, plan));
  const int64_t rows_size = plan.num_nodes(in.dims.k) * in.dims.dim;
  WorkspaceBuffer memory(ArrayBytes<float>(rows_size) + ComputeRowsWorkspaceBytes(in.dims, plan) +
                         PoolRowsWorkspaceBytes(in.nnz));
  float* rows = memory.get()->Take<float>(rows_size);
  ComputeRows(in.dims, in.cores, plan, residuals->partials.data(), rows, memory.get(), pfor);
  PoolRows(in.dims, plan, in.combiner, in.row_splits, in.num_bags, in.weights, in.nnz, rows, out,
           memory.get(), pfor);
}

// The misses' part of both backward passes: their plan (read back or rebuilt) and the core
// gradients from their rows' gradients.
template <typename Tid>
std::string BackpropPlan(const TTDims& dims, const float* const* cores, const Tid* ids, int64_t nnz,
                         const float* grad, const float* scale, const int64_t* bag_of_pos,
                         const Residuals* residuals, float* const* core_grads,
                         const ParallelFor& pfor) {
  const bool have = residuals != nullptr && !residuals->plan.empty();
  WorkspaceBuffer plan_memory(have ? DeserializePlanWorkspaceBytes(dims, nnz)
                                   : BuildPlanWorkspaceBytes(dims, nnz));
  LookupPlan plan;
  const float* ready_partials = nullptr;
  if (have) {
    const std::string error =
        DeserializePlan(dims, nnz, residuals->plan.data(),
                        static_cast<int64_t>(residuals->plan.size()), plan_memory.get(), &plan);
    if (!error.empty()) return error;
    if (static_cast<int64_t>(residuals->partials.size()) != PartialsSize(dims, plan)) {
      return "residual_partials has the wrong size";
    }
    ready_partials = residuals->partials.data();
  } else {
    BuildPlan(dims, ids, nnz, plan_memory.get(), &plan, pfor);
  }
  const int64_t leaf_size = plan.num_nodes(dims.k) * dims.dim;
  WorkspaceBuffer memory(ArrayBytes<float>(leaf_size) +
                         BackpropCoresWorkspaceBytes(dims, plan, ready_partials != nullptr));
  float* leaf_grads = memory.get()->Take<float>(leaf_size);
  AggregateLeafGrads(dims, plan, grad, scale, bag_of_pos, leaf_grads, pfor);
  BackpropCores(dims, cores, plan, leaf_grads, core_grads, memory.get(), pfor, ready_partials);
  return "";
}

// The plain backward: core_grads[t] shaped like core t. With residuals (the forward's) the
// plan is read back, else rebuilt; returns DeserializePlan's error, or "".
template <typename Tid>
std::string PlainBackward(const Lookup<Tid>& in, const float* grad, const Residuals* residuals,
                          float* const* core_grads, const ParallelFor& pfor) {
  std::vector<float> scale(in.nnz);
  std::vector<int64_t> bag_of_pos(in.nnz);
  PositionScales(in.combiner, in.row_splits, in.num_bags, in.weights, in.nnz, scale.data(),
                 bag_of_pos.data(), pfor);
  return BackpropPlan(in.dims, in.cores, in.ids, in.nnz, grad, scale.data(), bag_of_pos.data(),
                      residuals, core_grads, pfor);
}

// The cached forward: out as PlainForward, residuals->slots each position's slot or -1;
// returns the number of hits.
template <typename Tid>
int64_t CachedForward(const Lookup<Tid>& in, const Cache& cache, float* out, Residuals* residuals,
                      const ParallelFor& pfor) {
  residuals->slots.resize(in.nnz);
  int64_t hits = 0;
  {
    WorkspaceBuffer memory(FindCacheSlotsWorkspaceBytes(cache.size, in.nnz));
    hits = FindCacheSlots(cache.ids, cache.size, in.ids, in.nnz, residuals->slots.data(),
                          memory.get(), pfor);
  }
  const int64_t num_misses = in.nnz - hits;
  WorkspaceBuffer miss_memory(ArrayBytes<int64_t>(num_misses) + ArrayBytes<Tid>(num_misses) +
                              BuildPlanWorkspaceBytes(in.dims, num_misses));
  int64_t* miss_pos = miss_memory.get()->Take<int64_t>(num_misses);
  Tid* miss_ids = miss_memory.get()->Take<Tid>(num_misses);
  CollectMisses(in.ids, residuals->slots.data(), in.nnz, num_misses, miss_pos, miss_ids);
  LookupPlan plan;
  BuildPlan(in.dims, miss_ids, num_misses, miss_memory.get(), &plan, pfor);
  const int64_t rows_size = plan.num_nodes(in.dims.k) * in.dims.dim;
  WorkspaceBuffer memory(ArrayBytes<float>(rows_size) + ComputeRowsWorkspaceBytes(in.dims, plan) +
                         PoolCachedRowsWorkspaceBytes(in.nnz));
  const float* tt_rows = nullptr;
  residuals->plan.clear();
  residuals->partials.clear();
  if (num_misses > 0) {
    residuals->plan.resize(SerializedPlanSize(plan));
    SerializePlan(plan, residuals->plan.data());
    residuals->partials.resize(PartialsSize(in.dims, plan));
    float* rows = memory.get()->Take<float>(rows_size);
    ComputeRows(in.dims, in.cores, plan, residuals->partials.data(), rows, memory.get(), pfor);
    tt_rows = rows;
  }
  PoolCachedRows(in.dims, residuals->slots.data(), cache.rows, plan, miss_pos, tt_rows, in.combiner,
                 in.row_splits, in.num_bags, in.weights, in.nnz, out, memory.get(), pfor);
  return hits;
}

// The cached backward: core_grads as PlainBackward (the misses' share), and the cache rows'
// gradient: hit_slots (ascending) and one row of hit_values each. residuals may be nullptr
// (slots looked up again, plan rebuilt).
template <typename Tid>
std::string CachedBackward(const Lookup<Tid>& in, const Cache& cache, const float* grad,
                           const Residuals* residuals, float* const* core_grads,
                           std::vector<int64_t>* hit_slots, std::vector<float>* hit_values,
                           const ParallelFor& pfor) {
  WorkspaceBuffer memory(ArrayBytes<int32_t>(in.nnz) + ArrayBytes<float>(in.nnz) +
                         ArrayBytes<int64_t>(in.nnz) +
                         FindCacheSlotsWorkspaceBytes(cache.size, in.nnz) +
                         BuildCacheGradPlanWorkspaceBytes(in.nnz, cache.size));
  Workspace* ws = memory.get();
  int32_t* slots = ws->Take<int32_t>(in.nnz);
  float* scale = ws->Take<float>(in.nnz);
  int64_t* bag_of_pos = ws->Take<int64_t>(in.nnz);
  if (residuals != nullptr && !residuals->slots.empty()) {
    std::copy(residuals->slots.begin(), residuals->slots.end(), slots);
  } else {
    FindCacheSlots(cache.ids, cache.size, in.ids, in.nnz, slots, ws, pfor);
  }
  PositionScales(in.combiner, in.row_splits, in.num_bags, in.weights, in.nnz, scale, bag_of_pos,
                 pfor);
  CacheGradPlan cache_plan;
  BuildCacheGradPlan(slots, in.nnz, cache.size, ws, &cache_plan, pfor);
  hit_slots->assign(cache_plan.slots, cache_plan.slots + cache_plan.num_slots);
  hit_values->resize(cache_plan.num_slots * in.dims.dim);
  AccumulateCacheGrads(in.dims.dim, cache_plan, grad, scale, bag_of_pos, hit_values->data(), pfor);
  const int64_t num_misses = cache_plan.num_misses;
  if (num_misses == 0) {
    for (int t = 0; t < in.dims.k; ++t) {
      std::fill(core_grads[t], core_grads[t] + in.dims.p[t] * in.dims.CoreSliceSize(t), 0.f);
    }
    return "";
  }
  std::vector<Tid> miss_ids(num_misses);
  std::vector<float> miss_scale(num_misses);
  std::vector<int64_t> miss_bag(num_misses);
  for (int64_t m = 0; m < num_misses; ++m) {
    const int64_t pos = cache_plan.order[m];
    miss_ids[m] = in.ids[pos];
    miss_scale[m] = scale[pos];
    miss_bag[m] = bag_of_pos[pos];
  }
  return BackpropPlan(in.dims, in.cores, miss_ids.data(), num_misses, grad, miss_scale.data(),
                      miss_bag.data(), residuals, core_grads, pfor);
}

}  // namespace standalone
}  // namespace tt_keras

#endif  // TT_KERAS_CUSTOM_OPS_CC_STANDALONE_TT_STANDALONE_H_
