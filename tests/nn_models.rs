//! Backbone layouts against the reference models: parameter counts, tensor names and shapes
//! as torchvision's `resnet50` / `resnet101` and the efficientnet-lite0 `.pth` file (spec
//! section 3, ../shared/data.md); output shapes of the retrieval network.

use insclr::nn::head::HeadKind;
use insclr::nn::{count_trainable, Arch, DescriptorNet, Module, ParamKind, RetrievalNet};
use insclr::rng::Rng;

fn shape_of(m: &dyn Module, name: &str) -> Vec<usize> {
    m.params()
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no tensor named {name}"))
        .shape
        .clone()
}

/// BatchNorm layers: one `running_mean` each. torchvision's state_dict also holds a
/// `num_batches_tracked` per BatchNorm, which is not a Param here.
fn batchnorms(m: &dyn Module) -> usize {
    m.params()
        .iter()
        .filter(|p| p.name.ends_with(".running_mean"))
        .count()
}

fn all_elements(m: &dyn Module) -> usize {
    m.params().iter().map(|p| p.numel()).sum()
}

#[test]
fn resnet50_matches_torchvision() {
    let be = insclr::backend::cpu();
    let net = Arch::ResNet50.build(be, &mut Rng::new(1), true).unwrap();
    let m: &dyn Module = &*net;
    assert_eq!(count_trainable(m), 25_557_032);
    // torchvision's resnet50 state_dict has 320 entries: ours + one num_batches_tracked per BN.
    assert_eq!(m.params().len() + batchnorms(m), 320);
    assert_eq!(shape_of(m, "conv1.weight"), [64, 3, 7, 7]);
    assert_eq!(shape_of(m, "bn1.running_var"), [64]);
    assert_eq!(shape_of(m, "layer1.0.conv1.weight"), [64, 64, 1, 1]);
    assert_eq!(shape_of(m, "layer1.0.downsample.0.weight"), [256, 64, 1, 1]);
    assert_eq!(shape_of(m, "layer1.0.downsample.1.bias"), [256]);
    // v1.5: the stride sits in the 3x3 conv; a downsample only on each stage's first block.
    assert_eq!(shape_of(m, "layer2.0.conv2.weight"), [128, 128, 3, 3]);
    assert_eq!(shape_of(m, "layer3.5.conv3.weight"), [1024, 256, 1, 1]);
    assert_eq!(shape_of(m, "layer4.2.bn3.weight"), [2048]);
    assert_eq!(shape_of(m, "fc.weight"), [1000, 2048]);
    assert_eq!(shape_of(m, "fc.bias"), [1000]);
    assert!(m
        .params()
        .iter()
        .all(|p| !p.name.contains("layer1.1.downsample")));
    let names: Vec<&str> = m.params().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        &names[..6],
        [
            "conv1.weight",
            "bn1.weight",
            "bn1.bias",
            "bn1.running_mean",
            "bn1.running_var",
            "layer1.0.conv1.weight"
        ]
    );
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len(), "duplicate tensor names");
    // Kinds decide weight decay (spec 4.7): names containing "bias" get none.
    for p in m.params() {
        assert_eq!(
            p.kind.decays(),
            p.kind.trainable() && !p.name.contains("bias"),
            "{}",
            p.name
        );
        assert_eq!(
            p.kind == ParamKind::Running,
            p.name.contains("running"),
            "{}",
            p.name
        );
    }
}

#[test]
fn resnet101_matches_torchvision() {
    let be = insclr::backend::cpu();
    let net = Arch::ResNet101.build(be, &mut Rng::new(2), true).unwrap();
    let m: &dyn Module = &*net;
    assert_eq!(count_trainable(m), 44_549_160);
    assert_eq!(m.params().len() + batchnorms(m), 626);
    assert_eq!(shape_of(m, "layer3.22.conv2.weight"), [256, 256, 3, 3]);
    assert!(m.params().iter().all(|p| !p.name.starts_with("layer3.23")));
}

#[test]
fn backbones_without_classifier_have_no_fc() {
    let be = insclr::backend::cpu();
    let net = Arch::ResNet50.build(be, &mut Rng::new(3), false).unwrap();
    assert_eq!(count_trainable(&*net), 25_557_032 - 2048 * 1000 - 1000);
    assert!(net.params().iter().all(|p| !p.name.starts_with("fc.")));
    let eff = Arch::EfficientNetLite0
        .build(be, &mut Rng::new(3), false)
        .unwrap();
    assert!(eff.params().iter().all(|p| !p.name.starts_with("_fc.")));
}

