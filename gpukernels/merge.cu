// K-way merge of per-row sorted result lists into the best k.
//
// Launch: grid (nq), block (256) (a multiple of 32 up to 1024), no dynamic
// shared memory. Row r of S/ids (both (nq, m), row-major) is the
// concatenation of s lists; list l spans columns [offsets[l], offsets[l+1]).
// Each list is sorted best first with absent entries (id -1 or the sentinel
// score) at its end; ties inside a list may be in any order.
//
// Every entry's output place is its rank: the number of entries ordered
// before it by (cost, id, column), counted per list with a binary search on
// the cost plus a scan of the equal-cost run. Ranks are distinct, so ranks
// below k fill D/I[r, 0..min(k, valid)) exactly once; the rest is padded with
// (sentinel, -1). Requires 1 <= k <= 1024 and m < 2**31.
#include "_common.cuh"

namespace gs {

__device__ __forceinline__ u32 merge_cost(const float* S, const long long* ids, int j, bool largest) {
    return ids[j] == -1 ? GS_INVALID : score_to_cost(S[j], largest);
}

// First position in [lo, hi) whose cost is >= c; costs ascend along a list.
__device__ __forceinline__ int lower_bound_cost(const float* S, const long long* ids, int lo, int hi, u32 c,
                                                bool largest) {
    while (lo < hi) {
        const int mid = lo + (hi - lo) / 2;
        if (merge_cost(S, ids, mid, largest) < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

}  // namespace gs

extern "C" __global__ void __launch_bounds__(1024)
merge_sorted_lists(const float* S, const long long* ids, const int* offsets, int s, int m, int k, int largest,
                   float* D, long long* I) {
    using namespace gs;
    __shared__ SelectScratch scratch;
    const long long r = blockIdx.x;
    const float* Sr = S + r * m;
    const long long* Ir = ids + r * m;
    float* Dr = D + r * k;
    long long* Or = I + r * k;
    const bool lg = largest != 0;

    u32 local = 0;
    for (int j = threadIdx.x; j < m; j += blockDim.x) {
        const u32 c = merge_cost(Sr, Ir, j, lg);
        if (c == GS_INVALID) continue;
        ++local;
        const long long id = Ir[j];
        long long rank = 0;
        for (int l = 0; l < s && rank < k; ++l) {
            const int lo = offsets[l], hi = offsets[l + 1];
            const int a = lower_bound_cost(Sr, Ir, lo, hi, c, lg);
            rank += a - lo;
            for (int p = a; p < hi && merge_cost(Sr, Ir, p, lg) == c; ++p) {
                const long long other = Ir[p];
                rank += (other < id || (other == id && p < j)) ? 1 : 0;
            }
        }
        if (rank < k) {
            Dr[rank] = Sr[j];
            Or[rank] = id;
        }
    }
    const u32 valid = block_sum(local, scratch);
    for (int j = (valid < (u32)k ? (int)valid : k) + threadIdx.x; j < k; j += blockDim.x) {
        Dr[j] = sentinel(lg);
        Or[j] = -1;
    }
}
