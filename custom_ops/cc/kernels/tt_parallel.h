// The parallel loop of the TT core (framework-free): the OpKernels run it on TF's intra-op
// pool, the C++ tests and the profiling driver on a pool of std::threads.
#ifndef TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_PARALLEL_H_
#define TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

namespace tt_keras {

// Runs fn(begin, end) over [0, total) split into shards; cost_per_unit is a rough count of
// floating-point operations per item, which lets the pool decide how finely to split.
using ParallelFor = std::function<void(int64_t total, int64_t cost_per_unit,
                                       const std::function<void(int64_t, int64_t)>& fn)>;

// Hands a task to some other thread of a pool.
using Schedule = std::function<void(std::function<void()>)>;

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
      (*fn)(b* block, std::min(total, (b + 1) * block));
    }
    return ran;
  }
};

// A ParallelFor over a pool of `threads` threads (the caller's included) that takes tasks
// through `schedule`. The calling thread starts on the blocks at once and pool threads join
// as they wake, taking blocks from a shared counter; the caller then waits only for blocks
// already running. A pool's own ParallelFor typically hands the whole loop to the pool and
// sleeps until it is done: a wake-up and a sleep for each of the ~20 loops of a lookup,
// which measured about 10% of the op's forward and backward on 2 cores. Block boundaries
// depend only on the thread count, and every loop body writes disjoint outputs per item, so
// results do not depend on which thread runs which block.
inline ParallelFor MakeParallelFor(int threads, Schedule schedule) {
  return [threads, schedule](int64_t total, int64_t cost,
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
      schedule([loop] {
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

}  // namespace tt_keras

#endif  // TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_PARALLEL_H_
