//! What a training step holds in host memory, estimated from the config before anything is
//! allocated: `INPUT.TRAIN_IMG_SIZE = [100000, 100000]` used to end in an abort (`memory
//! allocation of 480000000000 bytes failed`) instead of an error naming the setting.
//!
//! The estimate is a lower bound: the augmented views the loader keeps in flight and, on the
//! CPU, where activations live in host memory, the network's f32 input, the first layer's
//! output and the memory banks. A run refused by it could never have fit.

use super::config::Config;
use anyhow::Result;

/// Output channels of the backbone's first convolution (the largest activation of a step).
fn stem_channels(cfg: &Config) -> usize {
    match cfg.model.backbone.name.as_str() {
        "efficientnet-lite0" => 32,
        "resnet-custom" => cfg.model.backbone.base_width.max(1),
        _ => 64,
    }
}

/// The lower bound of the host bytes a step of `cfg` on `n` images holds, with what it is
/// made of (for the message).
pub fn estimate(cfg: &Config, n: usize, on_cpu: bool) -> (f64, String) {
    let [h, w] = cfg.input.train_img_size;
    let pixels = h as f64 * w as f64;
    let images = cfg.solver.ims_per_batch as f64 * (1 + cfg.neighbor.k) as f64;
    // The step being computed and the PREFETCH steps the loader prepares ahead.
    let in_flight = 1.0 + cfg.dataloader.prefetch as f64;
    let views = in_flight * images * 3.0 * pixels;
    let mut parts = vec![format!(
        "{images} images a step (SOLVER.IMS_PER_BATCH {} x (1 + NEIGHBOR.K {})) at INPUT.TRAIN_IMG_SIZE {h} x {w}",
        cfg.solver.ims_per_batch, cfg.neighbor.k
    )];
    let mut need = views;
    if cfg.noaug.enable {
        let [nh, nw] = cfg.input.noaug_img_size;
        // The no-DA view as a normalised tensor, beside its largest scaled copy.
        let largest = cfg.noaug.scales.iter().fold(0.0f64, |a, &s| a.max(s * s));
        need += images * 3.0 * nh as f64 * nw as f64 * 4.0 * (1.0 + largest);
        parts.push(format!("no-DA views at INPUT.NOAUG_IMG_SIZE {nh} x {nw}"));
    }
    if on_cpu {
        let bytes = if cfg.precision() == crate::backend::DType::F32 {
            4.0
        } else {
            2.0
        };
        // The network's f32 input (the GPU backend normalises on the device) and the first
        // layer's output.
        let half = (h.div_ceil(2) * w.div_ceil(2)) as f64;
        need += images * 3.0 * pixels * 4.0 + images * stem_channels(cfg) as f64 * half * bytes;
        let d = cfg.xbm.feature_dim as f64;
        let banks = match (cfg.xbm.enable, cfg.xbm.version.as_str()) {
            (false, _) => 0.0,
            (true, "v2") => 2.0,
            _ => 1.0,
        };
        if banks > 0.0 {
            need += banks * n as f64 * d * bytes;
            parts.push(format!(
                "{banks} memory bank(s) of {n} x XBM.FEATURE_DIM {}",
                cfg.xbm.feature_dim
            ));
        }
    }
    (need, parts.join(", "))
}

/// Refuses a config whose step cannot fit in the memory available, naming the settings.
pub fn check(cfg: &Config, n: usize, on_cpu: bool) -> Result<()> {
    let (need, what) = estimate(cfg, n, on_cpu);
    crate::io::check_memory(
        need,
        &format!("training with {what}"),
        "lower INPUT.TRAIN_IMG_SIZE (or NOAUG_IMG_SIZE), SOLVER.IMS_PER_BATCH, NEIGHBOR.K or DATALOADER.PREFETCH",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_grows_with_the_image_size_and_names_the_settings() {
        let mut cfg = Config::default();
        cfg.solver.ims_per_batch = 2;
        cfg.neighbor.k = 2;
        cfg.dataloader.prefetch = 0;
        cfg.input.train_img_size = [100, 100];
        let (small, _) = estimate(&cfg, 10, false);
        // 6 images: the bytes of their views (the rest lives on the GPU).
        assert_eq!(small, 6.0 * 3.0 * 1e4);
        cfg.input.train_img_size = [100_000, 100_000];
        let (big, what) = estimate(&cfg, 10, true);
        assert!(big > 4.8e11, "{big}");
        assert!(
            what.contains("6 images a step") && what.contains("100000 x 100000"),
            "{what}"
        );
        if crate::io::mem_available().is_some() {
            let e = check(&cfg, 10, true).unwrap_err().to_string();
            assert!(
                e.contains("MemAvailable") && e.contains("INPUT.TRAIN_IMG_SIZE"),
                "{e}"
            );
        }
    }
}
