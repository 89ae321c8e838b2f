// Exact int8 x int8 -> int32 matrix product on x86 AVX-512 VNNI, as an XLA FFI custom call.
//
// C[m, n] = sum_k A[m, k] * B[k, n], every step modulo 2**32 (two's complement int32), which is
// the opset's semantics (`wrap_int32(a.astype(int64) @ b.astype(int64))`).
//
// Why it is exact. VPDPBUSD multiplies unsigned bytes by signed bytes and adds groups of four
// products to an int32 lane without saturation (|sum of 4| <= 4 * 255 * 128 < 2**31). The signed
// operand A is shifted to unsigned, A + 128 (bytes XOR 0x80), and the shift is undone with the
// column sums of B:  sum_k (A + 128) B = sum_k A B + 128 * colsum(B),  so each accumulator starts
// at -128 * colsum(B). Every operation is an int32 addition, and int32 addition modulo 2**32 is
// associative and commutative: the blocking, the K padding (zero bytes of B), the thread split and
// the order of the groups cannot change a bit. No float unit is involved.
//
// Layout. B is packed into panels of NR = 16 * NV columns, [K/4][NR][4] bytes, so one 64-byte load
// holds 16 columns x 4 k. A is read in place, row by row: one 4-byte group of a row is broadcast to
// all lanes and XORed with 0x80 in the register, so A is never copied (a row tile that would read
// past A's end, short of MR rows or with K not a multiple of 4, is copied zero padded first). The
// micro-kernel keeps MR x NV zmm accumulators in registers (Goto-style blocking: KC k-steps per
// pass, the B micro-panel is reused from cache across the MR-row blocks of a task).
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using aivm::parallel_for;
using aivm::Scratch;

namespace {

constexpr int64_t MR = 8;      // rows per micro-tile
// k per pass (multiple of 4). One pass over all of K up to 4096 lets every tile's accumulators go
// straight to C once (micro_kernel_direct) instead of a load and store of a tile per pass; the B
// micro-panel (KC * NR bytes, up to 192 KB) then lives in L2, which feeds the 3 loads per 24
// VPDPBUSD easily. Against 512: 1024^3 +5%, K = 1536 +2.5%, K = 4096 +7% (2-core EPYC).
constexpr int64_t KC = 4096;
constexpr int64_t MC = 64;     // rows per task (multiple of MR)
constexpr int64_t kSerialMacs = int64_t{1} << 18;  // below this, one thread
constexpr int64_t kSerialPackBytes = int64_t{1} << 18;  // B below this is packed by the calling thread alone

using aivm::round_up;

// The register-blocked product shared by the two micro-kernels: accumulators c<r><v> (MR rows x NV
// vectors of 16 columns) += (A + 128) x B_panel, A's rows at a0..a7 (kc4 groups of 4 bytes each).
#define AIVM_ROW_STEP(r)                                                                    \
  {                                                                                         \
    const __m512i a = _mm512_xor_si512(_mm512_set1_epi32(load_word(a##r + 4 * k)), flip);  \
    c##r##0 = _mm512_dpbusd_epi32(c##r##0, a, b0);                                          \
    if constexpr (NV > 1) c##r##1 = _mm512_dpbusd_epi32(c##r##1, a, b1);                    \
    if constexpr (NV > 2) c##r##2 = _mm512_dpbusd_epi32(c##r##2, a, b2);                    \
  }
#define AIVM_K_LOOP                                                                         \
  const __m512i flip = _mm512_set1_epi32(static_cast<int32_t>(0x80808080u));                \
  const int8_t *a0 = ap, *a1 = ap + lda, *a2 = ap + 2 * lda, *a3 = ap + 3 * lda;            \
  const int8_t *a4 = ap + 4 * lda, *a5 = ap + 5 * lda, *a6 = ap + 6 * lda, *a7 = ap + 7 * lda; \
  for (int64_t k = 0; k < kc4; ++k) {                                                       \
    const __m512i b0 = _mm512_loadu_si512(bp);                                              \
    const __m512i b1 = NV > 1 ? _mm512_loadu_si512(bp + 64) : b0;                           \
    const __m512i b2 = NV > 2 ? _mm512_loadu_si512(bp + 128) : b0;                          \
    AIVM_ROW_STEP(0) AIVM_ROW_STEP(1) AIVM_ROW_STEP(2) AIVM_ROW_STEP(3)                     \
    AIVM_ROW_STEP(4) AIVM_ROW_STEP(5) AIVM_ROW_STEP(6) AIVM_ROW_STEP(7)                     \
    bp += 64 * NV;                                                                          \
  }
#define AIVM_FOR_ROWS(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)

// 16 int32 to p (any alignment): one 512-bit store, or two 256-bit ones when kHalves. On this
// EPYC a 512-bit store takes issue slots from VPDPBUSD (a loop of 24 VPDPBUSD ran 19% slower with
// 3 zmm stores added, 12% with the same bytes as 6 ymm stores). Where a tile's stores are frequent,
// halves are faster: K = 128 products -1 to -3%, fc1 (K = 64) -7% (the two builds alternating in one
// process on the same operands) and +2-3% of onnxruntime's rate in alternating processes; at
// K = 512 they were 1-2% slower there, so tiles of K up to kHalfStoresUpToK only.
constexpr int64_t kHalfStoresUpToK = 256;
template <bool kHalves>
inline void store_vector(int32_t* p, __m512i x) {
  if constexpr (kHalves) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_castsi512_si256(x));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + 8), _mm512_extracti64x4_epi64(x, 1));
  } else {
    _mm512_storeu_si512(p, x);
  }
}

// A 4-byte group of a row (any alignment) as one int32.
inline int32_t load_word(const int8_t* p) {
  int32_t w;
  std::memcpy(&w, p, 4);
  return w;
}

