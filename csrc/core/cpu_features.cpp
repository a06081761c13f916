#include "cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "errors.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif
#if defined(__x86_64__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace selfext {

namespace {

#if defined(__x86_64__) || defined(_M_X64)
uint64_t read_xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(_M_X64)
  unsigned a, b, c, d;
  __cpuid(0, a, b, c, d);
  const unsigned max_leaf = a;
  __cpuid(1, a, b, c, d);
  const bool osxsave = c & (1u << 27);
  f.fma = c & (1u << 12);
  f.f16c = c & (1u << 29);
  const bool avx = c & (1u << 28);
  const uint64_t xcr0 = osxsave ? read_xcr0() : 0;
  const bool os_avx = (xcr0 & 0x6) == 0x6;             // XMM and YMM state saved by the OS
  const bool os_avx512 = (xcr0 & 0xe6) == 0xe6;        // plus opmask and ZMM state
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = avx && os_avx && (b & (1u << 5));
    f.avx512f = os_avx512 && (b & (1u << 16));
    f.avx512dq = os_avx512 && (b & (1u << 17));
    f.avx512bw = os_avx512 && (b & (1u << 30));
    f.avx512vl = os_avx512 && (b & (1u << 31));
    f.avx512vnni = os_avx512 && (c & (1u << 11));
    // AMX: CPUID.7.0:EDX bits 24 (AMX-TILE) and 25 (AMX-INT8), and XCR0 bits 17-18 (XTILECFG,
    // XTILEDATA) set by an OS that saves the tile state.
    const bool os_amx = (xcr0 & 0x60000) == 0x60000;
    f.amx_tile = os_amx && (d & (1u << 24));
    f.amx_int8 = os_amx && (d & (1u << 25));
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512bf16 = os_avx512 && (a & (1u << 5));
  }
  f.fma = f.fma && os_avx;
  f.f16c = f.f16c && os_avx;
  char brand[49] = {};
  __cpuid(0x80000000, a, b, c, d);
  if (a >= 0x80000004) {
    for (unsigned i = 0; i < 3; ++i) {
      __cpuid(0x80000002 + i, a, b, c, d);
      std::memcpy(brand + 16 * i, &a, 4);
      std::memcpy(brand + 16 * i + 4, &b, 4);
      std::memcpy(brand + 16 * i + 8, &c, 4);
      std::memcpy(brand + 16 * i + 12, &d, 4);
    }
  }
  f.brand = brand;
  while (!f.brand.empty() && f.brand.back() == ' ') f.brand.pop_back();
#elif defined(__aarch64__)
  f.neon = true;
#if defined(__linux__)
  f.dotprod = getauxval(AT_HWCAP) & (1UL << 20);  // HWCAP_ASIMDDP
#endif
  f.brand = "aarch64";
#endif
#if defined(__linux__)
  // A more telling name when /proc says one (virtual machines often report "AMD EPYC" only).
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos && f.brand.empty()) f.brand = line.substr(colon + 2);
      break;
    }
  }
#endif
  return f;
}

std::atomic<int> g_level{-1};

// Linux hands the 8 KiB tile data state to a process only when it asks (arch_prctl
// ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, since 5.16); without it the first tile instruction
// faults. Asked once; the permission then holds for every thread of the process.
bool os_permits_amx() {
#if defined(__x86_64__) && defined(__linux__)
  static const bool ok = [] {
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
#else
  return false;
#endif
}

SimdLevel parse_level(const std::string& name) {
  if (name == "scalar") return SimdLevel::kScalar;
  if (name == "avx2") return SimdLevel::kAVX2;
  if (name == "avx512") return SimdLevel::kAVX512;
  if (name == "avx512_vnni") return SimdLevel::kAVX512VNNI;
  if (name == "amx") return SimdLevel::kAMX;
  if (name == "neon") return SimdLevel::kNEON;
  throw ArgumentError(detail::concat("unknown SIMD level '", name,
                                     "'; known: scalar, avx2, avx512, avx512_vnni, amx, neon"));
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::kScalar: return "scalar";
    case SimdLevel::kAVX2: return "avx2";
    case SimdLevel::kAVX512: return "avx512";
    case SimdLevel::kAVX512VNNI: return "avx512_vnni";
    case SimdLevel::kAMX: return "amx";
    case SimdLevel::kNEON: return "neon";
  }
  return "?";
}

std::vector<SimdLevel> known_simd_levels() {
#if defined(__x86_64__) || defined(_M_X64)
  return {SimdLevel::kScalar, SimdLevel::kAVX2, SimdLevel::kAVX512, SimdLevel::kAVX512VNNI, SimdLevel::kAMX};
#elif defined(__aarch64__)
  return {SimdLevel::kScalar, SimdLevel::kNEON};
#else
  return {SimdLevel::kScalar};
#endif
}

bool simd_level_supported(SimdLevel level) {
  const CpuFeatures& f = cpu_features();
  switch (level) {
    case SimdLevel::kScalar: return true;
#if defined(SELFEXT_HAVE_X86_SIMD)
    case SimdLevel::kAVX2: return f.avx2 && f.fma && f.f16c;
    case SimdLevel::kAVX512:
      return f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl;
    case SimdLevel::kAVX512VNNI:
      return simd_level_supported(SimdLevel::kAVX512) && f.avx512vnni;
#if defined(SELFEXT_HAVE_AMX)
    case SimdLevel::kAMX:
      return simd_level_supported(SimdLevel::kAVX512VNNI) && f.amx_tile && f.amx_int8 && os_permits_amx();
#endif
#endif
#if defined(SELFEXT_HAVE_NEON)
    case SimdLevel::kNEON: return f.neon;
#endif
    default: return false;
  }
}

SimdLevel best_simd_level() {
  SimdLevel best = SimdLevel::kScalar;
  for (SimdLevel l : known_simd_levels())
    if (simd_level_supported(l)) best = l;
  return best;
}

SimdLevel simd_level() {
  int l = g_level.load(std::memory_order_relaxed);
  if (l >= 0) return SimdLevel(l);
  SimdLevel chosen = best_simd_level();
  if (const char* env = std::getenv("SELFEXT_SIMD")) {
    if (*env) {
      set_simd_level(env);
      return SimdLevel(g_level.load());
    }
  }
  g_level.store(int(chosen));
  return chosen;
}

void set_simd_level(const std::string& name) {
  SimdLevel level = parse_level(name);
  SELFEXT_CHECK(simd_level_supported(level), BackendError, "SIMD level '", name,
                "' is not available on this CPU or build (best available: ",
                simd_level_name(best_simd_level()), ")");
  g_level.store(int(level));
}

}  // namespace selfext
