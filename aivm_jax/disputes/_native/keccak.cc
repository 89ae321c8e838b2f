// Keccak-256 (Ethereum's: the original Keccak padding 0x01 .. 0x80, not SHA3's 0x06) and
// the dispute commitments built from it, batched: many independent messages are hashed
// four at a time, one 64-bit lane of a 256-bit vector each (GCC/Clang vector extensions;
// on x86-64 an AVX2 clone is chosen at load time where the CPU has it).
//
// Written from the Keccak reference (FIPS 202, section 3, and the Keccak team's
// specification summary): the round constants and rotation offsets below are computed
// from their definitions at compile time, not copied. Digests equal eth_utils.keccak
// (tests/disputes/test_keccak_native.py checks the standard vectors and random inputs).
//
// Every entry point is a plain C function (loaded by ctypes, aivm_jax/disputes/_keccak.py).
// Byte layouts of leaves and trees: docs/spec/commitments.md.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

namespace {

// ---------------------------------------------------------------- Keccak-f[1600]

// rc(t) of FIPS 202 algorithm 5: the LFSR x^8 + x^6 + x^5 + x^4 + 1.
constexpr bool rc_bit(int t) {
  if (t % 255 == 0) return true;
  unsigned r = 1;  // R = 10000000, R[0] the lowest bit
  for (int i = 1; i <= t % 255; ++i) {
    r <<= 1;  // R = 0 || R
    const unsigned r8 = (r >> 8) & 1;
    r ^= r8 | (r8 << 4) | (r8 << 5) | (r8 << 6);
    r &= 0xff;
  }
  return r & 1;
}

struct Tables {
  uint64_t rc[24];
  int rho[25];  // rotation offset of lane x + 5y
};

constexpr Tables make_tables() {
  Tables t{};
  for (int ir = 0; ir < 24; ++ir) {  // FIPS 202 algorithm 6
    uint64_t c = 0;
    for (int j = 0; j <= 6; ++j)
      if (rc_bit(j + 7 * ir)) c |= uint64_t{1} << ((1 << j) - 1);
    t.rc[ir] = c;
  }
  t.rho[0] = 0;  // FIPS 202 algorithm 2
  int x = 1, y = 0;
  for (int k = 0; k < 24; ++k) {
    t.rho[x + 5 * y] = ((k + 1) * (k + 2) / 2) % 64;
    const int nx = y, ny = (2 * x + 3 * y) % 5;
    x = nx;
    y = ny;
  }
  return t;
}

constexpr Tables K = make_tables();
static_assert(K.rc[0] == 1 && K.rc[1] == 0x8082 && K.rc[23] == 0x8000000080008008ULL);
static_assert(K.rho[1] == 1 && K.rho[2] == 62 && K.rho[24] == 14);

#define AIVM_INLINE inline __attribute__((always_inline))

template <int N, typename L>
AIVM_INLINE L rotl(L v) {
  if constexpr (N == 0) {
    return v;
  } else {
    return (v << N) | (v >> (64 - N));
  }
}

// pi moves lane (x, y) to (y, 2x + 3y mod 5); so lane X of output plane Y comes from lane
// (x, X) with x = 3 (Y - 3X) mod 5 (3 being 1/2 mod 5).
constexpr int source(int X, int Y) { return ((3 * (Y - 3 * X)) % 5 + 5) % 5 + 5 * X; }
constexpr bool source_inverts_pi() {
  for (int x = 0; x < 5; ++x)
    for (int y = 0; y < 5; ++y)
      if (source(y, (2 * x + 3 * y) % 5) != x + 5 * y) return false;
  return true;
}
static_assert(source_inverts_pi());

// Output plane Y's five lanes before chi: B[X] = rot(A[x, X] ^ D[x], rho[x, X]) (theta, rho, pi).
template <int Y, int X, typename L>
AIVM_INLINE void plane(const L* a, const L* d, L* b) {
  if constexpr (X < 5) {
    constexpr int s = source(X, Y);
    b[X] = rotl<K.rho[s]>(a[s] ^ d[s % 5]);
    plane<Y, X + 1>(a, d, b);
  }
}

template <int Y, typename L>
AIVM_INLINE void planes(const L* a, const L* d, L* e) {
  if constexpr (Y < 5) {
    L b[5];
    plane<Y, 0>(a, d, b);
    for (int X = 0; X < 5; ++X) e[X + 5 * Y] = b[X] ^ (~b[(X + 1) % 5] & b[(X + 2) % 5]);  // chi
    planes<Y + 1>(a, d, e);
  }
}

// One round from state a into state e, plane by plane (few values live at once).
template <typename L>
AIVM_INLINE void round(const L* a, L* e, uint64_t rc) {
  L c[5], d[5];
  for (int x = 0; x < 5; ++x) c[x] = a[x] ^ a[x + 5] ^ a[x + 10] ^ a[x + 15] ^ a[x + 20];  // theta
  for (int x = 0; x < 5; ++x) d[x] = c[(x + 4) % 5] ^ rotl<1>(c[(x + 1) % 5]);
  planes<0>(a, d, e);
  e[0] ^= rc;  // iota
}

// Keccak-f[1600]: the 24 rounds on 25 lanes; L is uint64_t (one state) or a vector of
// 64-bit lanes (one state per vector lane).
template <typename L>
AIVM_INLINE void keccak_f(L* a) {
  L e[25];
  for (int r = 0; r < 24; r += 2) {
    round(a, e, K.rc[r]);
    round(e, a, K.rc[r + 1]);
  }
}

// ---------------------------------------------------------------- sponge, 4 at a time

constexpr size_t RATE = 136;  // Keccak-256: capacity 512 bits
constexpr int WORDS = RATE / 8;

inline uint64_t load64(const uint8_t* p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
#else
  uint64_t v = 0;
  for (int k = 7; k >= 0; --k) v = (v << 8) | p[k];
  return v;
#endif
}

inline void store64(uint8_t* p, uint64_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  std::memcpy(p, &v, 8);
#else
  for (int k = 0; k < 8; ++k) p[k] = static_cast<uint8_t>(v >> (8 * k));
#endif
}

inline size_t blocks(size_t len) { return len / RATE + 1; }

// Block `b` of message (p, len), padded, as words: w[i * stride] for i < 17.
inline void block_words(const uint8_t* p, size_t len, size_t b, uint64_t* w, int stride) {
  const size_t start = b * RATE;
  p += start;
  if (start + RATE <= len) {
    for (int i = 0; i < WORDS; ++i) w[i * stride] = load64(p + 8 * i);
    return;
  }
  const size_t rem = len - start;  // < RATE: this is the final block
  const int full = static_cast<int>(rem / 8), tail = static_cast<int>(rem % 8);
  uint64_t last = uint64_t{0x01} << (8 * tail);  // the padding's first bit
  for (int k = 0; k < tail; ++k) last |= uint64_t{p[8 * full + k]} << (8 * k);
  for (int i = 0; i < WORDS; ++i) w[i * stride] = i < full ? load64(p + 8 * i) : i == full ? last : 0;
  w[(WORDS - 1) * stride] ^= uint64_t{0x80} << 56;  // and its last
}

struct Msg {
  const uint8_t* p;
  size_t len;
  uint8_t* out;  // 32 bytes
};

void hash_one(const Msg& m) {
  uint64_t a[25] = {0};
  uint64_t w[WORDS];
  const size_t nb = blocks(m.len);
  for (size_t b = 0; b < nb; ++b) {
    block_words(m.p, m.len, b, w, 1);
    for (int i = 0; i < WORDS; ++i) a[i] ^= w[i];
    keccak_f(a);
  }
  for (int i = 0; i < 4; ++i) store64(m.out + 8 * i, a[i]);
}

typedef uint64_t u64x4 __attribute__((vector_size(32), aligned(32)));

// Four messages at once, message k in lane k; a lane that has taken its last block idles
// (its digest is read right after its last permutation).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void hash_four(const Msg* m) {
  u64x4 a[25];
  uint64_t w[4][WORDS];
  size_t nb[4], most = 0;
  for (int k = 0; k < 4; ++k) most = std::max(most, nb[k] = blocks(m[k].len));
  for (size_t b = 0; b < most; ++b) {
    for (int k = 0; k < 4; ++k) {
      if (b < nb[k]) {
        block_words(m[k].p, m[k].len, b, w[k], 1);
      } else {
        for (int i = 0; i < WORDS; ++i) w[k][i] = 0;
      }
    }
    if (b == 0) {
      for (int i = 0; i < WORDS; ++i) a[i] = u64x4{w[0][i], w[1][i], w[2][i], w[3][i]};
      for (int i = WORDS; i < 25; ++i) a[i] = u64x4{0, 0, 0, 0};
    } else {
      for (int i = 0; i < WORDS; ++i) a[i] ^= u64x4{w[0][i], w[1][i], w[2][i], w[3][i]};
    }
    keccak_f(a);
    for (int k = 0; k < 4; ++k)
      if (b + 1 == nb[k])
        for (int i = 0; i < 4; ++i) store64(m[k].out + 8 * i, a[i][k]);
  }
}

