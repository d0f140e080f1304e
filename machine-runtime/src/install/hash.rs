//! FNV-1a 64-bit: the stable, dependency-free hash behind install markers.
//!
//! The marker hash only has to notice changes to trusted, local input (the resolved recipe), not resist an
//! attacker, so a cryptographic hash would buy nothing here. FNV-1a is specified by its constants alone
//! (offset basis 0xcbf29ce484222325, prime 0x100000001b3; draft-eastlake-fnv), so the value never changes
//! across Rust versions, unlike `std::hash`.

const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(PRIME)
    })
}

/// FNV-1a 64 of `bytes` as 16 lowercase hex digits.
pub(crate) fn fnv1a64_hex(bytes: &[u8]) -> String {
    format!("{:016x}", fnv1a64(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a64_hex(b"a"), "af63dc4c8601ec8c");
    }
}
