//! Fingerprints for the search's memo: incremental polynomial hashes of the string, fixed
//! Zobrist keys for sets of ops, and a hasher that trusts keys that are already random.

use std::hash::Hasher;

use super::linearizable::Kind;

/// Two polynomial hashes of a string modulo the Mersenne prime 2^61 - 1, and the matching
/// powers of the bases, so that appending is O(1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hash(u64, u64, u64, u64);

const MODULUS: u64 = (1 << 61) - 1;
const BASES: (u64, u64) = (0x1f3a_5c7e_9b2d_4f61 % MODULUS, 0x0b7e_1516_28ae_d2a7 % MODULUS);

impl Hash {
    /// The empty string: hashes 0, powers 1.
    pub const EMPTY: Hash = Hash(0, 0, 1, 1);

    /// The hash of what `kind` writes (the empty string for reads).
    pub fn of(kind: Kind<'_>) -> Hash {
        let value = match kind {
            Kind::Append { value, .. } | Kind::Set { value, .. } => value,
            Kind::Get { .. } | Kind::Final { .. } => &[][..],
        };
        let mut hash = Hash::EMPTY;
        for &byte in value {
            // Byte + 1, so that leading zero bytes still change the hash.
            let digit = u64::from(byte) + 1;
            hash.0 = add_mod(mul_mod(hash.0, BASES.0), digit);
            hash.1 = add_mod(mul_mod(hash.1, BASES.1), digit);
            hash.2 = mul_mod(hash.2, BASES.0);
            hash.3 = mul_mod(hash.3, BASES.1);
        }
        hash
    }

    /// The two hashes of the string (without the powers).
    pub fn values(self) -> (u64, u64) {
        (self.0, self.1)
    }

    /// The hash of `self`'s string followed by `suffix`'s.
    pub fn append(self, suffix: Hash) -> Hash {
        Hash(
            add_mod(mul_mod(self.0, suffix.2), suffix.0),
            add_mod(mul_mod(self.1, suffix.3), suffix.1),
            mul_mod(self.2, suffix.2),
            mul_mod(self.3, suffix.3),
        )
    }
}

fn mul_mod(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    let folded = (product as u64 & MODULUS) + (product >> 61) as u64;
    reduce(reduce(folded))
}

fn add_mod(a: u64, b: u64) -> u64 {
    reduce(a + b)
}

fn reduce(x: u64) -> u64 {
    if x >= MODULUS {
        x - MODULUS
    } else {
        x
    }
}

/// SplitMix64, for the fixed Zobrist keys (the search must be deterministic).
pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The memo keys are already random, so the hasher just folds them to 64 bits.
#[derive(Default)]
pub(crate) struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = (n as u64) ^ ((n >> 64) as u64);
    }
}
