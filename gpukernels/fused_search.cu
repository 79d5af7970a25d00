// Fused distance + top-k for small query batches: never writes the nq x N scores.
//
// Launch: grid (n_chunks, nq), block (256) (a multiple of 32 up to 1024),
// dynamic shared memory 4 * (chunk + d) bytes. Block (c, q) scores base rows
// [c * chunk, min(n, (c + 1) * chunk)) against query q with float32
// accumulation (one warp per base row, lanes stride over the dimensions),
// keeps the chunk's exact best k with ties to the smaller row, and writes them
// best first to cand_D/cand_I[q, c, :], padded with (sentinel, -1). A second
// pass (topk.cu on the candidates) reduces the chunks.
//
// metric: l2 == 0 is inner product (larger is better, sentinel -inf);
// l2 != 0 is max(|q|^2 + |b|^2 - 2 q.b, 0) (smaller is better, sentinel +inf).
// bnorm (|b|^2 per row, float32) and mask (one byte per row, 0 = excluded) may
// be null. Requires 1 <= k <= 1024 and chunk < 2**32.
#include "_common.cuh"

namespace gs {

template <typename T>
__device__ void fused_chunk(const T* xq, const T* xb, const float* bnorm, const unsigned char* mask, long long n,
                            int d, int k, int chunk, int l2, float* cand_D, long long* cand_I) {
    extern __shared__ u32 smem[];
    u32* costs = smem;                               // chunk entries
    float* q = reinterpret_cast<float*>(smem + chunk);  // d entries
    __shared__ u64 keys[GS_MAX_K];
    __shared__ SelectScratch scratch;
    __shared__ float warp_parts[32];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
    const long long c = blockIdx.x, qi = blockIdx.y, n_chunks = gridDim.x;
    const long long start = c * chunk;
    const long long left = n - start;
    const int rows = left < (long long)chunk ? (int)left : chunk;
    const bool largest = l2 == 0;
    const bool need_bb = l2 != 0 && bnorm == 0;

    float part = 0.0f;
    for (int j = tid; j < d; j += blockDim.x) {
        const float v = load_float(xq + qi * d + j);
        q[j] = v;
        part += v * v;
    }
    // |q|^2 summed in a fixed order, so repeated runs give identical scores.
    part = warp_sum(part);
    if (lane == 0) warp_parts[warp] = part;
    __syncthreads();
    float qn = 0.0f;
    for (int w = 0; w < nwarps; ++w) qn += warp_parts[w];

    for (int r = warp; r < rows; r += nwarps) {
        const long long row = start + r;
        const T* b = xb + row * d;
        float dot = 0.0f, bb = 0.0f;
        if (need_bb) {
            for (int j = lane; j < d; j += 32) {
                const float v = load_float(b + j);
                dot += q[j] * v;
                bb += v * v;
            }
        } else {
            for (int j = lane; j < d; j += 32) dot += q[j] * load_float(b + j);
        }
        dot = warp_sum(dot);
        bb = warp_sum(bb);
        if (lane == 0) {
            u32 cst = GS_INVALID;
            if (mask == 0 || mask[row] != 0) {
                float score = dot;
                if (l2) {
                    const float bn = bnorm != 0 ? bnorm[row] : bb;
                    score = fmaxf(qn + bn - 2.0f * dot, 0.0f);
                }
                cst = score_to_cost(score, largest);
            }
            costs[r] = cst;
        }
    }
    __syncthreads();

    SharedCosts shared_costs = {costs};
    const int m = block_select(shared_costs, rows, k, keys, scratch);
    const long long out = (qi * n_chunks + c) * k;
    write_selected(keys, m, k, largest, start, cand_D + out, cand_I + out);
}

}  // namespace gs

// xq: (nq, d) float32, xb: (n, d) float32, both row-major.
extern "C" __global__ void __launch_bounds__(1024)
fused_chunks_f32(const float* xq, const float* xb, const float* bnorm, const unsigned char* mask, long long n, int d,
                 int k, int chunk, int l2, float* cand_D, long long* cand_I) {
    gs::fused_chunk<float>(xq, xb, bnorm, mask, n, d, k, chunk, l2, cand_D, cand_I);
}

// xq: (nq, d) float16 (raw bits), xb: (n, d) float16 (raw bits), both row-major.
extern "C" __global__ void __launch_bounds__(1024)
fused_chunks_f16(const unsigned short* xq, const unsigned short* xb, const float* bnorm, const unsigned char* mask,
                 long long n, int d, int k, int chunk, int l2, float* cand_D, long long* cand_I) {
    gs::fused_chunk<unsigned short>(xq, xb, bnorm, mask, n, d, k, chunk, l2, cand_D, cand_I);
}