// acc[MR][NV] += (A + 128) x B_panel for MR rows of A (row r at ap + r * lda), in registers; t holds
// the MR x 16NV tile (loaded and stored).
template <int NV>
__attribute__((noinline)) void micro_kernel(const int8_t* __restrict ap, int64_t lda, const int8_t* __restrict bp,
                                            int64_t kc4, int32_t* __restrict t) {
  constexpr int64_t NR = 16 * NV;
#define AIVM_ROW_DECL(r)                                                          \
  __m512i c##r##0 = _mm512_load_si512(t + r * NR);                                \
  __m512i c##r##1 = NV > 1 ? _mm512_load_si512(t + r * NR + 16) : c##r##0;        \
  __m512i c##r##2 = NV > 2 ? _mm512_load_si512(t + r * NR + 32) : c##r##0;
  AIVM_FOR_ROWS(AIVM_ROW_DECL)
#undef AIVM_ROW_DECL
  AIVM_K_LOOP
#define AIVM_ROW_STORE(r)                                                         \
  _mm512_store_si512(t + r * NR, c##r##0);                                        \
  if constexpr (NV > 1) _mm512_store_si512(t + r * NR + 16, c##r##1);             \
  if constexpr (NV > 2) _mm512_store_si512(t + r * NR + 32, c##r##2);
  AIVM_FOR_ROWS(AIVM_ROW_STORE)
#undef AIVM_ROW_STORE
}

// How a ragged panel's vector v reaches C (see micro_kernel_direct).
enum class VectorStore : uint8_t { kFull, kShifted, kSpill, kNone };

// The same product for a whole tile in one pass: the accumulators start at the column starts
// `init` (the same for every row) and go straight to MR full rows of C (stride N), with no tile
// buffer in between. Used when all of K is one pass. kRagged: the panel's last columns lie past N.
// Its full vectors still go straight to C. A partial vector of `left` columns that follows a full
// one is stored whole, `left` lanes later into the row: its lanes after a two-vector permute
// (`shift`) are the full vector's last 16 - left columns and its own first `left`, so the store
// ends exactly at column N and rewrites those columns with the values they already hold. Any other
// partial vector goes to `spill` (MR x NV x 16 int32) for the caller to store under its mask.
// kHalves: C's vectors are stored as 256-bit halves (store_vector).
template <int NV, bool kRagged, bool kHalves>
__attribute__((noinline)) void micro_kernel_direct(const int8_t* __restrict ap, int64_t lda,
                                                   const int8_t* __restrict bp, int64_t kc4,
                                                   const int32_t* __restrict init, int32_t* __restrict c,
                                                   int64_t N, const VectorStore* how, __m512i shift,
                                                   int64_t shift_at, int32_t* __restrict spill) {
  const __m512i i0 = _mm512_loadu_si512(init);
  const __m512i i1 = NV > 1 ? _mm512_loadu_si512(init + 16) : i0;
  const __m512i i2 = NV > 2 ? _mm512_loadu_si512(init + 32) : i0;
#define AIVM_ROW_DECL(r) __m512i c##r##0 = i0, c##r##1 = i1, c##r##2 = i2;
  AIVM_FOR_ROWS(AIVM_ROW_DECL)
#undef AIVM_ROW_DECL
  if constexpr (!kRagged) {
    // The first k group (kc4 >= 1) adds onto the column starts directly, which spares the MR x NV
    // register copies above: digits fc1 (K = 64) -3%, K >= 128 within +-1%. The ragged kernel
    // keeps the copies: with its extra live values this form spills registers, 18% slower.
    const __m512i flip = _mm512_set1_epi32(static_cast<int32_t>(0x80808080u));
    const __m512i b0 = _mm512_loadu_si512(bp);
    const __m512i b1 = NV > 1 ? _mm512_loadu_si512(bp + 64) : b0;
    const __m512i b2 = NV > 2 ? _mm512_loadu_si512(bp + 128) : b0;
#define AIVM_FIRST_STEP(r)                                                                 \
  {                                                                                        \
    const __m512i a = _mm512_xor_si512(_mm512_set1_epi32(load_word(ap + r * lda)), flip); \
    c##r##0 = _mm512_dpbusd_epi32(i0, a, b0);                                              \
    if constexpr (NV > 1) c##r##1 = _mm512_dpbusd_epi32(i1, a, b1);                        \
    if constexpr (NV > 2) c##r##2 = _mm512_dpbusd_epi32(i2, a, b2);                        \
  }
    AIVM_FOR_ROWS(AIVM_FIRST_STEP)
#undef AIVM_FIRST_STEP
    ap += 4;
    bp += 64 * NV;
    kc4 -= 1;
  }
  AIVM_K_LOOP
#define AIVM_STORE(r, v, x, previous)                                                          \
  if (!kRagged || how[v] == VectorStore::kFull)                                               \
    store_vector<kHalves>(c + r * N + 16 * v, x);                                             \
  else if (how[v] == VectorStore::kShifted)                                                   \
    store_vector<kHalves>(c + r * N + shift_at, _mm512_permutex2var_epi32(previous, shift, x)); \
  else if (how[v] == VectorStore::kSpill)                                                     \
    _mm512_store_si512(spill + (r * NV + v) * 16, x);
#define AIVM_ROW_STORE(r)                                    \
  AIVM_STORE(r, 0, c##r##0, c##r##0)                         \
  if constexpr (NV > 1) { AIVM_STORE(r, 1, c##r##1, c##r##0) } \
  if constexpr (NV > 2) { AIVM_STORE(r, 2, c##r##2, c##r##1) }
  AIVM_FOR_ROWS(AIVM_ROW_STORE)
#undef AIVM_ROW_STORE
#undef AIVM_STORE
}
#undef AIVM_FOR_ROWS
#undef AIVM_K_LOOP
#undef AIVM_ROW_STEP

// Four rows of 16 bytes -> 16 columns x 4 k (column c's four bytes at 4c): the panel's interleave.
inline void interleave_4x16(__m128i x0, __m128i x1, __m128i x2, __m128i x3, int8_t* out) {
  const __m128i lo01 = _mm_unpacklo_epi8(x0, x1), hi01 = _mm_unpackhi_epi8(x0, x1);
  const __m128i lo23 = _mm_unpacklo_epi8(x2, x3), hi23 = _mm_unpackhi_epi8(x2, x3);
  __m128i* o = reinterpret_cast<__m128i*>(out);
  _mm_storeu_si128(o + 0, _mm_unpacklo_epi16(lo01, lo23));  // columns 0-3, k 0-3 each
  _mm_storeu_si128(o + 1, _mm_unpackhi_epi16(lo01, lo23));  // columns 4-7
  _mm_storeu_si128(o + 2, _mm_unpacklo_epi16(hi01, hi23));  // columns 8-11
  _mm_storeu_si128(o + 3, _mm_unpackhi_epi16(hi01, hi23));  // columns 12-15
}

// Columns [jr, jr + NR) of B (K, N) row-major int8 -> one panel [Kp/4][NR][4], zero past K and N.
template <int NV>
void pack_b_panel(const int8_t* b, int64_t K, int64_t N, int64_t jr, int64_t Kp, int8_t* dst) {
  constexpr int64_t NR = 16 * NV;
  if (jr + NR <= N && K == Kp) {  // no edge: plain loads
    for (int64_t k4 = 0; k4 < Kp / 4; ++k4)
      for (int64_t v = 0; v < NV; ++v) {
        const int8_t* src = b + 4 * k4 * N + jr + 16 * v;
        interleave_4x16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)),
                        _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + N)),
                        _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * N)),
                        _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 3 * N)), dst + (k4 * NV + v) * 64);
      }
    return;
  }
  // A ragged edge: masked loads (lanes past N read nothing) and zero rows past K.
  __mmask16 cols[NV];
  for (int64_t v = 0; v < NV; ++v) cols[v] = aivm::lanes16_left(std::max<int64_t>(0, N - jr - 16 * v));
  auto row = [&](int64_t k, int64_t v) {
    return k < K ? _mm_maskz_loadu_epi8(cols[v], b + k * N + jr + 16 * v) : _mm_setzero_si128();
  };
  for (int64_t k4 = 0; k4 < Kp / 4; ++k4)
    for (int64_t v = 0; v < NV; ++v)
      interleave_4x16(row(4 * k4, v), row(4 * k4 + 1, v), row(4 * k4 + 2, v), row(4 * k4 + 3, v),
                      dst + (k4 * NV + v) * 64);
}

