// Run-time flags -> compile-time template arguments, shared by the CPU and CUDA
// kernels of the dominance-style operators (host code only).
#pragma once

#include <type_traits>

namespace clear_native {

// Calls fn(ordered, runner_up, weakest) with each flag as a std::bool_constant,
// so that fn can instantiate its kernel for exactly the combination asked for.
template <typename Fn>
inline void dispatch_dominance_flags(bool ordered, bool runner_up, bool weakest, Fn&& fn) {
  auto with_ordered = [&](auto o) {
    if (runner_up && weakest) fn(o, std::true_type{}, std::true_type{});
    else if (runner_up) fn(o, std::true_type{}, std::false_type{});
    else if (weakest) fn(o, std::false_type{}, std::true_type{});
    else fn(o, std::false_type{}, std::false_type{});
  };
  if (ordered) with_ordered(std::true_type{});
  else with_ordered(std::false_type{});
}

}  // namespace clear_native
