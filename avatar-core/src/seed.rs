//! Seeds and the documented, frozen random stream behind every latent vector.
//!
//! The same [`Seed`] gives the same avatar on every platform and every version of this library:
//!
//! 1. A text seed is hashed with SHA-256 over its UTF-8 bytes; the first 8 bytes of the digest,
//!    read little-endian, are the numeric seed. A text seed made only of ASCII digits that fits a
//!    `u64` is that number (so `"42"` and `42` agree across HTTP, Python and Node).
//! 2. The numeric seed starts a SplitMix64 generator (Steele, Lea & Flood 2014; constants
//!    `0x9E3779B97F4A7C15`, `0xBF58476D1CE4E5B9`, `0x94D049BB133111EB`).
//! 3. Standard normal samples come in pairs from the Box–Muller transform:
//!    `u1 = ((x >> 11) + 1) / 2^53`, `u2 = (y >> 11) / 2^53`,
//!    `z0 = sqrt(-2 ln u1) cos(2π u2)`, `z1 = sqrt(-2 ln u1) sin(2π u2)`, computed in `f64` and
//!    rounded to `f32`.
//!
//! The generator is hand-rolled on purpose: general-purpose RNG crates reserve the right to
//! change their streams, and this one must never change. Fixed test vectors pin it.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// A seed for one avatar: a number, or any text (a user name, an e-mail, a UUID...).
///
/// ```
/// use avatar_core::Seed;
/// assert_eq!(Seed::from("42").value(), 42);
/// assert_eq!(Seed::from("alice").value(), Seed::from("alice").value());
/// assert_ne!(Seed::from("alice").value(), Seed::from("bob").value());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seed {
    /// A numeric seed, used as is.
    Number(u64),
    /// A text seed, hashed with SHA-256.
    Text(String),
}

impl Seed {
    /// The 64-bit value that seeds the random stream.
    pub fn value(&self) -> u64 {
        match self {
            Seed::Number(n) => *n,
            Seed::Text(text) => {
                let digest = Sha256::digest(text.as_bytes());
                u64::from_le_bytes(digest[..8].try_into().expect("digest has 32 bytes"))
            }
        }
    }

    /// A fresh seed from the operating system's entropy, for "random" avatars.
    pub fn random() -> Seed {
        use std::collections::hash_map::RandomState;
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        Seed::Number(hasher.finish())
    }

    /// A numeric seed from a double (JavaScript numbers, JSON): an integer in
    /// `0..=2^53 - 1`, the range a double holds exactly.
    ///
    /// ```
    /// use avatar_core::Seed;
    /// assert_eq!(Seed::from_f64(42.0).unwrap(), Seed::Number(42));
    /// assert!(Seed::from_f64(1.5).is_err());
    /// assert!(Seed::from_f64(-1.0).is_err());
    /// ```
    pub fn from_f64(value: f64) -> crate::Result<Seed> {
        const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;
        if value.fract() == 0.0 && (0.0..=MAX_SAFE_INTEGER).contains(&value) {
            Ok(Seed::Number(value as u64))
        } else {
            Err(crate::AvatarError::invalid(
                "seed",
                format!("{value} is not an integer in 0..=2^53-1 (use a string for other seeds)"),
            ))
        }
    }

    /// The stream of standard normal `f32` samples for this seed.
    pub fn normal_stream(&self) -> NormalStream {
        NormalStream::new(self.value())
    }
}

impl From<u64> for Seed {
    fn from(value: u64) -> Self {
        Seed::Number(value)
    }
}

impl From<&str> for Seed {
    fn from(text: &str) -> Self {
        let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        match text.parse::<u64>() {
            Ok(n) if digits => Seed::Number(n),
            _ => Seed::Text(text.to_owned()),
        }
    }
}

impl From<String> for Seed {
    fn from(text: String) -> Self {
        Seed::from(text.as_str())
    }
}

