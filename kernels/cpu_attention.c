/* Paged attention on the CPU: causal attention of variable-length query chunks over their
 * paged K/V context, read in place from the cache (no gather, no padding).
 *
 * Semantics and cache layout are kernels/attention_ref.py's: q is [N, Hq, D]; sequence b owns
 * rows cu_q[b]..cu_q[b+1], the last q_len tokens of its context of ctx[b] tokens, whose K/V are
 * already in k_cache/v_cache [num_blocks, block_size, Hkv, D]. Decode is the case q_len == 1.
 *
 * One work item is (sequence, tile of query tokens, KV heads): all KV heads of the sequence when
 * the batch leaves every thread several items (decodes), else one. Its rows are every query head
 * of those heads' GQA groups for each token of the tile, so each K/V row is loaded once for all of
 * them. Decodes whose block tables start with the same blocks (a shared prompt, through the prefix
 * cache) go a few sequences to an item, which reads those blocks once for all of its rows. Head dims that are multiples of 64 take attend_two_pass (scores, softmax, then P.V; bf16
 * through AVX512-BF16 dot products); others attend_tile_d, an online softmax over chunks of CHUNK
 * keys, transposed for many rows so scores are CHUNK-wide vector FMAs. Softmax is in float32.
 * Built by kernels/cpu_attention.py with -O3 -march=native -ffast-math -fopenmp.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "cpu_dtype.h"

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define CHUNK 16
#define MAX_D 256
#define MAX_ROWS 64
#define NEG_BIG (-1e30f)
#define TRANSPOSE_MIN_ROWS 12

/* exp(x) for x <= 0 in a form the compiler vectorises: 2^x = 2^n * 2^f with |f| <= 1/2 and a
 * degree-7 Taylor polynomial for 2^f (relative error below 2e-8 on that range). */
static inline float exp_nonpositive(float x) {
    float y = x * 1.4426950408889634f;
    y = y < -126.0f ? -126.0f : y;
    const float n = rintf(y);
    const float f = (y - n) * 0.6931471805599453f;
    const float poly = 1.0f + f * (1.0f + f * (0.5f + f * (1.6666667e-1f + f * (4.1666668e-2f + f * (8.3333338e-3f +
                       f * (1.3888889e-3f + f * 1.9841270e-4f))))));
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return x <= -87.0f ? 0.0f : poly * scale;
}

/* exp of CHUNK + 1 lanes (all <= 0). */
static inline void exp_lanes(float *x) {
    for (int t = 0; t < CHUNK + 1; t++) x[t] = exp_nonpositive(x[t]);
}

static inline void load_row(const void *base, int dtype, int64_t offset, int d, float *dst) {
    if (dtype == BF16) {
        const uint16_t *src = (const uint16_t *)base + offset;
        for (int i = 0; i < d; i++) dst[i] = bf16_to_f32(src[i]);
    } else {
        memcpy(dst, (const float *)base + offset, (size_t)d * sizeof(float));
    }
}

static const float ZERO_ROW[MAX_D];  /* the rows of a chunk past its last key */

#ifdef __AVX512F__
/* The horizontal sums of 16 vectors as one vector (lane t: the sum of v[t]), by a fixed tree of
 * unpacks and lane shuffles: the same order for every row and batch. */
