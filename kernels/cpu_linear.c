/* Linear layers over a few rows (decode steps of a few sequences) on the CPU:
 * y[m][j] = sum_k x[m][k] * w[j][k] (+ bias[j]), w [n, k] row-major, float32 or bfloat16 (dtype 0/1),
 * accumulated in float32 and rounded once to the dtype, as oneDNN does. Such a step is a pass over
 * the weights; the output rows are split over the threads so that each streams its share once.
 * Built by kernels/native.py.
 */
#include <stdint.h>

#include "cpu_dtype.h"

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define MAX_ROWS 4  /* past 4 rows oneDNN's packed GEMM is as fast or faster (measured, 2 cores; cpu_linear.py) */

/* Dot products of output j with every input row, into acc[0..rows). */
static inline void row_dots(const void *x, const void *w, int64_t j, int rows, int k, float *acc, const int bf16) {
#if defined(__AVX512BF16__)
    if (bf16 && k % 32 == 0) {
        __m512 sums[MAX_ROWS];
        for (int m = 0; m < rows; m++) sums[m] = _mm512_setzero_ps();
        const uint16_t *wj = (const uint16_t *)w + j * k;
        for (int i = 0; i < k; i += 32) {
            const __m512bh wv = (__m512bh)_mm512_loadu_si512((const void *)(wj + i));
            for (int m = 0; m < rows; m++) {
                const __m512bh xv = (__m512bh)_mm512_loadu_si512((const void *)((const uint16_t *)x + (int64_t)m * k + i));
                sums[m] = _mm512_dpbf16_ps(sums[m], xv, wv);
            }
        }
        for (int m = 0; m < rows; m++) acc[m] = _mm512_reduce_add_ps(sums[m]);
        return;
    }
#endif
    for (int m = 0; m < rows; m++) {
        float sum = 0.0f;
        for (int i = 0; i < k; i++) sum += load_elem(x, (int64_t)m * k + i, bf16) * load_elem(w, j * k + i, bf16);
        acc[m] = sum;
    }
}

int small_linear_max_rows(void) { return MAX_ROWS; }

/* y [rows, n] = x [rows, k] @ w.T (+ bias [n], may be NULL); rows <= MAX_ROWS. */
void small_linear(const void *x, const void *w, const void *bias, void *y, int rows, int n, int k, int dtype,
                  int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int j = 0; j < n; j++) {
        float acc[MAX_ROWS];
        if (dtype == BF16) row_dots(x, w, j, rows, k, acc, 1);
        else row_dots(x, w, j, rows, k, acc, 0);
        const float b = bias ? load_elem(bias, j, dtype == BF16) : 0.0f;
        for (int m = 0; m < rows; m++) {
            if (dtype == BF16) store_elem(y, (int64_t)m * n + j, acc[m] + b, 1);
            else store_elem(y, (int64_t)m * n + j, acc[m] + b, 0);
        }
    }
}
