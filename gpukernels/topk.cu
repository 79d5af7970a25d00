// Row-wise exact top-k: one thread block per row of a (nq, n) score matrix.
//
// Launch: grid (nq), block (256) (any multiple of 32 up to 1024), no dynamic
// shared memory. Keys order by (cost, column) so ties go to the smaller
// column; sentinel entries (-inf when largest, +inf otherwise) are skipped and
// rows with fewer than k other entries are padded with (sentinel, -1).
// Requires 1 <= k <= 1024 and n < 2**32.
#include "_common.cuh"

namespace gs {

template <typename T>
__device__ void topk_rows(const T* x, long long ld, long long n, int k, int largest, float* D, long long* I) {
    __shared__ u64 keys[GS_MAX_K];
    __shared__ SelectScratch scratch;
    const long long r = blockIdx.x;
    RowCosts<T> costs = {x + r * ld, largest != 0};
    const int m = block_select(costs, n, k, keys, scratch);
    write_selected(keys, m, k, largest != 0, 0, D + r * k, I + r * k);
}

}  // namespace gs

// x: (nq, ld) row-major float32, columns [0, n) are scored.
extern "C" __global__ void __launch_bounds__(1024)
topk_f32(const float* x, long long ld, long long n, int k, int largest, float* D, long long* I) {
    gs::topk_rows<float>(x, ld, n, k, largest, D, I);
}

// x: (nq, ld) row-major float16 (raw bits), columns [0, n) are scored.
extern "C" __global__ void __launch_bounds__(1024)
topk_f16(const unsigned short* x, long long ld, long long n, int k, int largest, float* D, long long* I) {
    gs::topk_rows<unsigned short>(x, ld, n, k, largest, D, I);
}
