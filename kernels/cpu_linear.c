/* Linear layers over the rows of a decode step on the CPU: y[m][j] = sum_k x[m][k] * w[j][k] (+ bias[j]),
 * float32 or bfloat16 (dtype 0/1), accumulated in float32 and rounded once to the dtype, as oneDNN does.
 *
 * The weight is packed once (pack_weight) into panels of 16 outputs, so that one 64-byte load holds
 * the next input element of 16 outputs (float32: [panel][k][16]; bfloat16: [panel][k / 2][16][2], the
 * pairs that vdpbf16ps multiplies). A tile is 2 panels (32 outputs) by up to 12 rows: 24 accumulators
 * in registers, each weight load used by every row of the tile and each broadcast input by both
 * panels. The threads split the tiles' columns, so each streams its share of the weights once and
 * re-reads it from its cache for the tile's further rows. Needs AVX-512 (and AVX512-BF16 for
 * bfloat16); panel_linear_supported says which dtypes this build takes. Built by kernels/native.py.
 */
#include <stdint.h>
#include <string.h>

#include "cpu_dtype.h"

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define LANES 16                /* outputs in a panel: one register of float32 */
#define PANELS 2                /* panels in a tile */
#define TILE_COLS (LANES * PANELS)
#define MAX_TILE_ROWS 12        /* 12 x 2 accumulators, 2 weights and a broadcast: 27 of 32 registers */

static int64_t padded_outputs(int n) { return (int64_t)(n + TILE_COLS - 1) / TILE_COLS * TILE_COLS; }

/* Elements of the packed weight of an [n, k] weight (outputs padded with zeros to whole tiles). */
int64_t packed_weight_numel(int n, int k) { return padded_outputs(n) * k; }

/* 1 where packed_linear takes this dtype on this build; bfloat16 also needs an even k. */
int panel_linear_supported(int dtype) {
#if defined(__AVX512F__)
    if (dtype == F32) return 1;
#endif
#if defined(__AVX512BF16__)
    if (dtype == BF16) return 1;
#endif
    return 0;
}

void pack_weight(const void *w, void *packed, int n, int k, int dtype) {
    /* Written in order; read as 16 sequential streams, one per output row of the panel. */
    const int bf16 = dtype == BF16;
    const int64_t panels = padded_outputs(n) / LANES;
    int64_t dst = 0;
    for (int64_t panel = 0; panel < panels; panel++) {
        for (int64_t i = 0; i < k; i += 1 + bf16) {
            for (int64_t lane = 0; lane < LANES; lane++) {
                const int64_t j = panel * LANES + lane;
                if (bf16) {
                    const uint16_t *row = (const uint16_t *)w + j * k + i;
                    ((uint16_t *)packed)[dst++] = j < n ? row[0] : 0;
                    ((uint16_t *)packed)[dst++] = j < n ? row[1] : 0;
                } else {
                    ((float *)packed)[dst++] = j < n ? ((const float *)w)[j * k + i] : 0.0f;
                }
            }
        }
    }
}

#if defined(__AVX512F__)
typedef __m512 Tile[MAX_TILE_ROWS][PANELS];

static inline __attribute__((always_inline)) __m512 load_bias(const void *bias, int64_t j, __mmask16 mask,
                                                              const int bf16) {
    if (!bias) return _mm512_setzero_ps();
    if (!bf16) return _mm512_maskz_loadu_ps(mask, (const float *)bias + j);
    return widen_bf16(_mm256_maskz_loadu_epi16(mask, (const uint16_t *)bias + j));
}

static inline __attribute__((always_inline)) void store_tile(Tile acc, const int rows, void *y, int64_t j0, int n,
                                                             const void *bias, const int bf16) {
    for (int p = 0; p < PANELS; p++) {
        const int64_t j = j0 + p * LANES;
        if (j >= n) break;
        const __mmask16 mask = n - j >= LANES ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1);
        const __m512 b = load_bias(bias, j, mask, bf16);
        for (int m = 0; m < rows; m++) {
            const __m512 v = _mm512_add_ps(acc[m][p], b);
#if defined(__AVX512BF16__)
            if (bf16) {
                _mm256_mask_storeu_epi16((uint16_t *)y + (int64_t)m * n + j, mask, (__m256i)_mm512_cvtneps_pbh(v));
                continue;
            }
#endif
            _mm512_mask_storeu_ps((float *)y + (int64_t)m * n + j, mask, v);
        }
    }
}