// The column starts of one packed panel: init[j] = -128 * sum_k B[k, jr + j] modulo 2**32, which
// undoes the +128 shift of A; zero for the padding. Summed from the panel itself with VPDPBUSD
// (ones x the panel's bytes: exact int32 groups of four, wrapping adds), so a large K wraps as the
// accumulators do; -128 x is -(x << 7) modulo 2**32.
template <int NV>
void panel_init(const int8_t* panel, int64_t Kp, int32_t* init) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i sums[NV];
  for (int64_t v = 0; v < NV; ++v) sums[v] = _mm512_setzero_si512();
  for (int64_t k4 = 0; k4 < Kp / 4; ++k4)
    for (int64_t v = 0; v < NV; ++v)
      sums[v] = _mm512_dpbusd_epi32(sums[v], ones, _mm512_loadu_si512(panel + (k4 * NV + v) * 64));
  for (int64_t v = 0; v < NV; ++v)
    _mm512_storeu_si512(init + 16 * v, _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sums[v], 7)));
}

// Panel p of B (columns [p NR, p NR + NR)) into `panels`, and its column starts into `init`.
template <int NV>
void pack_b_with_init(const int8_t* b, int64_t K, int64_t N, int64_t Kp, int64_t p, int8_t* panels, int32_t* init) {
  constexpr int64_t NR = 16 * NV;
  pack_b_panel<NV>(b, K, N, p * NR, Kp, panels + p * NR * Kp);
  panel_init<NV>(panels + p * NR * Kp, Kp, init + p * NR);
}

// MR rows of A (rows >= rows_valid are zero) over k in [pc, pc + kc) -> an MR x kc block (stride
// kc), zero past K: a row tile the micro-kernel may not read in place.
void copy_a_tile(const int8_t* a, int64_t K, int64_t rows_valid, int64_t pc, int64_t kc, int8_t* dst) {
  const int64_t kv = std::min(kc, K - pc);
  for (int64_t r = 0; r < MR; ++r) {
    int8_t* row = dst + r * kc;
    if (r < rows_valid) std::memcpy(row, a + r * K + pc, kv);
    std::memset(row + (r < rows_valid ? kv : 0), 0, r < rows_valid ? kc - kv : kc);
  }
}

thread_local Scratch a_scratch, b_scratch, row_scratch, acc_scratch, packed_scratch, epilogue_scratch;

