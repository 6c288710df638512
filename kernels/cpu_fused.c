/* The decoder's elementwise chains on the CPU, one pass each: RMSNorm (with the residual add
 * before it), SiLU-and-mul, and rotary embedding. Semantics are kernels/fused_ref.py's, rounding
 * to the tensors' dtype where each torch op of the reference would. Row-major, contiguous rows;
 * float32 or bfloat16 (dtype 0/1). Built by kernels/native.py.
 */
#include <math.h>
#include <stdint.h>

#include "cpu_dtype.h"

/* Below this many elements a step's op stays on one thread: waking the others costs more. */
#define PARALLEL_MIN 65536

static inline void norm_row(const void *x, void *residual, const void *weight, void *out, int64_t row, int dim,
                            float eps, float *buf, const int bf16) {
    const int64_t base = row * dim;
    if (residual)
        for (int i = 0; i < dim; i++) {
            buf[i] = round_to(load_elem(x, base + i, bf16) + load_elem(residual, base + i, bf16), bf16);
            store_elem(residual, base + i, buf[i], bf16);
        }
    else
        for (int i = 0; i < dim; i++) buf[i] = load_elem(x, base + i, bf16);
    float squares = 0.0f;
    for (int i = 0; i < dim; i++) squares += buf[i] * buf[i];
    const float inv = 1.0f / sqrtf(squares / (float)dim + eps);
    for (int i = 0; i < dim; i++)
        store_elem(out, base + i, load_elem(weight, i, bf16) * round_to(buf[i] * inv, bf16), bf16);
}

/* out = weight * rms_norm(h), h = x, or h = x + residual written back to residual (residual may be NULL). */
void rms_norm(const void *x, void *residual, const void *weight, void *out, int rows, int dim, float eps, int dtype,
              int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if ((int64_t)rows * dim >= PARALLEL_MIN)
    for (int r = 0; r < rows; r++) {
        float buf[dim];
        if (dtype == BF16) norm_row(x, residual, weight, out, r, dim, eps, buf, 1);
        else norm_row(x, residual, weight, out, r, dim, eps, buf, 0);
    }
}

static inline void silu_mul_row(const void *gate_up, void *out, int64_t row, int inner, const int bf16) {
    const int64_t in = row * 2 * inner, o = row * inner;
    for (int i = 0; i < inner; i++) {
        const float g = load_elem(gate_up, in + i, bf16);
        const float silu = round_to(g / (1.0f + expf(-g)), bf16);
        store_elem(out, o + i, silu * load_elem(gate_up, in + inner + i, bf16), bf16);
    }
}

/* out[r] = silu(gate_up[r, :inner]) * gate_up[r, inner:]. */
void silu_and_mul(const void *gate_up, void *out, int rows, int inner, int dtype, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if ((int64_t)rows * inner >= PARALLEL_MIN)
    for (int r = 0; r < rows; r++) {
        if (dtype == BF16) silu_mul_row(gate_up, out, r, inner, 1);
        else silu_mul_row(gate_up, out, r, inner, 0);
    }
}

static inline void rotate_row(void *x, int64_t row_offset, int heads, int head_dim, const void *cos, const void *sin,
                              int64_t angle_offset, const int bf16) {
    const int half = head_dim / 2;
    for (int h = 0; h < heads; h++) {
        const int64_t base = row_offset + (int64_t)h * head_dim;
        for (int j = 0; j < half; j++) {
            const float c = load_elem(cos, angle_offset + j, bf16), s = load_elem(sin, angle_offset + j, bf16);
            const float x1 = load_elem(x, base + j, bf16), x2 = load_elem(x, base + half + j, bf16);
            const float first = round_to(x1 * c, bf16) - round_to(x2 * s, bf16);
            const float second = round_to(x2 * c, bf16) + round_to(x1 * s, bf16);
            store_elem(x, base + j, first, bf16);
            store_elem(x, base + half + j, second, bf16);
        }
    }
}

/* Rotate-half rotary embedding of x [rows, heads, head_dim] (rows row_stride apart, heads packed),
 * in place, by cos/sin [rows, head_dim / 2] (in x's dtype). */
void rotary(void *x, int64_t row_stride, int rows, int heads, int head_dim, const void *cos, const void *sin,
            int dtype, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if ((int64_t)rows * heads * head_dim >= PARALLEL_MIN)
    for (int r = 0; r < rows; r++) {
        if (dtype == BF16) rotate_row(x, r * row_stride, heads, head_dim, cos, sin, (int64_t)r * (head_dim / 2), 1);
        else rotate_row(x, r * row_stride, heads, head_dim, cos, sin, (int64_t)r * (head_dim / 2), 0);
    }
}