#[test]
fn efficientnet_lite0_matches_the_pth_file() {
    let be = insclr::backend::cpu();
    let net = Arch::EfficientNetLite0
        .build(be, &mut Rng::new(4), true)
        .unwrap();
    let m: &dyn Module = &*net;
    let bns = batchnorms(m);
    assert_eq!(bns, 49);
    // The file's 296 tensors / 4,694,073 elements include one num_batches_tracked scalar per
    // BatchNorm (49), which the loader ignores.
    assert_eq!(m.params().len() + bns, 296);
    assert_eq!(all_elements(m) + bns, 4_694_073);
    assert_eq!(count_trainable(m), 4_652_008);
    assert_eq!(shape_of(m, "_conv_stem.weight"), [32, 3, 3, 3]);
    assert_eq!(shape_of(m, "_bn0.weight"), [32]);
    assert!(m
        .params()
        .iter()
        .all(|p| !p.name.starts_with("_blocks.0._expand_conv")));
    assert_eq!(
        shape_of(m, "_blocks.0._depthwise_conv.weight"),
        [32, 1, 3, 3]
    );
    assert_eq!(
        shape_of(m, "_blocks.0._project_conv.weight"),
        [16, 32, 1, 1]
    );
    assert_eq!(shape_of(m, "_blocks.1._expand_conv.weight"), [96, 16, 1, 1]);
    assert_eq!(shape_of(m, "_blocks.1._bn0.running_mean"), [96]);
    assert_eq!(
        shape_of(m, "_blocks.3._depthwise_conv.weight"),
        [144, 1, 5, 5]
    );
    assert_eq!(
        shape_of(m, "_blocks.15._project_conv.weight"),
        [320, 1152, 1, 1]
    );
    assert_eq!(shape_of(m, "_blocks.15._bn2.bias"), [320]);
    assert_eq!(shape_of(m, "_conv_head.weight"), [1280, 320, 1, 1]);
    assert_eq!(shape_of(m, "_bn1.running_var"), [1280]);
    assert_eq!(shape_of(m, "_fc.weight"), [1000, 1280]);
    assert_eq!(shape_of(m, "_fc.bias"), [1000]);
}

#[test]
fn retrieval_nets_give_unit_descriptors_and_name_their_head() {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(5);
    let backbone = Arch::EfficientNetLite0.build(be, &mut rng, false).unwrap();
    let mut net = RetrievalNet::new(be, &mut rng, backbone, HeadKind::NormLinearNorm, 64).unwrap();
    assert_eq!(shape_of(&net, "head.fc.weight"), [64, 1280]);
    assert!(net.params().iter().all(|p| p.name != "head.fc.bias"));
    let (n, h, w) = (2, 70, 45);
    let x = rng.vec_f32(n * 3 * h * w, -1.0, 1.0);
    let d = net.describe(be, &x, n, h, w).unwrap();
    assert_eq!(d.len(), n * 64);
    for row in d.chunks(64) {
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "descriptor norm {norm}");
    }
    let err = net.describe(be, &x[1..], n, h, w).unwrap_err();
    assert!(format!("{err:#}").contains("n*3*h*w"), "{err:#}");

    let backbone = Arch::ResNet50.build(be, &mut rng, false).unwrap();
    let net = RetrievalNet::new(be, &mut rng, backbone, HeadKind::LinearNorm, 256).unwrap();
    assert_eq!(shape_of(&net, "head.fc.weight"), [256, 2048]);
    assert_eq!(shape_of(&net, "head.fc.bias"), [256]);
    assert_eq!(net.out_dim(), 256);
}

#[test]
fn classifier_logits_have_one_row_per_image() {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(6);
    let mut net = Arch::EfficientNetLite0.build(be, &mut rng, true).unwrap();
    let x = be.upload(&rng.vec_f32(2 * 3 * 64 * 64, -1.0, 1.0)).unwrap();
    let logits = net.logits(be, &x, (2, 64, 64)).unwrap();
    assert_eq!(logits.len(), 2000);
    assert!(logits.iter().all(|v| v.is_finite()));
    let mut bare = Arch::EfficientNetLite0.build(be, &mut rng, false).unwrap();
    assert!(bare.logits(be, &x, (2, 64, 64)).is_err());
}

