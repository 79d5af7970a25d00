// Device code shared by the gpusearch kernels: ordered 32-bit costs, half loads,
// and an exact block-wide top-k selection with ties to the smaller index.
//
// Self-contained on purpose: no standard or CUDA headers, so the same text
// compiles under nvcc and under NVRTC (CuPy RawModule) with no include paths.
// Half values are stored as 16-bit integers and converted with one PTX
// instruction, which is what cuda_fp16.h does internally.
#ifndef GPUSEARCH_COMMON_CUH
#define GPUSEARCH_COMMON_CUH

namespace gs {

typedef unsigned int u32;
typedef unsigned long long u64;

// The largest k any kernel accepts (gpusearch.kernels.MAX_K).
#define GS_MAX_K 1024
// Cost of an entry that must never be selected (sentinel score, masked row, absent id).
#define GS_INVALID 0xFFFFFFFFu
#define GS_FULL_WARP 0xFFFFFFFFu

__device__ __forceinline__ float pos_inf() { return __int_as_float(0x7f800000); }

// The worst score: -inf when larger is better, +inf otherwise.
__device__ __forceinline__ float sentinel(bool largest) { return largest ? -pos_inf() : pos_inf(); }

__device__ __forceinline__ float half_to_float(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ float load_float(const float* p) { return *p; }
__device__ __forceinline__ float load_float(const unsigned short* p) { return half_to_float(*p); }

// A cost that orders like the score (smaller cost = better score). The
// sentinel maps to GS_INVALID; so can NaN, whose results are undefined.
// -0 and +0 compare equal, so they get one cost.
__device__ __forceinline__ u32 score_to_cost(float v, bool largest) {
    if (v == sentinel(largest)) return GS_INVALID;
    u32 b = (v == 0.0f) ? 0u : __float_as_uint(v);
    u32 ord = (b & 0x80000000u) ? ~b : (b | 0x80000000u);  // increases with v
    return largest ? ~ord : ord;
}

__device__ __forceinline__ float cost_to_score(u32 c, bool largest) {
    u32 ord = largest ? ~c : c;
    u32 b = (ord & 0x80000000u) ? (ord & 0x7FFFFFFFu) : ~ord;
    return __uint_as_float(b);
}

// A selection key: cost in the high word, index in the low word, so keys
// order by (cost, index) and are unique within a row.
__device__ __forceinline__ u64 make_key(u32 cost, u32 index) { return ((u64)cost << 32) | (u64)index; }
__device__ __forceinline__ u32 key_cost(u64 key) { return (u32)(key >> 32); }
__device__ __forceinline__ u32 key_index(u64 key) { return (u32)(key & 0xFFFFFFFFu); }

__device__ __forceinline__ u32 warp_sum(u32 v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(GS_FULL_WARP, v, off);
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(GS_FULL_WARP, v, off);
    return v;
}

// Shared scratch of block_select (one per block).
struct SelectScratch {
    u32 hist[256];
    u32 warp_counts[32];
    u32 count;
    u32 slot;
    u32 taken;
    u32 prefix;
    u32 rank;
};

// Sum of v over the block; every thread gets the total. blockDim.x must be a
// multiple of 32. Reuses s.warp_counts.
__device__ __forceinline__ u32 block_sum(u32 v, SelectScratch& s) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) s.warp_counts[warp] = v;
    __syncthreads();
    u32 total = 0;
    for (int w = 0; w < nwarps; ++w) total += s.warp_counts[w];
    __syncthreads();
    return total;
}

// Ascending bitonic sort of keys[0..p), p a power of two, by the whole block.
__device__ __forceinline__ void bitonic_sort(u64* keys, int p) {
    for (int size = 2; size <= p; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int t = threadIdx.x; t < (p >> 1); t += blockDim.x) {
                int lo = 2 * stride * (t / stride) + (t % stride);
                int hi = lo + stride;
                bool ascending = (lo & size) == 0;
                u64 a = keys[lo], b = keys[hi];
                if ((a > b) == ascending) {
                    keys[lo] = b;
                    keys[hi] = a;
                }
            }
            __syncthreads();
        }
    }
}

