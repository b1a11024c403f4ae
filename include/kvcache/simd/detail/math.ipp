// Math written once against the primitives of the enclosing ISA namespace (Vec, set1, fma, mul, add, min, max,
// round_nearest, pow2i, select_lt). Included inside each ops namespace and target region; no include guard and
// no includes of its own.

/// e^x for x <= 88 (larger x is clamped); x < -87 gives exactly 0, so masked scores (-inf) vanish.
/// Cody-Waite reduction x = n ln2 + r with |r| <= ln2/2, then a degree-7 polynomial (Cephes expf coefficients),
/// then a multiply by 2^n built in the exponent bits. Relative error about 2 ulp over the whole range.
KVCACHE_INLINE Vec exp(Vec x) noexcept {
  const Vec xc = min(max(x, set1(-87.0f)), set1(88.0f));
  const Vec n = round_nearest(mul(xc, set1(1.44269504088896341f)));
  Vec r = fma(n, set1(-0.693359375f), xc);
  r = fma(n, set1(2.12194440e-4f), r);
  Vec p = set1(1.9875691500e-4f);
  p = fma(p, r, set1(1.3981999507e-3f));
  p = fma(p, r, set1(8.3334519073e-3f));
  p = fma(p, r, set1(4.1665795894e-2f));
  p = fma(p, r, set1(1.6666665459e-1f));
  p = fma(p, r, set1(5.0000001201e-1f));
  const Vec y = add(fma(p, mul(r, r), r), set1(1.0f));
  return select_lt(x, set1(-87.0f), zero(), mul(y, pow2i(n)));
}
