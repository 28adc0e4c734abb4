// Fused row kernels for iterl2norm: one pass per row over data that stays in
// cache, rows in parallel (ATen's thread pool).
//
// native_forward: the fast native path. Sums accumulate in double (no
//   pre-scaling needed for float, bfloat16 or half inputs), the inverse square
//   root runs in float exactly as the Python native path does (start, steps),
//   and the output is (x - mean) * r * 2^-j [* w + b].
// emulated_forward: the bit-accurate emulation of an 8- or 16-bit datapath with
//   float32 accumulation, operation for operation the Python emulation on its
//   float32 carrier (docs/ALGORITHM.md); tests hold the two to the same bits.
//
// Built without floating-point contraction (-ffp-contract=off): a fused
// multiply-add would round once where the definition rounds twice.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <sys/mman.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Float8_e4m3fn.h>
#include <c10/util/Float8_e5m2.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

// The scalar part: qn in [1/2, 2] -> a ~ qn^-1/2, start then steps. It is
// iterl2norm.schedules.Iteration with its constants as the datapath holds them
// (built once per setting by _fused.kernel_iteration; Python's name: Iteration).
struct Scalar {
  enum class Start { exponent, mantissa, magic, table } start = Start::exponent;
  float threshold = 0, down = 0, up = 0;  // exponent+mantissa
  int64_t magic = 0, mbits = 23, bias = 127;  // magic: constant and the format's fields
  int64_t segments = 0;
  std::vector<float> table;  // [parity][segment][c0, c1]
  std::vector<bool> correction;  // per step: Euler (c1 = lambda) or correction (c1 = gamma, c2 = beta)
  std::vector<float> c1, c2;
};

inline float pow2f(int p) { return std::ldexp(1.0f, p); }

// x * 2^n in three powers of two, as iterl2norm.formats.ldexp does in float32.
struct Pow2 {
  float p1, p2, p3;
  explicit Pow2(int64_t n) {
    n = std::min<int64_t>(std::max<int64_t>(n, 3 * -126), 3 * 127);
    auto floordiv = [](int64_t a, int64_t b) { return (a >= 0) ? a / b : -((-a + b - 1) / b); };
    int64_t first = floordiv(n, 3);
    int64_t second = floordiv(n - first, 2);
    p1 = pow2f((int)first);
    p2 = pow2f((int)second);
    p3 = pow2f((int)(n - first - second));
  }
  float operator()(float x) const { return x * p1 * p2 * p3; }
};

inline float ldexp3(float x, int64_t n) { return Pow2(n)(x); }

inline int64_t floor_log2(float a) {  // a > 0 finite
  int e;
  std::frexp(a, &e);
  return e - 1;
}

inline int64_t encode(float v, const Scalar& s) {  // positive normal value of the format
  int e;
  std::frexp(v, &e);
  int64_t binade = e - 1;
  int64_t units = (int64_t)std::ldexp((double)v, (int)(s.mbits - binade));
  return ((binade + s.bias) << s.mbits) | (units - ((int64_t)1 << s.mbits));
}

inline float decode(int64_t bits, const Scalar& s) {
  int64_t field = bits >> s.mbits;
  int64_t frac = bits & (((int64_t)1 << s.mbits) - 1);
  return (float)std::ldexp((double)(((int64_t)1 << s.mbits) + frac), (int)(field - s.bias - s.mbits));
}

template <class Round>
float estimate(float qn, const Scalar& s, Round rnd) {
  float a = 1.0f;
  if (s.start == Scalar::Start::mantissa) {
    bool odd = qn < 1.0f;
    float m = odd ? 2.0f * qn : qn;
    bool high = m >= s.threshold;
    a = odd ? (high ? 1.0f : s.up) : (high ? s.down : 1.0f);
  } else if (s.start == Scalar::Start::magic) {
    a = decode(s.magic - (encode(qn, s) >> 1), s);
  } else if (s.start == Scalar::Start::table) {
    bool even = qn >= 1.0f;
    float m = even ? qn : 2.0f * qn;
    int64_t i = (int64_t)std::floor((m - 1.0f) * (float)s.segments);
    i = std::min<int64_t>(std::max<int64_t>(i, 0), s.segments - 1);
    const float* c = &s.table[((even ? 1 : 0) * s.segments + i) * 2];
    a = rnd(c[0] - rnd(c[1] * qn));
  }
  for (size_t n = 0; n < s.correction.size(); ++n) {
    float u = rnd(rnd(a * a) * qn);
    if (!s.correction[n]) {
      float g = rnd(s.c1[n] * rnd(1.0f - u));
      a = rnd(a + rnd(a * g));
    } else {
      float e = rnd(s.c1[n] - rnd(s.c2[n] * u));
      a = rnd(a + rnd(a * e));
    }
  }
  return a;
}

