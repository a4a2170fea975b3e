#!/usr/bin/env python3
"""The PyTorch side of the comparison, on the GPU machine's own PyTorch (cuDNN, cuBLAS).

Times a training step as the original runs it (torchvision ResNet + GeM + linear head, Adam
with coupled decay, grad clip): ResNet-50 at 224 px and ResNet-101 at 448 px, batch 64, eager
fp32 with torch's defaults (TF32 cuDNN convolutions, as the original ran) and AMP (bf16)
channels-last. Then the convolutions of benches/conv_shapes.txt under the names
benches/kernels.rs gives them (forward, data gradient, weight gradient; batch 64): in f32 with
TF32 off, as our f32 kernels compute, and/or in bf16 channels-last, cuDNN's tensor-core layout;
each timed with CUDA events, median of 20 after 3 untimed calls. For the ResNets, whose lines
carry a count, each table ends with the step's convolutions: the sum of time x count. Last, an
extraction call (ResNet-101 eval forward, 16 images at 1024 px, the steps' two modes).
Prints markdown tables; scripts/device-run.sh appends them to the summary.

    torch-baseline.py [--no-steps] [--convs f32,bf16|none] [--nets resnet101,resnet50,lite0]

Prints a SKIPPED line and exits 0 when PyTorch, torchvision or a GPU is missing. The Lite0
shapes use symmetric padding k // 2 here (cuDNN has no TF SAME); the time is the same to within
the edge rows.
"""
import argparse
import os
import statistics
import sys
import time

BATCH = 64


def shapes(path, nets=None):
    """(depthwise, net, c_in, map, c_out, k, stride, count or None) per line of path."""
    out = []
    for line in open(path):
        f = line.split()
        if not f or f[0].startswith("#"):
            continue
        if nets and f[1] not in nets:
            continue
        dw = f[0] == "dw"
        if dw:
            net, ch, hw, k, s = f[1], *map(int, f[2:6])
            row, rest = (True, net, ch, hw, ch, k, s), f[6:]
        else:
            net, cin, hw, cout, k, s = f[1], *map(int, f[2:7])
            row, rest = (False, net, cin, hw, cout, k, s), f[7:]
        out.append(row + (int(rest[0].lstrip("x")) if rest else None,))
    return out


def label(dw, net, cin, hw, cout, k, s):
    """The shape's name in benches/kernels.rs's table."""
    if dw:
        return f"{net} dw {BATCH}x{cin}x{hw}x{hw} k{k} s{s}"
    return f"{net} {BATCH}x{cin}x{hw}x{hw} -> {cout} k{k} s{s}"


