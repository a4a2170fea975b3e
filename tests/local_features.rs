//! `extract --local N`: local features from the same pass as the global descriptors, written to
//! `<out stem>.local.npz` with the rows of the `.npy` (a small ResNet on the CPU): at most N per
//! image, inside the image, unit descriptors, the same file over 2 ranks as over 1, and clear
//! refusals for tiny-gem and an N over the limit.

mod common;

use insclr::backend::DeviceChoice;
use insclr::eval::local::{LocalFeatures, MAX_LOCAL};
use insclr::jobs::{extract, local_path, DescribeOptions, ExtractOptions};
use insclr::nn::head::HeadKind;
use insclr::nn::resnet::ResNet;
use insclr::nn::RetrievalNet;
use insclr::rng::Rng;
use std::path::{Path, PathBuf};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("insclr-local-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 7 images of mixed sizes, large enough for a map of a few cells at scale 1, and a corrupt
/// file among them.
fn images(dir: &Path) -> PathBuf {
    let root = dir.join("images");
    std::fs::create_dir_all(&root).unwrap();
    let mut r = Rng::new(9);
    for i in 0..7u32 {
        let (w, h) = (64 + 16 * (i % 3), 64 + 32 * (i % 2));
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let v = r.below(64) as u8;
            image::Rgb([v + (x % 64 * 3) as u8, v + (y % 96 * 2) as u8, v])
        });
        img.save(root.join(format!("im{i:02}.png"))).unwrap();
    }
    std::fs::write(root.join("im03b.jpg"), b"not an image").unwrap();
    root
}

fn options(model: &Path, root: &Path, out: &Path, gpus: usize, local: usize) -> ExtractOptions {
    ExtractOptions {
        describe: DescribeOptions {
            model: Some("resnet-custom".into()),
            weights: Some(model.to_path_buf()),
            img_size: 96,
            scales: vec![1.0, 0.75],
            batch: 3,
            quiet: true,
            ..Default::default()
        },
        images: root.to_path_buf(),
        out: out.to_path_buf(),
        skip_bad: true,
        gpus,
        local,
        ..Default::default()
    }
}