// start and forms by the names of iterl2norm.schedules.Iteration and rsqrt.Step.
Scalar make_scalar(const std::string& start, std::vector<double> start_params,
                   std::vector<double> table, const std::vector<std::string>& forms,
                   std::vector<double> c1, std::vector<double> c2) {
  TORCH_CHECK(c1.size() == forms.size() && c2.size() == forms.size(),
              "Iteration: one c1 and one c2 per step");
  Scalar s;
  if (start == "exponent") {
    s.start = Scalar::Start::exponent;
  } else if (start == "exponent+mantissa") {
    s.start = Scalar::Start::mantissa;
    s.threshold = (float)start_params.at(0);
    s.down = (float)start_params.at(1);
    s.up = (float)start_params.at(2);
  } else if (start == "magic") {
    s.start = Scalar::Start::magic;
    s.magic = (int64_t)start_params.at(0);
    s.mbits = (int64_t)start_params.at(1);
    s.bias = (int64_t)start_params.at(2);
  } else if (start == "table") {
    s.start = Scalar::Start::table;
    s.segments = (int64_t)start_params.at(0);
    TORCH_CHECK((int64_t)table.size() == 4 * s.segments, "Iteration: 2 x segments x (c0, c1)");
    s.table.assign(table.begin(), table.end());
  } else {
    TORCH_CHECK(false, "Iteration: the kernels have no start '", start, "'");
  }
  for (const auto& form : forms) {
    TORCH_CHECK(form == "euler" || form == "correction", "Iteration: the kernels have no step form '",
                form, "'");
    s.correction.push_back(form == "correction");
  }
  s.c1.assign(c1.begin(), c1.end());
  s.c2.assign(c2.begin(), c2.end());
  return s;
}

// ---------------------------------------------------------------------------
// Row bodies. Each is compiled three times (baseline x86-64, AVX2, AVX-512) and
// the widest the CPU supports runs, or the one ITERL2NORM_ISA names. The
// emulation's arithmetic is the same in all three (no contraction, no
// reassociation: its only simd reduction is a max); the native path fuses
// multiply-adds where the variant has them.

#define ALWAYS_INLINE inline __attribute__((always_inline))

ALWAYS_INLINE float as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
ALWAYS_INLINE uint32_t as_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Conversions between a 16-bit storage format and float written with integer
// and float operations only, so that the compiler vectorizes the row loops
// (c10's scalar conversions do not). Both round to nearest even and keep
// signed zeros, infinities and NaN; tests compare them with torch's casts.
struct Bf16Bits {
  static ALWAYS_INLINE float to_float(uint16_t h) { return as_float((uint32_t)h << 16); }
  static ALWAYS_INLINE uint16_t from_float(float f) {
    const uint32_t u = as_bits(f);
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)(f != f ? ((u >> 16) | 0x0040u) : rounded);  // NaN stays (quiet) NaN
  }
};