impl FromStr for Seed {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Seed::from(s))
    }
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seed::Number(n) => write!(f, "{n}"),
            Seed::Text(t) => f.write_str(t),
        }
    }
}

/// SplitMix64: a tiny, fast 64-bit generator with a fixed, published stream.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// Starts the stream at `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The generator's state, to checkpoint and resume a stream.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform `f64` in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform integer in `0..n` (`n > 0`), by rejection so that it is unbiased.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
}

/// Standard normal samples from [`SplitMix64`] through Box–Muller (see the module docs).
#[derive(Debug, Clone)]
pub struct NormalStream {
    rng: SplitMix64,
    spare: Option<f32>,
}

impl NormalStream {
    /// Starts the stream at `seed`.
    pub fn new(seed: u64) -> Self {
        NormalStream {
            rng: SplitMix64::new(seed),
            spare: None,
        }
    }

    /// The next standard normal sample.
    pub fn next_f32(&mut self) -> f32 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = ((self.rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let u2 = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some((radius * angle.sin()) as f32);
        (radius * angle.cos()) as f32
    }

    /// The stream's state (generator state and the cached second Box–Muller sample).
    pub fn state(&self) -> (u64, Option<f32>) {
        (self.rng.state(), self.spare)
    }

    /// Restores a stream from [`NormalStream::state`].
    pub fn from_state(state: u64, spare: Option<f32>) -> Self {
        NormalStream {
            rng: SplitMix64::new(state),
            spare,
        }
    }

    /// `n` samples.
    pub fn take_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next_f32()).collect()
    }

    /// The next `shape.iter().product()` samples as a tensor of `shape` (row-major) on `device`.
    pub fn tensor<const D: usize>(
        &mut self,
        shape: [usize; D],
        device: &burn::tensor::Device,
    ) -> burn::tensor::Tensor<D> {
        let values = self.take_vec(shape.iter().product());
        burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(values, shape), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_published_reference_vector() {
        // Reference values of SplitMix64 seeded with 1234567 (from the reference C implementation).
        let mut rng = SplitMix64::new(1234567);
        let expected = [
            6457827717110365317u64,
            3203168211198807973,
            9817491932198370423,
            4593380528125082431,
            16408922859458223821,
        ];
        for e in expected {
            assert_eq!(rng.next_u64(), e);
        }
    }

    #[test]
    fn text_seed_hash_is_frozen() {
        // SHA-256("alice") = 2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90
        assert_eq!(
            Seed::from("alice").value(),
            u64::from_le_bytes([0x2b, 0xd8, 0x06, 0xc9, 0x7f, 0x0e, 0x00, 0xaf])
        );
        assert_eq!(Seed::from("007"), Seed::Number(7));
        assert_eq!(Seed::from("-7"), Seed::Text("-7".into()));
        assert_eq!(
            Seed::from("18446744073709551616"),
            Seed::Text("18446744073709551616".into())
        );
        assert_eq!(Seed::from(""), Seed::Text(String::new()));
    }

    #[test]
    fn normal_stream_is_frozen_and_standard() {
        let mut stream = Seed::Number(0).normal_stream();
        let first: Vec<f32> = stream.take_vec(4);
        // Computed independently with Python's float64 math and rounded to f32.
        assert_eq!(
            first,
            [-0.452_757_75, 0.207_766_04, 2.650_606, -0.490_422_82]
        );
        let samples = Seed::Number(99).normal_stream().take_vec(200_000);
        let mean = samples.iter().map(|&x| x as f64).sum::<f64>() / samples.len() as f64;
        let var = samples
            .iter()
            .map(|&x| (x as f64 - mean).powi(2))
            .sum::<f64>()
            / samples.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }

    #[test]
    fn below_is_in_range() {
        let mut rng = SplitMix64::new(5);
        for n in [1u64, 2, 3, 10, 1000] {
            for _ in 0..100 {
                assert!(rng.below(n) < n);
            }
        }
    }
}
