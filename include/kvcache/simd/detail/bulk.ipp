// Array loops written once against the enclosing op set; included at the end of each ops namespace (inside its
// target region). These are the out-of-line entry points that baseline code may call.

/// dst[i] = src[i] converted (f32 -> f16/bf16 rounds to nearest even; the other ways are exact), i in [0, n).
template <class D, class S>
inline void convert_n(D* KVCACHE_RESTRICT dst, S const* KVCACHE_RESTRICT src, std::size_t n) noexcept {
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store(dst + i, load(src + i));
  if (i < n) store_n(dst + i, load_n(src + i, static_cast<int>(n - i)), static_cast<int>(n - i));
}

/// The row x[0, n) quantized to int8 exactly as kvcache::quantize_row_i8 (core/dtype.hpp) does it, bit for bit (the
/// same maximum, the same multiply by 127 / max |x|, ties away from zero by truncation and the exact remainder);
/// returns the scale.
inline float quantize_row_i8(const float* KVCACHE_RESTRICT x, std::size_t n, i8* KVCACHE_RESTRICT q) noexcept {
  Vec mx = zero(), bad = zero();  // bad: x * 0 summed, NaN where an element is NaN or infinite
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Vec v = load(x + i);
    mx = max(mx, max(v, sub(zero(), v)));
    bad = add(bad, mul(v, zero()));
  }
  if (i < n) {
    const Vec v = load_n(x + i, static_cast<int>(n - i));
    mx = max(mx, max(v, sub(zero(), v)));
    bad = add(bad, mul(v, zero()));
  }
  const float amax = reduce_max(mx);
  const bool finite = reduce_add(bad) == 0.0f;  // NaN != 0
  if (!finite || amax == 0.0f) {
    for (i = 0; i < n; ++i) q[i] = 0;
    return finite ? 0.0f : std::numeric_limits<float>::quiet_NaN();
  }
  const Vec inv = set1(127.0f / amax), half = set1(0.5f), mhalf = set1(-0.5f), one = set1(1.0f);
  const Vec lo = set1(-127.0f), hi = set1(127.0f);
  for (i = 0; i < n; i += kLanes) {
    const int m = n - i < std::size_t(kLanes) ? static_cast<int>(n - i) : kLanes;
    const Vec y = mul(m == kLanes ? load(x + i) : load_n(x + i, m), inv);
    const Vec t = trunc(y), f = sub(y, t);
    Vec r = add(t, select_lt(f, half, zero(), one));
    r = sub(r, select_lt(mhalf, f, zero(), one));
    store_i8_n(q + i, min(max(r, lo), hi), m);
  }
  return amax / 127.0f;
}

/// dst[i] = exp(src[i]) with the op set's exp.
inline void exp_n(float* dst, const float* src, std::size_t n) noexcept {
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store(dst + i, exp(load(src + i)));
  if (i < n) store_n(dst + i, exp(load_n(src + i, static_cast<int>(n - i))), static_cast<int>(n - i));
}