/* One tile: ``rows`` rows of x (a literal at each call, so the loops unroll into registers) by the
 * tile's two panels, over the whole of k. */
static inline __attribute__((always_inline)) void tile(const void *x, int k, const void *panels, const int rows,
                                                       void *y, int n, int64_t j0, const void *bias, const int bf16) {
    Tile acc;
    for (int m = 0; m < rows; m++)
        for (int p = 0; p < PANELS; p++) acc[m][p] = _mm512_setzero_ps();
    const int64_t panel_elems = (int64_t)k * LANES;
#if defined(__AVX512BF16__)
    if (bf16) {
        const uint16_t *xs = x, *ws = panels;
        for (int64_t i = 0; i < k; i += 2) {
            __m512bh w[PANELS];
            for (int p = 0; p < PANELS; p++) w[p] = (__m512bh)_mm512_loadu_si512(ws + p * panel_elems + i * LANES);
            for (int m = 0; m < rows; m++) {
                int32_t pair;
                memcpy(&pair, xs + (int64_t)m * k + i, sizeof pair);
                const __m512bh xb = (__m512bh)_mm512_set1_epi32(pair);
                for (int p = 0; p < PANELS; p++) acc[m][p] = _mm512_dpbf16_ps(acc[m][p], xb, w[p]);
            }
        }
        store_tile(acc, rows, y, j0, n, bias, 1);
        return;
    }
#endif
    const float *xs = x, *ws = panels;
    for (int64_t i = 0; i < k; i++) {
        __m512 w[PANELS];
        for (int p = 0; p < PANELS; p++) w[p] = _mm512_loadu_ps(ws + p * panel_elems + i * LANES);
        for (int m = 0; m < rows; m++) {
            const __m512 xb = _mm512_set1_ps(xs[(int64_t)m * k + i]);
            for (int p = 0; p < PANELS; p++) acc[m][p] = _mm512_fmadd_ps(xb, w[p], acc[m][p]);
        }
    }
    store_tile(acc, rows, y, j0, n, bias, 0);
}

#define TILE_CASE(R) case R: tile(xr, k, panels, R, yr, n, j0, bias, bf16); break;

static inline __attribute__((always_inline)) void tile_rows(const void *xr, int k, const void *panels, int rows,
                                                            void *yr, int n, int64_t j0, const void *bias, const int bf16) {
    switch (rows) {
        TILE_CASE(1) TILE_CASE(2) TILE_CASE(3) TILE_CASE(4) TILE_CASE(5) TILE_CASE(6)
        TILE_CASE(7) TILE_CASE(8) TILE_CASE(9) TILE_CASE(10) TILE_CASE(11) TILE_CASE(12)
    }
}

static void column(const void *x, const void *packed, const void *bias, void *y, int rows, int n, int k, int64_t t,
                   const int bf16) {
    const int size = bf16 ? 2 : 4;
    const int64_t j0 = t * TILE_COLS;
    const char *panels = (const char *)packed + j0 * k * size;
    const int groups = (rows + MAX_TILE_ROWS - 1) / MAX_TILE_ROWS;
    for (int g = 0; g < groups; g++) {  /* rows split evenly: 13 rows are tiles of 7 and 6, not 12 and 1 */
        const int first = (int)((int64_t)rows * g / groups), last = (int)((int64_t)rows * (g + 1) / groups);
        tile_rows((const char *)x + (int64_t)first * k * size, k, panels, last - first,
                  (char *)y + (int64_t)first * n * size, n, j0, bias, bf16);
    }
}
#endif

/* y [rows, n] = x [rows, k] @ w.T (+ bias [n], may be NULL), w packed by pack_weight; only where
 * panel_linear_supported(dtype). */
void packed_linear(const void *x, const void *packed, const void *bias, void *y, int rows, int n, int k, int dtype,
                   int num_threads) {
#if defined(__AVX512F__)
    const int64_t columns = padded_outputs(n) / TILE_COLS;
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t t = 0; t < columns; t++) {
        if (dtype == BF16) column(x, packed, bias, y, rows, n, k, t, 1);
        else column(x, packed, bias, y, rows, n, k, t, 0);
    }
#else
    (void)x; (void)packed; (void)bias; (void)y; (void)rows; (void)n; (void)k; (void)dtype; (void)num_threads;
#endif
}