struct HalfBits {
  static ALWAYS_INLINE float to_float(uint16_t h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t twice = w + w;  // exponent and fraction, sign shifted out
    // Normal (and Inf/NaN): move the fields into place and rebias by 2^-112.
    const float normal = as_float((twice >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    // Subnormal: the fraction as the low bits of 0.5's significand, minus 0.5.
    const float subnormal = as_float((twice >> 17) | 0x3F000000u) - 0.5f;
    return as_float(sign | as_bits(twice < (1u << 27) ? subnormal : normal));
  }
  static ALWAYS_INLINE uint16_t from_float(float f) {
    const uint32_t w = as_bits(f);
    const uint32_t twice = w + w;
    const uint32_t sign = w & 0x80000000u;
    // Overflow to Inf by scaling up, then back down; the add below rounds to
    // the 11 significant bits of the target binade (at least fp16's subnormal step).
    float base = (std::fabs(f) * 0x1.0p+112f) * 0x1.0p-110f;
    uint32_t bias = twice & 0xFF000000u;
    bias = bias < 0x71000000u ? 0x71000000u : bias;
    base = as_float((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = as_bits(base);
    const uint32_t magnitude = ((bits >> 13) & 0x7C00u) + (bits & 0x0FFFu);
    return (uint16_t)((sign >> 16) | (twice > 0xFF000000u ? 0x7E00u : magnitude));
  }
};

// Storage type T <-> float.
template <typename T>
struct Io;
template <>
struct Io<float> {
  using Raw = float;
  static ALWAYS_INLINE float load(float v) { return v; }
  static ALWAYS_INLINE float store(float v) { return v; }
};
template <>
struct Io<c10::BFloat16> {
  using Raw = uint16_t;
  static ALWAYS_INLINE float load(uint16_t v) { return Bf16Bits::to_float(v); }
  static ALWAYS_INLINE uint16_t store(float v) { return Bf16Bits::from_float(v); }
};
template <>
struct Io<c10::Half> {
  using Raw = uint16_t;
  static ALWAYS_INLINE float load(uint16_t v) { return HalfBits::to_float(v); }
  static ALWAYS_INLINE uint16_t store(float v) { return HalfBits::from_float(v); }
};

// A float rounded to format F, the result held in float.
template <typename F>
struct Round {
  static ALWAYS_INLINE float apply(float v) { return (float)F(v); }
};
template <>
struct Round<c10::BFloat16> {
  static ALWAYS_INLINE float apply(float v) {
    const uint32_t u = as_bits(v);
    const float r = as_float((u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u);
    return v != v ? v : r;
  }
};
template <>
struct Round<c10::Half> {
  static ALWAYS_INLINE float apply(float v) { return HalfBits::to_float(HalfBits::from_float(v)); }
};

template <typename T>
struct NativeArgs {
  const T* x; T* out; const float* w; const float* b; double* mean_out; double* scale_out;
  int64_t d; bool center; double inv_d; double eps; const Scalar* s;
};

// a * b + c, fused where the instruction set has it. Only the native path uses
// this: its results are compared with float64 within a tolerance, while the
// emulation must round each product on its own (the file builds with
// -ffp-contract=off so that nothing else is fused).
template <bool kFma, typename V>
ALWAYS_INLINE V mul_add(V a, V b, V c) {
  if constexpr (kFma) return __builtin_fma(a, b, c);
  else return a * b + c;
}
template <bool kFma>
ALWAYS_INLINE float mul_add(float a, float b, float c) {
  if constexpr (kFma) return __builtin_fmaf(a, b, c);
  else return a * b + c;
}

// For 16-bit rows: the mean and the centred sum of squares in float, in 32
// float lanes folded pairwise. One pass sums y = x - K and y^2 about the first
// element K (so a constant row centres to exactly 0); for 16-bit values y and
// y^2 are mostly exact in float, and the lane sums round about d/32 times, far
// below a 16-bit result's ulp. The centred sum S2 - S1^2/d cancels by the factor
// S2 / (S2 - S1^2/d), which is 1 + (K - mean)^2 / var: where that exceeds 16
// (K far out in its row) a second pass sums the squares about the mean instead.
// False when float's range was not enough (bfloat16 spans float's exponent
// range: squares of |x| > 2^63 overflow, of |x| < 2^-63 underflow), or the row
// has a NaN, Inf or only zeros: then the double pass decides.
template <typename T, bool kFma>
ALWAYS_INLINE bool float_moments(const typename Io<T>::Raw* xr, int64_t d, bool center,
                                 double inv_d, double* mean_out, double* sq_out) {
  constexpr int64_t kLanes = 32;
  auto fold = [](float* p) {
    for (int64_t width = kLanes / 2; width > 0; width /= 2)
      for (int64_t l = 0; l < width; ++l) p[l] += p[l + width];
    return (double)p[0];
  };
  const float k = center ? Io<T>::load(xr[0]) : 0.0f;
  float p1[kLanes] = {}, p2[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= d; i += kLanes) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) {
      const float y = Io<T>::load(xr[i + l]) - k;
      p1[l] += y;
      p2[l] = mul_add<kFma>(y, y, p2[l]);
    }
  }
  for (int64_t l = 0; i < d; ++i, ++l) {
    const float y = Io<T>::load(xr[i]) - k;
    p1[l] += y;
    p2[l] = mul_add<kFma>(y, y, p2[l]);
  }
  const double s1 = center ? fold(p1) : 0.0, s2 = fold(p2);
  if (!(s2 >= 0x1.0p-64 && s2 <= 0x1.0p+120)) return false;  // also NaN
  const double mean = k + s1 * inv_d, shift = s1 * (s1 * inv_d);
  double sq = s2 - shift;
  if (shift > s2 * (15.0 / 16.0)) {  // cancels by more than 16: sum about the mean
    const float m = (float)mean;
    float p[kLanes] = {};
    for (i = 0; i + kLanes <= d; i += kLanes) {
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) {
        const float y = Io<T>::load(xr[i + l]) - m;
        p[l] = mul_add<kFma>(y, y, p[l]);
      }
    }
    for (int64_t l = 0; i < d; ++i, ++l) {
      const float y = Io<T>::load(xr[i]) - m;
      p[l] = mul_add<kFma>(y, y, p[l]);
    }
    sq = fold(p);
    if (!(sq >= 0x1.0p-64 && sq <= 0x1.0p+120)) return false;
  }
  *mean_out = mean;
  *sq_out = sq;
  return true;
}

// The row's mean and 1/sqrt(mean square + eps) by the iteration. One pass of
// double sums about the first element K: with S1 = sum(x - K), S2 = sum((x - K)^2)
// the centred sum of squares is S2 - S1^2/d, and since (K - mean)^2 <= d var
// the cancellation costs at most a factor d of double's precision (2^-53 d).
// Centring on an element also makes a constant row centre to exactly 0.
template <typename T, bool kFma>
ALWAYS_INLINE double native_moments(const typename Io<T>::Raw* xr, int64_t d, bool center,
                                    double inv_d, double eps, double* mean_out) {
  // Lanes of independent partial sums (a single accumulator would make each
  // add wait for the last one), folded pairwise at the end.
  constexpr int64_t kLanes = 16;
  auto fold = [](double* p) {
    for (int64_t width = kLanes / 2; width > 0; width /= 2)
      for (int64_t l = 0; l < width; ++l) p[l] += p[l + width];
    return p[0];
  };
  double mean = 0.0, q, sq;
  int64_t i = 0;
  bool in_float = false;
  if constexpr (!std::is_same_v<T, float>) {
    in_float = float_moments<T, kFma>(xr, d, center, inv_d, &mean, &sq);
    q = sq * inv_d + eps;
  }
  if (in_float) {
  } else if (center) {
    const double k = Io<T>::load(xr[0]);
    double p1[kLanes] = {}, p2[kLanes] = {};
    for (; i + kLanes <= d; i += kLanes) {
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) {
        const double y = (double)Io<T>::load(xr[i + l]) - k;
        p1[l] += y;
        p2[l] = mul_add<kFma>(y, y, p2[l]);
      }
    }
    for (int64_t l = 0; i < d; ++i, ++l) {
      const double y = (double)Io<T>::load(xr[i]) - k;
      p1[l] += y;
      p2[l] += y * y;
    }
    const double s1 = fold(p1), s2 = fold(p2);
    mean = k + s1 * inv_d;
    // s2 is NaN or Inf exactly when the row holds one; keep it so, as the clamp would not.
    q = std::isfinite(s2) ? std::max(s2 - s1 * (s1 * inv_d), 0.0) * inv_d + eps : s2;
  } else {
    double p2[kLanes] = {};
    for (; i + kLanes <= d; i += kLanes) {
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) {
        const double y = Io<T>::load(xr[i + l]);
        p2[l] = mul_add<kFma>(y, y, p2[l]);
      }
    }
    for (int64_t l = 0; i < d; ++i, ++l) {
      const double y = Io<T>::load(xr[i]);
      p2[l] += y * y;
    }
    const double s2 = fold(p2);
    q = s2 * inv_d + eps;
  }
  *mean_out = mean;
  return q;
}

