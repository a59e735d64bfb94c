// CPU math of the cached TT lookup; see tt_cached_core.h and docs/cache.md.
#include "tt_cached_core.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

namespace tt_keras {

std::string ValidateCacheIds(const int64_t* cache_ids, int64_t cache_size, int64_t num_rows) {
  // Every call checks all C ids: first in one branch-free pass (it vectorizes; sorted ids
  // are non-negative when the first is), and only a faulty cache through the loop below,
  // which finds and names the first fault.
  if (cache_size == 0) return "";
  // (int64_t flags: with bools GCC leaves the loop scalar.)
  int64_t bad = cache_ids[0] < 0;
  for (int64_t s = 1; s < cache_size; ++s) {
    const int64_t id = cache_ids[s], prev = cache_ids[s - 1];
    bad |= static_cast<int64_t>(id < prev) |
           (static_cast<int64_t>(id == prev) & static_cast<int64_t>(id < num_rows));
  }
  if (bad == 0) return "";
  for (int64_t s = 0; s < cache_size; ++s) {
    const int64_t id = cache_ids[s];
    if (id < 0) {
      return "cache_ids[" + std::to_string(s) + "] = " + std::to_string(id) +
             " is negative (empty slots hold ids >= num_rows, e.g. INT64_MAX)";
    }
    if (s == 0) continue;
    const int64_t prev = cache_ids[s - 1];
    if (id < prev) {
      return "cache_ids must be sorted: cache_ids[" + std::to_string(s) +
             "] = " + std::to_string(id) + " < cache_ids[" + std::to_string(s - 1) +
             "] = " + std::to_string(prev);
    }
    // Two slots of one row would make the row's value ambiguous and split its gradient.
    if (id == prev && id < num_rows) {
      return "cache_ids[" + std::to_string(s - 1) + "] and cache_ids[" + std::to_string(s) +
             "] both hold row " + std::to_string(id);
    }
  }
  return "";
}

namespace {

// An open-addressing hash index of the cache's ids, rebuilt per call: O(C) to build, about
// one probe per id. A branching binary search over the sorted ids costs ~log2(C)
// mispredicted branches per id, which measured more than the radix sort of the whole
// batch; but the index costs O(C) whatever the batch, so a batch much smaller than the
// cache is searched for instead (SortedSlot, kIndexMinBatchShare).
class CacheIndex {
 public:
  // Key and slot side by side: a probe reads one cache line, not one in each of two arrays.
  struct Entry {
    int64_t key;  // -1: free
    int32_t slot;
  };

  // Load factor <= 3/4: a smaller table stays in cache (four entries share a line, so the
  // longer probe runs mostly stay within one).
  static int TableBits(int64_t cache_size) {
    int bits = 4;
    while (3 * (int64_t{1} << bits) < 4 * cache_size) ++bits;
    return bits;
  }

  static size_t Bytes(int64_t cache_size) {
    return ArrayBytes<Entry>(int64_t{1} << TableBits(cache_size));
  }

  CacheIndex(const int64_t* cache_ids, int64_t cache_size, Workspace* ws) {
    const int bits = TableBits(cache_size);
    shift_ = 64 - bits;
    mask_ = (uint64_t{1} << bits) - 1;
    entries_ = ws->Take<Entry>(int64_t{1} << bits);
    std::fill(entries_, entries_ + (int64_t{1} << bits), Entry{-1, -1});
    for (int64_t s = 0; s < cache_size; ++s) {
      const int64_t id = cache_ids[s];
      // Empty slots (ids >= num_rows) could be left out, but an id never equals them, so
      // keeping them is harmless; duplicates are only empty slots (ValidateCacheIds).
      uint64_t b = Bucket(id);
      while (entries_[b].key != -1 && entries_[b].key != id) b = (b + 1) & mask_;
      if (entries_[b].key == -1) entries_[b] = Entry{id, static_cast<int32_t>(s)};
    }
  }