// C rows [m0, m1), column panels [p0, p1) of one (M, K) x (K, N) product, from a packed B;
// `a` and `c` point at row m0 of A (rows of K bytes) and of C (rows of N int32).
template <int NV>
void compute_block(const int8_t* a, const int8_t* bpk, const int32_t* init, int32_t* c, int64_t K, int64_t N,
                   int64_t Kp, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  constexpr int64_t NR = 16 * NV;
  const int64_t rows = m1 - m0;
  // Row tiles are read in place, except the last one when it is short of MR rows or when K is not
  // a multiple of 4 (its last 4-byte group would read past A's end): that one is copied.
  const int64_t last = (rows - 1) / MR * MR;
  const bool copy_last = rows - last < MR || K != Kp;
  int8_t* last_tile = reinterpret_cast<int8_t*>(a_scratch.get(MR * std::min(KC, Kp)));
  alignas(64) int32_t tile[MR * NR];
  for (int64_t pc = 0; pc < Kp; pc += KC) {
    const int64_t kc = std::min(KC, Kp - pc);
    if (copy_last) copy_a_tile(a + last * K, K, rows - last, pc, kc, last_tile);
    for (int64_t jr = p0 * NR; jr < p1 * NR; jr += NR) {
      __mmask16 masks[NV];
      VectorStore how[NV];
      __m512i shift = _mm512_setzero_si512();
      int64_t shift_at = 0;
      bool spills = false;
      for (int64_t v = 0; v < NV; ++v) {
        const int64_t left = N - jr - 16 * v;
        masks[v] = left >= 16 ? 0xFFFF : left <= 0 ? 0 : static_cast<__mmask16>((1u << left) - 1);
        how[v] = left >= 16 ? VectorStore::kFull : left <= 0 ? VectorStore::kNone : VectorStore::kSpill;
        if (how[v] == VectorStore::kSpill && v > 0 && how[v - 1] == VectorStore::kFull) {
          how[v] = VectorStore::kShifted;  // lanes: previous[left..15], then this vector's [0, left)
          shift = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(left)),
                                   _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
          shift_at = 16 * v + left - 16;
        }
        spills = spills || how[v] == VectorStore::kSpill;
      }
      const int8_t* bp = bpk + jr * Kp + pc * NR;
      const bool one_pass = kc == Kp, ragged = jr + NR > N;
      for (int64_t ir = 0; ir < rows; ir += MR) {
        const int64_t mv = std::min(MR, rows - ir);
        const bool copied = copy_last && ir == last;
        const int8_t* ap = copied ? last_tile : a + ir * K + pc;
        const int64_t lda = copied ? kc : K;
        int32_t* crow = c + ir * N + jr;
        if (one_pass && mv == MR) {
          const bool halves = kc <= kHalfStoresUpToK;
          if (!ragged) {
            (halves ? micro_kernel_direct<NV, false, true> : micro_kernel_direct<NV, false, false>)(
                ap, lda, bp, kc / 4, init + jr, crow, N, how, shift, shift_at, tile);
            continue;
          }
          (halves ? micro_kernel_direct<NV, true, true> : micro_kernel_direct<NV, true, false>)(
              ap, lda, bp, kc / 4, init + jr, crow, N, how, shift, shift_at, tile);
          if (spills)
            for (int64_t r = 0; r < MR; ++r)
              for (int64_t v = 0; v < NV; ++v)
                if (how[v] == VectorStore::kSpill)
                  _mm512_mask_storeu_epi32(crow + r * N + 16 * v, masks[v], _mm512_load_si512(tile + (r * NV + v) * 16));
          continue;
        }
        for (int64_t r = 0; r < MR; ++r)
          for (int64_t v = 0; v < NV; ++v) {
            __m512i start = pc == 0 ? _mm512_maskz_loadu_epi32(masks[v], init + jr + 16 * v)
                            : r < mv ? _mm512_maskz_loadu_epi32(masks[v], crow + r * N + 16 * v)
                                     : _mm512_setzero_si512();
            _mm512_store_si512(tile + r * NR + 16 * v, start);
          }
        micro_kernel<NV>(ap, lda, bp, kc / 4, tile);
        for (int64_t r = 0; r < mv; ++r)
          for (int64_t v = 0; v < NV; ++v)
            _mm512_mask_storeu_epi32(crow + r * N + 16 * v, masks[v], _mm512_load_si512(tile + r * NR + 16 * v));
      }
    }
  }
}

// Implicit im2col for a 2-D convolution (NHWC input, zero padding): row m = (b, i, j) of the virtual
// A is the (p, q, c)-ordered patch under output pixel (i, j), K = KH * KW * C; only data movement.
struct ConvRows {
  int64_t H, W, C, KH, KW, sh, sw, top, left, Ho, Wo;
  // Rows [m0, m1) into a thread-local buffer; returns it.
  const int8_t* gather_rows(const int8_t* x, int64_t m0, int64_t m1) const {
    const int64_t K = KH * KW * C, span = KW * C;  // one kernel row: KW pixels, contiguous in NHWC
    int8_t* out = reinterpret_cast<int8_t*>(row_scratch.get((m1 - m0) * K));
    int64_t b = m0 / (Ho * Wo), i = (m0 / Wo) % Ho, j = m0 % Wo;  // then stepped, not divided
    for (int64_t m = m0; m < m1; ++m) {
      int8_t* row = out + (m - m0) * K;
      const int64_t z0 = j * sw - left;
      const int64_t qa = std::max<int64_t>(0, -z0), qb = std::min<int64_t>(KW, W - z0);  // in-bounds q
      for (int64_t p = 0; p < KH; ++p) {
        const int64_t y = i * sh + p - top;
        int8_t* dst = row + p * span;
        if (y < 0 || y >= H || qa >= qb) {
          copy_bytes(dst, nullptr, span);
          continue;
        }
        if (qa > 0) copy_bytes(dst, nullptr, qa * C);
        copy_bytes(dst + qa * C, x + ((b * H + y) * W + z0 + qa) * C, (qb - qa) * C);
        if (qb < KW) copy_bytes(dst + qb * C, nullptr, (KW - qb) * C);
      }
      if (++j == Wo) {
        j = 0;
        if (++i == Ho) i = 0, ++b;
      }
    }
    return out;
  }

  // n bytes from src, or zeros when src is null; masked 64-byte moves below 64 bytes (no libc call).
  static void copy_bytes(int8_t* dst, const int8_t* src, int64_t n) {
    if (n >= 64) {
      if (src != nullptr)
        std::memcpy(dst, src, n);
      else
        std::memset(dst, 0, n);
      return;
    }
    const __mmask64 k = (__mmask64{1} << n) - 1;
    _mm512_mask_storeu_epi8(dst, k, src != nullptr ? _mm512_maskz_loadu_epi8(k, src) : _mm512_setzero_si512());
  }
};