#[test]
fn extract_writes_local_features_with_the_rows_of_the_descriptors() {
    let dir = tmpdir("rows");
    let (model, root) = (common::small_model(&dir), images(&dir));
    let n = 5;
    let out = dir.join("one.npy");
    let report = extract(&options(&model, &root, &out, 1, n), DeviceChoice::Cpu).unwrap();
    assert_eq!((report.rows, report.skipped), (7, 1));
    let lr = report.local.as_ref().expect("a local report");
    assert_eq!(lr.path, local_path(&out));
    assert_eq!(lr.path, dir.join("one.local.npz"));
    let line = report.local_summary().unwrap();
    assert!(
        line.starts_with(&format!(
            "local features: {} in 7 images (dim 128) -> ",
            lr.features
        )),
        "{line}"
    );

    let l = LocalFeatures::load(&lr.path).unwrap();
    assert_eq!((l.images(), l.dim, l.len()), (7, 128, lr.features));
    let listed: Vec<String> = std::fs::read_to_string(out.with_extension("txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(listed.len(), l.images(), "one local row per .npy row");
    assert!(listed.iter().all(|p| !p.contains("im03b")));
    let mut some = 0;
    for (i, path) in listed.iter().enumerate() {
        let (w, h) = image::image_dimensions(path).unwrap();
        assert_eq!(l.image_size[i], [h as usize, w as usize], "{path}");
        let r = l.range(i);
        assert!(r.len() <= n, "{path}: {} features", r.len());
        some += r.len();
        for f in r {
            let [x, y] = l.xy[f];
            assert!(
                (0.0..=w as f32).contains(&x) && (0.0..=h as f32).contains(&y),
                "{path}: ({x}, {y}) outside {w}x{h}"
            );
            assert!([1.0, 0.75].contains(&l.scale[f]), "{}", l.scale[f]);
            let row = &l.desc[f * l.dim..(f + 1) * l.dim];
            let norm = row
                .iter()
                .map(|&q| (q as f32 * l.desc_scale[f]).powi(2))
                .sum::<f32>()
                .sqrt();
            assert!((norm - 1.0).abs() < 0.02, "{path} feature {f}: norm {norm}");
        }
        // Strongest first.
        let s = &l.strength[l.range(i)];
        assert!(s.windows(2).all(|p| p[0] >= p[1]), "{s:?}");
    }
    assert!(some > 0, "no features at all");

    // 2 ranks write the files of 1, byte for byte.
    let two = dir.join("two.npy");
    extract(&options(&model, &root, &two, 2, n), DeviceChoice::Cpu).unwrap();
    for ext in ["npy", "txt", "local.npz"] {
        assert!(
            std::fs::read(out.with_extension(ext)).unwrap()
                == std::fs::read(two.with_extension(ext)).unwrap(),
            "2 ranks wrote another .{ext} than 1 rank"
        );
    }

    // Extracting again without --local leaves the earlier run's file (not this run's to
    // delete), and its readers refuse it as older than the matrix.
    let report = extract(&options(&model, &root, &out, 1, 0), DeviceChoice::Cpu).unwrap();
    assert!(report.local.is_none() && report.local_summary().is_none());
    assert!(local_path(&out).exists());
    let e = format!(
        "{:#}",
        insclr::jobs::extract::read_local_beside(&out, 7).unwrap_err()
    );
    assert!(e.contains("is older than"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn local_features_are_refused_for_tiny_gem_and_over_the_limit() {
    let dir = tmpdir("refused");
    let root = images(&dir);
    let out = dir.join("f.npy");
    let mut o = options(Path::new("unused"), &root, &out, 1, 4);
    o.describe.model = None;
    o.describe.weights = None;
    let e = format!("{:#}", extract(&o, DeviceChoice::Cpu).unwrap_err());
    assert!(e.contains("tiny-gem has no feature map"), "{e}");
    assert!(!out.exists());
    o.local = MAX_LOCAL + 1;
    let e = format!("{:#}", extract(&o, DeviceChoice::Cpu).unwrap_err());
    assert!(e.contains(&format!("--local {}", MAX_LOCAL + 1)), "{e}");

    // The command line: the flag, and the same error.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_insclr-cu"))
        .args([
            "--device", "cpu", "extract", "--quiet", "--local", "3", "--images",
        ])
        .arg(&root)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("tiny-gem has no feature map") && !text.contains("panicked"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_local_features_file_may_not_replace_an_input() {
    let dir = tmpdir("inputs");
    let model = common::small_model(&dir);
    images(&dir);
    // An image list named like the local features of the output.
    let list = dir.join("feats.local.npz");
    std::fs::write(&list, "images/im00.png\n").unwrap();
    let mut o = options(&model, &list, &dir.join("feats.npy"), 1, 2);
    o.root = Some(dir.clone());
    let e = format!("{:#}", extract(&o, DeviceChoice::Cpu).unwrap_err());
    assert!(e.contains("its local features"), "{e}");
    assert_eq!(std::fs::read_to_string(&list).unwrap(), "images/im00.png\n");
    std::fs::remove_dir_all(&dir).ok();
}

/// The map of `feature_map` is the one GeM pooled into the descriptor, whichever network
/// type holds the backbone, and a bf16 network's map comes back as f32 close to the f32 one.
#[test]
fn the_feature_map_is_the_map_gem_pooled_in_f32_and_bf16() {
    use insclr::backend::DType;
    use insclr::nn::net::GemNet;
    use insclr::nn::DescriptorNet;
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(3);
    let (n, h, w) = (2, 64, 96);
    let x = rng.vec_f32(n * 3 * h * w, -2.0, 2.0);
    let backbone =
        |rng: &mut Rng| Box::new(ResNet::custom(be, rng, [1, 1, 1, 1], 4, false).unwrap());

    let mut gem = GemNet::new(backbone(&mut Rng::new(1)));
    let d = gem.describe(be, &x, n, h, w).unwrap();
    let (map, shape) = gem
        .feature_map(be, insclr::nn::LocalLayer::Last)
        .unwrap()
        .expect("a map");
    assert_eq!(shape, [n, 128, 2, 3]);
    assert_eq!(map.len(), shape.iter().product::<usize>());
    for (k, want) in d.iter().enumerate() {
        let cell = &map[k * 6..(k + 1) * 6];
        let mean = cell.iter().map(|v| v.max(1e-6).powi(3)).sum::<f32>() / 6.0;
        let got = mean.powf(1.0 / 3.0);
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1e-3),
            "channel {k}: {got} vs {want}"
        );
    }

    let mut net = RetrievalNet::new(
        be,
        &mut rng,
        backbone(&mut Rng::new(1)),
        HeadKind::NormLinearNorm,
        16,
    )
    .unwrap();
    assert!(
        net.feature_map(be, insclr::nn::LocalLayer::Last).is_err(),
        "no map before a forward"
    );
    net.describe(be, &x, n, h, w).unwrap();
    let (f32_map, shape32) = net
        .feature_map(be, insclr::nn::LocalLayer::Last)
        .unwrap()
        .unwrap();
    assert_eq!(
        (shape32, &f32_map),
        (shape, &map),
        "the same backbone gives the same map"
    );
    net.set_precision(DType::BF16).unwrap();
    net.describe(be, &x, n, h, w).unwrap();
    let (bf16_map, shape16) = net
        .feature_map(be, insclr::nn::LocalLayer::Last)
        .unwrap()
        .unwrap();
    assert_eq!(shape16, shape);
    let err = bf16_map
        .iter()
        .zip(&f32_map)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f32>()
        .sqrt()
        / f32_map.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!(err < 0.05, "bf16 map differs from the f32 one by {err}");
    assert!(insclr::eval::extract::TinyGem
        .feature_map(be, insclr::nn::LocalLayer::Last)
        .unwrap()
        .is_none());
}

#[test]
fn extract_over_ranks_writes_the_local_features_of_one_rank_on_emu() {
    let dir = tmpdir("emu");
    let (model, root) = (common::small_model(&dir), images(&dir));
    let run = |gpus: usize| {
        let out = dir.join(format!("emu-{gpus}.npy"));
        // Thumbnails of 48 px keep the emulated GPU's time short.
        let mut o = options(&model, &root, &out, gpus, 4);
        o.describe.img_size = 48;
        extract(&o, DeviceChoice::Emu).unwrap();
        assert!(!LocalFeatures::load(&local_path(&out)).unwrap().is_empty());
        std::fs::read(local_path(&out)).unwrap()
    };
    assert!(
        run(1) == run(2),
        "2 ranks on emu wrote other local features than 1 rank"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_mid_layer_gives_stride_16_cells_of_layer3() {
    let dir = tmpdir("mid");
    let (model, root) = (common::small_model(&dir), images(&dir));
    let out = dir.join("mid.npy");
    let mut opts = options(&model, &root, &out, 1, 400);
    opts.describe.scales = vec![1.0];
    opts.describe.local_layer = insclr::nn::LocalLayer::Mid;
    extract(&opts, DeviceChoice::Cpu).unwrap_err();
    opts.local = MAX_LOCAL;
    extract(&opts, DeviceChoice::Cpu).unwrap();
    let l = LocalFeatures::load(&local_path(&out)).unwrap();
    // layer3 of the 4-wide ResNet: 16 x 4 channels; a 64 x 64 image has 4 x 4 cells of 16 px.
    assert_eq!(l.dim, 64);
    let listed: Vec<String> = std::fs::read_to_string(out.with_extension("txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    for (i, path) in listed.iter().enumerate() {
        let [h, w] = l.image_size[i];
        assert!(
            l.range(i).len() <= h.div_ceil(16) * w.div_ceil(16),
            "{path}"
        );
        for f in l.range(i) {
            let [x, y] = l.xy[f];
            // Cell centres: (col + 0.5) * w / ceil(w / 16).
            let col = x * w.div_ceil(16) as f32 / w as f32 - 0.5;
            let row = y * h.div_ceil(16) as f32 / h as f32 - 0.5;
            assert!(
                (col - col.round()).abs() < 1e-3 && (row - row.round()).abs() < 1e-3,
                "{path}: ({x}, {y})"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn search_reranks_by_the_index_local_features_and_needs_them() {
    use insclr::eval::verify::Rerank;
    use insclr::jobs::{search, SearchOptions};
    let dir = tmpdir("search");
    let (model, root) = (common::small_model(&dir), images(&dir));
    let out = dir.join("index.npy");
    let mut opts = options(&model, &root, &out, 1, 16);
    opts.describe.scales = vec![1.0];
    opts.describe.local_layer = insclr::nn::LocalLayer::Mid;
    extract(&opts, DeviceChoice::Cpu).unwrap();
    let listed: Vec<PathBuf> = std::fs::read_to_string(out.with_extension("txt"))
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect();
    let s = SearchOptions {
        index: out.clone(),
        images: out.with_extension("txt"),
        queries: listed[..2].to_vec(),
        k: 3,
        describe: opts.describe.clone(),
        rerank: Some(Rerank::new(5, 0)),
        local: 16,
        ..Default::default()
    };
    for device in [DeviceChoice::Cpu, DeviceChoice::Emu] {
        let found = search(&s, device).unwrap();
        assert!(
            found.json["expansion"]
                .as_str()
                .unwrap()
                .contains("top 5 re-ranked by spatial verification"),
            "{}",
            found.json
        );
        for (q, r) in found.results.iter().enumerate() {
            assert_eq!(r.results.len(), 3);
            // An image verifies against itself with every feature.
            assert_eq!(r.results[0].row, q, "{device:?}");
            assert_eq!(
                r.results.iter().map(|h| h.rank).collect::<Vec<_>>(),
                vec![1, 2, 3]
            );
        }
    }
    std::fs::remove_file(local_path(&out)).unwrap();
    let e = format!("{:#}", search(&s, DeviceChoice::Cpu).unwrap_err());
    assert!(e.contains("index.local.npz is missing"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
