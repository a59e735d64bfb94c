// The TT core's kernels (tt_core_kernels.h) once per instruction set, and the public entry
// points of tt_core.h that route each call to the variant the CPU runs (tt_isa.h).
//
// The variants are whole copies of the kernels compiled under `#pragma GCC target`, rather
// than function clones of a few microkernels: the hot loops are lambdas handed to the
// thread pool, which function attributes do not reach, and the microkernels must be
// inlined into them to keep their accumulators in registers. Each copy lives in its own
// namespace, so nothing of one variant is shared with another (see tt_core_kernels.h).
//
// Headers the kernels use are all included here first, at the baseline: included again
// inside a variant's region they are then no-ops, and their inline functions stay
// baseline code.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tt_core.h"
#include "tt_core_internal.h"
#include "tt_isa.h"

// The baseline: whatever the compiler targets (-march=x86-64-v2 by default, or -march=native).
#define TT_ISA_NAMESPACE isa_baseline
#if defined(__AVX__)
#define TT_ISA_HAS_AVX 1
#else
#define TT_ISA_HAS_AVX 0
#endif
#include "tt_core_kernels.h"  // NOLINT: no include guard, see there
#undef TT_ISA_HAS_AVX
#undef TT_ISA_NAMESPACE

// Variants above the baseline, where there is one to add (not for -march=native on an
// AVX-512 machine, say). Only the ISA flags change, never arch or tune: the inliner refuses
// to inline a baseline function (std::min, TTDims::PartialSize) into a variant of another
// arch or tune, and it must.
#if defined(__x86_64__) && !(defined(__AVX2__) && defined(__FMA__))
#define TT_DISPATCH_X86_64_V3 1
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,lzcnt,movbe,f16c,popcnt")
#define TT_ISA_NAMESPACE isa_x86_64_v3
#define TT_ISA_HAS_AVX 1
#include "tt_core_kernels.h"  // NOLINT
#undef TT_ISA_HAS_AVX
#undef TT_ISA_NAMESPACE
#pragma GCC pop_options
#else
#define TT_DISPATCH_X86_64_V3 0
#endif

#if defined(__x86_64__) && !defined(__AVX512F__)
#define TT_DISPATCH_X86_64_V4 1
#pragma GCC push_options
#pragma GCC target( \
    "avx512f,avx512bw,avx512cd,avx512dq,avx512vl,avx2,fma,bmi,bmi2,lzcnt,movbe,f16c,popcnt")
#define TT_ISA_NAMESPACE isa_x86_64_v4
#define TT_ISA_HAS_AVX 1
#include "tt_core_kernels.h"  // NOLINT
#undef TT_ISA_HAS_AVX
#undef TT_ISA_NAMESPACE
#pragma GCC pop_options
#else
#define TT_DISPATCH_X86_64_V4 0
#endif

namespace tt_keras {

namespace {

// Whether this CPU (and its OS, which must save the wider registers) runs `isa`.
bool CpuRuns(Isa isa) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kBaseline:
      return true;
    case Isa::kX86_64_V3:
      return TT_DISPATCH_X86_64_V3 && __builtin_cpu_supports("x86-64-v3");
    case Isa::kX86_64_V4:
      return TT_DISPATCH_X86_64_V4 && __builtin_cpu_supports("x86-64-v4");
  }
  return false;
#else
  return isa == Isa::kBaseline;
#endif
}

// The highest supported variant, capped by TT_KERAS_ISA when that names one.
Isa DefaultIsa() {
  const Isa best = SupportedIsas().back();
  const char* cap = std::getenv("TT_KERAS_ISA");
  if (cap == nullptr || *cap == '\0') return best;
  Isa want;
  if (!ParseIsa(cap, &want)) {
    std::fprintf(stderr,
                 "tt_keras: TT_KERAS_ISA=%s is not one of x86-64-v2, x86-64-v3, x86-64-v4; "
                 "ignored\n",
                 cap);
    return best;
  }
  return std::min(best, want);
}

std::atomic<int> g_isa{-1};

Isa Current() {
  int isa = g_isa.load(std::memory_order_relaxed);
  if (isa < 0) {
    isa = static_cast<int>(DefaultIsa());
    g_isa.store(isa, std::memory_order_relaxed);
  }
  return static_cast<Isa>(isa);
}

}  // namespace

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kBaseline:
      return "baseline";
    case Isa::kX86_64_V3:
      return "x86-64-v3";
    case Isa::kX86_64_V4:
      return "x86-64-v4";
  }
  return "unknown";
}

bool ParseIsa(const std::string& name, Isa* isa) {
  for (Isa candidate : {Isa::kBaseline, Isa::kX86_64_V3, Isa::kX86_64_V4}) {
    if (name == IsaName(candidate)) {
      *isa = candidate;
      return true;
    }
  }
  if (name != "x86-64-v2") return false;
  *isa = Isa::kBaseline;
  return true;
}