// Whether a row's scale is outside float's comfortable range: a vector so small
// (or so large, near float's maximum) that its scale would overflow (or be
// subnormal) in float. Those rows compute their output in double. Zero rows
// (scale 0) and NaN rows stay on the float path, where they give 0 and NaN.
ALWAYS_INLINE bool wide_scale(double scale) {
  const double a = std::fabs(scale);
  return a > 0x1.0p+100 || (a != 0.0 && a < 0x1.0p-100);
}

// q^-1/2 by the iteration: q = qn 4^j with qn in [1/2, 2), a(qn) 2^-j.
ALWAYS_INLINE double native_scale(double q, const Scalar& sc) {
  if (!std::isfinite(q)) return std::numeric_limits<double>::quiet_NaN();  // NaN/Inf row
  if (q == 0.0) return 0.0;  // a zero row: zeros
  int e;
  std::frexp(q, &e);
  const int64_t j = (e >= 0) ? e / 2 : -((-e + 1) / 2);  // floor(e / 2)
  const float qn = (float)std::ldexp(q, (int)(-2 * j));
  const float est = estimate(qn, sc, [](float v) { return v; });
  return std::ldexp((double)est, (int)(-j));
}

template <typename T, bool kFma>
ALWAYS_INLINE void native_output(const NativeArgs<T>& a, int64_t row) {
  using Raw = typename Io<T>::Raw;
  const int64_t d = a.d;
  const Raw* xr = reinterpret_cast<const Raw*>(a.x) + row * d;
  Raw* yr = reinterpret_cast<Raw*>(a.out) + row * d;
  const double mean = a.mean_out[row], scale = a.scale_out[row];
  const float* w = a.w;
  const float* b = a.b;
  if (!wide_scale(scale)) {  // the usual row (or NaN): in float
    const float m = (float)mean, r = (float)scale;
    if (w && b) {
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) yr[i] = Io<T>::store(mul_add<kFma>((Io<T>::load(xr[i]) - m) * r, w[i], b[i]));
    } else if (w) {
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) yr[i] = Io<T>::store((Io<T>::load(xr[i]) - m) * r * w[i]);
    } else {
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) yr[i] = Io<T>::store((Io<T>::load(xr[i]) - m) * r);
    }
  } else {  // a vector so small or so large that its scale leaves float's range
    for (int64_t i = 0; i < d; ++i) {
      float z = (float)(((double)Io<T>::load(xr[i]) - mean) * scale);
      if (w) z = z * w[i];
      if (b) z = z + b[i];
      yr[i] = Io<T>::store(z);
    }
  }
}

// Rows in blocks: moments of each row (16-bit rows widened as they are read,
// cheaper than a float copy, which would leave L1 for long rows), then the
// block's scalar iterations back to back (independent, so they overlap in the
// pipeline instead of each waiting on its own chain), then the outputs while
// the block's rows are still in cache.
template <typename T, bool kFma>
ALWAYS_INLINE void native_block(const NativeArgs<T>& a, int64_t begin, int64_t end) {
  using Raw = typename Io<T>::Raw;
  constexpr int64_t kBlock = 16;
  double q[kBlock];
  for (int64_t first = begin; first < end; first += kBlock) {
    const int64_t last = std::min(end, first + kBlock);
    for (int64_t row = first; row < last; ++row)
      q[row - first] = native_moments<T, kFma>(reinterpret_cast<const Raw*>(a.x) + row * a.d,
                                               a.d, a.center, a.inv_d, a.eps, &a.mean_out[row]);
    for (int64_t row = first; row < last; ++row) a.scale_out[row] = native_scale(q[row - first], *a.s);
    for (int64_t row = first; row < last; ++row) native_output<T, kFma>(a, row);
  }
}

// The pairwise adder tree of _arith.sum_acc, zero-padded to a power of two.
ALWAYS_INLINE float tree_sum(float* p, int64_t n) {
  int64_t width = 1;
  while (width < n) width <<= 1;
  for (int64_t i = n; i < width; ++i) p[i] = 0.0f;
  while (width > 1) {
    const int64_t half = width / 2;
    // In place: element i is written after elements 2i and 2i + 1 were read.
#pragma omp simd
    for (int64_t i = 0; i < half; ++i) p[i] = p[2 * i] + p[2 * i + 1];
    width = half;
  }
  return p[0];
}

