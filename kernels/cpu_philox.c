/* Philox4x32-10 random bits for the sampler on the CPU: kernels/sampling_ref.py's
 * ``row_random_bits`` in native code, bit for bit. Token t of row r gets word t % 4 of
 * philox(key = seed[r]'s two 32-bit halves, counter = (t / 4, position[r], 0, 0)).
 * Built by kernels/native.py.
 */
#include <stdint.h>

#define KEY_A 0x9E3779B9u
#define KEY_B 0xBB67AE85u
#define ROUND_A 0xD2511F53u
#define ROUND_B 0xCD9E8D57u
#define ROUNDS 10

static inline void philox(uint32_t k0, uint32_t k1, uint32_t c[4]) {
    for (int i = 0; i < ROUNDS; i++) {
        const uint64_t b = (uint64_t)ROUND_B * c[2], a = (uint64_t)ROUND_A * c[0];
        const uint32_t c1 = c[1], c3 = c[3];
        c[0] = (uint32_t)(b >> 32) ^ c1 ^ k0;
        c[1] = (uint32_t)b;
        c[2] = (uint32_t)(a >> 32) ^ c3 ^ k1;
        c[3] = (uint32_t)a;
        k0 += KEY_A;
        k1 += KEY_B;
    }
}

/* out[r * vocab + t] = the 32 random bits of (seed[r], position[r], t), as int64. */
void row_random_bits(const int64_t *seed, const int64_t *position, int rows, int vocab, int64_t *out,
                     int num_threads) {
    const int groups = (vocab + 3) / 4;
#pragma omp parallel for collapse(2) schedule(static) num_threads(num_threads)
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) {
            const uint64_t s = (uint64_t)seed[r];
            uint32_t c[4] = {(uint32_t)g, (uint32_t)(uint64_t)position[r], 0u, 0u};
            philox((uint32_t)s, (uint32_t)(s >> 32), c);
            int64_t *dst = out + (int64_t)r * vocab + 4 * (int64_t)g;
            const int n = vocab - 4 * g < 4 ? vocab - 4 * g : 4;
            for (int lane = 0; lane < n; lane++) dst[lane] = c[lane];
        }
}