// ---------------------------------------------------------------- helper threads

// A parallel loop over tasks 0 .. n-1 run by the caller and up to threads() - 1 helpers (the
// pool has min(hardware threads, 8) - 1). Helpers spin for kSpinMicros after their last task,
// then park on a condition variable; the caller never waits for a helper to start (it takes
// every task no helper has claimed), only for those that joined to finish their task. Each
// task writes its own outputs, so which thread runs it never changes a byte.
class Pool {
 public:
  static constexpr int64_t kSpinMicros = 100;

  static Pool& instance() {
    static Pool* const pool = new Pool();  // never destroyed: its threads live on
    return *pool;
  }

  // The threads a loop may use, the caller included (1: the caller alone).
  int threads() const { return threads_.load(); }
  void set_threads(int n) { threads_.store(std::max(1, std::min(n, static_cast<int>(helpers_) + 1))); }

  template <typename F>
  void run(size_t n, F& body) {
    const int helpers = threads() - 1;
    if (helpers <= 0 || n < 2 || !busy_.try_lock()) {  // nested or concurrent: run alone
      for (size_t i = 0; i < n; ++i) body(i);
      return;
    }
    Job job{&call<F>, &body, n};
    {
      std::lock_guard<std::mutex> hold(lock_);
      job_ = &job;
      slots_ = helpers;
      ++epoch_;
    }
    if (parked_.load()) wake_.notify_all();
    work(job);
    {
      std::lock_guard<std::mutex> hold(lock_);
      job_ = nullptr;  // no helper joins from here on
    }
    while (job.joined.load(std::memory_order_acquire) != 0) std::this_thread::yield();
    busy_.unlock();
  }

