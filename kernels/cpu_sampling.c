/* The sampler's random draw on the CPU: kernels/sampling_ref.py's Gumbel-max draw
 * (``_gumbel_argmax``) with its Philox4x32-10 bits (``row_random_bits``), bit for bit. Token t of
 * row r gets word t % 4 of philox(key = seed[r]'s two 32-bit halves, counter = (t / 4,
 * position[r], 0, 0)).
 * Built by kernels/native.py.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define KEY_A 0x9E3779B9u
#define KEY_B 0xBB67AE85u
#define ROUND_A 0xD2511F53u
#define ROUND_B 0xCD9E8D57u
#define ROUNDS 10

#define GUMBEL_CHUNK 512

#define PHILOX_LANES 16  /* groups of four tokens computed side by side: one AVX-512 vector per word */

/* Philox bits of tokens [start, start + n) of one row (start a multiple of 4, n <= GUMBEL_CHUNK). */
static void chunk_bits(uint64_t seed, uint32_t position, int start, int n, uint32_t *bits) {
    for (int g0 = 0; g0 < (n + 3) / 4; g0 += PHILOX_LANES) {
        uint32_t c0[PHILOX_LANES], c1[PHILOX_LANES], c2[PHILOX_LANES], c3[PHILOX_LANES];
        for (int j = 0; j < PHILOX_LANES; j++) {
            c0[j] = (uint32_t)(start / 4 + g0 + j);
            c1[j] = position;
            c2[j] = c3[j] = 0u;
        }
        uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        for (int round = 0; round < ROUNDS; round++) {
            for (int j = 0; j < PHILOX_LANES; j++) {
                const uint64_t b = (uint64_t)ROUND_B * c2[j], a = (uint64_t)ROUND_A * c0[j];
                const uint32_t next0 = (uint32_t)(b >> 32) ^ c1[j] ^ k0, next2 = (uint32_t)(a >> 32) ^ c3[j] ^ k1;
                c1[j] = (uint32_t)b;
                c3[j] = (uint32_t)a;
                c0[j] = next0;
                c2[j] = next2;
            }
            k0 += KEY_A;
            k1 += KEY_B;
        }
        for (int j = 0; j < PHILOX_LANES; j++) {
            uint32_t *dst = bits + 4 * (g0 + j);
            dst[0] = c0[j];
            dst[1] = c1[j];
            dst[2] = c2[j];
            dst[3] = c3[j];
        }
    }
}

/* Bit tests: -ffast-math lets the compiler assume no value is infinite, so comparisons cannot say. */
static inline int finite_f32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return (u & 0x7f800000u) != 0x7f800000u;
}

static inline int finite_f64(double x) {
    uint64_t u;
    memcpy(&u, &x, 8);
    return (u & 0x7ff0000000000000ull) != 0x7ff0000000000000ull;
}

/* Greedy: the first index of the row's largest value (torch.argmax; NaN rows are undefined). */
static int64_t row_argmax(const float *z, int vocab) {
    float best = z[0];
    int64_t best_index = 0;
    for (int i = 1; i < vocab; i++)
        if (z[i] > best) {
            best = z[i];
            best_index = i;
        }
    return best_index;
}

/* Gumbel-max: the argmax over kept tokens (z >= cut, z finite) of z - log(-log1p(-v)) in float64,
 * v = (float32(bits) + 0.5) * 2^-32; first index on ties, 0 when no score is finite. */
static int64_t row_gumbel_argmax(const float *z, float cut, uint64_t seed, uint32_t position, int vocab) {
    uint32_t bits[GUMBEL_CHUNK];
    double score[GUMBEL_CHUNK];
    double best = -DBL_MAX;  /* stands for the reference's -inf scores */
    int64_t best_index = 0;
    for (int start = 0; start < vocab; start += GUMBEL_CHUNK) {
        const int n = vocab - start < GUMBEL_CHUNK ? vocab - start : GUMBEL_CHUNK;
        chunk_bits(seed, position, start, n, bits);
        for (int i = 0; i < n; i++) {
            const float v = ((float)bits[i] + 0.5f) * 0x1p-32f;
            const double s = (double)z[start + i] - log(-log1p(-(double)v));
            score[i] = z[start + i] >= cut && finite_f32(z[start + i]) && finite_f64(s) ? s : -DBL_MAX;
        }
        for (int i = 0; i < n; i++)
            if (score[i] > best) {
                best = score[i];
                best_index = start + i;
            }
    }
    return best_index;
}

/* Step 5 of sampling_ref.sample for every row of z [rows, vocab]: the Gumbel-max draw over the
 * kept tokens for sampled rows (sampled[r] != 0), the argmax of z for greedy rows. */
void draw_tokens(const float *z, const float *tau, const int64_t *seed, const int64_t *position,
                 const uint8_t *sampled, int rows, int vocab, int64_t *out, int num_threads) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int r = 0; r < rows; r++) {
        const float *zr = z + (int64_t)r * vocab;
        out[r] = sampled[r] ? row_gumbel_argmax(zr, tau[r], (uint64_t)seed[r], (uint32_t)(uint64_t)position[r], vocab)
                            : row_argmax(zr, vocab);
    }
}

/* mass[r] = the float64 sum over the row's tokens of exp(z - shift[r]): the normaliser of top_p
 * (sampling_cpu._top_k_thresholds), summed in vector lanes (its last bits depend on the order). */
void exp_mass(const float *z, const double *shift, int rows, int vocab, double *mass, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int r = 0; r < rows; r++) {
        const float *zr = z + (int64_t)r * vocab;
        double sum = 0.0;
        for (int i = 0; i < vocab; i++) sum += exp((double)zr[i] - shift[r]);
        mass[r] = sum;
    }
}