ALWAYS_INLINE int64_t row_exponent(const float* v, int64_t d, bool* bad) {
  float amax = 0.0f;
  int nonfinite = 0;
#pragma omp simd reduction(max : amax) reduction(| : nonfinite)
  for (int64_t i = 0; i < d; ++i) {
    const float a = std::fabs(v[i]);
    const bool finite = a <= std::numeric_limits<float>::max();
    nonfinite |= !finite;
    amax = std::max(amax, finite ? a : 0.0f);
  }
  *bad = nonfinite != 0;
  return (!nonfinite && amax > 0.0f) ? floor_log2(amax) : 0;
}

// a - b rounded once to F: round to odd in float (TwoSum's error decides the
// sticky bit: one step away from zero if the error has s's sign, else toward it),
// then to F. s is never 0 when the error is not.
template <typename F>
ALWAYS_INLINE float sub_once(float a, float b) {
  const float s = a - b;
  const float vb = s - a;
  const float err = (a - (s - vb)) - (b + vb);
  const uint32_t bits = as_bits(s);
  const uint32_t away = ((err > 0.0f) == (s > 0.0f)) ? 1u : 0xFFFFFFFFu;
  const uint32_t step = (err != 0.0f && (bits & 1u) == 0u) ? away : 0u;
  return Round<F>::apply(as_float(bits + step));
}

template <typename T>
struct EmuArgs {
  const T* x; float* out; const float* w; const float* b;
  int64_t d; bool center; float inv_d; bool has_inv_d; double eps; int64_t eps_floor;
  const Scalar* s;
};

template <typename T, typename F>
ALWAYS_INLINE void emulated_row(const EmuArgs<T>& a, int64_t row, float* v, float* buf) {
  using Raw = typename Io<T>::Raw;
  const int64_t d = a.d;
  auto rnd = [](float x) { return Round<F>::apply(x); };
  const Raw* xr = reinterpret_cast<const Raw*>(a.x) + row * d;
  float* yr = a.out + row * d;
#pragma omp simd
  for (int64_t i = 0; i < d; ++i) {  // the datapath holds values of F; non-finite stays
    const float xi = Io<T>::load(xr[i]);
    v[i] = std::fabs(xi) <= std::numeric_limits<float>::max() ? rnd(xi) : xi;
  }
  bool bad = false;
  int64_t shift = 0;
  if (a.center) {
    shift = row_exponent(v, d, &bad);
    const Pow2 down(-shift);
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) {
      v[i] = down(v[i]);
      buf[i] = v[i];
    }
    const float mean = tree_sum(buf, d) * a.inv_d;
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) v[i] = sub_once<F>(v[i], mean);
  }
  int64_t k = row_exponent(v, d, &bad);
  if (bad) {
    for (int64_t i = 0; i < d; ++i) yr[i] = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  if (a.eps > 0) k = std::max<int64_t>(k, a.eps_floor - shift);
  const Pow2 down(-k);
#pragma omp simd
  for (int64_t i = 0; i < d; ++i) {
    v[i] = down(v[i]);  // vs
    buf[i] = v[i] * v[i];
  }
  k += shift;
  float q = tree_sum(buf, d);
  if (a.has_inv_d) q = q * a.inv_d;
  if (a.eps > 0) {
    int64_t n = std::min<int64_t>(std::max<int64_t>(-2 * k, -3000), 3000);
    q = q + (float)std::ldexp(a.eps, (int)n);
  }
  if (q == 0.0f) q = 1.0f;
  int e;
  std::frexp(q, &e);
  int64_t j = (e >= 0) ? e / 2 : -((-e + 1) / 2);
  const float qn = rnd(ldexp3(q, -2 * j));
  const float scale = ldexp3(estimate(qn, *a.s, rnd), -j);
  const float* w = a.w;
  const float* b = a.b;
  if (w && b) {
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) yr[i] = rnd(rnd(rnd(v[i] * scale) * w[i]) + b[i]);
  } else if (w) {
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) yr[i] = rnd(rnd(v[i] * scale) * w[i]);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) yr[i] = rnd(v[i] * scale);
  }
}

// Backward of y = (x - mean) r [* w + b] at the forward's mean and r (the
// derivative of x / sqrt(q), not of the iteration's steps; torch's LayerNorm
// backward likewise uses its rstd): with xhat = (x - mean) r and gw = g w,
//   dx = r (gw - xhat sum(gw xhat) inv_d) [- its mean over the row, if centred].
// dw and db are summed over rows into this thread's lane of partial sums.
template <typename T>
struct BackArgs {
  const T* x; const T* g; T* dx; const double* mean; const double* scale; const float* w;
  double* dw_part; double* db_part;  // (threads, d) partial sums, or null
  int64_t d; bool center; double inv_d;
};