 private:
  struct Job {
    void (*fn)(void*, size_t);
    void* body;
    size_t n;
    std::atomic<size_t> next{0};
    std::atomic<int> joined{0};
  };

  template <typename F>
  static void call(void* body, size_t i) {
    (*static_cast<F*>(body))(i);
  }

  static void work(Job& job) {
    for (size_t i; (i = job.next.fetch_add(1, std::memory_order_relaxed)) < job.n;) job.fn(job.body, i);
  }

  // AIVM_KECCAK_THREADS=n sets the first threads() (default: every thread of the pool).
  Pool() {
    const unsigned cores = std::max(1u, std::min(std::thread::hardware_concurrency(), 8u));
    helpers_ = cores - 1;
    threads_.store(static_cast<int>(cores));
    if (const char* cap = std::getenv("AIVM_KECCAK_THREADS")) set_threads(std::atoi(cap));
    for (unsigned t = 0; t < helpers_; ++t) std::thread([this] { serve(); }).detach();
  }

  // Under lock_: the current job, counted as joined, if it has a slot left.
  Job* claim(uint64_t& seen) {
    seen = epoch_;
    if (job_ == nullptr || slots_ == 0) return nullptr;
    --slots_;
    job_->joined.fetch_add(1, std::memory_order_acq_rel);
    return job_;
  }

