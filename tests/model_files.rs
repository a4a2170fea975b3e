//! Every model `train` can write, `extract` and `eval` can read (issue 12): a `resnet-custom`
//! network exported the way `train` writes `model_final.safetensors` loads by name, its layout
//! read from the file, and describes images exactly as the network that wrote it. A file of
//! the wrong architecture is refused with a short message: the first names and a count.

use insclr::backend::cpu;
use insclr::eval::model_by_name;
use insclr::nn::head::HeadKind;
use insclr::nn::resnet::ResNet;
use insclr::nn::{weights, DescriptorNet, RetrievalNet};
use insclr::rng::Rng;

fn custom_net(stages: [usize; 4], base: usize) -> RetrievalNet {
    let be = cpu();
    let mut rng = Rng::new(7);
    let backbone = ResNet::custom(be, &mut rng, stages, base, false).unwrap();
    RetrievalNet::new(
        be,
        &mut rng,
        Box::new(backbone),
        HeadKind::NormLinearNorm,
        16,
    )
    .unwrap()
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("insclr-model-files-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn images(n: usize, h: usize, w: usize) -> Vec<f32> {
    let mut rng = Rng::new(3);
    rng.vec_f32(n * 3 * h * w, -1.0, 1.0)
}

#[test]
fn resnet_custom_written_by_train_loads_by_name_and_describes_the_same() {
    let be = cpu();
    let dir = tmpdir("load");
    for (stages, base) in [([1, 1, 1, 1], 8), ([2, 1, 3, 1], 4)] {
        let mut net = custom_net(stages, base);
        let path = dir.join(format!("model-{base}.safetensors"));
        let tensors = weights::export(&net, be).unwrap();
        insclr::io::safetensors::write(&path, &tensors, None).unwrap();

        let (mut loaded, what) = model_by_name(be, "resnet-custom", Some(&path)).unwrap();
        assert!(
            what.contains(&format!("resnet-custom{stages:?}x{base}")),
            "{what}"
        );
        assert_eq!(loaded.out_dim(), 16);
        let x = images(2, 40, 56);
        let want = net.describe(be, &x, 2, 40, 56).unwrap();
        let got = loaded.describe(be, &x, 2, 40, 56).unwrap();
        assert_eq!(got, want, "{stages:?} x {base}");
    }
}

#[test]
fn a_file_of_another_architecture_is_refused_briefly() {
    let be = cpu();
    let dir = tmpdir("refuse");
    let net = custom_net([1, 1, 1, 1], 8);
    let path = dir.join("custom.safetensors");
    insclr::io::safetensors::write(&path, &weights::export(&net, be).unwrap(), None).unwrap();

    let err = format!(
        "{:#}",
        model_by_name(be, "resnet50", Some(&path)).err().unwrap()
    );
    assert!(err.contains("missing from the file (180)"), "{err}");
    assert!(err.contains("... and 175 more"), "{err}");
    assert!(err.len() < 1500, "{} bytes: {err}", err.len());

    // And a file without the resnet layout is not taken for resnet-custom.
    let mut other = weights::export(&net, be).unwrap();
    other.retain(|t| !t.name.starts_with("conv1."));
    insclr::io::safetensors::write(&path, &other, None).unwrap();
    let err = format!(
        "{:#}",
        model_by_name(be, "resnet-custom", Some(&path))
            .err()
            .unwrap()
    );
    assert!(err.contains("not a resnet-custom model"), "{err}");
}