// The fused dense epilogue: y = saturate((wrap32(acc + bias) * M + 2**(s-1)) >> s) per column, the
// opset's bias_add then requantize (product and rounding in int64: |x M| <= 2**62, the rounding term
// <= 2**61, so nothing overflows), then relu as a lower bound of 0. Same integers as the ops one by one.
struct Epilogue {
  const int32_t* bias;
  const int64_t *multiplier, *half, *shift;  // per column; in the calling thread's scratch
  int64_t lo, hi;
  int8_t* out_s8;    // one of the two is set
  int32_t* out_s32;
};

// 8 columns: int64 (wrap32(acc + bias) * M + half) >> s, clamped to [lo, hi].
inline __m512i epilogue8(__m256i x, const int64_t* mult, const int64_t* half, const int64_t* shift, __mmask8 k,
                         __m512i lo, __m512i hi) {
  const __m512i wide = _mm512_cvtepi32_epi64(x);
  const __m512i product = _mm512_add_epi64(_mm512_mullo_epi64(wide, _mm512_maskz_loadu_epi64(k, mult)),
                                           _mm512_maskz_loadu_epi64(k, half));
  const __m512i y = _mm512_srav_epi64(product, _mm512_maskz_loadu_epi64(k, shift));
  return _mm512_min_epi64(_mm512_max_epi64(y, lo), hi);
}

// Columns [n0, n1) of one row, 16 at a time (masked at the end).
template <typename Out>
void epilogue_row(const int32_t* acc, const Epilogue& e, Out* out, int64_t n0, int64_t n1) {
  const __m512i lo = _mm512_set1_epi64(e.lo), hi = _mm512_set1_epi64(e.hi);
  for (int64_t n = n0; n < n1; n += 16) {
    const int64_t left = n1 - n;
    const __mmask16 k = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
    const __m512i x = _mm512_add_epi32(_mm512_maskz_loadu_epi32(k, acc + n), _mm512_maskz_loadu_epi32(k, e.bias + n));
    const __mmask8 k0 = static_cast<__mmask8>(k), k1 = static_cast<__mmask8>(k >> 8);
    const __m512i y0 = epilogue8(_mm512_castsi512_si256(x), e.multiplier + n, e.half + n,
                                 e.shift + n, k0, lo, hi);
    const __m512i y1 = epilogue8(_mm512_extracti64x4_epi64(x, 1), e.multiplier + n + 8,
                                 e.half + n + 8, e.shift + n + 8, k1, lo, hi);
    if constexpr (sizeof(Out) == 1) {
      const __m128i bytes = _mm_unpacklo_epi64(_mm512_cvtepi64_epi8(y0), _mm512_cvtepi64_epi8(y1));
      _mm_mask_storeu_epi8(out + n, k, bytes);
    } else {
      const __m512i words = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(y0)),
                                               _mm512_cvtepi64_epi32(y1), 1);
      _mm512_mask_storeu_epi32(out + n, k, words);
    }
  }
}

// Output rows [m0, m1), columns [n0, n1); `acc` points at the int32 products of row m0.
void apply_epilogue(const Epilogue& e, const int32_t* acc, int64_t N, int64_t m0, int64_t m1, int64_t n0,
                    int64_t n1) {
  for (int64_t m = m0; m < m1; ++m) {
    if (e.out_s8 != nullptr)
      epilogue_row(acc + (m - m0) * N, e, e.out_s8 + m * N, n0, n1);
    else
      epilogue_row(acc + (m - m0) * N, e, e.out_s32 + m * N, n0, n1);
  }
}

// A shared B packed ahead of time (a program's constant weights, packed once when it is compiled):
// exactly the bytes pack_b_panel<NV> and panel_init would write, so the product is the same.
struct Prepacked {
  const int8_t* panels;  // (Np / NR) panels of [Kp/4][NR][4] bytes
  const int32_t* init;   // Np column starts, -128 colsum(B) modulo 2**32 (zero past N)
};