def timed(torch, fn, warmup=3, iters=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def conv_table(torch, path, dtype, nets):
    """One row per shape, printed as measured: a run stopped at its time limit keeps them."""
    bf16 = dtype == "bf16"
    title = "cuDNN bf16 channels-last" if bf16 else "cuDNN f32 (TF32 off)"
    kind = dict(device="cuda", dtype=torch.bfloat16 if bf16 else torch.float32)
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    conv = torch.nn.functional.conv2d
    backward = torch.ops.aten.convolution_backward
    print(f"| {title}: shape | fwd (us) | dgrad (us) | wgrad (us) |\n|---|---|---|---|", flush=True)
    sums = {}
    for dw, net, cin, hw, cout, k, s, count in shapes(path, nets):
        groups, pad = (cin if dw else 1), k // 2
        try:
            x = torch.randn(BATCH, cin, hw, hw, **kind).to(memory_format=fmt)
            w = torch.randn(cout, cin // groups, k, k, **kind).to(memory_format=fmt)
            y = conv(x, w, stride=s, padding=pad, groups=groups)
            dy = torch.randn_like(y)
            # What autograd calls, one gradient at a time.
            args = ([s, s], [pad, pad], [1, 1], False, [0, 0], groups)
            t_f = timed(torch, lambda: conv(x, w, stride=s, padding=pad, groups=groups))
            t_d = timed(torch, lambda: backward(dy, x, w, None, *args, [True, False, False]))
            t_w = timed(torch, lambda: backward(dy, x, w, None, *args, [False, True, False]))
        except RuntimeError as e:  # out of memory, or no kernel for the shape: say so, go on
            print(f"| {label(dw, net, cin, hw, cout, k, s)} | failed: {str(e).splitlines()[0]} | | |", flush=True)
            continue
        finally:
            x = w = y = dy = None
        print(f"| {label(dw, net, cin, hw, cout, k, s)} | {t_f * 1e6:.1f} | {t_d * 1e6:.1f} | {t_w * 1e6:.1f} |", flush=True)
        if count is not None:
            # A training step never computes the stem's data gradient (cin 3: the image).
            f, d, g = sums.get(net, (0.0, 0.0, 0.0))
            sums[net] = (f + count * t_f, d + (0 if cin == 3 else count) * t_d, g + count * t_w)
    if sums:
        print(f"\n| {title}: a step's convolutions (sum of time x count) | fwd (ms) | dgrad (ms) | wgrad (ms) | all (ms) |\n|---|---|---|---|---|")
        for net, (f, d, g) in sums.items():
            print(f"| {net} | {f * 1e3:.1f} | {d * 1e3:.1f} | {g * 1e3:.1f} | {(f + d + g) * 1e3:.1f} |", flush=True)


def gem_class(torch):
    class GeM(torch.nn.Module):
        def __init__(self, p=3.0, eps=1e-6):
            super().__init__()
            self.p, self.eps = torch.nn.Parameter(torch.ones(1) * p), eps

        def forward(self, x):
            return x.clamp(min=self.eps).pow(self.p).mean((-2, -1)).pow(1.0 / self.p)

    return GeM


def step_table(torch, torchvision):
    GeM = gem_class(torch)
    print("| training step (PyTorch) | batch | px | ms / step | images / s |\n|---|---|---|---|---|", flush=True)
    for name, px in [("resnet50", 224), ("resnet101", 448)]:
        for mode in ["fp32 eager", "AMP channels-last"]:
            amp = mode.startswith("AMP")
            body = getattr(torchvision.models, name)()
            body.avgpool, body.fc = GeM(), torch.nn.Identity()
            model = torch.nn.Sequential(body, torch.nn.Linear(2048, 2048)).cuda()
            if amp:
                model = model.to(memory_format=torch.channels_last)
            opt = torch.optim.Adam(model.parameters(), lr=1e-6, weight_decay=1e-4)
            x = torch.randn(BATCH, 3, px, px, device="cuda")
            if amp:
                x = x.to(memory_format=torch.channels_last)
            g = torch.randn(BATCH, 2048, device="cuda") * 1e-3

            def step():
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    out = torch.nn.functional.normalize(model(x), dim=1)
                # bf16 keeps f32's exponent range: no loss scaling.
                (out.float() * g).sum().backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                opt.step()

            try:
                t = timed(torch, step, warmup=3, iters=10)
                print(f"| {name} {mode} | {BATCH} | {px} | {t * 1e3:.1f} | {BATCH / t:.1f} |", flush=True)
            except RuntimeError as e:  # out of memory at 448 px, say so and go on
                print(f"| {name} {mode} | {BATCH} | {px} | failed: {str(e).splitlines()[0]} | |", flush=True)
            del model, opt, x, g
            torch.cuda.empty_cache()


def extract_table(torch, torchvision):
    # The eval forward `extract` runs for one scale of a batch: ResNet-101, GeM, a 2048 -> 2048
    # linear head, L2; the batch already on the GPU (ours uploads it as bytes).
    print("\n| extraction call (PyTorch eval forward) | batch | px | ms / call | images / s | GiB held at most |\n|---|---|---|---|---|---|", flush=True)
    GeM = gem_class(torch)
    n, px = 16, 1024
    for mode in ["fp32 eager", "AMP channels-last"]:
        amp = mode.startswith("AMP")
        body = torchvision.models.resnet101()
        body.avgpool, body.fc = GeM(), torch.nn.Identity()
        model = torch.nn.Sequential(body, torch.nn.Linear(2048, 2048)).cuda().eval()
        x = torch.randn(n, 3, px, px, device="cuda")
        if amp:
            model = model.to(memory_format=torch.channels_last)
            x = x.to(memory_format=torch.channels_last)

        def call():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                torch.nn.functional.normalize(model(x).float(), dim=1).cpu()

        try:
            torch.cuda.reset_peak_memory_stats()
            t = timed(torch, call, warmup=2, iters=5)
            held = torch.cuda.max_memory_allocated() / 2**30
            print(f"| resnet101 {mode} | {n} | {px} | {t * 1e3:.1f} | {n / t:.1f} | {held:.1f} |", flush=True)
        except RuntimeError as e:
            print(f"| resnet101 {mode} | {n} | {px} | failed: {str(e).splitlines()[0]} | | |", flush=True)
        del model, x
        torch.cuda.empty_cache()


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-steps", action="store_true", help="skip the training steps and the extraction call")
    ap.add_argument("--convs", default="f32", help="conv tables: f32, bf16, f32,bf16 or none")
    ap.add_argument("--nets", default="", help="networks of conv_shapes.txt (default: all)")
    args = ap.parse_args()
    convs = [c for c in args.convs.split(",") if c and c != "none"]
    if any(c not in ("f32", "bf16") for c in convs):
        ap.error(f"--convs {args.convs}: f32, bf16, both (comma-separated) or none")
    nets = [n for n in args.nets.split(",") if n] or None
    try:
        import torch
    except ImportError:
        print("SKIPPED PyTorch baseline: no torch on this machine")
        return 0
    if not torch.cuda.is_available():
        print("SKIPPED PyTorch baseline: torch sees no GPU")
        return 0
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"PyTorch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}\n")
    start = time.time()
    # The step first: it is the comparison the device lease is short enough to lose.
    if not args.no_steps:
        try:
            import torchvision

            # The step as the original runs it: torch's defaults (cuDNN convolutions in TF32).
            torch.backends.cudnn.allow_tf32 = True
            step_table(torch, torchvision)
        except ImportError:
            print("SKIPPED training step: no torchvision on this machine")
        print(f"torch-baseline: steps done at {time.time() - start:.0f} s", file=sys.stderr)
    # Our f32 kernels compute in full f32: so does cuDNN for the per-shape f32 table.
    torch.backends.cudnn.allow_tf32 = False
    for dtype in convs:
        print()
        conv_table(torch, os.path.join(root, "benches", "conv_shapes.txt"), dtype, nets)
        print(f"torch-baseline: {dtype} convolutions done at {time.time() - start:.0f} s", file=sys.stderr)
    # The extraction call last: the per-shape tables are what a phase cut short should keep.
    if not args.no_steps:
        try:
            import torchvision

            torch.backends.cudnn.allow_tf32 = True
            extract_table(torch, torchvision)
        except ImportError:
            pass  # said above
    return 0


if __name__ == "__main__":
    sys.exit(main())
