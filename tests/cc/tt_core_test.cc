// C++ unit tests of the TF-free TT core (custom_ops/cc/kernels/tt_core.h, tt_cached_core.h):
// the plain and cached lookups, forward and backward, run as the ops run them
// (custom_ops/cc/standalone/tt_standalone.h) and compared with the double-precision chain of
// tt_reference.h, on every ISA variant this CPU runs.
//
//   tt_core_test [filter]       runs the tests whose name contains filter
//   tt_core_test --list-isas    prints the ISA variants this CPU runs, lowest first
#include "tt_core.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "tt_cached_core.h"
#include "tt_isa.h"
#include "tt_reference.h"
#include "tt_standalone.h"
#include "tt_test.h"

namespace {

using tt_keras::Combiner;
using tt_keras::TTDims;
using tt_keras::standalone::Cache;
using tt_keras::standalone::Lookup;
using tt_keras::standalone::Residuals;
using tt_keras::standalone::ThreadPool;

const Combiner kCombiners[] = {Combiner::kNone, Combiner::kSum, Combiner::kMean, Combiner::kSqrtn};

const char* CombinerName(Combiner c) {
  switch (c) {
    case Combiner::kNone:
      return "none";
    case Combiner::kSum:
      return "sum";
    case Combiner::kMean:
      return "mean";
    case Combiner::kSqrtn:
      return "sqrtn";
  }
  return "?";
}

// A TT shape and its cores, drawn so that rows come out of order one whatever the ranks.
struct Table {
  TTDims dims;
  int64_t num_rows = 0;
  tt_reference::Cores cores;
  std::vector<const float*> core_ptrs;