static inline __m512 sum16(const __m512 *v) {
    __m512 pairs[8], quads[4];
    for (int j = 0; j < 8; j++)
        pairs[j] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * j], v[2 * j + 1]), _mm512_unpackhi_ps(v[2 * j], v[2 * j + 1]));
    for (int j = 0; j < 4; j++) {
        const __m512d x = _mm512_castps_pd(pairs[2 * j]), y = _mm512_castps_pd(pairs[2 * j + 1]);
        quads[j] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    const __m512 x0 = _mm512_add_ps(_mm512_shuffle_f32x4(quads[0], quads[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_f32x4(quads[0], quads[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512 x1 = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2], quads[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_f32x4(quads[2], quads[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(x0, x1, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(x0, x1, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* 16 elements of a float32 (bf16 == 0) or bfloat16 row from element i, as float32. */
static inline __m512 load16(const void *row, int i, const int bf16) {
    if (bf16) return widen_bf16(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + i)));
    return _mm512_loadu_ps((const float *)row + i);
}

/* One query row's scores against the CHUNK (16) keys of a chunk; d a multiple of 16. */
static inline __attribute__((always_inline)) void row_scores(const float *q, const void *const *krow, int d, float *s,
                                                             const int bf16) {
    __m512 dots[CHUNK];
    for (int t = 0; t < CHUNK; t++) {
        __m512 x = _mm512_mul_ps(_mm512_loadu_ps(q), load16(krow[t], 0, bf16));
        for (int i = 16; i < d; i += 16) x = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), load16(krow[t], i, bf16), x);
        dots[t] = x;
    }
    _mm512_storeu_ps(s, sum16(dots));
}

/* a += sum over the first n keys of e[t] * v[t], 64 columns at a time in registers; d a multiple of 64. */
static inline __attribute__((always_inline)) void add_weighted_rows(float *a, const float *e, const void *const *vrow,
                                                                    int n, int d, const int bf16) {
    for (int i = 0; i < d; i += 64) {
        __m512 a0 = _mm512_loadu_ps(a + i), a1 = _mm512_loadu_ps(a + i + 16), a2 = _mm512_loadu_ps(a + i + 32),
               a3 = _mm512_loadu_ps(a + i + 48);
        for (int t = 0; t < n; t++) {
            const __m512 w = _mm512_set1_ps(e[t]);
            a0 = _mm512_fmadd_ps(w, load16(vrow[t], i, bf16), a0);
            a1 = _mm512_fmadd_ps(w, load16(vrow[t], i + 16, bf16), a1);
            a2 = _mm512_fmadd_ps(w, load16(vrow[t], i + 32, bf16), a2);
            a3 = _mm512_fmadd_ps(w, load16(vrow[t], i + 48, bf16), a3);
        }
        _mm512_storeu_ps(a + i, a0);
        _mm512_storeu_ps(a + i + 16, a1);
        _mm512_storeu_ps(a + i + 32, a2);
        _mm512_storeu_ps(a + i + 48, a3);
    }
}
#endif

typedef struct {
    const void *q, *k_cache, *v_cache;
    void *out;
    const int32_t *block_tables, *cu_q, *ctx;
    int64_t table_stride;
    int num_heads, num_kv_heads, head_dim, block_size, q_dtype, kv_dtype;
    float scale;
} Problem;

#ifdef __AVX512F__
/* Scratch of attend_two_pass, per thread: a work item's scores (then P), its accumulators and its
 * keys' row offsets. */
static _Thread_local char *scratch;
static _Thread_local size_t scratch_bytes;

static void *scratch_for(size_t bytes) {
    if (bytes > scratch_bytes) {
        free(scratch);
        scratch_bytes = (bytes + 4095) & ~(size_t)4095;
        scratch = aligned_alloc(64, scratch_bytes);
        if (!scratch) scratch_bytes = 0;
    }
    return scratch;
}

#if defined(__AVX512BF16__)
/* One row's scores against 16 keys (rows of d bfloat16, d a multiple of 32), times scale. */
static inline __attribute__((always_inline)) void scores16_bf16(const uint16_t *q, const uint16_t *const *krow,
                                                                int d, float scale, float *s) {
    __m512 dots[CHUNK];
    for (int t = 0; t < CHUNK; t++) {
        __m512 x = _mm512_setzero_ps();
        for (int i = 0; i < d; i += 32)
            x = _mm512_dpbf16_ps(x, (__m512bh)_mm512_loadu_si512(q + i), (__m512bh)_mm512_loadu_si512(krow[t] + i));
        dots[t] = x;
    }
    _mm512_storeu_ps(s, _mm512_mul_ps(sum16(dots), _mm512_set1_ps(scale)));
}
#endif

/* Softmax numerators of a row's first `visible` scores, in place, zeros up to `padded`; returns
 * their sum. bf16: as bfloat16 pairs packed over the scores (pair j: keys 2j, 2j+1). */
static inline __attribute__((always_inline)) float softmax_row(float *s, int visible, int padded, const int bf16) {
    float max = NEG_BIG;
    for (int t = 0; t < visible; t++) max = s[t] > max ? s[t] : max;
    for (int t = 0; t < visible; t++) s[t] = exp_nonpositive(s[t] - max);
    for (int t = visible; t < padded; t++) s[t] = 0.0f;
    float sum = 0.0f;
    if (!bf16) {
        for (int t = 0; t < visible; t++) sum += s[t];
        return sum;
    }
    uint32_t *pairs = (uint32_t *)s;
    for (int j = 0; j < padded / 2; j++) {  /* pair j overwrites scores 2j, 2j+1 only after reading them */
        const uint16_t lo = f32_to_bf16(s[2 * j]), hi = f32_to_bf16(s[2 * j + 1]);
        sum += bf16_to_f32(lo) + bf16_to_f32(hi);
        pairs[j] = (uint32_t)lo | (uint32_t)hi << 16;
    }
    return sum;
}
#endif

/* Scores of every row against one chunk of keys, into s[r][0..CHUNK).
 * Few rows (decodes): a dot product per (row, key), as 16 vector partial sums reduced together.
 * Many rows: K transposed once, then four rows at a time as CHUNK-wide FMAs (four independent
 * accumulators keep the FMA pipes busy). */
static inline __attribute__((always_inline)) void chunk_scores(
        int d, int rows, int transposed, int raw_bf16, float (*q)[MAX_D], const void *const *krow,
        float (*kt)[CHUNK], float (*s)[CHUNK]) {
    if (!transposed) {
#ifdef __AVX512F__
        if (d % 16 == 0) {
            for (int r = 0; r < rows; r++) {
                if (raw_bf16) row_scores(q[r], krow, d, s[r], 1);
                else row_scores(q[r], krow, d, s[r], 0);
            }
            return;
        }
#endif
        for (int t = 0; t < CHUNK; t++)
            for (int r = 0; r < rows; r++) {
                float dot = 0.0f;
                for (int i = 0; i < d; i++) dot += q[r][i] * ((const float *)krow[t])[i];
                s[r][t] = dot;
            }
        return;
    }
    for (int t = 0; t < CHUNK; t++)
        for (int i = 0; i < d; i++) kt[i][t] = ((const float *)krow[t])[i];
    for (int r0 = 0; r0 < rows; r0 += 4) {  /* q has zero rows past `rows`, up to a multiple of 4 */
        float s4[4][CHUNK] = {{0}};
        for (int i = 0; i < d; i++)
            for (int rr = 0; rr < 4; rr++) {
                const float qi = q[r0 + rr][i];
                for (int t = 0; t < CHUNK; t++) s4[rr][t] += qi * kt[i][t];
            }
        for (int rr = 0; rr < 4 && r0 + rr < rows; rr++) memcpy(s[r0 + rr], s4[rr], sizeof(s4[rr]));
    }
}

/* Rows r = token * group + g of one tile, for KV head h of sequence b; d is the head dim
 * (a constant at the specialised call sites below). */
static inline __attribute__((always_inline)) void attend_tile_d(const Problem *p, int d, int b, int h,
                                                                 int tile_start, int tile_end) {
    const int group = p->num_heads / p->num_kv_heads, bs = p->block_size;
    const int q0 = p->cu_q[b], q_len = p->cu_q[b + 1] - q0, ctx = p->ctx[b];
    const int first_pos = ctx - q_len;  /* position of the sequence's first query token */
    const int rows = (tile_end - tile_start) * group;
    const int32_t *table = p->block_tables + (int64_t)b * p->table_stride;
    const int64_t kv_token_stride = (int64_t)p->num_kv_heads * d;

    float q[MAX_ROWS + 3][MAX_D], acc[MAX_ROWS][MAX_D], m[MAX_ROWS], l[MAX_ROWS];
    float k[CHUNK][MAX_D], kt[MAX_D][CHUNK], v[CHUNK][MAX_D], s[MAX_ROWS][CHUNK];
    /* The chunk's rows: in the cache (float32, or bfloat16 read by the AVX-512 decode path: raw_bf16),
     * or converted to float32 into k/v. */
    const void *krow[CHUNK], *vrow[CHUNK];
    int last[MAX_ROWS];  /* the last key position each row may see */

    for (int r = 0; r < rows; r++) {
        int token = tile_start + r / group, head = h * group + r % group;
        load_row(p->q, p->q_dtype, ((int64_t)(q0 + token) * p->num_heads + head) * d, d, q[r]);
        for (int i = 0; i < d; i++) {
            q[r][i] *= p->scale;
            acc[r][i] = 0.0f;
        }
        m[r] = NEG_BIG;
        l[r] = 0.0f;
        last[r] = first_pos + token;
    }
    for (int r = rows; r < rows + 3; r++)
        for (int i = 0; i < d; i++) q[r][i] = 0.0f;
    const int num_keys = first_pos + tile_end;  /* keys 0 .. last position of the tile */
    const int transposed = rows >= TRANSPOSE_MIN_ROWS;
#ifdef __AVX512F__
    const int raw_bf16 = p->kv_dtype == BF16 && !transposed && d % 64 == 0;
#else
    const int raw_bf16 = 0;
#endif

    for (int start = 0; start < num_keys; start += CHUNK) {
        const int n = num_keys - start < CHUNK ? num_keys - start : CHUNK;
        /* The cache is far larger than the CPU's caches: ask for the next chunk's rows now. */
        for (int pos = start + CHUNK; pos < start + 2 * CHUNK && pos < num_keys; pos++) {
            int64_t slot = (int64_t)table[pos / bs] * bs + pos % bs;
            const int64_t offset = slot * kv_token_stride + (int64_t)h * d;
            const int bytes = d * (p->kv_dtype == BF16 ? 2 : 4);
            for (int byte = 0; byte < bytes; byte += 64) {
                __builtin_prefetch((const char *)p->k_cache + offset * (bytes / d) + byte);
                __builtin_prefetch((const char *)p->v_cache + offset * (bytes / d) + byte);
            }
        }
        for (int t = 0; t < n; t++) {
            int pos = start + t;
            int64_t slot = (int64_t)table[pos / bs] * bs + pos % bs;
            int64_t offset = slot * kv_token_stride + (int64_t)h * d;
            if (p->kv_dtype == F32) {
                krow[t] = (const float *)p->k_cache + offset;
                vrow[t] = (const float *)p->v_cache + offset;
            } else if (raw_bf16) {
                krow[t] = (const uint16_t *)p->k_cache + offset;
                vrow[t] = (const uint16_t *)p->v_cache + offset;
            } else {
                load_row(p->k_cache, p->kv_dtype, offset, d, k[t]);
                load_row(p->v_cache, p->kv_dtype, offset, d, v[t]);
                krow[t] = k[t];
                vrow[t] = v[t];
            }
        }
        for (int t = n; t < CHUNK; t++) krow[t] = vrow[t] = ZERO_ROW;
        chunk_scores(d, rows, transposed, raw_bf16, q, krow, kt, s);
        for (int r = 0; r < rows; r++) {
            const int visible = last[r] - start + 1;  /* keys of this chunk row r may see */
            if (visible <= 0) continue;
            const int valid = visible < n ? visible : n;
            float chunk_max = NEG_BIG, e[CHUNK + 1];
            for (int t = 0; t < CHUNK; t++) {
                const float x = t < valid ? s[r][t] : NEG_BIG;
                e[t] = x;
                chunk_max = x > chunk_max ? x : chunk_max;
            }
            const float new_max = chunk_max > m[r] ? chunk_max : m[r];
            for (int t = 0; t < CHUNK; t++) e[t] -= new_max;
            e[CHUNK] = m[r] - new_max;
            exp_lanes(e);
            float sum = 0.0f;
            for (int t = 0; t < CHUNK; t++) sum += e[t];
            const float correction = e[CHUNK];
            l[r] = l[r] * correction + sum;
            m[r] = new_max;
            float *a = acc[r];
            for (int i = 0; i < d; i++) a[i] *= correction;
#ifdef __AVX512F__
            if (d % 64 == 0) {
                if (raw_bf16) add_weighted_rows(a, e, vrow, valid, d, 1);
                else add_weighted_rows(a, e, vrow, valid, d, 0);
                continue;
            }
#endif
            for (int t = 0; t < valid; t++) {
                const float w = e[t];
                for (int i = 0; i < d; i++) a[i] += w * ((const float *)vrow[t])[i];
            }
        }
    }

    for (int r = 0; r < rows; r++) {
        int token = tile_start + r / group, head = h * group + r % group;
        int64_t offset = ((int64_t)(q0 + token) * p->num_heads + head) * d;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        if (p->q_dtype == BF16) {
            uint16_t *o = (uint16_t *)p->out + offset;
            for (int i = 0; i < d; i++) o[i] = f32_to_bf16(acc[r][i] * inv);
        } else {
            float *o = (float *)p->out + offset;
            for (int i = 0; i < d; i++) o[i] = acc[r][i] * inv;
        }
    }
}

#ifdef __AVX512F__
/* Loads the work item's K (or V) rows of keys from..to-1, all its heads (a token's heads are
 * adjacent in the cache), a chunk ahead of their use. Plain loads, not prefetch hints: measured on
 * a cache far larger than L3, this overlaps the misses best (prefetch hints at any distance gained
 * nothing over the hardware's prefetcher). */
static inline void load_ahead(const char *cache, const int64_t *offset, int from, int to, int span) {
    __m512i sink = _mm512_setzero_si512();
    for (int pos = from; pos < to; pos++)
        for (int byte = 0; byte < span; byte += 64) sink = _mm512_xor_si512(sink, _mm512_loadu_si512(cache + offset[pos] + byte));
    volatile int keep = _mm512_cvtsi512_si32(sink);
    (void)keep;
}

/* Row of a work item (see attend_two_pass) for the i-th row of KV head hh's rows. */
static inline int item_row(int i, int hh, int heads, int group) {
    return (i / group * heads + hh) * group + i % group;
}

/* A query token of a work item: token `token` of sequence b's query chunk. */
typedef struct {
    int b, token;
} Member;

/* Keys a member's token sees: its context up to and including itself. */
static inline int member_keys(const Problem *p, Member m) {
    return p->ctx[m.b] - (p->cu_q[m.b + 1] - p->cu_q[m.b]) + m.token + 1;
}

/* Byte offsets of keys from..to-1 (a token's first head h0) through sequence b's block table. */
static inline void key_offsets(const Problem *p, int b, int from, int to, int h0, int64_t *offset) {
    const int32_t *table = p->block_tables + (int64_t)b * p->table_stride;
    const int bs = p->block_size, elem = p->kv_dtype == BF16 ? 2 : 4;
    const int64_t row_bytes = (int64_t)p->num_kv_heads * p->head_dim * elem;
    for (int pos = from; pos < to; pos++)
        offset[pos - from] = ((int64_t)table[pos / bs] * bs + pos % bs) * row_bytes + (int64_t)h0 * p->head_dim * elem;
}

/* Scores of rows (member m0..m1-1's, every head) against keys from..to-1 (offset[pos - from]), those
 * past `to` reading as zero rows. s rows are `padded` apart, indexed by key position. */
static inline __attribute__((always_inline)) void score_keys(
        const Problem *p, int d, const int64_t *offset, int from, int to, int m0, int m1, int heads, int group,
        const void *const *q, float (*qs)[MAX_D], float *s, int padded, const int bf16) {
    const int head_bytes = d * (bf16 ? 2 : 4), span = heads * head_bytes;
    const char *kc = p->k_cache, *zero = (const char *)ZERO_ROW;
    for (int start = from; start < to; start += CHUNK) {
        const int ahead = start + 2 * CHUNK;
        if (ahead < to) load_ahead(kc, offset, ahead - from, (ahead + CHUNK < to ? ahead + CHUNK : to) - from, span);
        for (int hh = 0; hh < heads; hh++) {
            const void *krow[CHUNK];
            for (int t = 0; t < CHUNK; t++)
                krow[t] = start + t < to ? kc + offset[start + t - from] + hh * head_bytes : zero;
            for (int i = m0 * group; i < m1 * group; i++) {  /* rows of head hh */
                const int r = item_row(i, hh, heads, group);
                float *sr = s + (int64_t)r * padded + start;
#if defined(__AVX512BF16__)
                if (bf16) {
                    scores16_bf16(q[r], (const uint16_t *const *)krow, d, p->scale, sr);
                    continue;
                }
#endif
                row_scores(qs[r], krow, d, sr, 0);
            }
        }
    }
}

/* acc rows (member m0..m1-1's, every head) += P . V over keys from..to-1, 2 * CHUNK keys at a time. */
static inline __attribute__((always_inline)) void add_values(
        const Problem *p, int d, const int64_t *offset, int from, int to, int m0, int m1, int heads, int group,
        const float *s, int padded, float *acc, const int bf16) {
    const int elem = bf16 ? 2 : 4, head_bytes = d * elem, span = heads * head_bytes;
    const char *vc = p->v_cache, *zero = (const char *)ZERO_ROW;
    const int step = bf16 ? 2 : 1;  /* keys per FMA: bfloat16 takes them in pairs */
    for (int start = from; start < to; start += 2 * CHUNK) {
        const int end = start + 2 * CHUNK < to ? start + 2 * CHUNK : to;
        if (end < to) load_ahead(vc, offset, end - from, (end + 2 * CHUNK < to ? end + 2 * CHUNK : to) - from, span);
        for (int hh = 0; hh < heads; hh++)
            for (int c = 0; c < d; c += 64)
                for (int i0 = m0 * group; i0 < m1 * group; i0 += 4) {  /* rows of head hh, four at a time */
                    const int nr = m1 * group - i0 < 4 ? m1 * group - i0 : 4;
                    int row[4];
                    __m512 a[4][4];
                    for (int k = 0; k < nr; k++) {
                        row[k] = item_row(i0 + k, hh, heads, group);
                        for (int x = 0; x < 4; x++) a[k][x] = _mm512_loadu_ps(acc + (int64_t)row[k] * d + c + 16 * x);
                    }
                    for (int pos = start; pos < end; pos += step) {
                        const char *v0 = vc + offset[pos - from] + hh * head_bytes + c * elem;
                        __m512 u[4];
#if defined(__AVX512BF16__)
                        if (bf16) {
                            const char *v1 = pos + 1 < to ? vc + offset[pos + 1 - from] + hh * head_bytes + c * elem : zero;
                            const __m512i a0 = _mm512_loadu_si512(v0), a1 = _mm512_loadu_si512(v0 + 64);
                            const __m512i b0 = _mm512_loadu_si512(v1), b1 = _mm512_loadu_si512(v1 + 64);
                            /* (key pos, key pos + 1) pairs per column; the lane order is fixed up at the end */
                            u[0] = (__m512)_mm512_unpacklo_epi16(a0, b0);
                            u[1] = (__m512)_mm512_unpackhi_epi16(a0, b0);
                            u[2] = (__m512)_mm512_unpacklo_epi16(a1, b1);
                            u[3] = (__m512)_mm512_unpackhi_epi16(a1, b1);
                            for (int k = 0; k < nr; k++) {
                                const uint32_t pair = ((const uint32_t *)(s + (int64_t)row[k] * padded))[pos / 2];
                                const __m512bh w = (__m512bh)_mm512_set1_epi32((int)pair);
                                for (int x = 0; x < 4; x++) a[k][x] = _mm512_dpbf16_ps(a[k][x], (__m512bh)u[x], w);
                            }
                            continue;
                        }
#endif
                        for (int x = 0; x < 4; x++) u[x] = _mm512_loadu_ps((const float *)v0 + 16 * x);
                        for (int k = 0; k < nr; k++) {
                            const __m512 w = _mm512_set1_ps(s[(int64_t)row[k] * padded + pos]);
                            for (int x = 0; x < 4; x++) a[k][x] = _mm512_fmadd_ps(w, u[x], a[k][x]);
                        }
                    }
                    for (int k = 0; k < nr; k++)
                        for (int x = 0; x < 4; x++) _mm512_storeu_ps(acc + (int64_t)row[k] * d + c + 16 * x, a[k][x]);
                }
    }
}

/* One work item in two passes, for float32 or bfloat16 (bf16) q and K/V, d a multiple of 64:
 * every score of the item's rows first, then one softmax per row, then P.V. No per-chunk
 * rescaling. bfloat16 uses AVX512-BF16 dot products and rounds P to bfloat16 for P.V, as torch's
 * flash attention does; K/V are never converted.
 *
 * The item's query tokens are its members (a tile of one sequence's chunk, or decodes of several
 * sequences) and its heads KV heads h0..h1-1; its rows are every query head of those heads' GQA
 * groups, row r = (member * heads + head - h0) * group + g. Keys 0..common-1 are the same blocks
 * for every member (member 0's table): they are read once for all rows. Each member's keys past
 * `common` are its own. A row sees the same keys, in the same order and chunks, whichever item it
 * is in, so its result does not depend on the batch. With all heads in one item (decodes) each
 * chunk of keys reads whole token rows of the cache, which streams from memory far better than
 * one head's slice of each row.
 * Returns 0, writing nothing, when its scratch cannot be allocated (the caller falls back). */
static inline __attribute__((always_inline)) int attend_two_pass(const Problem *p, int d, const Member *member,
                                                                 int members, int h0, int h1, int common,
                                                                 const int bf16) {
    const int group = p->num_heads / p->num_kv_heads, heads = h1 - h0, rows = members * heads * group;
    int max_keys = common, own_keys = 0;
    for (int m = 0; m < members; m++) {
        const int n = member_keys(p, member[m]);
        max_keys = n > max_keys ? n : max_keys;
        own_keys += n > common ? n - common : 0;
    }
    const int padded = (max_keys + 2 * CHUNK - 1) / (2 * CHUNK) * (2 * CHUNK);
    const int elem = bf16 ? 2 : 4;
    const size_t score_bytes = (size_t)rows * padded * sizeof(float), acc_bytes = (size_t)rows * d * sizeof(float);
    char *mem = scratch_for(score_bytes + acc_bytes + (size_t)(common + own_keys) * sizeof(int64_t));
    if (!mem) return 0;
    float *s = (float *)mem, *acc = (float *)(mem + score_bytes);
    int64_t *shared = (int64_t *)(mem + score_bytes + acc_bytes);  /* byte offset of key pos's first head */
    int64_t *own[MAX_ROWS];  /* member m's keys from `common` on */
    const void *q[MAX_ROWS];
    float qs[bf16 ? 1 : MAX_ROWS][MAX_D];  /* float32 q rows times scale */
    int keys[MAX_ROWS];
    float l[MAX_ROWS];
    for (int r = 0; r < rows; r++) {
        const Member m = member[r / (heads * group)];
        const int head = h0 + r / group % heads;
        q[r] = (const char *)p->q + (((int64_t)(p->cu_q[m.b] + m.token) * p->num_heads + head * group + r % group) * d) * elem;
        if (!bf16)
            for (int i = 0; i < d; i++) qs[r][i] = ((const float *)q[r])[i] * p->scale;
    }
    key_offsets(p, member[0].b, 0, common, h0, shared);
    int64_t *next = shared + common;
    for (int m = 0; m < members; m++) {
        keys[m] = member_keys(p, member[m]);
        own[m] = next;
        if (keys[m] > common) {
            key_offsets(p, member[m].b, common, keys[m], h0, own[m]);
            next += keys[m] - common;
        }
    }

    score_keys(p, d, shared, 0, common, 0, members, heads, group, q, qs, s, padded, bf16);
    for (int m = 0; m < members; m++)
        score_keys(p, d, own[m], common, keys[m], m, m + 1, heads, group, q, qs, s, padded, bf16);
    for (int r = 0; r < rows; r++) l[r] = softmax_row(s + (int64_t)r * padded, keys[r / (heads * group)], padded, bf16);

    memset(acc, 0, acc_bytes);
    add_values(p, d, shared, 0, common, 0, members, heads, group, s, padded, acc, bf16);
    for (int m = 0; m < members; m++)
        add_values(p, d, own[m], common, keys[m], m, m + 1, heads, group, s, padded, acc, bf16);

    for (int r = 0; r < rows; r++) {
        const Member m = member[r / (heads * group)];
        const int head = h0 + r / group % heads;
        const int64_t o = ((int64_t)(p->cu_q[m.b] + m.token) * p->num_heads + head * group + r % group) * d;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        for (int c = 0; c < d; c += 64) {
            const float *lanes = acc + (int64_t)r * d + c;  /* four vectors of 16 */
            float col[64];
            if (bf16)  /* unpacklo/hi took elements 0-3 / 4-7 of each 128-bit lane (8 columns) */
                for (int half = 0; half < 2; half++)
                    for (int lane = 0; lane < 4; lane++)
                        for (int i = 0; i < 4; i++) {
                            col[32 * half + 8 * lane + i] = lanes[16 * (2 * half) + 4 * lane + i];
                            col[32 * half + 8 * lane + 4 + i] = lanes[16 * (2 * half + 1) + 4 * lane + i];
                        }
            else
                memcpy(col, lanes, sizeof(col));
            for (int i = 0; i < 64; i++) store_elem(p->out, o + c + i, col[i] * inv, bf16);
        }
    }
    return 1;
}
#endif

/* One work item: query tokens of `members` (see attend_two_pass), KV heads h0..h1-1; keys below
 * `common` are the same blocks for all of them. */
static void attend_item(const Problem *p, const Member *member, int members, int h0, int h1, int common) {
#ifdef __AVX512F__
    const int d = p->head_dim;
    if (p->q_dtype == F32 && p->kv_dtype == F32 && d % 64 == 0 && d <= MAX_D) {
        if (d == 64 ? attend_two_pass(p, 64, member, members, h0, h1, common, 0)
                    : attend_two_pass(p, d, member, members, h0, h1, common, 0)) return;
    }
#if defined(__AVX512BF16__)
    if (p->q_dtype == BF16 && p->kv_dtype == BF16 && d % 64 == 0 && d <= MAX_D) {
        if (d == 64 ? attend_two_pass(p, 64, member, members, h0, h1, common, 1)
                    : attend_two_pass(p, d, member, members, h0, h1, common, 1)) return;
    }
#endif
#endif
    for (int m = 0; m < members; m++) {  /* a tile's members are consecutive tokens of one sequence */
        int end = m + 1;
        while (end < members && member[end].b == member[m].b && member[end].token == member[end - 1].token + 1) end++;
        for (int h = h0; h < h1; h++)
            switch (p->head_dim) {  /* the common head dims get fully unrolled inner loops */
                case 64: attend_tile_d(p, 64, member[m].b, h, member[m].token, member[end - 1].token + 1); break;
                case 128: attend_tile_d(p, 128, member[m].b, h, member[m].token, member[end - 1].token + 1); break;
                default: attend_tile_d(p, p->head_dim, member[m].b, h, member[m].token, member[end - 1].token + 1);
            }
        m = end - 1;
    }
}

/* Limits the caller must respect (checked by the Python wrapper). */
int paged_attention_max_head_dim(void) { return MAX_D; }
int paged_attention_max_group(void) { return MAX_ROWS; }

/* A work item: `count` members from member[first]; keys below `common` are the same blocks for all. */
typedef struct {
    int first, count, common;
} Item;

/* Leading keys that sequences b and c read from the same blocks. */
static int shared_keys(const Problem *p, int b, int c) {
    const int32_t *x = p->block_tables + (int64_t)b * p->table_stride, *y = p->block_tables + (int64_t)c * p->table_stride;
    const int ctx = p->ctx[b] < p->ctx[c] ? p->ctx[b] : p->ctx[c];
    int blocks = 0;
    while ((int64_t)(blocks + 1) * p->block_size <= ctx && x[blocks] == y[blocks]) blocks++;
    return blocks * p->block_size;
}

/* Decodes share items when they share at least this many leading keys. */
#define SHARE_MIN_KEYS (4 * CHUNK)

static int32_t first_block(const Problem *p, int b) { return p->block_tables[(int64_t)b * p->table_stride]; }

/* seqs sorted by first block, then index (insertion sort: a batch holds a few hundred at most). */
static void sort_by_first_block(const Problem *p, int *seqs, int n) {
    for (int i = 1; i < n; i++) {
        const int b = seqs[i];
        int j = i;
        for (; j > 0 && (first_block(p, seqs[j - 1]) > first_block(p, b)
                         || (first_block(p, seqs[j - 1]) == first_block(p, b) && seqs[j - 1] > b)); j--)
            seqs[j] = seqs[j - 1];
        seqs[j] = b;
    }
}

/* Splits a run of `n` decodes sharing a prefix into items of at most `limit` members, as many
 * items as a multiple of the threads so that they spread evenly; returns the items written. */
static int64_t share_run(const Problem *p, const int *seqs, int n, int limit, int threads, Member *member,
                         int64_t *members, Item *items, int64_t k) {
    int parts = (n + limit - 1) / limit;
    parts = (parts + threads - 1) / threads * threads;
    if (parts > n) parts = n;
    for (int part = 0, done = 0; part < parts; part++) {
        const int size = (n - done) / (parts - part);
        int common = p->ctx[seqs[done]];
        for (int i = done + 1; i < done + size; i++) {
            const int keys = shared_keys(p, seqs[done], seqs[i]);
            common = keys < common ? keys : common;
        }
        common = size > 1 ? common / (2 * CHUNK) * (2 * CHUNK) : p->ctx[seqs[done]];
        items[k] = (Item){(int)*members, size, common};
        for (int i = done; i < done + size; i++) member[(*members)++] = (Member){seqs[i], 0};
        k++;
        done += size;
    }
    return k;
}

/* The work items of a step: their members, and how many KV heads each takes. */
typedef struct {
    Member *member;
    Item *items;
    int64_t num_items;
    int heads, shared_decodes;  /* decodes in items of several sequences */
} Plan;

static void free_plan(Plan *plan) {
    free(plan->member);
    free(plan->items);
}

/* Fills plan; -1 when its memory cannot be allocated. */
static int make_plan(const Problem *p, int batch, int num_threads, int share_prefix, Plan *plan) {
    const int32_t *cu_q = p->cu_q;
    const int num_heads = p->num_heads;
    /* An item takes all KV heads of its tokens when that leaves work for every thread (decodes of a
     * batch): it then reads whole token rows of the cache. Otherwise one KV head. */
    plan->heads = 1;
    int tile = MAX_ROWS / (num_heads / p->num_kv_heads);  /* query tokens an item takes */
    if (num_heads <= MAX_ROWS) {
        const int all_heads_tile = MAX_ROWS / num_heads;
        int64_t items = 0;
        for (int b = 0; b < batch; b++) items += (cu_q[b + 1] - cu_q[b] + all_heads_tile - 1) / all_heads_tile;
        if (items >= 4 * (int64_t)num_threads) {
            plan->heads = p->num_kv_heads;
            tile = all_heads_tile;
        }
    }
    if (tile > 16) tile = 16;

    const int64_t num_members = cu_q[batch] - cu_q[0];
    plan->member = malloc(sizeof(Member) * (size_t)(num_members > 0 ? num_members : 1));
    plan->items = malloc(sizeof(Item) * (size_t)(num_members > 0 ? num_members : 1));
    int *decodes = malloc(sizeof(int) * (size_t)(batch > 0 ? batch : 1));
    if (!plan->member || !plan->items || !decodes) {
        free_plan(plan);
        free(decodes);
        return -1;
    }
    int64_t k = 0, used = 0;
    int num_decodes = 0;
    /* Sharing needs all heads in an item (the two-pass path then reads whole token rows). */
    const int sharing = share_prefix && plan->heads == p->num_kv_heads && num_heads <= MAX_ROWS / 2;
    for (int b = 0; b < batch; b++) {
        const int q_len = cu_q[b + 1] - cu_q[b];
        if (sharing && q_len == 1) {
            decodes[num_decodes++] = b;
            continue;
        }
        for (int t = (q_len + tile - 1) / tile - 1; t >= 0; t--) {  /* tiles with the most keys first */
            const int start = t * tile, end = start + tile < q_len ? start + tile : q_len;
            plan->items[k++] = (Item){(int)used, end - start, 0};
            for (int token = start; token < end; token++) plan->member[used++] = (Member){b, token};
            plan->items[k - 1].common = member_keys(p, plan->member[used - 1]);
        }
    }
    plan->shared_decodes = 0;
    sort_by_first_block(p, decodes, num_decodes);
    for (int i = 0; i < num_decodes;) {
        int end = i + 1;
        while (end < num_decodes && shared_keys(p, decodes[i], decodes[end]) >= SHARE_MIN_KEYS) end++;
        k = share_run(p, decodes + i, end - i, MAX_ROWS / num_heads, num_threads, plan->member, &used, plan->items, k);
        plan->shared_decodes += end - i > 1 ? end - i : 0;
        i = end;
    }
    free(decodes);
    plan->num_items = k;
    return 0;
}

/* Returns 0, or -1 when the work list cannot be allocated (nothing is written then).
 * share_prefix: decodes whose sequences read the same leading blocks share work items, which read
 * those blocks once for all of them (the same result, row for row, as one item each). */
int paged_attention(const void *q, const void *k_cache, const void *v_cache, void *out,
                     const int32_t *block_tables, int64_t table_stride, const int32_t *cu_q,
                     const int32_t *ctx, int batch, int num_heads, int num_kv_heads, int head_dim,
                     int block_size, float scale, int q_dtype, int kv_dtype, int num_threads, int share_prefix) {
    Problem p = {q, k_cache, v_cache, out, block_tables, cu_q, ctx, table_stride, num_heads, num_kv_heads,
                 head_dim, block_size, q_dtype, kv_dtype, scale};
    Plan plan;
    if (make_plan(&p, batch, num_threads, share_prefix, &plan)) return -1;
    const int head_groups = num_kv_heads / plan.heads;
    const int64_t total = plan.num_items * head_groups;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int64_t w = 0; w < total; w++) {
        const Item item = plan.items[w / head_groups];
        const int h0 = (int)(w % head_groups) * plan.heads;
        attend_item(&p, plan.member + item.first, item.count, h0, h0 + plan.heads, item.common);
    }
    free_plan(&plan);
    return 0;
}

/* How many decodes paged_attention would put in items shared with other sequences (-1: no memory). */
int paged_attention_shared_decodes(const int32_t *block_tables, int64_t table_stride, const int32_t *cu_q,
                                   const int32_t *ctx, int batch, int num_heads, int num_kv_heads, int block_size,
                                   int num_threads) {
    Problem p = {0};
    p.block_tables = block_tables, p.table_stride = table_stride, p.cu_q = cu_q, p.ctx = ctx;
    p.num_heads = num_heads, p.num_kv_heads = num_kv_heads, p.block_size = block_size;
    Plan plan;
    if (make_plan(&p, batch, num_threads, 1, &plan)) return -1;
    free_plan(&plan);
    return plan.shared_decodes;
}

/* The step's new key/value rows [n, Hkv, D] (row i at key + i * key_stride elements, heads
 * packed) into their cache slots; slot < 0 is padding. Returns -1, writing nothing, when a slot
 * is past the cache's num_slots. */
int store_kv(const void *key, int64_t key_stride, const void *value, int64_t value_stride, void *k_cache,
             void *v_cache, const int64_t *slots, int n, int64_t num_slots, int row_elems, int elem_size) {
    for (int i = 0; i < n; i++)
        if (slots[i] >= num_slots) return -1;
    const size_t row_bytes = (size_t)row_elems * elem_size;
    for (int i = 0; i < n; i++) {
        if (slots[i] < 0) continue;
        memcpy((char *)k_cache + slots[i] * row_bytes, (const char *)key + i * key_stride * elem_size, row_bytes);
        memcpy((char *)v_cache + slots[i] * row_bytes, (const char *)value + i * value_stride * elem_size, row_bytes);
    }
    return 0;
}