template <int NV>
void gemm(ffi::ThreadPool& pool, const int8_t* a, const int8_t* b, int32_t* c, int64_t batch, bool b_batched,
          bool a_shared, int64_t M, int64_t K, int64_t N, const Epilogue* epilogue = nullptr,
          const ConvRows* conv = nullptr, const Prepacked* prepacked = nullptr) {
  constexpr int64_t NR = 16 * NV;
  const int64_t Kp = round_up(K, 4), Np = round_up(N, NR), panels = Np / NR;
  const bool small = batch * M * K * N < kSerialMacs;
  const int64_t threads = small ? 1 : std::max<int64_t>(1, pool.num_threads());
  const bool serial = threads == 1;
  if (b_batched) {  // one task per product: pack its B, then all its rows
    auto one = [&](int64_t i) {
      int8_t* bpk = reinterpret_cast<int8_t*>(b_scratch.get(Kp * Np + 4 * Np));
      int32_t* init = reinterpret_cast<int32_t*>(bpk + Kp * Np);
      const int8_t* bi = b + i * K * N;
      for (int64_t p = 0; p < panels; ++p) pack_b_with_init<NV>(bi, K, N, Kp, p, bpk, init);
      compute_block<NV>(a + (a_shared ? 0 : i * M * K), bpk, init, c + i * M * N, K, N, Kp, 0, M, 0, panels);
    };
    parallel_for(pool, batch, serial ? 0 : threads - 1, one);
    return;
  }
  const int64_t rows = batch * M;  // leading axes of A flatten into rows; B is shared
  // Packed B and the column starts live in the calling thread's scratch; helpers only read them,
  // and this thread waits for every task before returning.
  const int8_t* bpk;
  const int32_t* init;
  if (prepacked != nullptr) {
    bpk = prepacked->panels;
    init = prepacked->init;
  } else {
    int8_t* packed = reinterpret_cast<int8_t*>(packed_scratch.get(Kp * Np + 4 * Np));
    int32_t* starts = reinterpret_cast<int32_t*>(packed + Kp * Np);
    auto pack = [&](int64_t p) { pack_b_with_init<NV>(b, K, N, Kp, p, packed, starts); };
    const bool pack_serial = serial || Kp * Np < kSerialPackBytes;  // a fork-join costs more than small packing
    parallel_for(pool, panels, pack_serial ? 0 : threads - 1, pack);
    bpk = packed;
    init = starts;
  }
  // Tasks: MC-row chunks x groups of column panels, at least 2 per thread when the shape allows.
  const int64_t chunks = (rows + MC - 1) / MC;
  const int64_t groups = serial ? 1 : std::min(panels, std::max<int64_t>(1, (2 * threads + chunks - 1) / chunks));
  const int64_t per_group = (panels + groups - 1) / groups;
  auto block = [&](int64_t i) {
    const int64_t chunk = i / groups, group = i % groups;
    const int64_t m0 = chunk * MC, m1 = std::min(rows, (chunk + 1) * MC);
    const int64_t p0 = group * per_group, p1 = std::min(panels, (group + 1) * per_group);
    const int8_t* a_rows = conv == nullptr ? a + m0 * K : conv->gather_rows(a, m0, m1);
    if (epilogue == nullptr) {
      compute_block<NV>(a_rows, bpk, init, c + m0 * N, K, N, Kp, m0, m1, p0, p1);
    } else {  // int32 products in a cache-resident per-thread block, then straight to the output
      int32_t* acc = reinterpret_cast<int32_t*>(acc_scratch.get(sizeof(int32_t) * (m1 - m0) * N));
      compute_block<NV>(a_rows, bpk, init, acc, K, N, Kp, m0, m1, p0, p1);
      apply_epilogue(*epilogue, acc, N, m0, m1, p0 * NR, std::min(N, p1 * NR));
    }
  };
  parallel_for(pool, chunks * groups, serial ? 0 : threads - 1, block);
}

// int32 A x int8 B -> int32, modulo 2**32, by byte planes of A (the attention product P V, where P
// is int32). A = sum_j 2**(8j) a_j with a_0..a_2 the unsigned bytes and a_3 the signed top byte, so
//   A B = sum_{j<3} 2**(8j) (a_j B) + 2**24 (a_3 B)   (mod 2**32).
// Unsigned planes enter the int8 kernel as a_j - 128 and get 128 colsum(B) back; a plane that is
// all zero contributes nothing and is skipped (a value check, not an assumption).
thread_local Scratch plane_scratch, plane_acc_scratch;

template <int NV>
void int32_product(const int32_t* a, const int8_t* b, int32_t* c, int64_t M, int64_t K, int64_t N) {
  constexpr int64_t NR = 16 * NV;
  const int64_t Kp = round_up(K, 4), Np = round_up(N, NR), panels = Np / NR;
  int8_t* bpk = reinterpret_cast<int8_t*>(b_scratch.get(Kp * Np + 4 * Np));
  int32_t* init = reinterpret_cast<int32_t*>(bpk + Kp * Np);  // -128 colsum(B)
  for (int64_t p = 0; p < panels; ++p) pack_b_with_init<NV>(b, K, N, Kp, p, bpk, init);
  int8_t* plane = reinterpret_cast<int8_t*>(plane_scratch.get(M * K));
  int32_t* acc = reinterpret_cast<int32_t*>(plane_acc_scratch.get(sizeof(int32_t) * M * N));
  uint32_t* out = reinterpret_cast<uint32_t*>(c);
  std::fill(out, out + M * N, 0u);
  uint32_t bits = 0;  // which byte planes hold a nonzero byte
  for (int64_t i = 0; i < M * K; ++i) bits |= static_cast<uint32_t>(a[i]);
  for (int j = 0; j < 4; ++j) {
    if (((bits >> (8 * j)) & 0xFF) == 0) continue;
    const uint32_t shift = 8 * j, offset = j < 3 ? 128u : 0u;  // unsigned planes enter as byte - 128
    for (int64_t i = 0; i < M * K; ++i)
      plane[i] = static_cast<int8_t>(static_cast<uint8_t>(((static_cast<uint32_t>(a[i]) >> shift) & 0xFF) - offset));
    compute_block<NV>(plane, bpk, init, acc, K, N, Kp, 0, M, 0, panels);
    // Unsigned planes went in as a_j - 128, so acc = a_j B - 128 colsum(B) = a_j B + init: take init off.
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        const uint32_t product = static_cast<uint32_t>(acc[m * N + n]) - (j < 3 ? static_cast<uint32_t>(init[n]) : 0u);
        out[m * N + n] += product << (8 * j);
      }
  }
}

// Column panels of 16 * NV: the narrowest padding of N, 48 columns on a tie (more work per A
// broadcast). aivm_jax/ops/_gemm.py::pack_weights follows the same rule.
int panel_vectors(int64_t N) { return N <= 16 ? 1 : (N <= 32 || round_up(N, 32) < round_up(N, 48)) ? 2 : 3; }

