// A tiny test harness for the C++ unit tests of the TT core: TEST registers a function,
// CHECK* record failures with file, line and values, RunAll runs what matches a filter.
#ifndef TT_KERAS_TESTS_CC_TT_TEST_H_
#define TT_KERAS_TESTS_CC_TT_TEST_H_

#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

namespace tt_test {

struct Test {
  const char* name;
  void (*fn)();
};

inline std::vector<Test>& Registry() {
  static std::vector<Test> tests;
  return tests;
}

inline bool Register(const char* name, void (*fn)()) {
  Registry().push_back({name, fn});
  return true;
}

// Failures of the test now running (reset per test); each is printed as it happens.
inline int& Failures() {
  static int failures = 0;
  return failures;
}

// What the failing check was looking at (a shape, a combiner); set by ScopedContext.
inline std::vector<std::string>& Context() {
  static std::vector<std::string> context;
  return context;
}

inline void Fail(const char* file, int line, const std::string& message) {
  // Only the first few of a run are printed in full: one bad kernel fails thousands.
  if (++Failures() <= 20) {
    std::fprintf(stderr, "  FAILED %s:%d: %s\n", file, line, message.c_str());
    for (const std::string& c : Context()) std::fprintf(stderr, "    in %s\n", c.c_str());
  }
}

class ScopedContext {
 public:
  explicit ScopedContext(std::string what) { Context().push_back(std::move(what)); }
  ~ScopedContext() { Context().pop_back(); }
};

template <typename A, typename B>
std::string Describe(const char* a_text, const char* b_text, const A& a, const B& b) {
  std::ostringstream out;
  out << a_text << " == " << b_text << " (" << a << " vs " << b << ")";
  return out.str();
}

// Whether `actual` is within atol + rtol * |expected| of `expected`.
inline bool Near(double actual, double expected, double rtol, double atol) {
  return std::fabs(actual - expected) <= atol + rtol * std::fabs(expected);
}

// Runs every test whose name contains `filter`; returns the number that failed.
inline int RunAll(const std::string& filter) {
  int failed = 0;
  for (const Test& t : Registry()) {
    if (!filter.empty() && std::string(t.name).find(filter) == std::string::npos) continue;
    Failures() = 0;
    t.fn();
    std::printf("%-48s %s\n", t.name, Failures() == 0 ? "ok" : "FAILED");
    std::fflush(stdout);
    failed += Failures() > 0;
  }
  return failed;
}

}  // namespace tt_test

#define TEST(name)                                                        \
  static void name();                                                     \
  static const bool name##_registered = ::tt_test::Register(#name, name); \
  static void name()

#define CHECK(cond)                                                       \
  do {                                                                    \
    if (!(cond)) ::tt_test::Fail(__FILE__, __LINE__, "CHECK(" #cond ")"); \
  } while (0)

#define CHECK_EQ(a, b)                                                                \
  do {                                                                                \
    const auto& tt_a_ = (a);                                                          \
    const auto& tt_b_ = (b);                                                          \
    if (!(tt_a_ == tt_b_)) {                                                          \
      ::tt_test::Fail(__FILE__, __LINE__, ::tt_test::Describe(#a, #b, tt_a_, tt_b_)); \
    }                                                                                 \
  } while (0)

#endif  // TT_KERAS_TESTS_CC_TT_TEST_H_
