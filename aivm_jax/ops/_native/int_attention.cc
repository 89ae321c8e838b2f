// Attention's score-to-context chain in one XLA FFI custom call, exactly the opset's ops in turn
// (aivm_jax/ops/reference.py):
//   s = batch_matmul(q, k_t)                    int8 (.., Tq, D) x int8 (.., D, Tk) -> int32, mod 2**32
//   z = requantize(s, M, shift) to int32        half up, int64 product, saturated (per-tensor M, shift)
//   p = softmax(z, mask, table, causal, out_bits)   (int_softmax_row.h)
//   c = batch_matmul(p, v)                      int32 (.., Tq, Tk) x int8 (.., Tk, Dv) -> int32, mod 2**32
// one query row at a time, so s, z and p stay in the cache instead of making four passes over a
// (B, H, Tq, Tk) int32 tensor.
//
// Why it is exact.
//  * s: VPDPBUSD adds groups of four u8 x s8 products to int32 lanes without saturation. q is
//    shifted to unsigned (q + 128, byte XOR 0x80) and each lane starts at -128 colsum(k_j), which
//    takes the shift back off: sum_d (q_d + 128) k_dj - 128 sum_d k_dj = sum_d q_d k_dj. Padding
//    of D to a multiple of 4 uses zero bytes of k. Every step is int32 addition modulo 2**32
//    (the column sums too, formed in uint32), which is the opset's wrap-around.
//  * z: |s| < 2**31 and |M| <= 2**31, so s M + 2**(shift-1) fits int64 (VPMULLQ is exact there);
//    the arithmetic shift is the floor, and VPMOVSQD (in a register) saturates to int32 as
//    requantize does.
//  * c: 0 <= p <= 2**out_bits <= 2**30, so p is at most four unsigned bytes p = sum_i 2**(8i) p_i.
//    Each byte plane multiplies v exactly with VPDPBUSD (u8 x s8, groups of four keys), and
//    c = sum_i 2**(8i) (p_i v) modulo 2**32 is the int32 product's wrap-around. Keys a query does
//    not keep have p = 0 and are skipped, which adds nothing.
// A second target, aivm_int_attention_int8, ends each context row with the requantize to int8
// that follows it in a transformer (rescale.h).
// Rows are independent, and within a row every sum is modular int32 addition, so blocking and the
// thread split cannot change a bit. No float unit is involved.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "int_softmax_row.h"
#include "parallel.h"
#include "rescale.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kQueriesPerTask = 32;

using aivm::round_up;

thread_local aivm::Scratch k_scratch, v_scratch, row_scratch;

struct Shapes {
  int64_t tq, tk, d, dv;   // queries, keys, q/k depth, v width
  int64_t g4, tkp, dvp;    // D in groups of 4, keys padded to 16, Dv padded to 16
};

// Four rows of 16 bytes (row r at src + r * stride, `cols` of them valid, `rows` rows valid; the
// rest read as zero) -> 16 groups of 4 bytes, group c = (row0[c], row1[c], row2[c], row3[c]).
inline void interleave4(const int8_t* src, int64_t stride, int64_t rows, int64_t cols, int8_t* out) {
  const __mmask16 valid = aivm::lanes16_left(cols);
  __m128i r[4];
  for (int64_t i = 0; i < 4; ++i)
    r[i] = i < rows ? _mm_maskz_loadu_epi8(valid, src + i * stride) : _mm_setzero_si128();
  const __m128i t0 = _mm_unpacklo_epi8(r[0], r[1]), t1 = _mm_unpackhi_epi8(r[0], r[1]);
  const __m128i t2 = _mm_unpacklo_epi8(r[2], r[3]), t3 = _mm_unpackhi_epi8(r[2], r[3]);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_unpacklo_epi16(t0, t2));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), _mm_unpackhi_epi16(t0, t2));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 32), _mm_unpacklo_epi16(t1, t3));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 48), _mm_unpackhi_epi16(t1, t3));
}

