#!/usr/bin/env python3
"""The PyTorch side of the comparison, on the GPU machine's own PyTorch (cuDNN, cuBLAS).

Times the convolutions of benches/conv_shapes.txt (forward, data gradient, weight gradient;
batch 64, f32 with TF32 off, as our f32 kernels compute) and a training step as the original
runs it (torchvision ResNet + GeM + linear head, Adam with coupled decay, grad clip): ResNet-50
at 224 px and ResNet-101 at 448 px, batch 64, eager fp32 with torch's defaults (TF32 cuDNN
convolutions, as the original ran) and AMP (bf16) channels-last. Prints a
markdown table; scripts/device-run.sh appends it to the summary.

Prints a SKIPPED line and exits 0 when PyTorch, torchvision or a GPU is missing. The Lite0
shapes use symmetric padding k // 2 here (cuDNN has no TF SAME); the time is the same to within
the edge rows.
"""
import os
import statistics
import sys

BATCH = 64


def shapes(path):
    out = []
    for line in open(path):
        f = line.split()
        if not f or f[0].startswith("#"):
            continue
        if f[0] == "dw":
            net, ch, hw, k, s = f[1], *map(int, f[2:6])
            out.append((True, net, ch, hw, ch, k, s))
        else:
            net, cin, hw, cout, k, s = f[1], *map(int, f[2:7])
            out.append((False, net, cin, hw, cout, k, s))
    return out


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


def conv_table(torch, path):
    F = torch.nn.functional
    grad = torch.nn.grad
    # Printed row by row: a run stopped at its time limit keeps the rows it measured.
    print("| cuDNN (f32, TF32 off) | shape | fwd (us) | dgrad (us) | wgrad (us) |\n|---|---|---|---|---|", flush=True)
    for dw, net, cin, hw, cout, k, s in shapes(path):
        groups = cin if dw else 1
        x = torch.randn(BATCH, cin, hw, hw, device="cuda")
        w = torch.randn(cout, cin // groups, k, k, device="cuda")
        y = F.conv2d(x, w, stride=s, padding=k // 2, groups=groups)
        dy = torch.randn_like(y)
        t_f = timed(torch, lambda: F.conv2d(x, w, stride=s, padding=k // 2, groups=groups))
        t_d = timed(torch, lambda: grad.conv2d_input(x.shape, w, dy, stride=s, padding=k // 2, groups=groups))
        t_w = timed(torch, lambda: grad.conv2d_weight(x, w.shape, dy, stride=s, padding=k // 2, groups=groups))
        label = f"{net} {'dw ' if dw else ''}{BATCH}x{cin}x{hw}x{hw} -> {cout} k{k} s{s}"
        print(f"| {label} | | {t_f * 1e6:.1f} | {t_d * 1e6:.1f} | {t_w * 1e6:.1f} |", flush=True)
        del x, w, y, dy


def step_table(torch, torchvision):
    class GeM(torch.nn.Module):
        def __init__(self, p=3.0, eps=1e-6):
            super().__init__()
            self.p, self.eps = torch.nn.Parameter(torch.ones(1) * p), eps

        def forward(self, x):
            return x.clamp(min=self.eps).pow(self.p).mean((-2, -1)).pow(1.0 / self.p)

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


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    # The step first: it is the comparison the device lease is short enough to lose.
    try:
        import torchvision

        # The step as the original runs it: torch's defaults (cuDNN convolutions in TF32).
        torch.backends.cudnn.allow_tf32 = True
        step_table(torch, torchvision)
    except ImportError:
        print("SKIPPED training step: no torchvision on this machine")
    # Our f32 kernels compute in full f32: so does cuDNN for the per-shape table.
    torch.backends.cudnn.allow_tf32 = False
    print()
    conv_table(torch, os.path.join(root, "benches", "conv_shapes.txt"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
