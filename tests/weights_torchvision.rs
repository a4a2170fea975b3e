//! Checkpoint names and round trips against torchvision's layout (no download needed):
//! a ResNet-50 exported to safetensors has torchvision's 320 state-dict entries and loads back
//! exactly; an ImageNet file with `fc` loads into a backbone without one (InsCLR's init).

use insclr::backend::Backend;
use insclr::io::safetensors;
use insclr::nn::resnet::ResNet;
use insclr::nn::weights::{export, load_into, LoadOptions};
use insclr::nn::Module;
use insclr::rng::Rng;

fn values(m: &dyn Module, be: &dyn Backend) -> Vec<Vec<f32>> {
    m.params()
        .iter()
        .map(|p| be.download::<f32>(&p.value).unwrap())
        .collect()
}

#[test]
fn resnet50_export_has_torchvision_state_dict_and_round_trips() {
    let be = insclr::backend::cpu();
    let a = ResNet::new(be, &mut Rng::new(1), 50, true).unwrap();
    let t = export(&a, be).unwrap();
    // torchvision resnet50().state_dict(): 161 parameters + 106 running stats + 53 counts.
    assert_eq!(t.len(), 320);
    for name in [
        "conv1.weight",
        "bn1.num_batches_tracked",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_var",
        "layer4.2.bn3.running_var",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(t.iter().any(|t| t.name == name), "{name} missing");
    }
    let bytes = safetensors::to_bytes(&t, None).unwrap();
    let back = safetensors::from_bytes(&bytes).unwrap();
    let mut b = ResNet::new(be, &mut Rng::new(2), 50, true).unwrap();
    assert_ne!(values(&a, be), values(&b, be));
    let r = load_into(&mut b, be, &back, &LoadOptions::strict()).unwrap();
    assert!(r.is_exact(), "{r}");
    assert_eq!(r.skipped.len(), 53);
    assert_eq!(values(&a, be), values(&b, be));
}

#[test]
fn imagenet_file_with_fc_loads_into_backbone_without_fc() {
    let be = insclr::backend::cpu();
    let src = ResNet::custom(be, &mut Rng::new(3), [1, 1, 1, 1], 8, true).unwrap();
    let mut t = export(&src, be).unwrap();
    for x in &mut t {
        x.name = format!("module.{}", x.name);
    }
    let mut dst = ResNet::custom(be, &mut Rng::new(4), [1, 1, 1, 1], 8, false).unwrap();
    // strict refuses, naming the classifier...
    let e = load_into(&mut dst, be, &t, &LoadOptions::strict())
        .unwrap_err()
        .to_string();
    assert!(e.contains("fc.weight") && e.contains("fc.bias"), "{e}");
    // ...InsCLR's strict=False with fc ignored loads everything else.
    let r = load_into(&mut dst, be, &t, &LoadOptions::backbone()).unwrap();
    assert!(r.is_exact() && r.stripped_module_prefix, "{r}");
    assert!(r.skipped.iter().any(|s| s == "fc.weight"));
    let src_vals: Vec<Vec<f32>> = values(&src, be)[..dst.params().len()].to_vec();
    assert_eq!(values(&dst, be), src_vals);
}
