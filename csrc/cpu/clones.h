// GOLF_ROW_CLONES: a CPU kernel's hot loop built twice, for AVX2 and for baseline x86-64, the one to run picked at
// load time (GCC/Clang function multi-versioning). Empty elsewhere.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GOLF_ROW_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GOLF_ROW_CLONES
#endif