// k_t (D, Tk) of one head -> [Tk/16][D/4][16 keys][4 bytes] (zero bytes past D and Tk), and
// corr[j] = -128 colsum(k_j) modulo 2**32.
void pack_keys(const int8_t* kt, const Shapes& s, int8_t* packed, int32_t* corr) {
  for (int64_t jb = 0; jb < s.tkp / 16; ++jb)
    for (int64_t g = 0; g < s.g4; ++g)
      interleave4(kt + 4 * g * s.tk + 16 * jb, s.tk, s.d - 4 * g, s.tk - 16 * jb, packed + (jb * s.g4 + g) * 64);
  std::memset(corr, 0, sizeof(int32_t) * s.tkp);
  uint32_t* sums = reinterpret_cast<uint32_t*>(corr);
  for (int64_t d = 0; d < s.d; ++d)
    for (int64_t j = 0; j < s.tk; ++j) sums[j] += static_cast<uint32_t>(static_cast<int32_t>(kt[d * s.tk + j]));
  for (int64_t j = 0; j < s.tk; ++j) sums[j] *= static_cast<uint32_t>(-128);
}

// v (Tk, Dv) of one head -> [Tk/4][Dvp][4 bytes]: four consecutive keys of one column per group.
void pack_values(const int8_t* v, const Shapes& s, int8_t* packed) {
  for (int64_t g = 0; g < round_up(s.tk, 4) / 4; ++g)
    for (int64_t c0 = 0; c0 < s.dvp; c0 += 16)
      interleave4(v + 4 * g * s.dv + c0, s.dv, s.tk - 4 * g, s.dv - c0, packed + (g * s.dvp + c0) * 4);
}

// z[j] for j < round_up(keys, 16): the scores of one query against the packed keys, requantized.
void scores_row(const int8_t* q, const int8_t* kpacked, const int32_t* corr, const Shapes& s, int64_t keys,
                int64_t multiplier, int64_t shift, int32_t* qwords, int32_t* z) {
  for (int64_t g = 0; g < s.g4; ++g) {  // q + 128 as unsigned bytes, four per broadcast word
    uint32_t word = 0;
    for (int64_t i = 0; i < 4; ++i) {
      const int64_t d = 4 * g + i;
      const uint32_t byte = d < s.d ? static_cast<uint8_t>(q[d]) ^ 0x80u : 0x80u;  // k is 0 past D
      word |= byte << (8 * i);
    }
    qwords[g] = static_cast<int32_t>(word);
  }
  const __m512i m = _mm512_set1_epi64(multiplier);
  const __m512i half = _mm512_set1_epi64(shift > 0 ? int64_t{1} << (shift - 1) : 0);
  const __m128i count = _mm_cvtsi64_si128(shift);
  for (int64_t jb = 0; jb < round_up(keys, 16) / 16; ++jb) {
    __m512i acc = _mm512_loadu_si512(corr + jb * 16);
    const int8_t* kp = kpacked + jb * s.g4 * 64;
    for (int64_t g = 0; g < s.g4; ++g)
      acc = _mm512_dpbusd_epi32(acc, _mm512_set1_epi32(qwords[g]), _mm512_loadu_si512(kp + g * 64));
    const __m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(acc));
    const __m512i hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(acc, 1));
    const __m512i rlo = _mm512_sra_epi64(_mm512_add_epi64(_mm512_mullo_epi64(lo, m), half), count);
    const __m512i rhi = _mm512_sra_epi64(_mm512_add_epi64(_mm512_mullo_epi64(hi, m), half), count);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(z + jb * 16), _mm512_cvtsepi64_epi32(rlo));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(z + jb * 16 + 8), _mm512_cvtsepi64_epi32(rhi));
  }
}

using aivm::Rescale;