  void serve() {
    uint64_t seen = 0;
    for (;;) {
      Job* job = nullptr;
      const auto idle_since = std::chrono::steady_clock::now();
      for (int spins = 1;; ++spins) {
        {
          std::unique_lock<std::mutex> hold(lock_, std::try_to_lock);
          if (hold.owns_lock() && epoch_ != seen) {
            job = claim(seen);
            break;
          }
        }
        if (spins % 64 == 0 &&
            std::chrono::steady_clock::now() - idle_since > std::chrono::microseconds(kSpinMicros)) {
          std::unique_lock<std::mutex> hold(lock_);
          ++parked_;
          wake_.wait(hold, [&] { return epoch_ != seen; });
          --parked_;
          job = claim(seen);
          break;
        }
      }
      if (job) {
        work(*job);
        job->joined.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  unsigned helpers_ = 0;
  std::atomic<int> threads_{1};
  std::mutex busy_;  // one parallel loop at a time
  std::mutex lock_;  // guards job_, slots_, epoch_
  std::condition_variable wake_;
  Job* job_ = nullptr;
  int slots_ = 0;
  uint64_t epoch_ = 0;
  std::atomic<int> parked_{0};
};

// Below this many blocks (about 2 ms of one core) a batch is hashed by the caller alone:
// handing work to a helper costs a wake-up, and on a loaded machine a helper preempted in
// the middle of a task stalls the caller for a time slice (digits-cnn's trace, 2304 blocks
// in its largest batch, took 4x longer at the median with a helper on a shared 2-core box).
constexpr size_t kParallelBlocks = 16384;

// Every message of `msgs`: four at a time, most blocks first so the lanes of a group finish
// together (a last group of two or three is filled with repeats whose digests are dropped,
// a last single message is hashed alone), groups shared with the helper threads where the
// batch is large.
void hash_all(std::vector<Msg>& msgs) {
  const size_t n = msgs.size();
  if (n == 0) return;
  size_t total = 0;
  bool same = true;
  for (const Msg& m : msgs) {
    total += blocks(m.len);
    same = same && blocks(m.len) == blocks(msgs[0].len);
  }
  if (!same)
    std::stable_sort(msgs.begin(), msgs.end(),
                     [](const Msg& x, const Msg& y) { return blocks(x.len) > blocks(y.len); });
  uint8_t dropped[32];
  if (n % 4 >= 2)
    while (msgs.size() % 4) msgs.push_back({msgs[n - 1].p, msgs[n - 1].len, dropped});
  constexpr size_t kTask = 8;  // groups of four per task
  const size_t groups = msgs.size() / 4, tasks = (groups + kTask - 1) / kTask;
  auto task = [&](size_t t) {
    for (size_t g = t * kTask; g < std::min(groups, (t + 1) * kTask); ++g) hash_four(&msgs[4 * g]);
  };
  if (total >= kParallelBlocks) {
    Pool::instance().run(tasks, task);
  } else {
    for (size_t t = 0; t < tasks; ++t) task(t);
  }
  if (msgs.size() % 4) hash_one(msgs.back());
  msgs.resize(n);
}

// ---------------------------------------------------------------- leaves and trees

inline void put_uint256(uint8_t* p, uint64_t v) {
  std::memset(p, 0, 24);
  for (int k = 0; k < 8; ++k) p[24 + k] = static_cast<uint8_t>(v >> (8 * (7 - k)));
}

// A leaf to compute: keccak256(keccak256(abi.encode(tag, i, j, keccak256(payload)))).
struct Leaf {
  uint64_t i, j;
  const uint8_t* payload;
  size_t len;
  uint8_t* out;
};

void hash_leaves(const uint8_t* tag, const std::vector<Leaf>& leaves) {
  const size_t n = leaves.size();
  std::vector<uint8_t> encoded(128 * n), inner(32 * n);
  std::vector<Msg> msgs(n);
  for (size_t k = 0; k < n; ++k) {
    uint8_t* e = &encoded[128 * k];
    std::memcpy(e, tag, 32);
    put_uint256(e + 32, leaves[k].i);
    put_uint256(e + 64, leaves[k].j);
    msgs[k] = {leaves[k].payload, leaves[k].len, e + 96};
  }
  hash_all(msgs);
  for (size_t k = 0; k < n; ++k) msgs[k] = {&encoded[128 * k], 128, &inner[32 * k]};
  hash_all(msgs);
  for (size_t k = 0; k < n; ++k) msgs[k] = {&inner[32 * k], 32, leaves[k].out};
  hash_all(msgs);
}

size_t tree_nodes(size_t n) {
  size_t total = n;
  while (n > 1) total += n = (n + 1) / 2;
  return total;
}

// Trees whose leaves are already in place (`nodes[t]` holds tree t's levels, the leaves
// first); every level of every tree is hashed in one batch.
void build_forest(const std::vector<uint8_t*>& nodes, const std::vector<size_t>& leaves) {
  const size_t trees = nodes.size();
  std::vector<size_t> at(trees, 0), width(leaves);
  std::vector<uint8_t> pairs;
  std::vector<Msg> msgs;
  for (;;) {
    size_t count = 0;
    for (size_t t = 0; t < trees; ++t)
      if (width[t] > 1) count += width[t] / 2;
    if (count == 0) break;
    pairs.resize(64 * count);
    msgs.clear();
    size_t k = 0;
    for (size_t t = 0; t < trees; ++t) {
      const size_t m = width[t];
      if (m <= 1) continue;
      const uint8_t* level = nodes[t] + 32 * at[t];
      uint8_t* up = nodes[t] + 32 * (at[t] + m);
      for (size_t q = 0; q + 1 < m; q += 2, ++k) {
        const uint8_t *x = level + 32 * q, *y = x + 32;
        if (std::memcmp(x, y, 32) > 0) std::swap(x, y);  // the sorted pair
        std::memcpy(&pairs[64 * k], x, 32);
        std::memcpy(&pairs[64 * k + 32], y, 32);
        msgs.push_back({&pairs[64 * k], 64, up + 32 * (q / 2)});
      }
      if (m % 2) std::memcpy(up + 32 * (m / 2), level + 32 * (m - 1), 32);  // carried up unchanged
      at[t] += m;
      width[t] = (m + 1) / 2;
    }
    hash_all(msgs);
  }
}

}  // namespace

extern "C" {

// The threads the batched calls may use, the caller included (at least 1); n <= 0 only asks.
int aivm_keccak_threads(int n) {
  if (n > 0) Pool::instance().set_threads(n);
  return Pool::instance().threads();
}

// keccak256 of each of n messages, message k being bytes offsets[k] .. offsets[k + 1] - 1
// of data: out[32 k .. 32 k + 31].
void aivm_keccak256_batch(size_t n, const uint8_t* data, const uint64_t* offsets, uint8_t* out) {
  std::vector<Msg> msgs(n);
  for (size_t k = 0; k < n; ++k) msgs[k] = {data + offsets[k], offsets[k + 1] - offsets[k], out + 32 * k};
  hash_all(msgs);
}

// Every level of the tree over n >= 1 leaves (32 bytes each), concatenated into out (the
// leaves first, the root last): tree_nodes(n) * 32 bytes.
void aivm_merkle_levels(size_t n, const uint8_t* leaves, uint8_t* out) {
  std::memcpy(out, leaves, 32 * n);
  build_forest({out}, {n});
}

// The leaves leaf(tag, i, j, slice_j) of a tensor's slices: the runs of `slice_bytes`
// bytes of (data, len), the last one shorter where len is not a multiple; 32 bytes each.
void aivm_slice_leaves(const uint8_t* tag, uint64_t i, const uint8_t* data, size_t len, size_t slice_bytes,
                       uint8_t* out) {
  std::vector<Leaf> leaves;
  for (size_t j = 0, at = 0; at < len; ++j, at += slice_bytes)
    leaves.push_back({i, j, data + at, std::min(slice_bytes, len - at), out + 32 * j});
  hash_leaves(tag, leaves);
}

// A batch's trace (aivm_jax/disputes/_trace.py). Step s has row_bytes = layout[3 s] bytes
// a batch row (> 0), cut into slices of slice_bytes = layout[3 s + 1] bytes, and its step
// leaf's payload is its root followed by tail_bytes = layout[3 s + 2] bytes of `tails`
// (the steps' tails concatenated). `data` holds the steps' batched bytes one after the
// other: batch row r of step s at data + batch * (row_bytes of the steps before s) +
// r * row_bytes. tags: the slice, step and row tags, 32 bytes each. out, 32-byte nodes:
// for each row r, for each step s, the levels of that step's tree (tree_nodes(ceil(row_bytes
// / slice_bytes)) nodes), then the levels of the row's tree over its step leaves
// (tree_nodes(steps)); then the levels of the batch's tree over its row leaves
// (tree_nodes(batch)).
void aivm_trace(size_t steps, size_t batch, const uint8_t* data_, const uint64_t* layout, const uint8_t* tails_,
                const uint8_t* tags, uint8_t* out) {
  std::vector<size_t> row_bytes(steps), slice_bytes(steps), tail_bytes(steps), slices(steps),
      offset(steps + 1, 0);
  std::vector<const uint8_t*> data(steps), tails(steps);
  for (size_t s = 0; s < steps; ++s) {
    row_bytes[s] = layout[3 * s];
    slice_bytes[s] = layout[3 * s + 1];
    tail_bytes[s] = layout[3 * s + 2];
    data[s] = data_;
    data_ += batch * row_bytes[s];
    tails[s] = tails_;
    tails_ += tail_bytes[s];
    slices[s] = (row_bytes[s] + slice_bytes[s] - 1) / slice_bytes[s];
    offset[s + 1] = offset[s] + 32 * tree_nodes(slices[s]);
  }
  const size_t row_tree = 32 * tree_nodes(steps), per_row = offset[steps] + row_tree;
  uint8_t* batch_tree = out + batch * per_row;

  std::vector<Leaf> leaves;  // every slice leaf of every row
  std::vector<uint8_t*> trees;
  std::vector<size_t> widths;
  for (size_t r = 0; r < batch; ++r)
    for (size_t s = 0; s < steps; ++s) {
      const uint8_t* row = data[s] + r * row_bytes[s];
      uint8_t* tree = out + r * per_row + offset[s];
      for (size_t j = 0, at = 0; j < slices[s]; ++j, at += slice_bytes[s])
        leaves.push_back({s, j, row + at, std::min(slice_bytes[s], row_bytes[s] - at), tree + 32 * j});
      trees.push_back(tree);
      widths.push_back(slices[s]);
    }
  hash_leaves(tags, leaves);
  build_forest(trees, widths);

  size_t most = 0;  // step leaves: abi.encode(step_root, dtype, row_shape)
  for (size_t s = 0; s < steps; ++s) most = std::max(most, 32 + tail_bytes[s]);
  std::vector<uint8_t> payloads(batch * steps * most);
  leaves.clear();
  trees.clear();
  widths.clear();
  for (size_t r = 0; r < batch; ++r) {
    uint8_t* tree = out + r * per_row + offset[steps];
    for (size_t s = 0; s < steps; ++s) {
      uint8_t* p = &payloads[(r * steps + s) * most];
      const uint8_t* root = out + r * per_row + offset[s + 1] - 32;
      std::memcpy(p, root, 32);
      std::memcpy(p + 32, tails[s], tail_bytes[s]);
      leaves.push_back({s, 0, p, 32 + tail_bytes[s], tree + 32 * s});
    }
    trees.push_back(tree);
    widths.push_back(steps);
  }
  hash_leaves(tags + 32, leaves);
  build_forest(trees, widths);

  leaves.clear();  // row leaves: the row's trace root at (r, batch)
  for (size_t r = 0; r < batch; ++r)
    leaves.push_back({r, batch, out + r * per_row + offset[steps] + row_tree - 32, 32, batch_tree + 32 * r});
  hash_leaves(tags + 64, leaves);
  build_forest({batch_tree}, {batch});
}

}  // extern "C"
