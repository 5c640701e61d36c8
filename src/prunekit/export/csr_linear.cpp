// prunekit's CSR x dense kernel for SparseLinear (built on first use by export/_native.py).
//
// y = x @ W.T + b for a CSR weight W (rows x cols, int32 indices, float32 values).
// MKL's sparse x dense kernel (torch.addmm on a CSR tensor) reaches 1.7-3.9x over dense on
// all-MiniLM-L6-v2's 90%-sparse layers at 128 tokens, far from what the kept weights allow.
// Here the tokens are the vector dimension: TILE tokens of one output row are summed in NV
// vector registers, so each kept weight costs NV loads and NV multiply-adds of one row of x.T,
// which stays in cache for the whole tile (4-15x over dense on the same layers).
// x.T is built one tile at a time in 8 x 8 blocks unless the caller hands it over already
// transposed, and the output can be written in either layout (16 output rows are gathered
// in a small buffer and stored as 16-float runs), so a chain of sparse layers passes the
// transposed product on without any copy.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

// GCC/Clang vector extension: 16 floats, lowered to AVX-512, 2 x AVX2 or 4 x NEON registers.
typedef float v16 __attribute__((vector_size(64), aligned(4)));
constexpr int NV = 8;            // vector accumulators per output row
constexpr int TILE = 16 * NV;    // tokens per tile
constexpr int ROWS = 16;         // output rows gathered before a row-major store

// dst[0:tn] = bo + sum over the kept weights j of row o of v[j] * xt[cc[j], 0:tn]
inline void row_tile(const int32_t* cr, const int32_t* cc, const float* v, const float* xt, int64_t ldx,
                     float bo, int64_t o, int64_t tn, float* dst) {
  if (tn == TILE) {
    v16 acc[NV];
    for (int i = 0; i < NV; ++i) acc[i] = v16{} + bo;
    for (int32_t j = cr[o]; j < cr[o + 1]; ++j) {
      const float w = v[j];
      const v16* xr = reinterpret_cast<const v16*>(xt + static_cast<int64_t>(cc[j]) * ldx);
      for (int i = 0; i < NV; ++i) acc[i] += w * xr[i];
    }
    std::memcpy(dst, acc, sizeof(acc));
    return;
  }
  for (int64_t t = 0; t < tn; ++t) dst[t] = bo;
  for (int32_t j = cr[o]; j < cr[o + 1]; ++j) {
    const float w = v[j];
    const float* xr = xt + static_cast<int64_t>(cc[j]) * ldx;
    for (int64_t t = 0; t < tn; ++t) dst[t] += w * xr[t];
  }
}

#if defined(__AVX__)
// Eight rows of 8 floats (at rows[0..7]) transposed into eight runs of 8 (at dst, dst + ld, ...).
inline void transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
  }
}
#endif

// buf (cols x TILE) = x[t0:t0+tn, :].T, in 8 x 8 blocks (vector shuffles where the CPU has AVX,
// ~4x faster than element by element); column blocks no kept weight reads are skipped
// (``used_block``: LeNet-300-100's first layer at 98% reads 549 of its 784 pixels).
void transpose_tile(const float* x, int64_t cols, int64_t t0, int64_t tn, const std::vector<char>& used_block,
                    float* buf) {
  for (int64_t k0 = 0; k0 < cols; k0 += 8) {
    if (!used_block[k0 / 8]) continue;
    const int64_t kn = std::min<int64_t>(8, cols - k0);
    for (int64_t s0 = 0; s0 < tn; s0 += 8) {
      const int64_t sn = std::min<int64_t>(8, tn - s0);
      const float* src = x + (t0 + s0) * cols + k0;
#if defined(__AVX__)
      if (kn == 8 && sn == 8) {
        transpose8x8(src, cols, buf + k0 * TILE + s0, TILE);
        continue;
      }
#endif
      for (int64_t s = 0; s < sn; ++s)
        for (int64_t k = 0; k < kn; ++k) buf[(k0 + k) * TILE + s0 + s] = src[s * cols + k];
    }
  }
}

}  // namespace

// x: (T, cols) row-major, or (cols, T) row-major when x_transposed. bias: (rows,) or empty.
// Returns (T, rows) row-major, or (rows, T) when out_transposed.
torch::Tensor csr_linear(const torch::Tensor& crow, const torch::Tensor& col, const torch::Tensor& values,
                         const torch::Tensor& x, const torch::Tensor& bias, bool x_transposed, bool out_transposed) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
              "csr_linear: x must be a contiguous float32 CPU matrix");
  TORCH_CHECK(crow.scalar_type() == at::kInt && col.scalar_type() == at::kInt && values.scalar_type() == at::kFloat,
              "csr_linear: int32 indices and float32 values expected");
  const int64_t rows = crow.size(0) - 1;
  const int64_t cols = x_transposed ? x.size(0) : x.size(1);
  const int64_t T = x_transposed ? x.size(1) : x.size(0);
  TORCH_CHECK(bias.numel() == 0 || bias.numel() == rows, "csr_linear: bias has ", bias.numel(), " values for ", rows, " rows");
  const int32_t* cr = crow.data_ptr<int32_t>();
  const int32_t* cc = col.data_ptr<int32_t>();
  const float* v = values.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  const float* b = bias.numel() ? bias.data_ptr<float>() : nullptr;
  torch::Tensor out = out_transposed ? torch::empty({rows, T}, x.options()) : torch::empty({T, rows}, x.options());
  float* y = out.data_ptr<float>();
  std::vector<float> xt_buf(x_transposed ? 0 : cols * TILE);
  std::vector<char> used_block(x_transposed ? 0 : (cols + 7) / 8, 0);
  for (int64_t j = 0; j < (x_transposed ? 0 : cr[rows]); ++j) used_block[cc[j] / 8] = 1;
  for (int64_t t0 = 0; t0 < T; t0 += TILE) {
    const int64_t tn = std::min<int64_t>(TILE, T - t0);
    const float* xt = x_transposed ? xp + t0 : xt_buf.data();
    const int64_t ldx = x_transposed ? T : TILE;
    if (!x_transposed) transpose_tile(xp, cols, t0, tn, used_block, xt_buf.data());
    at::parallel_for(0, (rows + ROWS - 1) / ROWS, 1, [&](int64_t b0, int64_t b1) {
      alignas(64) float tile[ROWS][TILE];
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t o0 = blk * ROWS, on = std::min<int64_t>(ROWS, rows - o0);
        for (int64_t r = 0; r < on; ++r) {
          float* dst = out_transposed ? y + (o0 + r) * T + t0 : tile[r];
          row_tile(cr, cc, v, xt, ldx, b ? b[o0 + r] : 0.f, o0 + r, tn, dst);
        }
        if (!out_transposed) {
          for (int64_t t = 0; t < tn; ++t) {
            float* yr = y + (t0 + t) * rows + o0;
            for (int64_t r = 0; r < on; ++r) yr[r] = tile[r][t];
          }
        }
      }
    });
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("csr_linear", &csr_linear, "y = x @ W.T + b for a CSR W (int32 indices, float32)");
}
