//! Model options of issue 14: `MODEL.HEAD.INIT` (the identity head returns the L2-normalised
//! GeM descriptor, the PCA head whitens the stage-0 descriptors, wrong combinations are errors
//! naming the key and the fix) and `MODEL.BACKBONE.FREEZE_BN`.

use insclr::io::npy::{self, Array};
use insclr::nn::model::Built;
use insclr::nn::DescriptorNet;
use insclr::rng::Rng;
use insclr::train::config::Config;
use std::path::PathBuf;

/// A `resnet-custom` with base width 4: 128 GeM channels.
const C: usize = 128;

fn config(head: &str, out_dim: usize, extra: &str) -> anyhow::Result<Config> {
    config_bb(head, out_dim, extra, "")
}

fn config_bb(head: &str, out_dim: usize, extra: &str, backbone: &str) -> anyhow::Result<Config> {
    let text = format!(
        r#"
SEED = 3
[MODEL]
PRETRAIN = "random"
[MODEL.BACKBONE]
NAME = "resnet-custom"
STAGES = [1, 1, 1, 1]
BASE_WIDTH = 4
{backbone}
[MODEL.HEAD]
NAME = "{head}"
OUT_DIM = {out_dim}
{extra}
[NEIGHBOR]
SRC = "pool.npz"
"#
    );
    Config::parse(&text, "head.toml")
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("insclr-head-init-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The stage model of `cfg`: [`insclr::nn::model::load_model`] with the config's seed and
/// precision, as training builds it.
fn load_model(cfg: &Config, be: &dyn insclr::backend::Backend) -> anyhow::Result<Built> {
    insclr::nn::model::load_model(&cfg.model, cfg.seed, cfg.precision(), be)
}

/// L2 normalisation as the backend computes it (f64 sum, one f32 reciprocal).
fn l2(v: &[f32]) -> Vec<f32> {
    let ss: f64 = v.iter().map(|&x| x as f64 * x as f64).sum();
    let inv = 1.0 / (ss.sqrt() as f32).max(1e-12);
    v.iter().map(|x| x * inv).collect()
}

#[test]
fn identity_head_returns_the_l2_normalised_gem_descriptor() {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(5);
    let (n, h, w) = (3, 40, 36);
    let x = rng.vec_f32(n * 3 * h * w, -2.0, 2.0);
    for head in ["norm_linear_norm", "linear_norm"] {
        let cfg = config(head, C, "INIT = \"identity\"").unwrap();
        let built = load_model(&cfg, be).unwrap();
        assert!(built.note.contains("identity"), "{}", built.note);
        assert!(
            !built.random_init.iter().any(|t| t.starts_with("head.")),
            "{:?}",
            built.random_init
        );
        let mut net = built.net;
        let desc = net.describe(be, &x, n, h, w).unwrap();
        let gem = be.download::<f32>(&net.pool.y).unwrap();
        for (i, (d, g)) in desc.chunks(C).zip(gem.chunks(C)).enumerate() {
            let want = l2(g);
            let err = d
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            // linear_norm normalises once: bit-exact; norm_linear_norm normalises a unit
            // vector a second time, which may move the last bit.
            let tol = if head == "linear_norm" { 0.0 } else { 1e-7 };
            assert!(err <= tol, "{head} row {i}: max error {err:e}");
        }
    }
}

/// An ImageNet start whose head `MODEL.HEAD.INIT` then sets: the note's count of tensors left
/// random is the one after the head's initialisation, the same list the run's summary prints
/// (issue 28: "1 left random", then "left at random initialisation: none").
#[test]
fn the_note_counts_the_tensors_the_head_initialisation_left_random() {
    let be = insclr::backend::cpu();
    let dir = tmpdir("note");
    let net = load_model(&config("linear_norm", C, "").unwrap(), be)
        .unwrap()
        .net;
    let backbone: Vec<_> = insclr::nn::weights::export(&net, be)
        .unwrap()
        .into_iter()
        .filter(|t| !t.name.starts_with("head."))
        .collect();
    let weights = dir.join("backbone.safetensors");
    insclr::io::safetensors::write(&weights, &backbone, None).unwrap();
    for init in ["identity", "random"] {
        let mut cfg = config("linear_norm", C, &format!("INIT = \"{init}\"")).unwrap();
        cfg.model.pretrain = "imagenet".into();
        cfg.model.imagenet_weights = weights.display().to_string();
        let built = load_model(&cfg, be).unwrap();
        let left = &built.random_init;
        assert_eq!(left.is_empty(), init == "identity", "{init}: {left:?}");
        let counted = format!("({} left random)", left.len());
        assert!(built.note.contains(&counted), "{init}: {}", built.note);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Correlated descriptors with a common offset: `z A + mu` with `z` standard normal-ish.
fn correlated(rng: &mut Rng, n: usize, c: usize) -> Vec<f32> {
    let k = c / 2;
    let a = rng.vec_f32(k * c, -1.0, 1.0);
    let mu = rng.vec_f32(c, 0.0, 3.0);
    let mut x = vec![0.0f32; n * c];
    for row in x.chunks_mut(c) {
        let z = rng.vec_f32(k, -1.0, 1.0);
        for (j, o) in row.iter_mut().enumerate() {
            *o = mu[j] + (0..k).map(|t| z[t] * a[t * c + j]).sum::<f32>();
            *o += 0.05 * rng.vec_f32(1, -1.0, 1.0)[0];
        }
    }
    x
}

#[test]
fn pca_head_decorrelates_the_training_descriptors() {
    let be = insclr::backend::cpu();
    let dir = tmpdir("pca");
    let mut rng = Rng::new(9);
    let n = 400;
    let feats = correlated(&mut rng, n, C);
    let path = dir.join("s0_feature.npy");
    npy::write(&path, &Array::new(vec![n, C], feats.clone()).unwrap()).unwrap();
    let d = 48;
    for head in ["linear_norm", "norm_linear_norm"] {
        let extra = format!("INIT = \"pca\"\nINIT_FEATS = \"{}\"", path.display());
        let t = std::time::Instant::now();
        let built = load_model(&config(head, d, &extra).unwrap(), be).unwrap();
        eprintln!("{head}: PCA of {n} x {C} in {:?}", t.elapsed());
        assert!(built.note.contains("PCA"), "{}", built.note);
        let net = built.net;
        let wt = be
            .download::<f32>(&net.head.fc.as_ref().unwrap().weight.value)
            .unwrap();
        let bias = match &net.head.fc.as_ref().unwrap().bias {
            Some(b) => be.download::<f32>(&b.value).unwrap(),
            None => vec![0.0; d],
        };
        // What head.fc computes on the training descriptors, before the final L2.
        let out: Vec<Vec<f64>> = feats
            .chunks(C)
            .map(|row| {
                let x = if head == "norm_linear_norm" {
                    l2(row)
                } else {
                    row.to_vec()
                };
                (0..d)
                    .map(|i| {
                        let w = &wt[i * C..(i + 1) * C];
                        w.iter()
                            .zip(&x)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            + bias[i] as f64
                    })
                    .collect()
            })
            .collect();
        let mean: Vec<f64> = (0..d)
            .map(|i| out.iter().map(|r| r[i]).sum::<f64>() / n as f64)
            .collect();
        if head == "linear_norm" {
            // The bias is -W mean: outputs are centred.
            assert!(mean.iter().all(|m| m.abs() < 1e-3), "{mean:?}");
        }
        let (mut worst_diag, mut worst_off) = (0.0f64, 0.0f64);
        for i in 0..d {
            for j in 0..d {
                let cov = out
                    .iter()
                    .map(|r| (r[i] - mean[i]) * (r[j] - mean[j]))
                    .sum::<f64>()
                    / n as f64;
                if i == j {
                    worst_diag = worst_diag.max((cov - 1.0).abs());
                } else {
                    worst_off = worst_off.max(cov.abs());
                }
            }
        }
        assert!(
            worst_diag < 1e-3,
            "{head}: diagonal off 1 by {worst_diag:e}"
        );
        assert!(worst_off < 1e-3, "{head}: off-diagonal {worst_off:e}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn err_of(r: anyhow::Result<impl Sized>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_head_inits_are_errors_naming_the_key_and_the_fix() {
    let be = insclr::backend::cpu();
    let e = err_of(config("norm_linear_norm", 64, "INIT = \"whiten\""));
    assert!(
        e.contains("MODEL.HEAD.INIT") && e.contains("\"pca\""),
        "{e}"
    );
    let e = err_of(config("norm_linear_norm", 64, "INIT = \"pca\""));
    assert!(e.contains("INIT_FEATS"), "{e}");
    let e = err_of(config(
        "norm_linear_norm",
        64,
        "INIT = \"identity\"\nIN_DIM = 128",
    ));
    assert!(e.contains("square") && e.contains("OUT_DIM = 128"), "{e}");
    // Checked against the backbone when IN_DIM is not given.
    let cfg = config("norm_linear_norm", 64, "INIT = \"identity\"").unwrap();
    let e = err_of(load_model(&cfg, be));
    assert!(e.contains("square") && e.contains("OUT_DIM = 128"), "{e}");

    let dir = tmpdir("bad");
    let narrow = dir.join("narrow.npy");
    npy::write(&narrow, &Array::new(vec![4, 3], vec![0.5f32; 12]).unwrap()).unwrap();
    let extra = format!("INIT = \"pca\"\nINIT_FEATS = \"{}\"", narrow.display());
    let e = err_of(load_model(&config("linear_norm", 16, &extra).unwrap(), be));
    assert!(
        e.contains("INIT_FEATS") && e.contains("3-d") && e.contains("128 channels"),
        "{e}"
    );
    let e = err_of(load_model(&config("linear_norm", 256, &extra).unwrap(), be));
    assert!(e.contains("OUT_DIM <= 128"), "{e}");
    let missing = dir.join("missing.npy");
    let extra = format!("INIT = \"pca\"\nINIT_FEATS = \"{}\"", missing.display());
    let e = err_of(load_model(&config("linear_norm", 16, &extra).unwrap(), be));
    assert!(e.contains("INIT_FEATS") && e.contains("missing.npy"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `FREEZE_BN = true`: a training forward gives the eval-mode descriptors, a training step
/// (forward, backward) leaves every running statistic as it was, and gradients still reach
/// the BatchNorm affine parameters.
#[test]
fn frozen_batchnorm_trains_with_the_running_statistics() {
    use insclr::nn::{zero_grads, Module};
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(11);
    let (n, h, w) = (4, 36, 32);
    let x = rng.vec_f32(n * 3 * h * w, -2.0, 2.0);
    let cfg = config_bb("linear_norm", 16, "", "FREEZE_BN = true").unwrap();
    assert!(cfg.model.backbone.freeze_bn);
    let mut net = load_model(&cfg, be).unwrap().net;
    // Running statistics that batch statistics would not reproduce.
    for p in net.params_mut() {
        if p.name.ends_with("running_var") {
            let v = rng.vec_f32(p.numel(), 0.5, 1.5);
            p.value = be.upload(&v).unwrap();
        } else if p.name.ends_with("running_mean") {
            let v = rng.vec_f32(p.numel(), -0.2, 0.2);
            p.value = be.upload(&v).unwrap();
        }
    }
    let running = |net: &insclr::nn::RetrievalNet| -> Vec<Vec<f32>> {
        net.params()
            .iter()
            .filter(|p| p.name.contains("running_"))
            .map(|p| be.download::<f32>(&p.value).unwrap())
            .collect()
    };
    let before = running(&net);
    let eval = net.describe(be, &x, n, h, w).unwrap();
    let train = net.forward_train(be, &x, n, h, w).unwrap();
    assert_eq!(be.download::<f32>(train).unwrap(), eval);
    zero_grads(be, &mut net).unwrap();
    let dy = be.upload(&rng.vec_f32(n * 16, -1.0, 1.0)).unwrap();
    net.backward(be, &dy).unwrap();
    assert_eq!(running(&net), before, "running statistics moved");
    let g = net
        .params()
        .iter()
        .find(|p| p.name == "bn1.weight")
        .map(|p| be.download::<f32>(p.grad.as_ref().unwrap()).unwrap())
        .unwrap();
    assert!(
        g.iter().any(|v| *v != 0.0),
        "no gradient reached bn1.weight"
    );
}

/// `FROZEN = true` trains the head only: the optimiser holds the head's tensors alone, a step
/// (training forward, backward, update) leaves every backbone tensor and running statistic
/// bit for bit as it was, the head moves, and the training forward is the eval forward.
#[test]
fn frozen_backbone_trains_the_head_only() {
    use insclr::nn::{zero_grads, Module};
    use insclr::train::optim::Optimizer;
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(12);
    let (n, h, w) = (4, 36, 32);
    let x = rng.vec_f32(n * 3 * h * w, -2.0, 2.0);
    let cfg = config_bb("linear_norm", 16, "", "FROZEN = true").unwrap();
    assert!(cfg.model.backbone.frozen);
    let mut net = load_model(&cfg, be).unwrap().net;
    let snapshot = |net: &insclr::nn::RetrievalNet, head: bool| -> Vec<(String, Vec<f32>)> {
        net.params()
            .iter()
            .filter(|p| p.name.starts_with("head.") == head)
            .map(|p| (p.name.clone(), be.download::<f32>(&p.value).unwrap()))
            .collect()
    };
    let (backbone0, head0) = (snapshot(&net, false), snapshot(&net, true));
    let mut opt = Optimizer::new(&cfg.solver, be, &mut net).unwrap();
    let names: Vec<&str> = opt.slots.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["head.fc.weight", "head.fc.bias"]);
    let eval = net.describe(be, &x, n, h, w).unwrap();
    let train = net.forward_train(be, &x, n, h, w).unwrap();
    // The head has no batch statistics: a frozen backbone makes the two forwards agree.
    assert_eq!(be.download::<f32>(train).unwrap(), eval);
    zero_grads(be, &mut net).unwrap();
    let dy = be.upload(&rng.vec_f32(n * 16, -1.0, 1.0)).unwrap();
    net.backward(be, &dy).unwrap();
    opt.step(be, &mut net, 1.0).unwrap();
    assert!(
        snapshot(&net, false) == backbone0,
        "a backbone tensor moved"
    );
    assert!(snapshot(&net, true) != head0, "the head did not train");
}
