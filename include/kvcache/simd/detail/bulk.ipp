// Array loops written once against the enclosing op set; included at the end of each ops namespace (inside its
// target region). These are the out-of-line entry points that baseline code may call.

/// dst[i] = src[i] converted (f32 -> f16/bf16 rounds to nearest even; the other ways are exact), i in [0, n).
template <class D, class S>
inline void convert_n(D* KVCACHE_RESTRICT dst, S const* KVCACHE_RESTRICT src, std::size_t n) noexcept {
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store(dst + i, load(src + i));
  if (i < n) store_n(dst + i, load_n(src + i, static_cast<int>(n - i)), static_cast<int>(n - i));
}

/// dst[i] = exp(src[i]) with the op set's exp.
inline void exp_n(float* dst, const float* src, std::size_t n) noexcept {
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store(dst + i, exp(load(src + i)));
  if (i < n) store_n(dst + i, exp(load_n(src + i, static_cast<int>(n - i))), static_cast<int>(n - i));
}
