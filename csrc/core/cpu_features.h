// CPU feature detection and the SIMD level kernels dispatch on, chosen at run time so one wheel serves
// every CPU of its architecture. ISA-specific code lives in its own translation units (*_avx2.cpp,
// *_avx512.cpp, *_neon.cpp) and namespaces, so no AVX-512 instruction reaches code a baseline CPU runs.
#pragma once
#include <string>
#include <vector>

namespace selfext {

enum class SimdLevel : int {
  kScalar = 0,
  kAVX2 = 1,        // AVX2 + FMA + F16C
  kAVX512 = 2,      // AVX-512 F/BW/DQ/VL
  kAVX512VNNI = 3,  // plus VNNI (vpdpbusd)
  kAMX = 4,         // plus AMX-TILE + AMX-INT8 (tile int8 products for prefill), with the OS's permission
  kNEON = 10,       // aarch64 Advanced SIMD (+ dotprod when present)
};

struct CpuFeatures {
  std::string brand;
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false;
  bool avx512vnni = false, avx512bf16 = false;
  bool amx_tile = false, amx_int8 = false;  // CPU has them and the OS saves the tile state (XCR0)
  bool neon = false, dotprod = false;
};

const CpuFeatures& cpu_features();

const char* simd_level_name(SimdLevel level);
// Every level this build knows, and whether this CPU runs it.
std::vector<SimdLevel> known_simd_levels();
bool simd_level_supported(SimdLevel level);
SimdLevel best_simd_level();

// The level kernels use now: SELFEXT_SIMD at first use, else the best this CPU supports.
SimdLevel simd_level();
// Forces a level by name ("scalar", "avx2", "avx512", "avx512_vnni", "amx", "neon"); throws BackendError if this
// CPU or build lacks it, ArgumentError for an unknown name.
void set_simd_level(const std::string& name);

}  // namespace selfext