  std::string Describe() const {
    std::string s = "cores";
    for (int t = 0; t < dims.k; ++t) {
      s += " (" + std::to_string(dims.p[t]) + "," + std::to_string(dims.r[t]) + "," +
           std::to_string(dims.q[t]) + "," + std::to_string(dims.r[t + 1]) + ")";
    }
    return s + ", " + std::to_string(num_rows) + " rows";
  }
};

Table MakeTable(std::vector<int64_t> p, std::vector<int64_t> q, std::vector<int64_t> r,
                int64_t num_rows, std::mt19937_64* rng) {
  Table table;
  TTDims& d = table.dims;
  d.k = static_cast<int>(p.size());
  for (int t = 0; t < d.k; ++t) {
    d.p[t] = p[t];
    d.q[t] = q[t];
  }
  for (int t = 0; t <= d.k; ++t) d.r[t] = r[t];
  const std::string error = d.Finalize();
  CHECK_EQ(error, std::string());
  table.num_rows = num_rows > 0 ? num_rows : d.padded_rows;
  for (int t = 0; t < d.k; ++t) {
    std::normal_distribution<float> normal(0.f, 1.f / std::sqrt(static_cast<float>(d.r[t])));
    std::vector<float> core(d.p[t] * d.CoreSliceSize(t));
    for (float& x : core) x = normal(*rng);
    table.cores.push_back(std::move(core));
  }
  for (const auto& c : table.cores) table.core_ptrs.push_back(c.data());
  return table;
}

// A batch of bags: ids drawn from a small pool of rows (so that ids repeat and share
// prefixes), bags of 0 to max_bag ids, optional weights (some zero, some negative).
struct Batch {
  std::vector<int64_t> ids;
  std::vector<int64_t> splits;
  std::vector<float> weights;
};

Batch MakeBatch(int64_t num_rows, int64_t num_bags, int64_t max_bag, bool weighted,
                std::mt19937_64* rng) {
  Batch b;
  std::uniform_int_distribution<int64_t> row(0, num_rows - 1);
  std::vector<int64_t> pool(std::max<int64_t>(2, num_bags));
  for (int64_t& id : pool) id = row(*rng);
  pool.push_back(num_rows - 1);
  std::uniform_int_distribution<size_t> pick(0, pool.size() - 1);
  std::uniform_int_distribution<int64_t> bag_size(0, max_bag);
  std::uniform_real_distribution<float> weight(-0.5f, 2.f);
  b.splits.push_back(0);
  for (int64_t bag = 0; bag < num_bags; ++bag) {
    const int64_t n = bag_size(*rng);
    for (int64_t i = 0; i < n; ++i) {
      b.ids.push_back((i + bag) % 3 == 0 ? row(*rng) : pool[pick(*rng)]);
      if (weighted) b.weights.push_back(i % 5 == 4 ? 0.f : weight(*rng));
    }
    b.splits.push_back(static_cast<int64_t>(b.ids.size()));
  }
  return b;
}

template <typename Tid>
struct TypedLookup {
  std::vector<Tid> ids;
  Lookup<Tid> lookup;
};

template <typename Tid>
TypedLookup<Tid> MakeLookup(const Table& table, const Batch& batch, Combiner combiner) {
  TypedLookup<Tid> out;
  out.ids.assign(batch.ids.begin(), batch.ids.end());
  Lookup<Tid>& in = out.lookup;
  in.dims = table.dims;
  in.cores = table.core_ptrs.data();
  in.ids = out.ids.data();
  in.nnz = static_cast<int64_t>(out.ids.size());
  in.combiner = combiner;
  if (combiner != Combiner::kNone) {
    in.row_splits = batch.splits.data();
    in.num_bags = static_cast<int64_t>(batch.splits.size()) - 1;
    in.weights = batch.weights.empty() ? nullptr : batch.weights.data();
  }
  return out;
}

// Every element of `actual` near `expected`, relative to the tensor's largest value (float32
// sums of a few hundred terms against double ones).
void CheckNear(const std::vector<float>& actual, const std::vector<double>& expected,
               const char* what) {
  CHECK_EQ(actual.size(), expected.size());
  if (actual.size() != expected.size()) return;
  double scale = 1e-3;
  for (double x : expected) scale = std::max(scale, std::fabs(x));
  for (size_t i = 0; i < actual.size(); ++i) {
    if (!tt_test::Near(actual[i], expected[i], 1e-4, 2e-5 * scale)) {
      tt_test::Fail(__FILE__, __LINE__,
                    std::string(what) + "[" + std::to_string(i) + "] = " +
                        std::to_string(actual[i]) + ", expected " + std::to_string(expected[i]));
      return;
    }
  }
}

std::vector<float> OutputGradient(int64_t size, std::mt19937_64* rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> g(size);
  for (float& x : g) x = u(*rng);
  return g;
}

std::vector<std::vector<float>> UnwrittenLike(const tt_reference::Cores& cores) {
  std::vector<std::vector<float>> out;
  // Filled with NaN: the backward must write every element.
  for (const auto& c : cores) out.emplace_back(c.size(), std::numeric_limits<float>::quiet_NaN());
  return out;
}

std::vector<float*> Pointers(std::vector<std::vector<float>>* v) {
  std::vector<float*> out;
  for (auto& x : *v) out.push_back(x.data());
  return out;
}

// The plain lookup on `batch`, forward and backward (with and without the forward's
// residuals), against the reference.
template <typename Tid>
void CheckPlain(const Table& table, const Batch& batch, Combiner combiner,
                const tt_keras::ParallelFor& pfor, std::mt19937_64* rng) {
  tt_test::ScopedContext context(std::string("plain, combiner ") + CombinerName(combiner) +
                                 (batch.weights.empty() ? "" : ", weighted") +
                                 (sizeof(Tid) == 4 ? ", int32 ids" : ", int64 ids"));
  const TypedLookup<Tid> typed = MakeLookup<Tid>(table, batch, combiner);
  const Lookup<Tid>& in = typed.lookup;
  std::vector<float> out(in.out_rows() * table.dims.dim, std::numeric_limits<float>::quiet_NaN());
  Residuals residuals;
  tt_keras::standalone::PlainForward(in, out.data(), &residuals, pfor);
  const std::vector<float> no_weights;
  const std::vector<float>& weights = combiner == Combiner::kNone ? no_weights : batch.weights;
  CheckNear(
      out,
      tt_reference::Forward(table.dims, table.cores, batch.ids, combiner, batch.splits, weights),
      "output");

  const std::vector<float> grad = OutputGradient(out.size(), rng);
  const tt_reference::Gradients expected = tt_reference::Backward(
      table.dims, table.cores, batch.ids, combiner, batch.splits, weights, grad);
  for (const Residuals* r :
       {static_cast<const Residuals*>(&residuals), static_cast<const Residuals*>(nullptr)}) {
    tt_test::ScopedContext how(r ? "backward from the forward's residuals"
                                 : "backward, plan rebuilt");
    auto core_grads = UnwrittenLike(table.cores);
    auto ptrs = Pointers(&core_grads);
    const std::string error =
        tt_keras::standalone::PlainBackward(in, grad.data(), r, ptrs.data(), pfor);
    CHECK_EQ(error, std::string());
    for (int t = 0; t < table.dims.k; ++t) {
      CheckNear(core_grads[t], expected.cores[t], ("grad of core " + std::to_string(t)).c_str());
    }
  }
}

// The cached lookup likewise; the cache holds some of the batch's rows, some others, and
// empty slots (INT64_MAX).
template <typename Tid>
void CheckCached(const Table& table, const Batch& batch, Combiner combiner,
                 const std::vector<int64_t>& cache_ids, const tt_keras::ParallelFor& pfor,
                 std::mt19937_64* rng) {
  tt_test::ScopedContext context(std::string("cached (") + std::to_string(cache_ids.size()) +
                                 " slots), combiner " + CombinerName(combiner) +
                                 (batch.weights.empty() ? "" : ", weighted"));
  CHECK_EQ(tt_keras::ValidateCacheIds(cache_ids.data(), static_cast<int64_t>(cache_ids.size()),
                                      table.num_rows),
           std::string());
  const TypedLookup<Tid> typed = MakeLookup<Tid>(table, batch, combiner);
  const Lookup<Tid>& in = typed.lookup;
  const std::vector<float> cache_rows = OutputGradient(cache_ids.size() * table.dims.dim, rng);
  const Cache cache{cache_ids.data(), cache_rows.data(), static_cast<int64_t>(cache_ids.size())};
  const auto slot_of = tt_reference::CacheSlots(cache_ids, table.num_rows);

  std::vector<float> out(in.out_rows() * table.dims.dim, std::numeric_limits<float>::quiet_NaN());
  Residuals residuals;
  const int64_t hits = tt_keras::standalone::CachedForward(in, cache, out.data(), &residuals, pfor);
  int64_t expected_hits = 0;
  for (size_t i = 0; i < batch.ids.size(); ++i) {
    const auto hit = slot_of.find(batch.ids[i]);
    expected_hits += hit != slot_of.end();
    CHECK_EQ(residuals.slots[i], hit != slot_of.end() ? hit->second : -1);
  }
  CHECK_EQ(hits, expected_hits);
  const std::vector<float> no_weights;
  const std::vector<float>& weights = combiner == Combiner::kNone ? no_weights : batch.weights;
  CheckNear(out,
            tt_reference::Forward(table.dims, table.cores, batch.ids, combiner, batch.splits,
                                  weights, slot_of, cache_rows),
            "output");

  const std::vector<float> grad = OutputGradient(out.size(), rng);
  const tt_reference::Gradients expected = tt_reference::Backward(
      table.dims, table.cores, batch.ids, combiner, batch.splits, weights, grad, slot_of);
  for (const Residuals* r :
       {static_cast<const Residuals*>(&residuals), static_cast<const Residuals*>(nullptr)}) {
    tt_test::ScopedContext how(r ? "backward from the forward's residuals"
                                 : "backward, slots and plan rebuilt");
    auto core_grads = UnwrittenLike(table.cores);
    auto ptrs = Pointers(&core_grads);
    std::vector<int64_t> hit_slots;
    std::vector<float> hit_values;
    const std::string error = tt_keras::standalone::CachedBackward(
        in, cache, grad.data(), r, ptrs.data(), &hit_slots, &hit_values, pfor);
    CHECK_EQ(error, std::string());
    for (int t = 0; t < table.dims.k; ++t) {
      CheckNear(core_grads[t], expected.cores[t], ("grad of core " + std::to_string(t)).c_str());
    }
    std::vector<int64_t> expected_slots;
    std::vector<double> expected_values;
    for (const auto& [slot, g] : expected.cache_rows) {
      expected_slots.push_back(slot);
      expected_values.insert(expected_values.end(), g.begin(), g.end());
    }
    CHECK(hit_slots == expected_slots);
    CheckNear(hit_values, expected_values, "cache row grad");
  }
}

// A cache of some of the batch's ids, one id outside it and a few empty slots, sorted.
std::vector<int64_t> MakeCacheIds(const Table& table, const Batch& batch, size_t from_batch) {
  std::vector<int64_t> ids(batch.ids.begin(),
                           batch.ids.begin() + std::min(from_batch, batch.ids.size()));
  ids.push_back(table.num_rows / 2);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (int i = 0; i < 3; ++i) ids.push_back(std::numeric_limits<int64_t>::max());
  return ids;
}

// Shapes that steer the kernels down each of their paths: the last core by siblings (rank a
// multiple of 8, core in L2) or digit by digit; dP @ G^T as dot products (q r_out a multiple
// of 8) or through transposed slices; parents' gradients summed directly (core in L2) or
// through per-child shares; 2, 3 and 4 cores.
std::vector<Table> PathTables(std::mt19937_64* rng) {
  std::vector<Table> tables;
  tables.push_back(MakeTable({7, 9}, {2, 3}, {1, 4, 1}, 60, rng));
  tables.push_back(MakeTable({13, 11}, {4, 4}, {1, 16, 1}, 0, rng));
  tables.push_back(MakeTable({3, 2000}, {2, 8}, {1, 8, 1}, 5999, rng));
  tables.push_back(MakeTable({5, 6, 7}, {2, 2, 4}, {1, 8, 8, 1}, 0, rng));
  tables.push_back(MakeTable({5, 6, 7}, {3, 1, 2}, {1, 5, 3, 1}, 200, rng));
  tables.push_back(MakeTable({4, 40, 5}, {2, 2, 2}, {1, 32, 32, 1}, 0, rng));
  tables.push_back(MakeTable({4, 80, 5}, {2, 3, 2}, {1, 40, 7, 1}, 1500, rng));
  tables.push_back(MakeTable({3, 4, 5, 6}, {2, 1, 2, 2}, {1, 4, 8, 2, 1}, 0, rng));
  tables.push_back(MakeTable({2, 3, 4, 5}, {2, 2, 2, 2}, {1, 16, 16, 16, 1}, 100, rng));
  return tables;
}

TEST(PlainLookupMatchesReferenceOnEveryPath) {
  std::mt19937_64 rng(1);
  ThreadPool pool(3);
  const auto pfor = pool.parallel_for();
  for (const Table& table : PathTables(&rng)) {
    tt_test::ScopedContext context(table.Describe());
    for (Combiner combiner : kCombiners) {
      for (bool weighted : {false, true}) {
        if (weighted && combiner == Combiner::kNone) continue;
        const Batch batch = MakeBatch(table.num_rows, 12, 9, weighted, &rng);
        if (weighted) {
          CheckPlain<int32_t>(table, batch, combiner, pfor, &rng);
        } else {
          CheckPlain<int64_t>(table, batch, combiner, pfor, &rng);
        }
      }
    }
  }
}

TEST(CachedLookupMatchesReferenceOnEveryPath) {
  std::mt19937_64 rng(2);
  ThreadPool pool(3);
  const auto pfor = pool.parallel_for();
  for (const Table& table : PathTables(&rng)) {
    tt_test::ScopedContext context(table.Describe());
    for (Combiner combiner : kCombiners) {
      const Batch batch = MakeBatch(table.num_rows, 10, 8, combiner != Combiner::kNone, &rng);
      CheckCached<int64_t>(table, batch, combiner, MakeCacheIds(table, batch, 7), pfor, &rng);
    }
  }
}

TEST(CachedLookupWithEmptyFullAndUnhitCaches) {
  std::mt19937_64 rng(3);
  ThreadPool pool(2);
  const auto pfor = pool.parallel_for();
  const Table table = MakeTable({5, 6, 7}, {2, 2, 4}, {1, 8, 8, 1}, 0, &rng);
  const Batch batch = MakeBatch(table.num_rows, 8, 6, true, &rng);
  // No slots at all.
  CheckCached<int32_t>(table, batch, Combiner::kMean, {}, pfor, &rng);
  // Every id of the batch cached: no misses, so the cores get no gradient.
  std::vector<int64_t> all(batch.ids);
  std::sort(all.begin(), all.end());
  all.erase(std::unique(all.begin(), all.end()), all.end());
  CheckCached<int64_t>(table, batch, Combiner::kSum, all, pfor, &rng);
  // A cache of most rows against a small batch (fewer than a sixteenth of the slots): its
  // slots are searched for and its gradient's positions sorted, not indexed and counted.
  std::vector<int64_t> most;
  for (int64_t id = 0; id < table.num_rows; id += 1 + (id % 5 == 4)) most.push_back(id);
  most.push_back(std::numeric_limits<int64_t>::max());
  const Batch small = MakeBatch(table.num_rows, 3, 3, true, &rng);
  CHECK(static_cast<int64_t>(small.ids.size()) * 16 < static_cast<int64_t>(most.size()));
  for (Combiner combiner : kCombiners)
    CheckCached<int64_t>(table, small, combiner, most, pfor, &rng);
  // Only empty slots: nothing hits.
  CheckCached<int64_t>(table, batch, Combiner::kSqrtn,
                       {std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::max()},
                       pfor, &rng);
}

TEST(CacheSlotsAreFoundBySearchAndByIndexAlike) {
  // A batch of fewer than a quarter of the cache's ids is searched for in the sorted ids,
  // a larger one looked up in a hash index: both must give every id its slot or -1.
  std::mt19937_64 rng(9);
  ThreadPool pool(2);
  const auto pfor = pool.parallel_for();
  const int64_t num_rows = 5000;
  for (int64_t cache_size : {1, 2, 3, 17, 64, 1000}) {
    for (int64_t nnz : {1, 3, 15, 16, 250, 4000}) {
      tt_test::ScopedContext context("cache " + std::to_string(cache_size) + ", nnz " +
                                     std::to_string(nnz));
      // Distinct sorted ids below num_rows, and two empty slots at the end.
      std::vector<int64_t> cache_ids;
      std::uniform_int_distribution<int64_t> row(0, num_rows - 1);
      while (static_cast<int64_t>(cache_ids.size()) < cache_size) cache_ids.push_back(row(rng));
      std::sort(cache_ids.begin(), cache_ids.end());
      cache_ids.erase(std::unique(cache_ids.begin(), cache_ids.end()), cache_ids.end());
      cache_ids.push_back(std::numeric_limits<int64_t>::max());
      cache_ids.push_back(std::numeric_limits<int64_t>::max());
      const int64_t size = static_cast<int64_t>(cache_ids.size());
      // Half the batch from the cache, the rest anywhere (ids 0 and num_rows - 1 included).
      std::vector<int64_t> ids = {0, num_rows - 1};
      while (static_cast<int64_t>(ids.size()) < nnz) {
        ids.push_back(rng() % 2 ? cache_ids[rng() % (size - 2)] : row(rng));
      }
      ids.resize(nnz);
      std::vector<int32_t> slots(nnz, -7);
      tt_keras::WorkspaceBuffer memory(tt_keras::FindCacheSlotsWorkspaceBytes(size, nnz));
      const int64_t hits = tt_keras::FindCacheSlots(cache_ids.data(), size, ids.data(), nnz,
                                                    slots.data(), memory.get(), pfor);
      int64_t want_hits = 0;
      for (int64_t i = 0; i < nnz; ++i) {
        const auto at = std::find(cache_ids.begin(), cache_ids.end(), ids[i]);
        const int32_t want =
            at == cache_ids.end() ? -1 : static_cast<int32_t>(at - cache_ids.begin());
        CHECK_EQ(slots[i], want);
        want_hits += want >= 0;
      }
      CHECK_EQ(hits, want_hits);
    }
  }
}

TEST(RanksOneToSixtyFour) {
  std::mt19937_64 rng(4);
  ThreadPool pool(2);
  const auto pfor = pool.parallel_for();
  for (int64_t rank : {1, 2, 3, 5, 7, 8, 9, 15, 16, 24, 31, 32, 33, 48, 63, 64}) {
    const Table table = MakeTable({6, 5, 7}, {2, 2, 4}, {1, rank, rank, 1}, 0, &rng);
    tt_test::ScopedContext context(table.Describe());
    const Batch batch = MakeBatch(table.num_rows, 6, 5, true, &rng);
    CheckPlain<int64_t>(table, batch, Combiner::kSum, pfor, &rng);
    CheckCached<int64_t>(table, batch, Combiner::kMean, MakeCacheIds(table, batch, 3), pfor, &rng);
  }
  for (int64_t rank : {1, 8, 64}) {
    const Table two = MakeTable({9, 8}, {4, 4}, {1, rank, 1}, 0, &rng);
    const Table four = MakeTable({3, 3, 4, 2}, {2, 1, 2, 2}, {1, rank, rank, rank, 1}, 0, &rng);
    for (const Table* table : {&two, &four}) {
      tt_test::ScopedContext context(table->Describe());
      const Batch batch = MakeBatch(table->num_rows, 5, 5, false, &rng);
      CheckPlain<int32_t>(*table, batch, Combiner::kSqrtn, pfor, &rng);
    }
  }
}

TEST(EmptyBatchAndEmptyBags) {
  std::mt19937_64 rng(5);
  ThreadPool pool(2);
  const auto pfor = pool.parallel_for();
  for (const Table& table : PathTables(&rng)) {
    tt_test::ScopedContext context(table.Describe());
    Batch empty;
    empty.splits = {0, 0, 0, 0};  // three bags, no ids
    for (Combiner combiner : kCombiners) {
      CheckPlain<int64_t>(table, empty, combiner, pfor, &rng);
      CheckCached<int64_t>(table, empty, combiner, MakeCacheIds(table, empty, 0), pfor, &rng);
    }
    // Empty bags between full ones, and a bag whose weights sum to zero (mean: no norm).
    Batch gaps;
    gaps.ids = {1, 2, 2, 3 % table.num_rows, 1};
    gaps.splits = {0, 0, 2, 2, 4, 5, 5};
    gaps.weights = {1.f, 2.f, 1.5f, -1.5f, 0.5f};
    for (Combiner combiner : {Combiner::kSum, Combiner::kMean, Combiner::kSqrtn}) {
      CheckPlain<int64_t>(table, gaps, combiner, pfor, &rng);
      CheckCached<int32_t>(table, gaps, combiner, MakeCacheIds(table, gaps, 1), pfor, &rng);
    }
  }
}

// A batch big enough for every parallel loop to split, run on 1 and on 3 threads: the
// block boundaries and summation orders do not depend on the thread count, so neither do
// the results, to the last bit.
TEST(ResultsDoNotDependOnTheThreadCount) {
  std::mt19937_64 rng(6);
  const Table table = MakeTable({20, 30, 40}, {2, 2, 4}, {1, 32, 32, 1}, 0, &rng);
  const Batch batch = MakeBatch(table.num_rows, 800, 40, true, &rng);
  const TypedLookup<int64_t> typed = MakeLookup<int64_t>(table, batch, Combiner::kMean);
  const Lookup<int64_t>& in = typed.lookup;
  const std::vector<float> grad = OutputGradient(in.out_rows() * table.dims.dim, &rng);
  std::vector<std::vector<float>> outputs, grads;
  for (int threads : {1, 3}) {
    ThreadPool pool(threads);
    const auto pfor = pool.parallel_for();
    std::vector<float> out(in.out_rows() * table.dims.dim);
    Residuals residuals;
    tt_keras::standalone::PlainForward(in, out.data(), &residuals, pfor);
    auto core_grads = UnwrittenLike(table.cores);
    auto ptrs = Pointers(&core_grads);
    CHECK_EQ(tt_keras::standalone::PlainBackward(in, grad.data(), &residuals, ptrs.data(), pfor),
             std::string());
    outputs.push_back(out);
    std::vector<float> flat;
    for (const auto& g : core_grads) flat.insert(flat.end(), g.begin(), g.end());
    grads.push_back(flat);
  }
  CHECK(outputs[0] == outputs[1]);
  CHECK(grads[0] == grads[1]);
  ThreadPool pool(3);
  CheckPlain<int64_t>(table, batch, Combiner::kMean, pool.parallel_for(), &rng);
}

TEST(BadIdsSplitsAndCacheIdsAreReportedWithTheirValues) {
  const std::vector<int64_t> ids = {3, 99, -1, 100};
  CHECK_EQ(tt_keras::ValidateIds(ids.data(), 2, int64_t{100}), std::string());
  CHECK_EQ(tt_keras::ValidateIds(ids.data(), 3, int64_t{100}),
           std::string("indices[2] = -1 is out of range [0, 100)"));
  const std::vector<int32_t> ids32 = {0, 10131227};
  CHECK_EQ(tt_keras::ValidateIds(ids32.data(), 2, int64_t{10131227}),
           std::string("indices[1] = 10131227 is out of range [0, 10131227)"));

  const std::vector<int64_t> good = {0, 2, 2, 5};
  CHECK_EQ(tt_keras::ValidateRowSplits(good.data(), 3, 5), std::string());
  const std::vector<int64_t> start = {1, 2, 5};
  CHECK_EQ(tt_keras::ValidateRowSplits(start.data(), 2, 5),
           std::string("row_splits[0] = 1 must be 0"));
  const std::vector<int64_t> down = {0, 3, 2, 5};
  CHECK_EQ(tt_keras::ValidateRowSplits(down.data(), 3, 5),
           std::string("row_splits must not decrease: row_splits[2] = 2 < row_splits[1] = 3"));
  CHECK_EQ(tt_keras::ValidateRowSplits(good.data(), 3, 6),
           std::string("row_splits[-1] = 5 must equal the number of indices, 6"));

  const int64_t empty = std::numeric_limits<int64_t>::max();
  const std::vector<int64_t> cache = {1, 4, 9, empty, empty};
  CHECK_EQ(tt_keras::ValidateCacheIds(cache.data(), 5, 10), std::string());
  const std::vector<int64_t> negative = {1, -4};
  CHECK_EQ(tt_keras::ValidateCacheIds(negative.data(), 2, 10),
           std::string("cache_ids[1] = -4 is negative (empty slots hold ids >= num_rows, e.g. "
                       "INT64_MAX)"));
  const std::vector<int64_t> unsorted = {1, 7, 4};
  CHECK_EQ(tt_keras::ValidateCacheIds(unsorted.data(), 3, 10),
           std::string("cache_ids must be sorted: cache_ids[2] = 4 < cache_ids[1] = 7"));
  const std::vector<int64_t> twice = {1, 4, 4};
  CHECK_EQ(tt_keras::ValidateCacheIds(twice.data(), 3, 10),
           std::string("cache_ids[1] and cache_ids[2] both hold row 4"));
}

TEST(BadShapesAreReported) {
  TTDims d;
  d.k = 5;
  CHECK_EQ(d.Finalize(), std::string("expected 2 to 4 cores, got 5"));
  d.k = 2;
  d.p[0] = 3;
  d.p[1] = 4;
  d.q[0] = d.q[1] = 2;
  d.r[0] = 1;
  d.r[1] = 4;
  d.r[2] = 2;
  CHECK_EQ(d.Finalize(), std::string("the first and last TT ranks must be 1"));
  d.r[2] = 1;
  d.q[1] = 0;
  CHECK_EQ(d.Finalize(), std::string("core 1 has an empty dimension"));
  d.q[1] = 2;
  CHECK_EQ(d.Finalize(), std::string());
  CHECK_EQ(d.padded_rows, 12);
  CHECK_EQ(d.dim, 4);
}

// A residual plan from anywhere is checked before the backward indexes with it.
TEST(CorruptResidualPlansAreRejected) {
  std::mt19937_64 rng(7);
  ThreadPool pool(1);
  const auto pfor = pool.parallel_for();
  const Table table = MakeTable({5, 6, 7}, {2, 2, 4}, {1, 8, 8, 1}, 0, &rng);
  const Batch batch = MakeBatch(table.num_rows, 10, 8, false, &rng);
  const TypedLookup<int64_t> typed = MakeLookup<int64_t>(table, batch, Combiner::kSum);
  const Lookup<int64_t>& in = typed.lookup;
  std::vector<float> out(in.out_rows() * table.dims.dim);
  Residuals residuals;
  tt_keras::standalone::PlainForward(in, out.data(), &residuals, pfor);
  const std::vector<float> grad(out.size(), 1.f);
  auto core_grads = UnwrittenLike(table.cores);
  auto ptrs = Pointers(&core_grads);
  const int k = table.dims.k;
  const int64_t nnz = in.nnz;
  struct Corruption {
    int64_t index;
    int64_t value;
    const char* error;
  };
  const int64_t n1 = residuals.plan[2], n2 = residuals.plan[3], n3 = residuals.plan[4];
  const int64_t keys1 = 2 + k + nnz + n3 + 1;  // where level 1's keys start
  for (const Corruption& c : std::vector<Corruption>{
           {0, 2, "residual_plan does not belong to these cores and indices"},
           {1, nnz + 1, "residual_plan does not belong to these cores and indices"},
           {2, -1, "residual_plan has a bad node count"},
           {4, nnz + 1, "residual_plan has a bad node count"},
           {2 + k, nnz, "residual_plan has an out-of-range position"},
           {keys1, table.dims.p[0], "residual_plan has a bad key"},
           {keys1 + n1, n2 + 1, "residual_plan has a bad child range"},
       }) {
    Residuals bad = residuals;
    bad.plan[c.index] = c.value;
    CHECK_EQ(tt_keras::standalone::PlainBackward(in, grad.data(), &bad, ptrs.data(), pfor),
             std::string(c.error));
  }
  Residuals short_plan = residuals;
  short_plan.plan.pop_back();
  CHECK_EQ(tt_keras::standalone::PlainBackward(in, grad.data(), &short_plan, ptrs.data(), pfor),
           std::string("residual_plan has the wrong size"));
}

TEST(WorkspaceArraysAreAlignedAndScratchIsGivenBack) {
  tt_keras::WorkspaceBuffer buffer(1000);
  tt_keras::Workspace* ws = buffer.get();
  CHECK_EQ(tt_keras::ArrayBytes<float>(1), size_t{64});
  CHECK_EQ(tt_keras::ArrayBytes<double>(9), size_t{128});
  CHECK_EQ(tt_keras::ArrayBytes<int64_t>(0), size_t{0});
  char* first = ws->Take<char>(3);
  CHECK_EQ(reinterpret_cast<uintptr_t>(first) % 64, uintptr_t{0});
  {
    tt_keras::ScratchScope scratch(ws);
    float* f = ws->Take<float>(100);
    CHECK_EQ(reinterpret_cast<uintptr_t>(f) % 64, uintptr_t{0});
    CHECK_EQ(ws->used(), size_t{64 + 448});
  }
  CHECK_EQ(ws->used(), size_t{64});
  CHECK_EQ(ws->peak(), size_t{64 + 448});
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<tt_keras::Isa> isas = tt_keras::SupportedIsas();
  if (argc > 1 && std::strcmp(argv[1], "--list-isas") == 0) {
    for (size_t i = 0; i < isas.size(); ++i) {
      std::printf("%s%s", i ? " " : "", tt_keras::IsaName(isas[i]));
    }
    std::printf("\n");
    return 0;
  }
  const std::string filter = argc > 1 ? argv[1] : "";
  int failed = 0;
  for (tt_keras::Isa isa : isas) {
    CHECK(tt_keras::ForceIsa(isa));
    std::printf("== kernels: %s\n", tt_keras::IsaName(isa));
    failed += tt_test::RunAll(filter);
  }
  std::printf(failed ? "%d test(s) FAILED\n" : "all C++ tests passed\n", failed);
  return failed ? 1 : 0;
}