/// Forward + backward of ResNet-50 at 224 px, batch 2, on the CPU backend. Slow in a debug
/// build: run with `cargo test --release --test nn_models -- --ignored --nocapture`.
#[test]
#[ignore = "timing run: cargo test --release --test nn_models -- --ignored --nocapture"]
fn resnet50_224_batch2_forward_backward_timing() {
    use std::time::Instant;
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(7);
    let backbone = Arch::ResNet50.build(be, &mut rng, false).unwrap();
    let mut net =
        RetrievalNet::new(be, &mut rng, backbone, HeadKind::NormLinearNorm, 2048).unwrap();
    let (n, h, w) = (2, 224, 224);
    let x = rng.vec_f32(n * 3 * h * w, -2.0, 2.0);
    let d_desc = be.upload(&rng.vec_f32(n * 2048, -1.0, 1.0)).unwrap();
    for step in 0..3 {
        insclr::nn::zero_grads(be, &mut net).unwrap();
        let t0 = Instant::now();
        let d = net.forward_train(be, &x, n, h, w).unwrap();
        assert_eq!(d.len(), n * 2048);
        let t1 = Instant::now();
        net.backward(be, &d_desc).unwrap();
        let t2 = Instant::now();
        println!(
            "resnet50 224px batch 2, step {step}: forward {:.2} s, backward {:.2} s, total {:.2} s ({} rayon threads)",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t2 - t0).as_secs_f64(),
            rayon::current_num_threads()
        );
    }
    for p in net.params() {
        if let Some(g) = &p.grad {
            let g = be.download::<f32>(g).unwrap();
            assert!(
                g.iter().all(|v| v.is_finite()),
                "{} has a non-finite gradient",
                p.name
            );
        }
    }
    let stem = net
        .params()
        .into_iter()
        .find(|p| p.name == "conv1.weight")
        .unwrap();
    let g = be
        .download::<f32>(stem.grad.as_ref().expect("conv1.weight has a gradient"))
        .unwrap();
    assert!(g.iter().any(|&v| v != 0.0), "conv1 got no gradient");
}

#[test]
fn feature_maps_have_stride_32() {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(8);
    let mut eff = Arch::EfficientNetLite0.build(be, &mut rng, false).unwrap();
    let x = be.upload(&rng.vec_f32(3 * 224 * 224, -1.0, 1.0)).unwrap();
    assert_eq!(eff.forward(be, &x, (1, 224, 224), false).unwrap(), (7, 7));
    assert_eq!(eff.output().len(), 1280 * 7 * 7);
    // TF SAME rounds up: 225 -> 113 -> ... -> 8.
    let x = be.upload(&rng.vec_f32(3 * 225 * 100, -1.0, 1.0)).unwrap();
    assert_eq!(eff.forward(be, &x, (1, 225, 100), false).unwrap(), (8, 4));
    let mut r50 = Arch::ResNet50.build(be, &mut rng, false).unwrap();
    let x = be.upload(&rng.vec_f32(2 * 3 * 96 * 64, -1.0, 1.0)).unwrap();
    assert_eq!(r50.forward(be, &x, (2, 96, 64), false).unwrap(), (3, 2));
    assert_eq!(r50.output().len(), 2 * 2048 * 3 * 2);
    assert!(r50.forward(be, &x, (2, 96, 65), false).is_err());
}

