// Profiling driver of the TF-free TT core: the standard workload (the 10,131,227 x 16
// Criteo table, row factors (200, 220, 250), column factors (2, 2, 4), rank 32; 2048 bags
// of 26 Zipf(1.1) ids), forward and backward, plain and through a cache of the 0.1% most
// frequent rows, run as the ops run them (tt_standalone.h). Prints the median and the
// minimum ms of each, and the median CPU time of the calling thread (see Time).
//
//   make -C custom_ops driver
//   custom_ops/build/tt_driver [--reps=N] [--threads=N] [--rank=N] [--bags=N]
//       [--bag_size=N] [--zipf=S] [--cache_fraction=F] [--isa=NAME] [--only=MODE]
//   perf record -g custom_ops/build/tt_driver --reps=200 --only=plain-bwd
//   valgrind --tool=callgrind custom_ops/build/tt_driver --reps=1 --threads=1
//
// --only runs one of plain-fwd, plain-bwd, cached-fwd, cached-bwd (so that a profile shows
// one pass); --isa caps the kernels' instruction set (tt_isa.h).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tt_core.h"
#include "tt_isa.h"
#include "tt_standalone.h"

namespace {

struct Options {
  int reps = 30;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int64_t rank = 32;
  int64_t bags = 2048;
  int64_t bag_size = 26;
  double zipf = 1.1;
  double cache_fraction = 0.001;
  std::string isa;
  std::string only;
};

constexpr int64_t kNumRows = 10131227;

bool ParseFlag(const char* arg, const char* name, std::string* value) {
  const size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0 || arg[n] != '=') return false;
  *value = arg + n + 1;
  return true;
}

bool Parse(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    std::string v;
    if (ParseFlag(argv[i], "--reps", &v)) o->reps = std::atoi(v.c_str());
    else if (ParseFlag(argv[i], "--threads", &v)) o->threads = std::atoi(v.c_str());
    else if (ParseFlag(argv[i], "--rank", &v)) o->rank = std::atoll(v.c_str());
    else if (ParseFlag(argv[i], "--bags", &v)) o->bags = std::atoll(v.c_str());
    else if (ParseFlag(argv[i], "--bag_size", &v)) o->bag_size = std::atoll(v.c_str());
    else if (ParseFlag(argv[i], "--zipf", &v)) o->zipf = std::atof(v.c_str());
    else if (ParseFlag(argv[i], "--cache_fraction", &v)) o->cache_fraction = std::atof(v.c_str());
    else if (ParseFlag(argv[i], "--isa", &v)) o->isa = v;
    else if (ParseFlag(argv[i], "--only", &v)) o->only = v;
    else {
      std::fprintf(stderr, "unknown argument %s (see the top of tt_driver.cc)\n", argv[i]);
      return false;
    }
  }
  if (o->reps < 1 || o->threads < 1 || o->rank < 1 || o->bags < 1 || o->bag_size < 1 ||
      o->cache_fraction < 0 || o->cache_fraction > 1) {
    std::fprintf(stderr,
                 "reps, threads, rank, bags, bag_size must be >= 1 and "
                 "cache_fraction in [0, 1]\n");
    return false;
  }
  return true;
}

// Ids with P(rank k) proportional to k^-exponent, id k the k-th most frequent row (the
// benchmark's "rank" order, benchmarks/lookup.py).
std::vector<int64_t> ZipfIds(int64_t num_rows, int64_t size, double exponent, uint64_t seed) {
  std::vector<double> cdf(num_rows);
  double sum = 0.0;
  for (int64_t k = 0; k < num_rows; ++k) {
    cdf[k] = sum += std::pow(static_cast<double>(k + 1), -exponent);
  }
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, sum);
  std::vector<int64_t> ids(size);
  for (int64_t& id : ids) id = std::lower_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin();
  for (int64_t& id : ids) id = std::min(id, num_rows - 1);
  return ids;
}

struct Timing {
  double median_ms, min_ms, median_cpu_ms;
};

double ThreadCpuMs() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return 1e3 * t.tv_sec + 1e-6 * t.tv_nsec;
}

