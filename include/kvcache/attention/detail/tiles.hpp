#pragma once

// Tile sizes shared by the generic kernel bodies and the code that sizes their workspaces.

#include <cstddef>
#include <cstdint>

namespace kvcache::detail {

inline constexpr int kDecodeTile = 64;      ///< KV rows per online-softmax step of decode
inline constexpr int kMaxGroup = 1024;      ///< query heads per KV head that decode accepts (MLA: all heads)
inline constexpr int kPrefillKvTile = 64;   ///< keys per prefill tile
inline constexpr int kPrefillMaxRows = 96;  ///< query rows (tokens x group heads) per prefill block
inline constexpr int kMaxLanes = 16;        ///< widest op set (AVX-512)

constexpr std::size_t pad_to(std::size_t n, std::size_t a) noexcept { return (n + a - 1) / a * a; }

/// Whether decode may take the AMX path (Isa::kAmx, bf16 keys and values) for this shape: at least 16 query heads
/// per KV head (MLA: all of them), and key and value columns in whole halves of a tile (dk, dv multiples of 16). The
/// path works on blocks of 8 heads; a group of 8 is bound by memory, not by its FMAs, so the path starts at 16.
inline constexpr int kTileMinGroup = 16;
constexpr bool decode_tiles_fit(int g, int dk, int dv) noexcept {
  return g >= kTileMinGroup && dk % 16 == 0 && dv % 16 == 0;
}

/// Floats of decode scratch per (KV head, split): the scores of one tile of rows for g heads, then the larger of the
/// int8 VNNI operands (below) and, where decode_tiles_fit, the AMX operands: two query tiles of 1 KiB for each 8-head
/// block and chunk of 32 key columns, one 16 x 16 f32 product, the value tiles of a tile of rows (2 chunks of 32 rows x
/// dv / 16 tiles of 1 KiB) and the probability tiles of each 8-head block (2 chunks x 2 tiles of 1 KiB).
constexpr std::size_t decode_scratch_floats(int g, int dk, int dv) noexcept {
  const std::size_t n = pad_to(static_cast<std::size_t>(g) * kDecodeTile, 16);
  std::size_t amx = 0;
  if (decode_tiles_fit(g, dk, dv)) {
    const std::size_t chunks = (static_cast<std::size_t>(dk) + 31) / 32, blocks = static_cast<std::size_t>(g / 8);
    amx = blocks * chunks * 512 + 256 + 2 * static_cast<std::size_t>(dv / 16) * 256 + blocks * 1024;
  }
  // Or, for int8 rows on VNNI (kernels/vnni.hpp), the queries as 16-bit integers (dk rounded up to 32), their scales
  // and one tile's weights as 16-bit integers.
  const std::size_t gs = static_cast<std::size_t>(g);
  const std::size_t vnni =
      pad_to(gs * ((static_cast<std::size_t>(dk) + 31) / 32 * 32) / 2, 16) + pad_to(gs, 16) + gs * kDecodeTile / 2;
  return n + (amx > vnni ? amx : vnni);
}

/// Floats of one prefill worker's scratch on the AMX path (bf16 caches, kernels/amx.hpp): the scores, O and the row
/// maxima and sums as the vector path, then the three bf16 parts of the block's queries (key columns padded to 32)
/// and of a tile's probabilities, and a tile's keys and values as tiles of 1 KiB.
constexpr std::size_t prefill_tile_scratch_floats(int dk, int dv) noexcept {
  const std::size_t kd = pad_to(static_cast<std::size_t>(dk), 32);
  const std::size_t ldv = pad_to(static_cast<std::size_t>(dv), kMaxLanes);
  const std::size_t R = kPrefillMaxRows, B = kPrefillKvTile;
  return pad_to(R * B, 16) + pad_to(R * ldv, 16) + 2 * pad_to(R, 16) + 3 * R * kd / 2 + 3 * R * B / 2 +
         (B / 16) * (kd / 32) * 256 + (B / 32) * (ldv / 16) * 256;
}

/// Floats of one prefill worker's scratch, enough for every op set (rows padded to kMaxLanes).
constexpr std::size_t prefill_scratch_floats(int dk, int dv) noexcept {
  const std::size_t kd = pad_to(static_cast<std::size_t>(dk), kMaxLanes);
  const std::size_t ldv = pad_to(static_cast<std::size_t>(dv), kMaxLanes);
  const std::size_t R = kPrefillMaxRows, B = kPrefillKvTile;
  const std::size_t vec = pad_to(R * kd, 16) + pad_to(R * ldv, 16) + pad_to(R * B, 16) + pad_to(kd * B, 16) +
                          pad_to(B * ldv, 16) + 2 * pad_to(R, 16);
  const std::size_t tiles = prefill_tile_scratch_floats(dk, dv);
  return vec > tiles ? vec : tiles;
}

/// Tokens per block for group size g: as many as keep M = tokens * g <= kPrefillMaxRows.
constexpr int prefill_tokens_per_block(int g) noexcept { return g >= kPrefillMaxRows ? 1 : kPrefillMaxRows / g; }

/// Arguments of one (KV head, token block) unit of prefill work.
struct PrefillArgs {
  const float* q;               // [n_new, n_q, dk], token-major
  float* out;                   // [n_new, n_q, dv]
  int n_q, g, dk, dv, kv_head;  // g: the query heads of this unit (a group, or a chunk of a group above 96)
  int head0;                    // the first of them: query heads head0 .. head0 + g - 1
  int v_stride;                 // elements between value rows (dv, or dk in the latent layout)
  std::int64_t n_old;           // rows of this head before the new tokens; new token t is row n_old + t
  std::int64_t t0, t1;          // token block
  float scale;
  float* colsum;           // nullable: [>= n_old + n_new], += probabilities summed over rows [cs0, cs1) x group
  std::int64_t colsum_ld;  // 0: as above; > 0: one row per query head, colsum + i * colsum_ld for head head0 + i
  std::int64_t cs0, cs1;   // token range whose probabilities are summed
};

}  // namespace kvcache::detail