// Exact top-k of n entries whose costs cost(i) are given by a functor, with
// ties to the smaller index. Every thread of the block must call it. On
// return keys[0..m) hold the m = min(k, #valid) best keys in ascending order
// (best first); the function returns m. keys needs room for the next power of
// two >= k (GS_MAX_K suffices). n must be < 2**32.
//
// Method: count the valid entries; if more than k, find the k-th smallest cost
// thr by a 4-pass radix select (8 bits per pass) and the number `need` of
// entries equal to thr that still fit; then one pass in index order collects
// every entry below thr and the first `need` entries equal to it (a block-wide
// ordered count keeps the smallest indices); finally a bitonic sort.
template <class CostFn>
__device__ int block_select(const CostFn& cost, long long n, int k, u64* keys, SelectScratch& s) {
    const int tid = threadIdx.x, nt = blockDim.x;
    const int lane = tid & 31, warp = tid >> 5, nwarps = nt >> 5;

    u32 local = 0;
    for (long long i = tid; i < n; i += nt) local += cost(i) != GS_INVALID;
    const u32 valid = block_sum(local, s);
    const int m = valid < (u32)k ? (int)valid : k;

    u32 thr = GS_INVALID;  // take every entry below thr ...
    u32 need = 0;          // ... and the first `need` entries equal to it
    if (valid > (u32)k) {
        u32 prefix = 0, mask = 0, rank = (u32)k;  // rank: 1-based, among entries matching prefix
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int b = tid; b < 256; b += nt) s.hist[b] = 0;
            __syncthreads();
            for (long long i = tid; i < n; i += nt) {
                u32 c = cost(i);
                if ((c & mask) == prefix) atomicAdd(&s.hist[(c >> shift) & 255u], 1u);
            }
            __syncthreads();
            if (tid == 0) {
                u32 acc = 0;
                for (int b = 0; b < 256; ++b) {
                    if (acc + s.hist[b] >= rank) {
                        s.prefix = prefix | ((u32)b << shift);
                        s.rank = rank - acc;
                        break;
                    }
                    acc += s.hist[b];
                }
            }
            __syncthreads();
            prefix = s.prefix;
            rank = s.rank;
            mask |= 255u << shift;
            __syncthreads();  // everyone has read s.prefix before the next pass
        }
        thr = prefix;
        need = rank;
    }

    if (tid == 0) {
        s.slot = 0;
        s.taken = 0;
    }
    __syncthreads();
    const u32 first_eq = (u32)m - need;  // entries below thr fill [0, first_eq)
    for (long long start = 0; start < n; start += nt) {
        const long long i = start + tid;
        const u32 c = i < n ? cost(i) : GS_INVALID;
        if (c < thr) keys[atomicAdd(&s.slot, 1u)] = make_key(c, (u32)i);
        if (need > 0) {  // uniform across the block
            const bool eq = i < n && c == thr;
            const u32 ballot = __ballot_sync(GS_FULL_WARP, eq);
            if (lane == 0) s.warp_counts[warp] = __popc(ballot);
            __syncthreads();
            u32 before = s.taken;
            for (int w = 0; w < warp; ++w) before += s.warp_counts[w];
            const u32 r = before + __popc(ballot & ((1u << lane) - 1u));
            if (eq && r < need) keys[first_eq + r] = make_key(c, (u32)i);
            __syncthreads();
            if (tid == 0) {
                u32 total = 0;
                for (int w = 0; w < nwarps; ++w) total += s.warp_counts[w];
                s.taken += total;
            }
            __syncthreads();
        }
    }
    __syncthreads();

    int p = 1;
    while (p < m) p <<= 1;
    for (int j = m + tid; j < p; j += nt) keys[j] = ~0ull;
    __syncthreads();
    bitonic_sort(keys, p);
    return m;
}

// Costs read from a row of scores in global memory.
template <typename T>
struct RowCosts {
    const T* row;
    bool largest;
    __device__ __forceinline__ u32 operator()(long long i) const { return score_to_cost(load_float(row + i), largest); }
};

// Costs already in shared memory.
struct SharedCosts {
    const u32* costs;
    __device__ __forceinline__ u32 operator()(long long i) const { return costs[i]; }
};

// Write the m selected keys and pad to k: scores decoded from the costs,
// indices offset by `base` (the row number of index 0).
__device__ __forceinline__ void write_selected(const u64* keys, int m, int k, bool largest, long long base, float* D,
                                               long long* I) {
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        if (j < m) {
            D[j] = cost_to_score(key_cost(keys[j]), largest);
            I[j] = base + (long long)key_index(keys[j]);
        } else {
            D[j] = sentinel(largest);
            I[j] = -1;
        }
    }
}

}  // namespace gs

#endif  // GPUSEARCH_COMMON_CUH