std::vector<Isa> SupportedIsas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::kBaseline, Isa::kX86_64_V3, Isa::kX86_64_V4}) {
    if (CpuRuns(isa)) out.push_back(isa);
  }
  return out;
}

Isa ActiveIsa() { return Current(); }

bool ForceIsa(Isa isa) {
  if (!CpuRuns(isa)) return false;
  g_isa.store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

// Calls fn of the active variant. A variant missing from the build is never active.
#if TT_DISPATCH_X86_64_V4
#define TT_CASE_V4(fn, ...) \
  case Isa::kX86_64_V4:     \
    return isa_x86_64_v4::fn(__VA_ARGS__);
#else
#define TT_CASE_V4(fn, ...)
#endif
#if TT_DISPATCH_X86_64_V3
#define TT_CASE_V3(fn, ...) \
  case Isa::kX86_64_V3:     \
    return isa_x86_64_v3::fn(__VA_ARGS__);
#else
#define TT_CASE_V3(fn, ...)
#endif
#define TT_DISPATCH(fn, ...)                \
  switch (Current()) {                      \
    TT_CASE_V4(fn, __VA_ARGS__)             \
    TT_CASE_V3(fn, __VA_ARGS__)             \
    default:                                \
      return isa_baseline::fn(__VA_ARGS__); \
  }

template <typename Tid>
void BuildPlan(const TTDims& dims, const Tid* ids, int64_t nnz, Workspace* ws, LookupPlan* plan,
               const ParallelFor& pfor) {
  TT_DISPATCH(BuildPlan<Tid>, dims, ids, nnz, ws, plan, pfor)
}

template void BuildPlan<int32_t>(const TTDims&, const int32_t*, int64_t, Workspace*, LookupPlan*,
                                 const ParallelFor&);
template void BuildPlan<int64_t>(const TTDims&, const int64_t*, int64_t, Workspace*, LookupPlan*,
                                 const ParallelFor&);

void PositionScales(Combiner combiner, const int64_t* row_splits, int64_t num_bags,
                    const float* weights, int64_t nnz, float* scale, int64_t* bag_of_pos,
                    const ParallelFor& pfor) {
  TT_DISPATCH(PositionScales, combiner, row_splits, num_bags, weights, nnz, scale, bag_of_pos, pfor)
}

void ComputePartials(const TTDims& dims, const float* const* cores, const LookupPlan& plan,
                     float* partials, Workspace* ws, const ParallelFor& pfor) {
  TT_DISPATCH(ComputePartials, dims, cores, plan, partials, ws, pfor)
}

void ComputeRows(const TTDims& dims, const float* const* cores, const LookupPlan& plan,
                 float* partials, float* rows, Workspace* ws, const ParallelFor& pfor) {
  TT_DISPATCH(ComputeRows, dims, cores, plan, partials, rows, ws, pfor)
}

void PoolRowPointers(int64_t dim, const float* const* row_of_pos, Combiner combiner,
                     const int64_t* row_splits, int64_t num_bags, const float* weights, int64_t nnz,
                     float* out, const ParallelFor& pfor) {
  TT_DISPATCH(PoolRowPointers, dim, row_of_pos, combiner, row_splits, num_bags, weights, nnz, out,
              pfor)
}

void PoolRows(const TTDims& dims, const LookupPlan& plan, Combiner combiner,
              const int64_t* row_splits, int64_t num_bags, const float* weights, int64_t nnz,
              const float* rows, float* out, Workspace* ws, const ParallelFor& pfor) {
  TT_DISPATCH(PoolRows, dims, plan, combiner, row_splits, num_bags, weights, nnz, rows, out, ws,
              pfor)
}

void BackpropCores(const TTDims& dims, const float* const* cores, const LookupPlan& plan,
                   const float* leaf_grads, float* const* core_grads, Workspace* ws,
                   const ParallelFor& pfor, const float* residual_partials) {
  TT_DISPATCH(BackpropCores, dims, cores, plan, leaf_grads, core_grads, ws, pfor, residual_partials)
}

void SumGradRows(int64_t dim, int64_t num_groups, const int64_t* group_begin,
                 const int64_t* positions, const float* grad, const float* scale,
                 const int64_t* bag_of_pos, float* out, const ParallelFor& pfor) {
  TT_DISPATCH(SumGradRows, dim, num_groups, group_begin, positions, grad, scale, bag_of_pos, out,
              pfor)
}

void AggregateLeafGrads(const TTDims& dims, const LookupPlan& plan, const float* grad,
                        const float* scale, const int64_t* bag_of_pos, float* leaf_grads,
                        const ParallelFor& pfor) {
  TT_DISPATCH(AggregateLeafGrads, dims, plan, grad, scale, bag_of_pos, leaf_grads, pfor)
}

}  // namespace tt_keras