  int32_t Find(int64_t id) const {
    for (uint64_t b = Bucket(id);; b = (b + 1) & mask_) {
      const Entry& e = entries_[b];
      if (e.key == id) return e.slot;
      if (e.key == -1) return -1;
    }
  }

 private:
  // Fibonacci hashing: the top bits of id * 2^64/phi spread consecutive ids (hot ids of
  // a vocabulary are often contiguous) over the whole table.
  uint64_t Bucket(int64_t id) const {
    return (static_cast<uint64_t>(id) * 0x9E3779B97F4A7C15ull) >> shift_;
  }

  Entry* entries_ = nullptr;
  uint64_t mask_ = 0;
  int shift_ = 0;
};

// The slot of `id` in the sorted cache_ids (cache_size >= 1), or -1: a lower bound found
// without branches (the comparison selects the next base with a conditional move), so the
// ~log2(C) steps cost no mispredictions.
inline int32_t SortedSlot(const int64_t* cache_ids, int64_t cache_size, int64_t id) {
  const int64_t* base = cache_ids;
  for (int64_t len = cache_size; len > 1;) {
    const int64_t half = len / 2;
    base = base[half] < id ? base + half : base;
    len -= half;
  }
  base += *base < id;
  return base < cache_ids + cache_size && *base == id ? static_cast<int32_t>(base - cache_ids) : -1;
}

// A batch of fewer than 1/kIndexMinBatchShare of the cache's ids is searched for rather
// than indexed (and its gradient's positions sorted rather than counted by slot, see
// BuildCacheGradPlan): both alternatives cost O(C) per call whatever the batch. tt_driver,
// 2 threads: batch 128 against a 61k-row cache, forward 129-142 us indexed, 16 searched;
// batch 2048 against it 206-222 and 123-126; against a 10k-row cache 106-109 indexed,
// 133-168 searched. A DLRM batch of 128 searches every cache above 2,048 rows.
constexpr int64_t kIndexMinBatchShare = 16;

bool SearchesCache(int64_t nnz, int64_t cache_size) {
  return nnz * kIndexMinBatchShare < cache_size;
}

// slots[i] = slot_of(ids[i]) for every position, in parallel (cost: per id); returns the
// number of hits.
template <typename Tid, typename SlotOf>
int64_t FillSlots(const Tid* ids, int64_t nnz, int64_t cost, int32_t* slots,
                  const ParallelFor& pfor, const SlotOf& slot_of) {
  std::atomic<int64_t> hits{0};
  pfor(nnz, cost, [&](int64_t lo, int64_t hi) {
    int64_t local = 0;
    for (int64_t i = lo; i < hi; ++i) {
      slots[i] = slot_of(static_cast<int64_t>(ids[i]));
      local += slots[i] >= 0;
    }
    hits.fetch_add(local, std::memory_order_relaxed);
  });
  return hits.load();
}

}  // namespace

size_t FindCacheSlotsWorkspaceBytes(int64_t cache_size, int64_t nnz) {
  return cache_size > 0 && !SearchesCache(nnz, cache_size) ? CacheIndex::Bytes(cache_size) : 0;
}

template <typename Tid>
int64_t FindCacheSlots(const int64_t* cache_ids, int64_t cache_size, const Tid* ids, int64_t nnz,
                       int32_t* slots, Workspace* ws, const ParallelFor& pfor) {
  if (cache_size == 0) {
    std::fill(slots, slots + nnz, -1);
    return 0;
  }
  if (SearchesCache(nnz, cache_size)) {
    const int64_t steps = 64 - __builtin_clzll(static_cast<uint64_t>(cache_size));
    return FillSlots(ids, nnz, 4 * steps, slots, pfor,
                     [&](int64_t id) { return SortedSlot(cache_ids, cache_size, id); });
  }
  ScratchScope scratch(ws);
  const CacheIndex index(cache_ids, cache_size, ws);
  return FillSlots(ids, nnz, 10, slots, pfor, [&](int64_t id) { return index.Find(id); });
}

template int64_t FindCacheSlots<int32_t>(const int64_t*, int64_t, const int32_t*, int64_t, int32_t*,
                                         Workspace*, const ParallelFor&);
template int64_t FindCacheSlots<int64_t>(const int64_t*, int64_t, const int64_t*, int64_t, int32_t*,
                                         Workspace*, const ParallelFor&);

template <typename Tid>
void CollectMisses(const Tid* ids, const int32_t* slots, int64_t nnz, int64_t num_misses,
                   int64_t* pos, Tid* out) {
  // Branch-free: every position is written and the end advances on misses only; hits and
  // misses alternate unpredictably, and a branch per position measured 2x slower. The loop
  // ends at the last miss, so no write goes past num_misses.
  int64_t m = 0;
  for (int64_t i = 0; i < nnz && m < num_misses; ++i) {
    pos[m] = i;
    out[m] = ids[i];
    m += slots[i] < 0;
  }
}

template void CollectMisses<int32_t>(const int32_t*, const int32_t*, int64_t, int64_t, int64_t*,
                                     int32_t*);
template void CollectMisses<int64_t>(const int64_t*, const int32_t*, int64_t, int64_t, int64_t*,
                                     int64_t*);

size_t PoolCachedRowsWorkspaceBytes(int64_t nnz) { return ArrayBytes<const float*>(nnz); }

void PoolCachedRows(const TTDims& dims, const int32_t* slots, const float* cache_rows,
                    const LookupPlan& miss_plan, const int64_t* miss_pos, const float* tt_rows,
                    Combiner combiner, const int64_t* row_splits, int64_t num_bags,
                    const float* weights, int64_t nnz, float* out, Workspace* ws,
                    const ParallelFor& pfor) {
  const int64_t D = dims.dim;
  // One source pointer per position, so pooling reads hits and misses alike.
  ScratchScope scratch(ws);
  const float** src = ws->Take<const float*>(nnz);
  // Every position gets its cache row (slot 0's for a miss, overwritten below): no branch
  // on hits and misses, which alternate unpredictably.
  pfor(nnz, 4, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      src[i] = cache_rows + static_cast<int64_t>(std::max(slots[i], 0)) * D;
    }
  });
  const int64_t num_leaves = tt_rows != nullptr ? miss_plan.num_nodes(dims.k) : 0;
  pfor(num_leaves, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t leaf = lo; leaf < hi; ++leaf) {
      const float* row = tt_rows + leaf * D;
      for (int64_t j = miss_plan.pos_begin[leaf]; j < miss_plan.pos_begin[leaf + 1]; ++j) {
        src[miss_pos[miss_plan.sorted_pos[j]]] = row;
      }
    }
  });
  PoolRowPointers(D, src, combiner, row_splits, num_bags, weights, nnz, out, pfor);
}

