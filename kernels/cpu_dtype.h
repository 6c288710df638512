/* float32 <-> bfloat16 for the native CPU kernels, rounding as torch does. */
#ifndef BARE_ENGINE_CPU_DTYPE_H
#define BARE_ENGINE_CPU_DTYPE_H
#include <stdint.h>
#include <string.h>

enum { F32 = 0, BF16 = 1 };

static inline float bf16_to_f32(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {  /* round to nearest even; branch-free, so loops vectorise */
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t quiet_nan = (u >> 16) | 0x40u;  /* NaN stays NaN */
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

/* Element i of a float32 (bf16 == 0) or bfloat16 array as float32; with a constant bf16 the
 * branch folds away when inlined. */
static inline float load_elem(const void *p, int64_t i, const int bf16) {
    return bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store_elem(void *p, int64_t i, float v, const int bf16) {
    if (bf16) ((uint16_t *)p)[i] = f32_to_bf16(v);
    else ((float *)p)[i] = v;
}

/* v rounded to the array's dtype, as torch rounds the result of each op. */
static inline float round_to(float v, const int bf16) {
    return bf16 ? bf16_to_f32(f32_to_bf16(v)) : v;
}

#if defined(__AVX512F__)
#include <immintrin.h>

/* 16 bfloat16 values as float32 (exact: the bits move to the high half). */
static inline __m512 widen_bf16(__m256i raw) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
#endif
#endif
