// SHA-256 of many short messages on the SHA extensions (SHA-NI): the per-row hashes of an
// inference result (aivm_jax/runtime/_hashing.py), computed for all rows in one call.
//
// Row r's message is the concatenation, in order, of parts p = 0..P-1, each `sizes[p]` bytes at
// `data[p] + r * strides[p]` (stride 0: the same bytes in every row, e.g. a header). The digest
// is FIPS 180-4 SHA-256 of that message, written as 32 bytes (and, if `hex` is not null, as "0x"
// and 64 lowercase hex digits). The tests hold every digest equal to Python's hashlib for
// messages of every length modulo 64. Integer and bit operations only.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace {

alignas(16) constexpr uint32_t kRound[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};
constexpr uint32_t kInitial[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                  0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

// The state as the SHA instructions hold it: abef = (f, e, b, a) and cdgh = (h, g, d, c), lane 0 first.
struct State {
  __m128i abef, cdgh;
};

__attribute__((target("sha,sse4.1"))) State initial_state() {
  const __m128i abcd = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kInitial));
  const __m128i efgh = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kInitial + 4));
  const __m128i cdab = _mm_shuffle_epi32(abcd, 0xB1);
  const __m128i hgfe = _mm_shuffle_epi32(efgh, 0x1B);
  return {_mm_alignr_epi8(cdab, hgfe, 8), _mm_blend_epi16(hgfe, cdab, 0xF0)};
}

// One 64-byte block: 16 groups of 4 rounds; w[g % 4] holds message words 4g..4g+3, the next
// groups' words made by SHA256MSG1/MSG2 from the four before them.
__attribute__((target("sha,sse4.1,ssse3"))) void compress(State& s, const uint8_t* block) {
  const __m128i swap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);  // big-endian words
  __m128i w[4];
  __m128i abef = s.abef, cdgh = s.cdgh;
#pragma GCC unroll 16
  for (int g = 0; g < 16; ++g) {
    if (g < 4) w[g] = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 16 * g)), swap);
    __m128i msg = _mm_add_epi32(w[g % 4], _mm_load_si128(reinterpret_cast<const __m128i*>(kRound + 4 * g)));
    cdgh = _mm_sha256rnds2_epu32(cdgh, abef, msg);
    if (g >= 3 && g <= 14) {  // words of group g + 1
      const __m128i lagged = _mm_alignr_epi8(w[g % 4], w[(g + 3) % 4], 4);
      w[(g + 1) % 4] = _mm_sha256msg2_epu32(_mm_add_epi32(w[(g + 1) % 4], lagged), w[g % 4]);
    }
    msg = _mm_shuffle_epi32(msg, 0x0E);
    abef = _mm_sha256rnds2_epu32(abef, cdgh, msg);
    if (g >= 1 && g <= 12) w[(g + 3) % 4] = _mm_sha256msg1_epu32(w[(g + 3) % 4], w[g % 4]);
  }
  s.abef = _mm_add_epi32(s.abef, abef);
  s.cdgh = _mm_add_epi32(s.cdgh, cdgh);
}

__attribute__((target("sha,sse4.1,ssse3"))) void digest_bytes(const State& s, uint8_t* out) {
  const __m128i feba = _mm_shuffle_epi32(s.abef, 0x1B);
  const __m128i dchg = _mm_shuffle_epi32(s.cdgh, 0xB1);
  const __m128i abcd = _mm_blend_epi16(feba, dchg, 0xF0);  // lanes a, b, c, d
  const __m128i efgh = _mm_alignr_epi8(dchg, feba, 8);     // lanes e, f, g, h
  const __m128i swap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_shuffle_epi8(abcd, swap));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), _mm_shuffle_epi8(efgh, swap));
}

// Streams bytes into 64-byte blocks.
struct Hasher {
  State state;
  uint8_t block[64];
  int64_t filled = 0, total = 0;

  void update(const uint8_t* p, int64_t n) {
    total += n;
    if (filled > 0) {
      const int64_t take = n < 64 - filled ? n : 64 - filled;
      std::memcpy(block + filled, p, take);
      filled += take, p += take, n -= take;
      if (filled < 64) return;
      compress(state, block);
      filled = 0;
    }
    for (; n >= 64; p += 64, n -= 64) compress(state, p);
    std::memcpy(block, p, n);
    filled = n;
  }

  // Padding: 0x80, zeros up to 56 bytes modulo 64, then the length in bits, big-endian.
  void finish(uint8_t* out) {
    const uint64_t bits = static_cast<uint64_t>(total) * 8;
    block[filled++] = 0x80;
    if (filled > 56) {
      std::memset(block + filled, 0, 64 - filled);
      compress(state, block);
      filled = 0;
    }
    std::memset(block + filled, 0, 56 - filled);
    for (int i = 0; i < 8; ++i) block[56 + i] = static_cast<uint8_t>(bits >> (56 - 8 * i));
    compress(state, block);
    digest_bytes(state, out);
  }
};

}  // namespace

extern "C" {

// 1 where this CPU has the SHA extensions (and SSSE3 / SSE4.1, which every such CPU has).
int aivm_sha256_supported() {
  return __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1") && __builtin_cpu_supports("ssse3");
}

void aivm_sha256_rows(int64_t rows, int64_t parts, const uint8_t* const* data, const int64_t* sizes,
                      const int64_t* strides, uint8_t* digests, char* hex) {
  static const char digits[] = "0123456789abcdef";
  const State start = initial_state();
  for (int64_t r = 0; r < rows; ++r) {
    Hasher h{start};
    for (int64_t p = 0; p < parts; ++p) h.update(data[p] + r * strides[p], sizes[p]);
    uint8_t* d = digests + 32 * r;
    h.finish(d);
    if (hex != nullptr) {
      char* x = hex + 66 * r;
      x[0] = '0', x[1] = 'x';
      for (int i = 0; i < 32; ++i) x[2 + 2 * i] = digits[d[i] >> 4], x[3 + 2 * i] = digits[d[i] & 15];
    }
  }
}

}  // extern "C"