// Wall time of `reps` calls after a warm-up call (median and minimum), and the calling
// thread's CPU time: with --threads=1 that is all of the work, without the time the thread
// waited for the CPU, which is what a machine shared with other jobs still measures well.
Timing Time(int reps, const std::function<void()>& fn) {
  fn();  // warm caches and page in the buffers
  std::vector<double> wall, cpu;
  for (int i = 0; i < reps; ++i) {
    const double cpu_start = ThreadCpuMs();
    const auto start = std::chrono::steady_clock::now();
    fn();
    const std::chrono::duration<double, std::milli> elapsed =
        std::chrono::steady_clock::now() - start;
    wall.push_back(elapsed.count());
    cpu.push_back(ThreadCpuMs() - cpu_start);
  }
  std::sort(wall.begin(), wall.end());
  std::sort(cpu.begin(), cpu.end());
  return {wall[wall.size() / 2], wall.front(), cpu[cpu.size() / 2]};
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!Parse(argc, argv, &o)) return 2;
  tt_keras::Isa isa;
  if (!o.isa.empty() && !(tt_keras::ParseIsa(o.isa, &isa) && tt_keras::ForceIsa(isa))) {
    std::fprintf(stderr, "--isa=%s: not a variant this build and CPU run\n", o.isa.c_str());
    return 2;
  }

  tt_keras::TTDims dims;
  dims.k = 3;
  const int64_t p[3] = {200, 220, 250}, q[3] = {2, 2, 4};
  for (int t = 0; t < 3; ++t) {
    dims.p[t] = p[t];
    dims.q[t] = q[t];
  }
  dims.r[0] = dims.r[3] = 1;
  dims.r[1] = dims.r[2] = o.rank;
  const std::string error = dims.Finalize();
  if (!error.empty()) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return 2;
  }
  std::mt19937_64 rng(0);
  std::normal_distribution<float> normal(0.f, 0.1f);
  std::vector<std::vector<float>> cores;
  std::vector<const float*> core_ptrs;
  for (int t = 0; t < 3; ++t) {
    cores.emplace_back(dims.p[t] * dims.CoreSliceSize(t));
    for (float& x : cores.back()) x = normal(rng);
    core_ptrs.push_back(cores.back().data());
  }
  const int64_t nnz = o.bags * o.bag_size;
  const std::vector<int64_t> ids = ZipfIds(kNumRows, nnz, o.zipf, 1);
  std::vector<int64_t> splits(o.bags + 1);
  for (int64_t b = 0; b <= o.bags; ++b) splits[b] = b * o.bag_size;

  tt_keras::standalone::Lookup<int64_t> in;
  in.dims = dims;
  in.cores = core_ptrs.data();
  in.ids = ids.data();
  in.nnz = nnz;
  in.row_splits = splits.data();
  in.num_bags = o.bags;
  in.combiner = tt_keras::Combiner::kSum;

  // The cache holds the most frequent rows: in rank order, ids 0 .. size - 1.
  const int64_t cache_size =
      std::max<int64_t>(1, static_cast<int64_t>(std::llround(o.cache_fraction * kNumRows)));
  std::vector<int64_t> cache_ids(cache_size);
  for (int64_t s = 0; s < cache_size; ++s) cache_ids[s] = s;
  std::vector<float> cache_rows(cache_size * dims.dim);
  for (float& x : cache_rows) x = normal(rng);
  const tt_keras::standalone::Cache cache{cache_ids.data(), cache_rows.data(), cache_size};

  std::vector<int64_t> distinct(ids);
  std::sort(distinct.begin(), distinct.end());
  const int64_t num_distinct = std::unique(distinct.begin(), distinct.end()) - distinct.begin();
  int64_t cached = 0;
  for (int64_t id : ids) cached += id < cache_size;
  std::printf(
      "%lld bags x %lld Zipf(%.2f) ids over %lld rows: %lld distinct; rank %lld; "
      "%d threads; kernels %s; cache of %lld rows holds %.1f%% of the ids\n",
      static_cast<long long>(o.bags), static_cast<long long>(o.bag_size), o.zipf,
      static_cast<long long>(kNumRows), static_cast<long long>(num_distinct),
      static_cast<long long>(o.rank), o.threads, tt_keras::IsaName(tt_keras::ActiveIsa()),
      static_cast<long long>(cache_size), 100.0 * cached / nnz);

  tt_keras::standalone::ThreadPool pool(o.threads);
  const tt_keras::ParallelFor pfor = pool.parallel_for();
  std::vector<float> out(o.bags * dims.dim);
  std::vector<std::vector<float>> core_grads;
  std::vector<float*> grad_ptrs;
  for (const auto& c : cores) {
    core_grads.emplace_back(c.size());
    grad_ptrs.push_back(core_grads.back().data());
  }
  tt_keras::standalone::Residuals plain, with_cache;
  std::vector<int64_t> hit_slots;
  std::vector<float> hit_values;
  // The gradient of sum(out^2), as benchmarks/lookup.py takes it.
  std::vector<float> grad(out.size());
  auto plain_fwd = [&] { tt_keras::standalone::PlainForward(in, out.data(), &plain, pfor); };
  auto cached_fwd = [&] {
    tt_keras::standalone::CachedForward(in, cache, out.data(), &with_cache, pfor);
  };
  auto plain_bwd = [&] {
    tt_keras::standalone::PlainBackward(in, grad.data(), &plain, grad_ptrs.data(), pfor);
  };
  auto cached_bwd = [&] {
    tt_keras::standalone::CachedBackward(in, cache, grad.data(), &with_cache, grad_ptrs.data(),
                                         &hit_slots, &hit_values, pfor);
  };
  plain_fwd();
  for (size_t i = 0; i < out.size(); ++i) grad[i] = 2.f * out[i];
  cached_fwd();
  const std::pair<const char*, std::function<void()>> modes[] = {{"plain-fwd", plain_fwd},
                                                                 {"plain-bwd", plain_bwd},
                                                                 {"cached-fwd", cached_fwd},
                                                                 {"cached-bwd", cached_bwd}};
  bool ran = false;
  for (const auto& [name, fn] : modes) {
    if (!o.only.empty() && o.only != name) continue;
    const Timing t = Time(o.reps, fn);
    std::printf("%-11s %8.3f ms median, %8.3f ms min, %8.3f ms thread CPU (%d calls)\n", name,
                t.median_ms, t.min_ms, t.median_cpu_ms, o.reps);
    ran = true;
  }
  if (!ran) {
    std::fprintf(stderr, "--only=%s: not one of plain-fwd, plain-bwd, cached-fwd, cached-bwd\n",
                 o.only.c_str());
    return 2;
  }
  return 0;
}