// c (Dv) = sum_j p[j] v[j, :] modulo 2**32 over keys [0, keys), by the byte planes of p; stored as
// int32 (Out = int32_t) or requantized to int8 (Out = int8_t).
template <typename Out>
void context_row(const int32_t* p, int64_t keys, int64_t planes, const int8_t* vpacked, const Shapes& s,
                 const Rescale& rescale, uint8_t* bytes, Out* c) {
  const int64_t groups = round_up(keys, 4) / 4;
  for (int64_t j = 0; j < groups * 4; j += 16) {  // bytes[i][j]: plane i of p_j, zero past the kept keys
    const __m512i pj = _mm512_maskz_loadu_epi32(aivm::lanes16_left(keys - j), p + j);
    const __mmask16 store = aivm::lanes16_left(groups * 4 - j);
    for (int64_t i = 0; i < planes; ++i)
      _mm_mask_storeu_epi8(bytes + i * groups * 4 + j, store,
                           _mm512_cvtepi32_epi8(_mm512_srli_epi32(pj, static_cast<unsigned>(8 * i))));
  }
  for (int64_t c0 = 0; c0 < s.dvp; c0 += 16) {
    __m512i total = _mm512_setzero_si512();
    for (int64_t i = 0; i < planes; ++i) {
      const uint8_t* plane = bytes + i * groups * 4;
      __m512i acc = _mm512_setzero_si512();
      for (int64_t g = 0; g < groups; ++g) {
        int32_t word;
        std::memcpy(&word, plane + 4 * g, 4);
        if (word == 0) continue;  // four keys with a zero byte add nothing
        acc = _mm512_dpbusd_epi32(acc, _mm512_set1_epi32(word), _mm512_loadu_si512(vpacked + (g * s.dvp + c0) * 4));
      }
      total = _mm512_add_epi32(total, _mm512_slli_epi32(acc, static_cast<unsigned>(8 * i)));
    }
    if constexpr (sizeof(Out) == 4) {
      _mm512_mask_storeu_epi32(c + c0, aivm::lanes16_left(s.dv - c0), total);
    } else {
      for (int64_t h = 0; h < 2; ++h) {  // two halves of eight int64 lanes
        const int64_t col = c0 + 8 * h;
        if (col >= s.dv) break;
        const __mmask8 lanes = aivm::lanes_left(s.dv - col);
        const __m512i x = _mm512_cvtepi32_epi64(h == 0 ? _mm512_castsi512_si256(total) : _mm512_extracti64x4_epi64(total, 1));
        const __m512i z = aivm::rescale8(x, aivm::load8_epi64(rescale.multiplier + col, lanes),
                                         aivm::load8_epi64(rescale.shift + col, lanes));
        aivm::store8_int8_saturated(c + col, lanes, z);
      }
    }
  }
}

template <typename Out>
ffi::Error Attention(ffi::ThreadPool& pool, ffi::Buffer<ffi::S8>& q, ffi::Buffer<ffi::S8>& kt,
                     ffi::Buffer<ffi::S8>& v, ffi::Buffer<ffi::S8>& mask, ffi::Buffer<ffi::S32>& table,
                     ffi::Buffer<ffi::S32>& multiplier, ffi::Buffer<ffi::S32>& shift, const Rescale& rescale,
                     Out* cs, bool causal, int64_t out_bits) {
  const auto qd = q.dimensions(), kd = kt.dimensions(), vd = v.dimensions(), md = mask.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4 || md.size() != 2)
    return ffi::Error::InvalidArgument("aivm_int_attention: q, k_t, v must be 4-D and the mask 2-D");
  const int64_t batch = qd[0], heads = qd[1];
  Shapes s{qd[2], kd[3], qd[3], vd[3], 0, 0, 0};
  if (kd[0] != batch || vd[0] != batch || kd[1] != heads || vd[1] != heads || kd[2] != s.d || vd[2] != s.tk ||
      md[0] != batch || md[1] != s.tk)
    return ffi::Error::InvalidArgument("aivm_int_attention: inconsistent shapes");
  if (multiplier.element_count() != 1 || shift.element_count() != 1 || out_bits < 1 || out_bits > 30)
    return ffi::Error::InvalidArgument("aivm_int_attention: per-tensor rescale and out_bits in [1, 30] only");
  const int64_t m = multiplier.typed_data()[0], sh = shift.typed_data()[0];
  if (sh < 0 || sh > 62) return ffi::Error::InvalidArgument("aivm_int_attention: shift outside [0, 62]");
  const int64_t entries = table.element_count();
  int64_t k = 0;
  while ((int64_t{1} << k) < entries) ++k;
  if ((int64_t{1} << k) != entries || k > 31)
    return ffi::Error::InvalidArgument("aivm_int_attention: the table size must be a power of two");
  s.g4 = round_up(s.d, 4) / 4;
  s.tkp = round_up(s.tk, 16);
  s.dvp = round_up(s.dv, 16);
  const int64_t planes = (out_bits + 8) / 8;  // p <= 2**out_bits has out_bits + 1 bits
  // One task per head and block of queries; the keys and values are packed once per task, so
  // heads are split into query blocks only when there are too few heads to share out.
  const int64_t chunks = batch * heads >= 16 ? 1 : (s.tq + kQueriesPerTask - 1) / kQueriesPerTask;
  const int64_t per_chunk = (s.tq + chunks - 1) / std::max<int64_t>(chunks, 1);
  const int8_t *qs = q.typed_data(), *ks = kt.typed_data(), *vs = v.typed_data(), *ms = mask.typed_data();
  auto body = [&](int64_t task) {
    const int64_t head = task / chunks, first = (task % chunks) * per_chunk;
    const int64_t b = head / heads;
    int8_t* kpacked = reinterpret_cast<int8_t*>(k_scratch.get(s.tkp * s.g4 * 4 + sizeof(int32_t) * s.tkp));
    int32_t* corr = reinterpret_cast<int32_t*>(kpacked + s.tkp * s.g4 * 4);
    int8_t* vpacked = reinterpret_cast<int8_t*>(v_scratch.get(round_up(s.tk, 4) * s.dvp));
    // Per row: qwords (g4, padded to 16), z, e and p (tkp each) as int32, then up to four byte
    // planes of p (keys padded to 4).
    const int64_t words = round_up(s.g4, 16) + 3 * s.tkp;
    int32_t* qwords = reinterpret_cast<int32_t*>(row_scratch.get(sizeof(int32_t) * words + 4 * round_up(s.tk, 4)));
    int32_t* z = qwords + round_up(s.g4, 16);
    int32_t* e = z + s.tkp;
    int32_t* p = e + s.tkp;
    uint8_t* bytes = reinterpret_cast<uint8_t*>(p + s.tkp);
    pack_keys(ks + head * s.d * s.tk, s, kpacked, corr);
    pack_values(vs + head * s.tk * s.dv, s, vpacked);
    for (int64_t t = first; t < std::min(s.tq, first + per_chunk); ++t) {
      const int64_t last_key = causal ? t + (s.tk - s.tq) : s.tk - 1;
      const int64_t reach = std::max<int64_t>(0, std::min<int64_t>(s.tk, last_key + 1));
      Out* c = cs + (head * s.tq + t) * s.dv;
      scores_row(qs + (head * s.tq + t) * s.d, kpacked, corr, s, reach, m, sh, qwords, z);
      const int64_t keys = aivm::softmax_row(z, ms + b * s.tk, s.tk, last_key, table.typed_data(), k, out_bits, e, p);
      context_row(p, keys, planes, vpacked, s, rescale, bytes, c);
    }
  };
  const int64_t tasks = batch * heads * chunks;
  const int64_t work = batch * heads * s.tq * s.tk * (s.d + s.dv);
  const int64_t helpers = aivm::helpers_for(pool, work, int64_t{1} << 18);
  aivm::parallel_for(pool, tasks, helpers, body);
  return ffi::Error::Success();
}

