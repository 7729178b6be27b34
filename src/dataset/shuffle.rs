//! `datasets.Dataset.shuffle(seed=s)`'s row order: `np.random.default_rng(s).permutation(n)`,
//! i.e. numpy's `SeedSequence` → `PCG64` (XSL-RR 128/64) → `Generator.shuffle` of
//! `arange(n)` (Fisher–Yates from the end, each index drawn by masked rejection, `random_interval`).
//! Ported from numpy's `bit_generator.pyx` (SeedSequence), `pcg64.h` and
//! `distributions.c` (`random_interval`), and checked against numpy's own output.

/// The permutation `np.random.default_rng(seed).permutation(n)` returns.
pub fn permutation(seed: u64, n: usize) -> Vec<usize> {
    let mut rng = Pcg64::from_seed(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.interval(i as u64) as usize;
        order.swap(i, j);
    }
    order
}

/// numpy's PCG64 bit generator with its 32-bit half buffer.
struct Pcg64 {
    state: u128,
    inc: u128,
    half: Option<u32>,
}

const MULTIPLIER: u128 = (0x2360_ed05_1fc6_5da4 << 64) | 0x4385_df64_9fcc_f645;

impl Pcg64 {
    /// `PCG64(SeedSequence(seed))`: 4 words of 64 bits, the first two the state (high word
    /// first), the last two the stream.
    fn from_seed(seed: u64) -> Self {
        let words = seed_sequence(seed, 8);
        let w = |i: usize| u64::from(words[2 * i]) | (u64::from(words[2 * i + 1]) << 32);
        let init_state = (u128::from(w(0)) << 64) | u128::from(w(1));
        let init_seq = (u128::from(w(2)) << 64) | u128::from(w(3));
        let mut rng = Pcg64 {
            state: 0,
            inc: (init_seq << 1) | 1,
            half: None,
        };
        rng.step();
        rng.state = rng.state.wrapping_add(init_state);
        rng.step();
        rng
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(MULTIPLIER).wrapping_add(self.inc);
    }

    fn next_u64(&mut self) -> u64 {
        self.step();
        let rot = (self.state >> 122) as u32;
        let xored = ((self.state >> 64) as u64) ^ (self.state as u64);
        xored.rotate_right(rot)
    }

    /// Low half first, the high half kept for the next call (numpy's `has_uint32`).
    fn next_u32(&mut self) -> u32 {
        if let Some(h) = self.half.take() {
            return h;
        }
        let x = self.next_u64();
        self.half = Some((x >> 32) as u32);
        x as u32
    }

    /// A uniform integer in `0..=max` by masked rejection (`random_interval`, which
    /// `Generator.shuffle` uses, not the Lemire method of `Generator.integers`).
    fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mask = u64::MAX >> max.leading_zeros();
        loop {
            let value = if max <= u64::from(u32::MAX) {
                u64::from(self.next_u32()) & mask
            } else {
                self.next_u64() & mask
            };
            if value <= max {
                return value;
            }
        }
    }
}

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const POOL_SIZE: usize = 4;

/// `SeedSequence(seed).generate_state(n_words, np.uint32)`.
fn seed_sequence(seed: u64, n_words: usize) -> Vec<u32> {
    // The entropy as numpy coerces an int: 32-bit words, least significant first.
    let mut entropy = vec![seed as u32];
    if seed >> 32 != 0 {
        entropy.push((seed >> 32) as u32);
    }
    let mut hash_a = INIT_A;
    let mut hashmix = |value: u32| {
        let mut v = value ^ hash_a;
        hash_a = hash_a.wrapping_mul(MULT_A);
        v = v.wrapping_mul(hash_a);
        v ^ (v >> 16)
    };
    let mix = |x: u32, y: u32| {
        let r = MIX_MULT_L
            .wrapping_mul(x)
            .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
        r ^ (r >> 16)
    };
    let mut pool = [0u32; POOL_SIZE];
    for (i, slot) in pool.iter_mut().enumerate() {
        *slot = hashmix(entropy.get(i).copied().unwrap_or(0));
    }
    for src in 0..POOL_SIZE {
        for dst in 0..POOL_SIZE {
            if src != dst {
                let h = hashmix(pool[src]);
                pool[dst] = mix(pool[dst], h);
            }
        }
    }
    for &e in entropy.iter().skip(POOL_SIZE) {
        for slot in pool.iter_mut() {
            let h = hashmix(e);
            *slot = mix(*slot, h);
        }
    }
    let mut hash_b = INIT_B;
    (0..n_words)
        .map(|i| {
            let mut v = pool[i % POOL_SIZE] ^ hash_b;
            hash_b = hash_b.wrapping_mul(MULT_B);
            v = v.wrapping_mul(hash_b);
            v ^ (v >> 16)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::permutation;

    /// `np.random.default_rng(seed).permutation(n)[:12]`, printed by numpy 2 in the
    /// reference venv.
    #[test]
    fn matches_numpy() {
        assert_eq!(permutation(42, 1), [0]);
        assert_eq!(permutation(42, 2), [1, 0]);
        assert_eq!(permutation(42, 5), [4, 2, 3, 1, 0]);
        assert_eq!(permutation(42, 10), [5, 6, 0, 7, 3, 2, 4, 9, 1, 8]);
        assert_eq!(
            permutation(42, 100)[..12],
            [59, 21, 56, 18, 33, 42, 50, 27, 92, 71, 2, 25]
        );
        assert_eq!(
            permutation(42, 1000)[..12],
            [978, 933, 859, 916, 127, 608, 856, 260, 147, 810, 635, 972]
        );
        assert_eq!(
            permutation(7, 70000)[..8],
            [15808, 48179, 11705, 6440, 12002, 28192, 35791, 5854]
        );
    }
}