template <typename T, bool kFma>
ALWAYS_INLINE void native_back_row(const BackArgs<T>& a, int64_t row, float* xh, float* gw,
                                   double* dw, double* db) {
  using Raw = typename Io<T>::Raw;
  const int64_t d = a.d;
  const Raw* xr = reinterpret_cast<const Raw*>(a.x) + row * d;
  const Raw* gr = reinterpret_cast<const Raw*>(a.g) + row * d;
  Raw* out = reinterpret_cast<Raw*>(a.dx) + row * d;
  const double mean = a.mean[row], scale = a.scale[row];
  const float m = (float)mean, r = (float)scale;
  // A scale outside float's range: xhat in double (as the forward).
  const bool wide = wide_scale(scale);
  const float* w = a.w;
  // The row sums in double for float rows (whose gradient is held to 2e-6); in
  // float lanes for 16-bit rows, as torch sums them: their rounding is far below
  // a 16-bit result's, and double lanes would halve the vector width.
  using Acc = std::conditional_t<std::is_same_v<T, float>, double, float>;
  struct Sums {
    Acc dot, gw, xh;
  };
  // xhat, gw and the sums of gw * xhat, gw and xhat, for either way of computing xhat_i
  auto row_sums = [&](auto xhat) {
    Acc dot = 0, sum_gw = 0, sum_xh = 0;
#pragma omp simd reduction(+ : dot, sum_gw, sum_xh)
    for (int64_t i = 0; i < d; ++i) {
      const float g = Io<T>::load(gr[i]);
      const float h = xhat(Io<T>::load(xr[i]));
      const float q = w ? g * w[i] : g;
      xh[i] = h;
      gw[i] = q;
      dot += (Acc)q * (Acc)h;
      sum_gw += q;
      sum_xh += h;
    }
    return Sums{dot, sum_gw, sum_xh};
  };
  const Sums sums = wide ? row_sums([&](float xi) { return (float)(((double)xi - mean) * scale); })
                         : row_sums([&](float xi) { return (xi - m) * r; });
  const Acc dot = sums.dot, sum_gw = sums.gw, sum_xh = sums.xh;
  if (dw) {
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) {
      const double g = Io<T>::load(gr[i]);
      dw[i] = mul_add<kFma>(g, (double)xh[i], dw[i]);
    }
  }
  if (db) {
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) db[i] += Io<T>::load(gr[i]);
  }
  const float k = (float)((double)dot * a.inv_d);
  // The row mean of (gw - xhat k), subtracted when the forward centred.
  const float shift =
      a.center ? (float)(((double)sum_gw - (double)sum_xh * (double)k) / (double)d) : 0.0f;
  if (!wide) {
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) out[i] = Io<T>::store(r * (gw[i] - xh[i] * k - shift));
  } else {
    for (int64_t i = 0; i < d; ++i)
      out[i] = Io<T>::store((float)(scale * (double)(gw[i] - xh[i] * k - shift)));
  }
}

// The three builds of each row loop (the same source; the compiler vectorizes
// each for its instruction set), and the choice among them.
#define TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi2")))
#define TARGET_AVX2 __attribute__((target("avx2,fma,f16c,bmi2")))

enum class Isa { base, avx2, avx512 };
const char* const kIsaNames[] = {"baseline", "avx2", "avx512"};

// The widest variant the CPU runs.
Isa widest_isa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      return Isa::avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
    return Isa::base;
  }();
  return isa;
}

// The variant in use: the widest, unless set_isa chose a narrower one
// (ITERL2NORM_ISA, read on the Python side). The emulation is the same bits in
// all of them; the native path differs in its last bits (fused multiply-adds).
std::atomic<int> g_isa{-1};

Isa best_isa() {
  const int chosen = g_isa.load(std::memory_order_relaxed);
  return chosen < 0 ? widest_isa() : static_cast<Isa>(chosen);
}

template <typename T>
TARGET_AVX512 void native_rows_avx512(const NativeArgs<T>& a, int64_t begin, int64_t end) {
  native_block<T, true>(a, begin, end);
}
template <typename T>
TARGET_AVX2 void native_rows_avx2(const NativeArgs<T>& a, int64_t begin, int64_t end) {
  native_block<T, true>(a, begin, end);
}
template <typename T>
void native_rows_base(const NativeArgs<T>& a, int64_t begin, int64_t end) {
  native_block<T, false>(a, begin, end);
}

template <typename T, typename F>
TARGET_AVX512 void emulated_rows_avx512(const EmuArgs<T>& a, int64_t begin, int64_t end, float* v,
                                        float* buf) {
  for (int64_t row = begin; row < end; ++row) emulated_row<T, F>(a, row, v, buf);
}
template <typename T, typename F>
TARGET_AVX2 void emulated_rows_avx2(const EmuArgs<T>& a, int64_t begin, int64_t end, float* v,
                                    float* buf) {
  for (int64_t row = begin; row < end; ++row) emulated_row<T, F>(a, row, v, buf);
}
template <typename T, typename F>
void emulated_rows_base(const EmuArgs<T>& a, int64_t begin, int64_t end, float* v, float* buf) {
  for (int64_t row = begin; row < end; ++row) emulated_row<T, F>(a, row, v, buf);
}

template <typename T>
TARGET_AVX512 void native_back_rows_avx512(const BackArgs<T>& a, int64_t begin, int64_t end,
                                           float* xh, float* gw, double* dw, double* db) {
  for (int64_t row = begin; row < end; ++row) native_back_row<T, true>(a, row, xh, gw, dw, db);
}
template <typename T>
TARGET_AVX2 void native_back_rows_avx2(const BackArgs<T>& a, int64_t begin, int64_t end,
                                       float* xh, float* gw, double* dw, double* db) {
  for (int64_t row = begin; row < end; ++row) native_back_row<T, true>(a, row, xh, gw, dw, db);
}
template <typename T>
void native_back_rows_base(const BackArgs<T>& a, int64_t begin, int64_t end, float* xh,
                           float* gw, double* dw, double* db) {
  for (int64_t row = begin; row < end; ++row) native_back_row<T, false>(a, row, xh, gw, dw, db);
}

