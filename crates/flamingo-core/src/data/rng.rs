//! Deterministic randomness for the data pipeline: SplitMix64 (Steele, Lea & Flood 2014),
//! written out so that a seed gives the same order and the same augmentations on every
//! platform and every version of this crate (a library RNG may change its stream).
//!
//! Nothing here carries state across samples: every draw is derived from
//! `(seed, purpose, epoch, sample index)`, so resuming at any position needs no RNG state.

/// What a draw is for; keeps the streams of different decisions independent.
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
pub enum Purpose {
    Shuffle = 1,
    /// The horizontal flip of a pair batch (keyed by its first sample) or of a document.
    Flip = 2,
    /// The reference's 50% rejection of single-image documents.
    SingleImage = 3,
}

/// One SplitMix64 output step.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A SplitMix64 generator.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// The generator for one decision about one sample (or one epoch, with `index` 0).
    pub fn for_draw(seed: u64, purpose: Purpose, epoch: u64, index: u64) -> Self {
        let key = mix(mix(mix(seed) ^ purpose as u64) ^ epoch) ^ index;
        Self { state: mix(key) }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits, like Python's `random.random()`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` without modulo bias (Lemire's multiply-and-reject).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

/// The order in which epoch `epoch` visits `n` samples: a Fisher–Yates shuffle seeded by
/// `(seed, epoch)`, or `0..n` when `shuffle` is off.
pub fn epoch_order(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    if shuffle {
        let mut rng = SplitMix64::for_draw(seed, Purpose::Shuffle, epoch, 0);
        for i in (1..n).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// FNV-1a 64 of a string, hex: a short fingerprint of loader settings.
pub fn fingerprint(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in text.as_bytes() {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_published_sequence_for_seed_1234567() {
        // Reference values of Vigna's splitmix64.c seeded with 1234567.
        let mut rng = SplitMix64 { state: 1_234_567 };
        assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
        assert_eq!(rng.next_u64(), 9_817_491_932_198_370_423);
    }

    #[test]
    fn an_epoch_order_is_a_permutation_that_depends_on_seed_and_epoch() {
        let a = epoch_order(100, 7, 0, true);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<u32>>());
        assert_eq!(a, epoch_order(100, 7, 0, true));
        assert_ne!(a, epoch_order(100, 7, 1, true));
        assert_ne!(a, epoch_order(100, 8, 0, true));
        assert_eq!(epoch_order(5, 7, 0, false), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = SplitMix64::for_draw(1, Purpose::Flip, 0, 0);
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            seen[rng.below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800 && c < 1200), "{seen:?}");
    }
}
