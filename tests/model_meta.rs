//! Descriptors that follow the model (issue 14): the model files `train` writes record the
//! pixel normalisation, input size, backbone and descriptor; `extract` / `eval` describe
//! images with the recorded normalisation (a flag overrides it, with a warning), refuse a
//! `--model` the file contradicts, load intermediate checkpoints (optimiser tensors skipped),
//! give the raw GeM on `--descriptor gem`, and warn when a collection's images keep very
//! different sizes after the thumbnail.

mod common;

use insclr::backend::{cpu, DType};
use insclr::data::image::{list_images, PixelNorm};
use insclr::eval::extract::{self, ExtractConfig, ImageItem};
use insclr::eval::{load_model, model_by_name};
use insclr::nn::meta::{DescriptorMeta, ModelMeta};
use insclr::nn::net::{DescriptorChoice, GemNet, LoadChoice};
use insclr::nn::resnet::ResNet;
use insclr::nn::{weights, DescriptorNet};
use insclr::rng::Rng;
use insclr::train::{self, Config, RunOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

const MEAN: [f32; 3] = [0.3, 0.5, 0.6];
const STD: [f32; 3] = [0.2, 0.3, 0.25];

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_insclr-cu"))
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("insclr-model-meta-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 8 small PNGs in 4 colour groups and a candidate pool that groups them.
fn make_data(dir: &Path) {
    common::write_group_pngs(&dir.join("images"));
    let feats: Vec<f32> = (0..8)
        .flat_map(|i| {
            let mut v = vec![0.1f32; 4];
            v[i % 4] = 1.0;
            let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            v.into_iter().map(move |a| a / n)
        })
        .collect();
    let be = cpu();
    let pool =
        insclr::mining::CandidatePool::compute(be, &feats, 8, 4, 4, 64, &mut |_| {}).unwrap();
    pool.save(&dir.join("pool.npz")).unwrap();
}

/// A 2-step base stage of a tiny resnet-custom with a non-default pixel normalisation; the
/// checkpoint of step 2 and model_final hold the same weights.
fn train_tiny(dir: &Path) -> (PathBuf, PathBuf) {
    make_data(dir);
    let input = format!("PIXEL_MEAN = {MEAN:?}\nPIXEL_STD = {STD:?}");
    let text = common::tiny_stage_toml(dir, 2, 1e-3, "random", &input);
    let cfg = Config::parse(&text, "test.toml").unwrap();
    let opts = RunOptions {
        resume: false,
        overwrite: false,
        quiet: true,
        ..RunOptions::default()
    };
    let s = train::run(cfg, cpu(), &opts).unwrap();
    let ckpt = dir.join("out/checkpoints/checkpoint_0000002.safetensors");
    assert!(ckpt.is_file());
    (s.final_model, ckpt)
}

fn describe_files(net: &mut dyn DescriptorNet, dir: &Path) -> Vec<f32> {
    let items: Vec<ImageItem> = list_images(&dir.join("images"))
        .unwrap()
        .into_iter()
        .map(|path| ImageItem { path, bbx: None })
        .collect();
    let cfg = ExtractConfig {
        scales: vec![1.0],
        ..Default::default()
    };
    extract::extract(cpu(), net, &items, &cfg, "test")
        .unwrap()
        .feats
}

fn load(path: &Path, choice: LoadChoice) -> (Box<dyn DescriptorNet>, String) {
    load_model(cpu(), None, Some(path), choice).unwrap()
}

#[test]
fn train_records_the_model_and_extract_follows_the_record() {
    let dir = tmpdir("train");
    let (final_model, ckpt) = train_tiny(&dir);
    let recorded = PixelNorm {
        mean: MEAN,
        std: STD,
    };

    // What train wrote is what the loader reads, in both files; the checkpoint keeps its own
    // metadata.
    let want = ModelMeta {
        pixel_norm: Some(recorded),
        train_img_size: Some([32, 32]),
        noaug_img_size: None,
        backbone: Some("resnet-custom[1, 1, 1, 1]x4".into()),
        descriptor: Some(DescriptorMeta {
            kind: "head".into(),
            head: Some("norm_linear_norm".into()),
            dim: 8,
        }),
    };
    assert_eq!(ModelMeta::read(&final_model).unwrap(), want);
    assert_eq!(ModelMeta::read(&ckpt).unwrap(), want);
    let md = insclr::train::checkpoint::read_metadata(&ckpt).unwrap();
    assert_eq!(md["insclr.step"], "2");
    assert_eq!(md["insclr.pixel_mean"], "0.3,0.5,0.6");

    // The recorded normalisation is used, without --model.
    let (mut fin, what) = load(&final_model, LoadChoice::default());
    assert_eq!(fin.input_norm(), recorded, "{what}");
    assert!(what.contains("recorded in the file"), "{what}");
    let d_final = describe_files(fin.as_mut(), &dir);

    // --precision bf16 runs the backbone and GeM in bf16, head and raw GeM alike: the same
    // descriptors to within bf16's rounding through the network (measured: cosine >= 0.9998
    // per row), not bit for bit.
    for descriptor in [DescriptorChoice::Auto, DescriptorChoice::Gem] {
        let choice = |precision| LoadChoice {
            descriptor,
            precision,
            ..Default::default()
        };
        let (mut f32_net, _) = load(&final_model, choice(DType::F32));
        let (mut bf16_net, what) = load(&final_model, choice(DType::BF16));
        assert!(what.contains("backbone in bf16"), "{what}");
        let (a, b) = (
            describe_files(f32_net.as_mut(), &dir),
            describe_files(bf16_net.as_mut(), &dir),
        );
        assert_ne!(
            a, b,
            "{descriptor:?}: bf16 gave f32's descriptors bit for bit"
        );
        let dim = f32_net.out_dim();
        for (ra, rb) in a.chunks(dim).zip(b.chunks(dim)) {
            let cos: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
            eprintln!("{descriptor:?}: bf16 against f32, cosine {cos:.6}");
            assert!(
                cos > 0.999,
                "{descriptor:?}: cosine {cos} between bf16 and f32 rows"
            );
        }
    }

    // The intermediate checkpoint of the same step describes identically; its optimiser
    // tensors are skipped, and said to be.
    let (mut ck, what) = load(&ckpt, LoadChoice::default());
    assert!(what.contains("optimiser tensors"), "{what}");
    assert_eq!(describe_files(ck.as_mut(), &dir), d_final);

    // A flag overrides the record: ImageNet statistics change the descriptors, the recorded
    // values given as a flag do not.
    let flag = |n: PixelNorm| LoadChoice {
        pixel_norm: Some(n),
        ..Default::default()
    };
    let (mut imnet, _) = load(&final_model, flag(PixelNorm::IMAGENET));
    let d_imnet = describe_files(imnet.as_mut(), &dir);
    assert!(d_imnet
        .iter()
        .zip(&d_final)
        .any(|(a, b)| (a - b).abs() > 1e-4));
    let (mut same, _) = load(&final_model, flag(recorded));
    assert_eq!(describe_files(same.as_mut(), &dir), d_final);

    // --descriptor gem: the raw GeM of the file's backbone, head ignored.
    let gem_choice = LoadChoice {
        descriptor: DescriptorChoice::Gem,
        ..Default::default()
    };
    let (mut gem, what) = load(&ckpt, gem_choice);
    assert!(what.contains("head ignored"), "{what}");
    let be = cpu();
    let bb = ResNet::custom(be, &mut Rng::new(1), [1, 1, 1, 1], 4, false).unwrap();
    let mut reference = GemNet::new(Box::new(bb));
    let tensors = weights::read_any(&final_model).unwrap();
    let opts = weights::LoadOptions {
        strict: true,
        skip_prefixes: vec!["head.".into()],
    };
    weights::load_into(&mut reference, be, &tensors, &opts).unwrap();
    assert_eq!(gem.out_dim(), reference.out_dim());
    let x = Rng::new(5).vec_f32(2 * 3 * 40 * 48, -1.0, 1.0);
    assert_eq!(
        gem.describe(be, &x, 2, 40, 48).unwrap(),
        reference.describe(be, &x, 2, 40, 48).unwrap()
    );

    // --descriptor head of a file without a head is an error that says so.
    let headless = dir.join("backbone.safetensors");
    let t = weights::export(&reference, be).unwrap();
    insclr::io::safetensors::write(&headless, &t, None).unwrap();
    let head_choice = LoadChoice {
        descriptor: DescriptorChoice::Head,
        ..Default::default()
    };
    let e = format!(
        "{:#}",
        load_model(be, Some("resnet-custom"), Some(&headless), head_choice)
            .err()
            .unwrap()
    );
    assert!(
        e.contains("has no head") && e.contains("--descriptor gem"),
        "{e}"
    );

    // A --model the file contradicts is refused naming both.
    let e = format!(
        "{:#}",
        model_by_name(be, "resnet50", Some(&final_model))
            .err()
            .unwrap()
    );
    assert!(
        e.contains("resnet50") && e.contains("resnet-custom[1, 1, 1, 1]x4"),
        "{e}"
    );

    // The command line: a flag that differs from the record warns; gem of a checkpoint works.
    let out = dir.join("gem.npy");
    let r = bin()
        .args([
            "extract",
            "--quiet",
            "--pixel-norm",
            "imagenet",
            "--descriptor",
            "gem",
        ])
        .arg("--weights")
        .arg(&ckpt)
        .arg("--images")
        .arg(dir.join("images"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("warning: --pixel-norm"), "{err}");
    let a = insclr::io::npy::read::<f32>(&out).unwrap();
    assert_eq!(a.shape, [8, 128]);

    // eval takes the same flags: the recorded values as a flag do not warn; a contradicting
    // --model is refused naming both.
    let names: Vec<String> = (0..8).map(|i| format!("img_{i}.png")).collect();
    let gnd = serde_json::json!({
        "imlist": names,
        "qimlist": ["img_0.png"],
        "gnd": [{"ok": [4], "junk": [0]}],
    });
    std::fs::write(dir.join("gnd.json"), gnd.to_string()).unwrap();
    let eval = |extra: &[&str]| {
        bin()
            .args(["eval", "--dataset", "list", "--quiet", "--scales", "1"])
            .arg("--root")
            .arg(dir.join("images"))
            .arg("--gnd")
            .arg(dir.join("gnd.json"))
            .arg("--weights")
            .arg(&final_model)
            .args(extra)
            .output()
            .unwrap()
    };
    let r = eval(&[
        "--descriptor",
        "head",
        "--pixel-norm",
        "0.3,0.5,0.6/0.2,0.3,0.25",
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(!err.contains("warning: --pixel-norm"), "{err}");
    assert!(String::from_utf8_lossy(&r.stdout).contains("8-d"));
    let r = eval(&["--model", "resnet101"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains("resnet101") && err.contains("resnet-custom[1, 1, 1, 1]x4"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mixed_resolutions_are_warned_about_once_with_the_advice() {
    let dir = tmpdir("mixed");
    let img = dir.join("images");
    std::fs::create_dir_all(&img).unwrap();
    for (name, w, h) in [("a.png", 40, 30), ("b.png", 36, 40), ("c.png", 200, 150)] {
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 5) as u8, (y * 3) as u8, 90]))
            .save(img.join(name))
            .unwrap();
    }
    let run = |extra: &[&str]| {
        let r = bin()
            .args(["extract", "--quiet", "--images"])
            .arg(&img)
            .arg("--out")
            .arg(dir.join("f.npy"))
            .args(extra)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8_lossy(&r.stderr).into_owned()
    };
    let err = run(&[]);
    assert_eq!(err.matches("different scales").count(), 1, "{err}");
    assert!(err.contains("from 40 to 200 px"), "{err}");
    assert!(err.contains("--img-size 40"), "{err}");
    // Brought to one size, nothing to warn about.
    let err = run(&["--img-size", "32"]);
    assert!(!err.contains("different scales"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