namespace {

// The slot sort's positions are split into at most this many chunks.
constexpr int64_t kMaxSlotChunks = 4;

// Most distinct slots a batch can hit.
int64_t MaxSlotsHit(int64_t nnz, int64_t cache_size) { return std::min(nnz, cache_size); }

}  // namespace

size_t BuildCacheGradPlanWorkspaceBytes(int64_t nnz, int64_t cache_size) {
  const int64_t slots = MaxSlotsHit(nnz, cache_size);
  const size_t counters =
      SearchesCache(nnz, cache_size) ? 0 : ArrayBytes<int32_t>(kMaxSlotChunks * (cache_size + 1));
  return ArrayBytes<int64_t>(nnz) + ArrayBytes<int64_t>(slots) + ArrayBytes<int64_t>(slots + 1) +
         counters;
}

namespace {

// BuildCacheGradPlan for a batch much smaller than the cache: the positions sorted by
// (slot, position), O(nnz log nnz) instead of the counting sort's O(C + nnz).
void SortPositionsBySlot(const int32_t* slots, int64_t nnz, int64_t* order, int64_t* hit_slots,
                         int64_t* begin, CacheGradPlan* plan) {
  for (int64_t i = 0; i < nnz; ++i) order[i] = i;
  std::sort(order, order + nnz, [slots](int64_t a, int64_t b) {
    return slots[a] < slots[b] || (slots[a] == slots[b] && a < b);
  });
  int64_t num_slots = 0, num_misses = 0;
  for (int64_t j = 0; j < nnz; ++j) {
    const int32_t slot = slots[order[j]];
    if (slot < 0) {
      ++num_misses;
    } else if (num_slots == 0 || hit_slots[num_slots - 1] != slot) {
      hit_slots[num_slots] = slot;
      begin[num_slots++] = j;
    }
  }
  begin[num_slots] = nnz;
  plan->num_misses = num_misses;
  plan->num_slots = num_slots;
}

}  // namespace