ffi::Error Int32Int8MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> a, ffi::Buffer<ffi::S8> b,
                               ffi::ResultBuffer<ffi::S32> c) {
  const auto ad = a.dimensions(), bd = b.dimensions();
  if (ad.size() < 2 || ad.size() != bd.size() || ad.back() != bd[bd.size() - 2])
    return ffi::Error::InvalidArgument("aivm_int32_int8_matmul: operands do not contract");
  int64_t batch = 1;
  for (size_t i = 0; i + 2 < ad.size(); ++i) {
    if (ad[i] != bd[i]) return ffi::Error::InvalidArgument("aivm_int32_int8_matmul: batch axes differ");
    batch *= ad[i];
  }
  const int64_t M = ad[ad.size() - 2], K = ad.back(), N = bd.back();
  int32_t* out = c->typed_data();
  if (batch * M * N == 0) return ffi::Error::Success();
  if (K == 0) {
    std::memset(out, 0, sizeof(int32_t) * batch * M * N);
    return ffi::Error::Success();
  }
  const int32_t* ap = a.typed_data();
  const int8_t* bp = b.typed_data();
  const int vectors = panel_vectors(N);
  auto one = [&](int64_t i) {
    if (vectors == 1)
      int32_product<1>(ap + i * M * K, bp + i * K * N, out + i * M * N, M, K, N);
    else if (vectors == 2)
      int32_product<2>(ap + i * M * K, bp + i * K * N, out + i * M * N, M, K, N);
    else
      int32_product<3>(ap + i * M * K, bp + i * K * N, out + i * M * N, M, K, N);
  };
  parallel_for(pool, batch, aivm::helpers_for(pool, batch * M * K * N, kSerialMacs), one);
  return ffi::Error::Success();
}

ffi::Error Int8MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S8> a, ffi::Buffer<ffi::S8> b,
                          ffi::ResultBuffer<ffi::S32> c) {
  const auto ad = a.dimensions(), bd = b.dimensions();
  if (ad.size() < 2 || bd.size() < 2 || ad.back() != bd[bd.size() - 2])
    return ffi::Error::InvalidArgument("aivm_int8_matmul: operands do not contract");
  // Leading axes of B must be a prefix of A's (vmap adds a leading axis to both, or a size-1 one
  // to an unbatched operand); each B then multiplies a contiguous block of A's rows.
  const size_t b_lead = bd.size() - 2, a_lead = ad.size() - 2;
  if (b_lead > a_lead) return ffi::Error::InvalidArgument("aivm_int8_matmul: B has more leading axes than A");
  int64_t b_batch = 1, rows = ad[a_lead];
  for (size_t i = 0; i < b_lead; ++i) {
    if (bd[i] != ad[i] && bd[i] != 1 && ad[i] != 1) return ffi::Error::InvalidArgument("aivm_int8_matmul: batch axes differ");
    b_batch *= bd[i];
  }
  bool a_shared = b_batch > 1;  // A's leading axes all 1 (vmap over B only): every B reads the same A
  for (size_t i = 0; i < b_lead; ++i) a_shared = a_shared && ad[i] == 1;
  if (b_batch != 1 && !a_shared)
    for (size_t i = 0; i < b_lead; ++i)
      if (bd[i] != ad[i]) return ffi::Error::InvalidArgument("aivm_int8_matmul: batch axes differ");
  for (size_t i = b_batch == 1 ? 0 : b_lead; i < a_lead; ++i) rows *= ad[i];
  const int64_t K = ad.back(), N = bd.back();
  const int64_t batch = b_batch;  // products with their own B; `rows` rows of A each
  const bool b_batched = b_batch > 1;
  const int64_t M = rows;
  int32_t* out = c->typed_data();
  int64_t out_size = N;
  for (size_t i = 0; i + 1 < ad.size(); ++i) out_size *= (i < b_lead && ad[i] == 1) ? bd[i] : ad[i];
  if (out_size == 0) return ffi::Error::Success();
  if (K == 0) {
    std::memset(out, 0, sizeof(int32_t) * out_size);
    return ffi::Error::Success();
  }
  const int8_t* ap = a.typed_data();
  const int8_t* bp = b.typed_data();
  switch (panel_vectors(N)) {
    case 1:
      gemm<1>(pool, ap, bp, out, batch, b_batched, a_shared, M, K, N);
      break;
    case 2:
      gemm<2>(pool, ap, bp, out, batch, b_batched, a_shared, M, K, N);
      break;
    default:
      gemm<3>(pool, ap, bp, out, batch, b_batched, a_shared, M, K, N);
  }
  return ffi::Error::Success();
}

// The epilogue's per-column constants and output from the custom call's operands.
ffi::Error make_epilogue(ffi::Buffer<ffi::S32>& bias, ffi::Buffer<ffi::S32>& multiplier, ffi::Buffer<ffi::S32>& shift,
                         ffi::Result<ffi::AnyBuffer>& out, bool relu, int64_t N, Epilogue& e) {
  if (bias.element_count() != N || multiplier.element_count() != N || shift.element_count() != N)
    return ffi::Error::InvalidArgument("aivm_int8_dense: bias, multiplier and shift must have N values");
  e.bias = bias.typed_data();
  int64_t* columns = reinterpret_cast<int64_t*>(epilogue_scratch.get(3 * sizeof(int64_t) * N));
  int64_t *mult = columns, *half = columns + N, *shifts = columns + 2 * N;
  e.multiplier = mult, e.half = half, e.shift = shifts;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t sh = shift.typed_data()[n];
    if (sh < 0 || sh > 62) return ffi::Error::InvalidArgument("aivm_int8_dense: shift outside [0, 62]");
    mult[n] = multiplier.typed_data()[n];
    shifts[n] = sh;
    half[n] = sh > 0 ? int64_t{1} << (sh - 1) : 0;
  }
  e.out_s8 = nullptr;
  e.out_s32 = nullptr;
  if (out->element_type() == ffi::DataType::S8) {
    e.out_s8 = reinterpret_cast<int8_t*>(out->untyped_data());
    e.lo = -128, e.hi = 127;
  } else if (out->element_type() == ffi::DataType::S32) {
    e.out_s32 = reinterpret_cast<int32_t*>(out->untyped_data());
    e.lo = INT32_MIN, e.hi = INT32_MAX;
  } else {
    return ffi::Error::InvalidArgument("aivm_int8_dense: the output must be int8 or int32");
  }
  if (relu) e.lo = 0;
  return ffi::Error::Success();
}