// Rows per thread at the least: at::internal::GRAIN_SIZE elements, as torch's
// own norms take, so that a small call runs on one thread instead of paying
// for a parallel region. Rows are independent: the bits do not depend on it.
int64_t row_grain(int64_t d) { return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, d)); }

template <typename T>
void native_all(const NativeArgs<T>& a, int64_t rows) {
  const Isa isa = best_isa();
  at::parallel_for(0, rows, row_grain(a.d), [&](int64_t begin, int64_t end) {
    if (isa == Isa::avx512) native_rows_avx512<T>(a, begin, end);
    else if (isa == Isa::avx2) native_rows_avx2<T>(a, begin, end);
    else native_rows_base<T>(a, begin, end);
  });
}

// The rows split into `lanes` fixed ranges, each summing dw and db into its own
// lane: race-free, and the sums do not depend on how threads were scheduled.
template <typename T>
void native_back_all(const BackArgs<T>& a, int64_t rows, int64_t lanes) {
  const Isa isa = best_isa();
  at::parallel_for(0, lanes, 1, [&](int64_t lane_begin, int64_t lane_end) {
    std::vector<float> xh(a.d), gw(a.d);
    for (int64_t lane = lane_begin; lane < lane_end; ++lane) {
      const int64_t begin = rows * lane / lanes, end = rows * (lane + 1) / lanes;
      double* dw = a.dw_part ? a.dw_part + lane * a.d : nullptr;
      double* db = a.db_part ? a.db_part + lane * a.d : nullptr;
      if (isa == Isa::avx512)
        native_back_rows_avx512<T>(a, begin, end, xh.data(), gw.data(), dw, db);
      else if (isa == Isa::avx2)
        native_back_rows_avx2<T>(a, begin, end, xh.data(), gw.data(), dw, db);
      else
        native_back_rows_base<T>(a, begin, end, xh.data(), gw.data(), dw, db);
    }
  });
}

template <typename T, typename F>
void emulated_all(const EmuArgs<T>& a, int64_t rows) {
  const Isa isa = best_isa();
  at::parallel_for(0, rows, row_grain(a.d), [&](int64_t begin, int64_t end) {
    int64_t width = 1;
    while (width < a.d) width <<= 1;
    std::vector<float> v(a.d), buf(width);
    if (isa == Isa::avx512) emulated_rows_avx512<T, F>(a, begin, end, v.data(), buf.data());
    else if (isa == Isa::avx2) emulated_rows_avx2<T, F>(a, begin, end, v.data(), buf.data());
    else emulated_rows_base<T, F>(a, begin, end, v.data(), buf.data());
  });
}

// f(T{}) for the storage types the kernels take.
template <typename Fn>
void dispatch_storage(at::ScalarType type, Fn&& f) {
  switch (type) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK(false, "iterl2norm kernels take float32, bfloat16 or float16, not ", type);
  }
}

// Large outputs are first touched by the kernel, and at these sizes faulting in
// 4 KiB pages costs more than the normalization itself. Ask for transparent
// huge pages on the 2 MiB-aligned part, as PyTorch's own allocator does under
// THP_MEM_ALLOC_ENABLE=1 (docs/SPEED.md measures both). Advice only: where THP
// is off or madvise fails nothing changes.
void advise_huge_pages(const at::Tensor& t) {
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const size_t bytes = t.numel() * t.element_size();
  if (bytes < 2 * kHuge) return;
  const uintptr_t first = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (first + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (first + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

const float* optional_ptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<float>() : nullptr;
}

}  // namespace

std::vector<at::Tensor> native_forward(at::Tensor x, c10::optional<at::Tensor> weight,
                                       c10::optional<at::Tensor> bias, bool center, double inv_d,
                                       double eps, const Scalar& s) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.device().is_cpu(),
              "native_forward: a contiguous 2-D CPU tensor");
  const int64_t rows = x.size(0), d = x.size(1);
  auto out = at::empty_like(x);
  advise_huge_pages(out);
  auto mean = at::empty({rows}, x.options().dtype(at::kDouble));
  auto scale = at::empty({rows}, x.options().dtype(at::kDouble));
  const float* w = optional_ptr(weight);
  const float* b = optional_ptr(bias);
  dispatch_storage(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    NativeArgs<T> a{x.data_ptr<T>(), out.data_ptr<T>(), w, b, mean.data_ptr<double>(),
                    scale.data_ptr<double>(), d, center, inv_d, eps, &s};
    native_all<T>(a, rows);
  });
  return {out, mean, scale};
}