ffi::Error AttentionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S8> q, ffi::Buffer<ffi::S8> kt,
                         ffi::Buffer<ffi::S8> v, ffi::Buffer<ffi::S8> mask, ffi::Buffer<ffi::S32> table,
                         ffi::Buffer<ffi::S32> multiplier, ffi::Buffer<ffi::S32> shift,
                         ffi::ResultBuffer<ffi::S32> out, bool causal, int64_t out_bits) {
  return Attention(pool, q, kt, v, mask, table, multiplier, shift, Rescale{nullptr, nullptr}, out->typed_data(),
                   causal, out_bits);
}

// The same, then requantize(context, out_multiplier, out_shift) to int8 per column of v.
ffi::Error AttentionInt8Impl(ffi::ThreadPool pool, ffi::Buffer<ffi::S8> q, ffi::Buffer<ffi::S8> kt,
                             ffi::Buffer<ffi::S8> v, ffi::Buffer<ffi::S8> mask, ffi::Buffer<ffi::S32> table,
                             ffi::Buffer<ffi::S32> multiplier, ffi::Buffer<ffi::S32> shift,
                             ffi::Buffer<ffi::S32> out_multiplier, ffi::Buffer<ffi::S32> out_shift,
                             ffi::ResultBuffer<ffi::S8> out, bool causal, int64_t out_bits) {
  const auto vd = v.dimensions();
  const int64_t dv = vd.size() == 4 ? vd[3] : -1;
  if (out_multiplier.element_count() != dv || out_shift.element_count() != dv)
    return ffi::Error::InvalidArgument("aivm_int_attention_int8: one output multiplier and shift per column");
  if (!aivm::shifts_in_range(out_shift.typed_data(), dv))
    return ffi::Error::InvalidArgument("aivm_int_attention_int8: shift outside [0, 62]");
  return Attention(pool, q, kt, v, mask, table, multiplier, shift,
                   Rescale{out_multiplier.typed_data(), out_shift.typed_data()}, out->typed_data(), causal, out_bits);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AivmIntAttentionInt8, AttentionInt8Impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S8>>()
                                  .Attr<bool>("causal")
                                  .Attr<int64_t>("out_bits"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AivmIntAttention, AttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<bool>("causal")
                                  .Attr<int64_t>("out_bits"));
