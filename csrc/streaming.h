// What the dominance and upsample_dominance operators share: the streaming
// state (merge with an earlier chunk of classes), the target, the output
// planes, and their raw pointers for the kernels.
#pragma once

#include <cstdint>

namespace clear_native {

// Base of DominanceArgs and UpsampleDominanceArgs.
struct StreamingArgs {
  // Global index of this chunk's first class (streaming over class chunks).
  int64_t class_offset = 0;
  // (N,) int64 target classes, contiguous; null when no target.
  const int64_t* target = nullptr;
  // Previous state (contiguous (4, N, *spatial) accumulation-type values and
  // (3, N, *spatial) int64 indices); null for a first call.
  const void* state_values = nullptr;
  const int64_t* state_indices = nullptr;
  // Outputs, same layout as the state.
  void* out_values = nullptr;
  int64_t* out_indices = nullptr;
  // Every class of this chunk is above every class already in the state (see
  // dominance_element.h: kOrdered).
  bool ordered = true;
  bool runner_up = true;
  bool weakest = true;
};

}  // namespace clear_native