void BuildCacheGradPlan(const int32_t* slots, int64_t nnz, int64_t cache_size, Workspace* ws,
                        CacheGradPlan* plan, const ParallelFor& pfor) {
  // A counting sort by slot + 1, misses (slot -1) included as bucket 0: no branch per
  // position (hits and misses alternate unpredictably). The positions are split into a
  // few contiguous chunks, counted and scattered in parallel; within a bucket chunk c's
  // positions go after those of chunks < c, so each bucket's positions stay ascending (a
  // fixed summation order: the chunks do not depend on the thread count).
  int64_t* order = ws->Take<int64_t>(nnz);
  int64_t* hit_slots = ws->Take<int64_t>(MaxSlotsHit(nnz, cache_size));
  int64_t* begin = ws->Take<int64_t>(MaxSlotsHit(nnz, cache_size) + 1);
  plan->order = order;
  plan->slots = hit_slots;
  plan->begin = begin;
  if (SearchesCache(nnz, cache_size)) {
    SortPositionsBySlot(slots, nnz, order, hit_slots, begin, plan);
    return;
  }
  ScratchScope scratch(ws);
  const int64_t buckets = cache_size + 1;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(kMaxSlotChunks, nnz / 8192));
  const int64_t chunk = (nnz + chunks - 1) / chunks;
  // int32 counters (a batch has fewer than 2^31 positions: the op checks) keep the
  // chunks' counters small enough to stay in cache.
  int32_t* next = ws->Take<int32_t>(chunks * buckets);  // next[c * buckets + x]: chunk c's
                                                        // next entry of bucket x
  std::fill(next, next + chunks * buckets, 0);
  pfor(chunks, 4 * chunk, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      int32_t* count = next + c * buckets;
      const int64_t end = std::min(nnz, (c + 1) * chunk);
      for (int64_t i = c * chunk; i < end; ++i) ++count[slots[i] + 1];
    }
  });
  int64_t num_slots = 0;
  int64_t sum = 0;
  for (int64_t x = 0; x < buckets; ++x) {
    const int64_t first = sum;
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t n = next[c * buckets + x];
      next[c * buckets + x] = static_cast<int32_t>(sum);
      sum += n;
    }
    if (x == 0) {
      plan->num_misses = sum;
    } else if (sum > first) {
      hit_slots[num_slots] = x - 1;
      begin[num_slots++] = first;
    }
  }
  begin[num_slots] = nnz;
  pfor(chunks, 4 * chunk, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      int32_t* bucket_next = next + c * buckets;
      const int64_t end = std::min(nnz, (c + 1) * chunk);
      for (int64_t i = c * chunk; i < end; ++i) order[bucket_next[slots[i] + 1]++] = i;
    }
  });
  plan->num_slots = num_slots;
}

void AccumulateCacheGrads(int64_t dim, const CacheGradPlan& plan, const float* grad,
                          const float* scale, const int64_t* bag_of_pos, float* values,
                          const ParallelFor& pfor) {
  SumGradRows(dim, plan.num_slots, plan.begin, plan.order, grad, scale, bag_of_pos, values, pfor);
}

}  // namespace tt_keras
