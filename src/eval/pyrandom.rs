//! Python's `random.Random(seed)` as far as lm_eval's few-shot sampler uses it: the Mersenne
//! Twister MT19937 seeded from an integer (`init_by_array` over the seed's 32-bit words,
//! CPython's `random_seed`), `getrandbits`, `_randbelow` and `sample` (CPython 3.11
//! `Lib/random.py`). The sequence must match CPython bit for bit: it decides which
//! documents become the few-shot examples.

const N: usize = 624;
const M: usize = 397;

/// `random.Random(seed)` for a non-negative seed below 2^64.
#[derive(Debug, Clone)]
pub struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl PyRandom {
    pub fn new(seed: u64) -> PyRandom {
        // CPython splits abs(seed) into 32-bit words, least significant first; zero is [0].
        let key: Vec<u32> = if seed >> 32 == 0 {
            vec![seed as u32]
        } else {
            vec![seed as u32, (seed >> 32) as u32]
        };
        let mut r = PyRandom {
            mt: [0; N],
            index: N,
        };
        r.init_by_array(&key);
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            let prev = self.mt[i - 1];
            self.mt[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
        }
        self.mt[0] = 0x8000_0000;
    }

    fn twist(&mut self) {
        for k in 0..N {
            let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % N] & 0x7fff_ffff);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            self.mt[k] = self.mt[(k + M) % N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    /// `genrand_uint32`: the next tempered 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random.random()`: 53 random bits in [0, 1).
    pub fn random(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// `getrandbits(k)` for `k <= 32`.
    fn getrandbits(&mut self, k: u32) -> u32 {
        match k {
            0 => 0,
            _ => self.next_u32() >> (32 - k),
        }
    }

    /// `_randbelow_with_getrandbits(n)`: uniform in `0..n` by rejection (n ≥ 1, < 2^32).
    pub fn randbelow(&mut self, n: usize) -> usize {
        let k = usize::BITS - n.leading_zeros();
        let mut r = self.getrandbits(k) as usize;
        while r >= n {
            r = self.getrandbits(k) as usize;
        }
        r
    }

    /// `random.sample(range(n), k)`: `k` distinct indices in `0..n`, in the order Python
    /// picks them (its two algorithms: a shrinking pool when the population is small next
    /// to a set of `k`, rejection of repeats otherwise). `k` is clamped to `n`, as callers
    /// check it beforehand.
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        let k = k.min(n);
        let mut setsize = 21usize;
        if k > 5 {
            let exp = ((k * 3) as f64).ln() / 4f64.ln();
            setsize += 4usize.pow(exp.ceil() as u32);
        }
        let mut result = Vec::with_capacity(k);
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.randbelow(n - i);
                result.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            let mut selected = std::collections::HashSet::new();
            for _ in 0..k {
                let mut j = self.randbelow(n);
                while !selected.insert(j) {
                    j = self.randbelow(n);
                }
                result.push(j);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::PyRandom;

    // Expected values printed by CPython 3.11:
    //   r = random.Random(1234); [r.random() for _ in range(3)]
    //   r = random.Random(1234); r.sample(range(10), 3), r.sample(range(1000), 26), r.sample(range(5), 5)
    #[test]
    fn random_matches_cpython() {
        let mut r = PyRandom::new(1234);
        let got: Vec<f64> = (0..3).map(|_| r.random()).collect();
        assert_eq!(
            got,
            [0.9664535356921388, 0.4407325991753527, 0.007491470058587191]
        );
    }

    #[test]
    fn sample_matches_cpython_both_algorithms() {
        let mut r = PyRandom::new(1234);
        assert_eq!(r.sample(10, 3), [7, 1, 0]);
        // n = 1000 > setsize: the rejection-set algorithm.
        assert_eq!(
            r.sample(1000, 26),
            [
                92, 932, 965, 961, 826, 596, 35, 687, 709, 85, 100, 784, 363, 242, 17, 31, 807, 16,
                354, 663, 638, 495, 630, 474, 152, 93
            ]
        );
        // The pool algorithm, the whole population.
        assert_eq!(r.sample(5, 5), [1, 0, 3, 4, 2]);
    }

    #[test]
    fn sample_sequence_continues_across_calls() {
        // r = random.Random(1234); r.sample(range(1119), 26); r.sample(range(1119), 26)[:5]
        let mut r = PyRandom::new(1234);
        assert_eq!(&r.sample(1119, 26)[..3], [902, 239, 15]);
        assert_eq!(&r.sample(1119, 26)[..5], [140, 182, 1054, 94, 552]);
    }

    #[test]
    fn seeds_above_32_bits_use_two_key_words() {
        // random.Random(2**40 + 7).getrandbits(32)
        assert_eq!(PyRandom::new((1 << 40) + 7).next_u32(), 2635837658);
    }
}