std::vector<at::Tensor> native_backward(at::Tensor x, at::Tensor grad, at::Tensor mean,
                                        at::Tensor scale, c10::optional<at::Tensor> weight,
                                        bool center, double inv_d, bool want_dw, bool want_db) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && grad.is_contiguous() &&
                  grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type(),
              "native_backward: contiguous 2-D x and grad of one shape and dtype");
  const int64_t rows = x.size(0), d = x.size(1);
  auto dx = at::empty_like(x);
  advise_huge_pages(dx);
  const int64_t lanes = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  auto part_options = x.options().dtype(at::kDouble);
  auto dw_part = want_dw ? at::zeros({lanes, d}, part_options) : at::Tensor();
  auto db_part = want_db ? at::zeros({lanes, d}, part_options) : at::Tensor();
  dispatch_storage(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    BackArgs<T> a{x.data_ptr<T>(), grad.data_ptr<T>(), dx.data_ptr<T>(),
                  mean.data_ptr<double>(), scale.data_ptr<double>(), optional_ptr(weight),
                  want_dw ? dw_part.data_ptr<double>() : nullptr,
                  want_db ? db_part.data_ptr<double>() : nullptr, d, center, inv_d};
    native_back_all<T>(a, rows, lanes);
  });
  return {dx, want_dw ? dw_part.sum(0) : at::Tensor(), want_db ? db_part.sum(0) : at::Tensor()};
}

at::Tensor emulated_forward(at::Tensor x, c10::optional<at::Tensor> weight,
                            c10::optional<at::Tensor> bias, std::string fmt, bool center,
                            double inv_d, bool has_inv_d, double eps, int64_t eps_floor,
                            const Scalar& s) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.device().is_cpu(),
              "emulated_forward: a contiguous 2-D CPU tensor");
  const int64_t rows = x.size(0), d = x.size(1);
  auto out = at::empty({rows, d}, x.options().dtype(at::kFloat));  // holds every value of fmt
  advise_huge_pages(out);
  const float* w = optional_ptr(weight);
  const float* b = optional_ptr(bias);
  dispatch_storage(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    EmuArgs<T> a{x.data_ptr<T>(), out.data_ptr<float>(), w, b, d, center, (float)inv_d,
                 has_inv_d, eps, eps_floor, &s};
    if (fmt == "bf16") emulated_all<T, c10::BFloat16>(a, rows);
    else if (fmt == "fp16") emulated_all<T, c10::Half>(a, rows);
    else if (fmt == "fp8_e4m3") emulated_all<T, c10::Float8_e4m3fn>(a, rows);
    else if (fmt == "fp8_e5m2") emulated_all<T, c10::Float8_e5m2>(a, rows);
    else TORCH_CHECK(false, "emulated_forward: unsupported format ", fmt);
  });
  return out;
}

// The kernels' own float <-> 16-bit conversions, for the tests: x (float32) to
// dtype's bits and back to float32, or a 16-bit tensor widened to float32.
at::Tensor narrow_to(at::Tensor x, at::ScalarType dtype) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous(), "narrow_to: contiguous float32");
  auto out = at::empty(x.sizes(), x.options().dtype(dtype));
  const float* src = x.data_ptr<float>();
  auto* dst = reinterpret_cast<uint16_t*>(out.data_ptr());
  const bool bf16 = dtype == at::kBFloat16;
  TORCH_CHECK(bf16 || dtype == at::kHalf, "narrow_to: bfloat16 or float16");
  for (int64_t i = 0; i < x.numel(); ++i)
    dst[i] = bf16 ? Bf16Bits::from_float(src[i]) : HalfBits::from_float(src[i]);
  return out;
}

at::Tensor widen(at::Tensor x) {
  TORCH_CHECK((x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf) &&
                  x.is_contiguous(), "widen: contiguous bfloat16 or float16");
  auto out = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  const auto* src = reinterpret_cast<const uint16_t*>(x.data_ptr());
  float* dst = out.data_ptr<float>();
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  for (int64_t i = 0; i < x.numel(); ++i)
    dst[i] = bf16 ? Bf16Bits::to_float(src[i]) : HalfBits::to_float(src[i]);
  return out;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (int i = 0; i <= static_cast<int>(widest_isa()); ++i) names.push_back(kIsaNames[i]);
  return names;
}

std::string current_isa() { return kIsaNames[static_cast<int>(best_isa())]; }

void set_isa(const std::string& name) {
  for (int i = 0; i <= static_cast<int>(widest_isa()); ++i) {
    if (name == kIsaNames[i]) {
      g_isa.store(i, std::memory_order_relaxed);
      return;
    }
  }
  TORCH_CHECK(false, "set_isa: '", name, "' is not a variant this CPU runs");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  py::class_<Scalar>(m, "Iteration",
                     "iterl2norm.schedules.Iteration with its constants rounded to the datapath")
      .def(py::init(&make_scalar), py::arg("start"), py::arg("start_params"), py::arg("table"),
           py::arg("forms"), py::arg("c1"), py::arg("c2"));
  m.def("supported_isas", &supported_isas, "the instruction-set variants this CPU runs, narrowest first");
  m.def("current_isa", &current_isa, "the instruction-set variant in use");
  m.def("set_isa", &set_isa, "use this instruction-set variant (one of supported_isas())");
  m.def("narrow_to", &narrow_to, "float32 -> bfloat16/float16 with the kernels' conversion");
  m.def("widen", &widen, "bfloat16/float16 -> float32 with the kernels' conversion");
  m.def("native_forward", &native_forward, "fused native L2/RMS/LayerNorm forward");
  m.def("native_backward", &native_backward, "backward of native_forward at its mean and scale");
  m.def("emulated_forward", &emulated_forward, "fused bit-accurate emulated forward");
}