/// One training forward from running mean 0 leaves `running_mean = momentum * batch mean`:
/// EfficientNet-Lite0 keeps the momentum of the package its weights come from (0.01), ResNet
/// PyTorch's default (0.1). Checked on each stem's BatchNorm, whose input is the stem conv's
/// output, and by the value every BatchNorm of the backbone carries.
#[test]
fn batchnorm_momentum_is_the_backbones_own() {
    use insclr::nn::conv::ConvBn;
    use insclr::nn::efficientnet::EfficientNetLite0;
    use insclr::nn::net::Backbone;
    use insclr::nn::resnet::ResNet;
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(4);
    let (n, px) = (2, 32);
    // Positive pixels so that every channel's batch mean is far from zero.
    let x = be.upload(&rng.vec_f32(n * 3 * px * px, 0.5, 2.0)).unwrap();
    let check = |net: &str, stem: &ConvBn, momentum: f64| {
        let y = be.download::<f32>(&stem.conv.y).unwrap();
        let rm = be.download::<f32>(&stem.bn.running_mean.value).unwrap();
        let c = rm.len();
        let hw = y.len() / (n * c);
        for (ch, &got) in rm.iter().enumerate() {
            let sum: f64 = (0..n)
                .flat_map(|i| &y[(i * c + ch) * hw..(i * c + ch + 1) * hw])
                .map(|&v| v as f64)
                .sum();
            let want = momentum * sum / (n * hw) as f64;
            assert!(
                (got as f64 - want).abs() <= 1e-4 * want.abs() + 1e-7,
                "{net} channel {ch}: running mean {got}, want {want} (momentum {momentum})"
            );
        }
    };
    let mut lite = EfficientNetLite0::new(be, &mut rng, false).unwrap();
    lite.forward(be, &x, (n, px, px), true).unwrap();
    check("lite0", &lite.stem, 0.01);
    assert!(lite.batchnorms_mut().iter().all(|bn| bn.momentum == 0.01));
    let mut res = ResNet::custom(be, &mut rng, [1, 1, 1, 1], 8, false).unwrap();
    res.forward(be, &x, (n, px, px), true).unwrap();
    check("resnet", &res.stem, 0.1);
    assert!(res.batchnorms_mut().iter().all(|bn| bn.momentum == 0.1));
}

/// benches/conv_shapes.txt names every convolution of ResNet-50 at 224 px and ResNet-101 at
/// 448 px with its count: the kernel and cuDNN tables weigh each shape by it to predict a
/// step's convolution time, so a missing layer or a wrong count would skew that sum.
#[test]
fn conv_shapes_txt_counts_every_resnet_convolution() {
    use std::collections::BTreeMap;
    type Shape = (usize, usize, usize, usize, usize); // c_in, input map, c_out, k, stride
    let text = include_str!("../benches/conv_shapes.txt");
    let listed = |net: &str| -> BTreeMap<Shape, usize> {
        let mut m = BTreeMap::new();
        for l in text.lines().filter(|l| l.starts_with("dense ")) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f[1] != net {
                continue;
            }
            let n = |i: usize| f[i].parse::<usize>().unwrap();
            let count = f
                .get(7)
                .map_or(1, |c| c.trim_start_matches('x').parse().unwrap());
            *m.entry((n(2), n(3), n(4), n(5), n(6))).or_default() += count;
        }
        m
    };
    let be = insclr::backend::cpu();
    for (arch, net, px) in [
        (Arch::ResNet50, "resnet50", 224),
        (Arch::ResNet101, "resnet101", 448),
    ] {
        let model = arch.build(be, &mut Rng::new(2), false).unwrap();
        // torchvision v1.5: the stem halves the map and the max pool halves it again; the first
        // block of layers 2-4 strides on its 3x3 and its downsample, from the previous map.
        let mut found: BTreeMap<Shape, usize> = BTreeMap::new();
        for p in model.params().iter().filter(|p| p.shape.len() == 4) {
            let (c_out, c_in, k) = (p.shape[0], p.shape[1], p.shape[2]);
            let parts: Vec<&str> = p.name.split('.').collect();
            let shape = if parts[0] == "conv1" {
                (c_in, px, c_out, k, 2)
            } else {
                let stage: u32 = parts[0].trim_start_matches("layer").parse().unwrap();
                let block: usize = parts[1].parse().unwrap();
                let map = (px / 4) >> (stage - 1);
                let first_strided = block == 0 && stage > 1;
                match (parts[2], first_strided) {
                    ("conv1", true) => (c_in, 2 * map, c_out, k, 1),
                    ("conv2", true) | ("downsample", true) => (c_in, 2 * map, c_out, k, 2),
                    _ => (c_in, map, c_out, k, 1),
                }
            };
            *found.entry(shape).or_default() += 1;
        }
        assert_eq!(
            found,
            listed(net),
            "{net}: benches/conv_shapes.txt against the network"
        );
    }
}
