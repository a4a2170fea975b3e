//! The random streams of a stage. Every random choice of step `t` draws from a generator of
//! its own, derived from `(SEED, t, purpose, slot)`: a run is reproducible on any number of
//! threads, loading ahead ([`super::loader`]) changes no result, and a resumed run continues
//! exactly where the interrupted one was (the sampler is replayed from `SEED`).

use crate::rng::Rng;

/// Stream of the training views' augmentations (slot: the image's place in the batch).
pub const AUG: u64 = 1;
/// Stream of the memory sample: XBM v1's random rows, XBM v2's random negatives (slot 0).
pub const MEM: u64 = 2;
/// Stream of the one random training view per image that fills the DA bank at XBM v2's
/// initialisation (step: the chunk's first image).
pub const INIT_AUG: u64 = 3;
/// Stream of the seeded order the traced anchors are taken from (step 0, slot 0).
pub const TRACE: u64 = 4;

/// An independent generator for `(seed, step, purpose, slot)`.
pub fn stream(seed: u64, step: usize, purpose: u64, slot: usize) -> Rng {
    let mut r = Rng::new(seed);
    let a = r.next_u64() ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let b = a
        ^ purpose.wrapping_mul(0xd1b5_4a32_d192_ed03)
        ^ (slot as u64).wrapping_mul(0x8cb9_2ba7_2f3d_8dd7);
    Rng::new(b)
}