void run_dense(ffi::ThreadPool& pool, const int8_t* a, const int8_t* b, int64_t rows, int64_t K, int64_t N,
               const Epilogue& e, const ConvRows* conv, const Prepacked* prepacked = nullptr) {
  if (rows * N == 0) return;
  if (K == 0) {  // the zero product
    const std::vector<int32_t> zeros(rows * N, 0);
    apply_epilogue(e, zeros.data(), N, 0, rows, 0, N);
    return;
  }
  switch (panel_vectors(N)) {
    case 1:
      gemm<1>(pool, a, b, nullptr, 1, false, false, rows, K, N, &e, conv, prepacked);
      break;
    case 2:
      gemm<2>(pool, a, b, nullptr, 1, false, false, rows, K, N, &e, conv, prepacked);
      break;
    default:
      gemm<3>(pool, a, b, nullptr, 1, false, false, rows, K, N, &e, conv, prepacked);
  }
}

// dense: int8 (..., K) x int8 (K, N) -> bias_add -> requantize -> [relu], int8 or int32 (..., N).
ffi::Error Int8DenseImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S8> a, ffi::Buffer<ffi::S8> b,
                         ffi::Buffer<ffi::S32> bias, ffi::Buffer<ffi::S32> multiplier, ffi::Buffer<ffi::S32> shift,
                         ffi::Result<ffi::AnyBuffer> out, bool relu) {
  const auto ad = a.dimensions(), bd = b.dimensions();
  if (ad.size() < 2 || bd.size() != 2 || ad.back() != bd[0])
    return ffi::Error::InvalidArgument("aivm_int8_dense: operands do not contract");
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < ad.size(); ++i) rows *= ad[i];
  Epilogue e;
  if (ffi::Error error = make_epilogue(bias, multiplier, shift, out, relu, bd[1], e); error.failure()) return error;
  run_dense(pool, a.typed_data(), b.typed_data(), rows, bd[0], bd[1], e, nullptr);
  return ffi::Error::Success();
}

// dense with B packed ahead of time: a (..., K) x packed panels of a (K, N) matrix, then the epilogue.
ffi::Error Int8DensePackedImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S8> a, ffi::Buffer<ffi::S8> panels,
                               ffi::Buffer<ffi::S32> init, ffi::Buffer<ffi::S32> bias,
                               ffi::Buffer<ffi::S32> multiplier, ffi::Buffer<ffi::S32> shift,
                               ffi::Result<ffi::AnyBuffer> out, bool relu) {
  const auto ad = a.dimensions();
  const int64_t K = ad.size() == 0 ? 0 : ad.back(), N = bias.element_count();
  const int64_t NR = 16 * panel_vectors(N), Kp = round_up(K, 4), Np = round_up(N, NR);
  if (ad.size() < 2 || K < 1 || N < 1 || panels.element_count() != Kp * Np || init.element_count() != Np)
    return ffi::Error::InvalidArgument("aivm_int8_dense_packed: the packed weights do not fit the operands");
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < ad.size(); ++i) rows *= ad[i];
  Epilogue e;
  if (ffi::Error error = make_epilogue(bias, multiplier, shift, out, relu, N, e); error.failure()) return error;
  const Prepacked prepacked{panels.typed_data(), init.typed_data()};
  run_dense(pool, a.typed_data(), nullptr, rows, K, N, e, nullptr, &prepacked);
  return ffi::Error::Success();
}

// conv dense: int8 NHWC x int8 (KH*KW*C, O) weights, zero padding, then the dense epilogue -> (B, Ho, Wo, O).
ffi::Error Int8ConvDenseImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S8> x, ffi::Buffer<ffi::S8> w,
                             ffi::Buffer<ffi::S32> bias, ffi::Buffer<ffi::S32> multiplier,
                             ffi::Buffer<ffi::S32> shift, ffi::Result<ffi::AnyBuffer> out, bool relu, int64_t kh,
                             int64_t kw, int64_t sh, int64_t sw, int64_t top, int64_t bottom, int64_t left,
                             int64_t right) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 4 || wd.size() != 2 || kh < 1 || kw < 1 || sh < 1 || sw < 1 || wd[0] != kh * kw * xd[3])
    return ffi::Error::InvalidArgument("aivm_int8_conv_dense: bad shapes or geometry");
  ConvRows conv{xd[1], xd[2], xd[3], kh, kw, sh, sw, top, left, 0, 0};
  conv.Ho = (xd[1] + top + bottom - kh) / sh + 1;
  conv.Wo = (xd[2] + left + right - kw) / sw + 1;
  if (conv.Ho < 1 || conv.Wo < 1) return ffi::Error::InvalidArgument("aivm_int8_conv_dense: empty output");
  Epilogue e;
  if (ffi::Error error = make_epilogue(bias, multiplier, shift, out, relu, wd[1], e); error.failure()) return error;
  run_dense(pool, x.typed_data(), w.typed_data(), xd[0] * conv.Ho * conv.Wo, wd[0], wd[1], e, &conv);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AivmInt8MatmulVnni, Int8MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AivmInt32Int8MatmulVnni, Int32Int8MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AivmInt8DenseVnni, Int8DenseImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AivmInt8DensePackedVnni, Int8DensePackedImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AivmInt8ConvDenseVnni, Int8ConvDenseImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("relu")
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("top")
                                  .Attr<int64_t>("bottom")
                                  .Attr<int64_t>("left")
                                  .Attr<int64_t>("right"));

// 1 when this CPU runs the kernels' instructions (AVX-512 F, BW, DQ and VNNI), else 0.
// Compiled for the baseline ISA: it runs before anything knows the CPU can take AVX-512.
extern "C" __attribute__((target("arch=x86-64"))) int aivm_int8_matmul_vnni_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni");
}
