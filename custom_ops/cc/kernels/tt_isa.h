// Which instruction set the TT core's kernels run with (framework-free).
//
// The library's baseline is what the compiler targets (-march=x86-64-v2 by default, so one
// build runs on any x86-64 CPU of the last 15 years). tt_core_dispatch.cc compiles the hot
// kernels once more for each level above the baseline, x86-64-v3 (AVX2, FMA) and
// x86-64-v4 (AVX-512), and picks, once per process, the highest one the CPU supports. A
// build tuned for its machine (-march=native) has nothing above its baseline to dispatch to.
//
// The environment variable TT_KERAS_ISA (x86-64-v2, x86-64-v3 or x86-64-v4) caps the choice,
// to compare the variants or to avoid one; a level the CPU lacks is never chosen.
#ifndef TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_ISA_H_
#define TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_ISA_H_

#include <string>
#include <vector>

namespace tt_keras {

enum class Isa {
  kBaseline = 0,  // what the library was compiled for
  kX86_64_V3 = 1,
  kX86_64_V4 = 2,
};

// "baseline", "x86-64-v3" or "x86-64-v4".
const char* IsaName(Isa isa);

// Reads "x86-64-v2" (or "baseline"), "x86-64-v3" or "x86-64-v4"; false for anything else.
bool ParseIsa(const std::string& name, Isa* isa);

// The variants compiled into this build that this CPU can run, lowest first.
std::vector<Isa> SupportedIsas();

// The variant the kernels run with now.
Isa ActiveIsa();

// Switches the kernels to `isa` (tests and benchmarks); false, and nothing changed, when
// it is not among SupportedIsas(). Not to be called while kernels run.
bool ForceIsa(Isa isa);

}  // namespace tt_keras

#endif  // TT_KERAS_CUSTOM_OPS_CC_KERNELS_TT_ISA_H_
