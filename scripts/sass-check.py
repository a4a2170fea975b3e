#!/usr/bin/env python3
"""Static SASS facts of the built kernels, checked against what each kernel declares.

    python3 scripts/sass-check.py [--dir OUT_DIR] [--decl FILE] [--arch sm_90] [--markdown]
    python3 scripts/sass-check.py --self-test

Reads the fatbins that build.rs wrote (`$OUT_DIR/<family>.fatbin`; without --dir, the newest
`<target>/{debug,release}/build/insclr-cu-*/out` under $CARGO_TARGET_DIR or ./target;
`insclr-cu info --kernels` prints the one its binary embeds), disassembles them with cuobjdump
(+ nvdisasm, both from scripts/install-cuda-tools.sh) and prints one line per kernel. Then it
checks every kernel of every machine-code arch in the fatbins (sm_90 and sm_90a) against
kernels/sass.toml and exits 1 naming each kernel, arch and property that breaks its declaration,
each kernel that no entry declares and each entry that matches no kernel.

The main loop is the natural loop (control-flow graph, dominators) that holds the most tensor-core
instructions, or in a kernel without them the most FFMA; of loops holding as many, the smallest. Its figures count the
instructions of its nested loops too; a subroutine it CALLs is not in it. A kernel that compiles its
main loop more than once behind a run-time switch (a template per operand layout, per activation)
has several such loops side by side: the figures are the smallest copy's, loop.copies counts them
and loop.largest_copy is the largest one's instructions (the table shows "smallest-largest xN").

Metrics a declaration may use (`"<metric> <op> <value>"`, op one of <= >= == != < >, a value
with % is a share):
  registers, smem_bytes (the ELF's static shared memory per block: on sm_90 it can include the
    1 KiB the driver reserves per block, which ptxas -v leaves out),
  local_bytes (stack frame: spills and local arrays), local_ops (LDL/STL instructions),
  instructions, cp_async (LDGSTS), cp_async_4/_8/_16 (by bytes per copy), stages (cp.async
    pipeline depth: a k-stage loop waits with `cp.async.wait_group k-2`, i.e. DEPBAR.LE SB0, k-2;
    1 when there is no cp.async), ldmatrix_x1/_x2/_x4 (.trans included), hmma, hgmma, tma
    (UTMALDG/UTMASTG), ffma, stg_1/_2/_4/_8/_16 (global stores by bytes per store),
  int_div (32-bit integer division/modulo by a run-time divisor: the I2F.RP -> MUFU.RCP
    reciprocal set-up; the compiler shares one set-up between divisions by the same divisor at
    one place, so this counts set-ups, not `/` signs), div64_calls (CALLs of the 64-bit
    division subroutine, I2F.U64.RP), calls (every CALL, the float division slow path included),
  loop.instructions, loop.tensor_share, loop.ffma_share (of the main loop's instructions),
    loop.ldg, loop.sts, loop.lds (not ldmatrix), loop.ldsm, loop.cp_async, loop.bar,
    loop.nested (loops inside it), loop.int_div, loop.calls, loop.local_ops (LDL/STL in it: a
    spill that a kernel declares must stay out of its main loop), loop.copies and
    loop.largest_copy (the main loop's copies side by side, and the largest one's instructions).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DECL = ROOT / "kernels" / "sass.toml"

# ---- tools and inputs ----------------------------------------------------------------------


def find_tool(name: str) -> Path | None:
    """The same search order as build.rs uses for nvcc."""
    env = os.environ.get(name.upper())
    if env:
        return Path(env)
    candidates = [ROOT / ".cuda-tools" / "bin" / name]
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]) / "bin" / name)
    for c in candidates:
        if c.is_file():
            return c
    found = shutil.which(name)
    return Path(found) if found else None


def tool_env(cuobjdump: Path) -> dict:
    # cuobjdump -sass runs nvdisasm, which it looks up on PATH: the wheel puts them side by side.
    env = dict(os.environ)
    env["PATH"] = f"{cuobjdump.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def newest_out_dir() -> Path | None:
    """The OUT_DIR of the most recent build-script run: stale ones from other profiles, feature
    sets or older sources are older, and an unchanged source tree gives identical fatbins."""
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    dirs = []
    for profile in ("debug", "release"):
        for out in (target / profile / "build").glob("insclr-cu-*/out"):
            stamp = out / "kernels.rs"
            if stamp.is_file() and any(out.glob("*.fatbin")):
                dirs.append((stamp.stat().st_mtime, out))
    return max(dirs)[1] if dirs else None


# ---- disassembly ---------------------------------------------------------------------------

INSN = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
GUARD = re.compile(r"^@(!?U?P[T0-9]+)\s+")
HEX = re.compile(r"0x([0-9a-f]+)")


@dataclass
class Insn:
    addr: int
    guard: str | None  # predicate guard, e.g. "!P0"; None when unguarded
    op: str  # opcode with modifiers, e.g. "LDGSTS.E.BYPASS.128"
    args: str

    @property
    def base(self) -> str:
        return self.op.split(".")[0]

    def target(self) -> int | None:
        t = HEX.findall(self.args)
        return int(t[-1], 16) if t else None

    def always(self) -> bool:
        return self.guard is None or self.guard == "PT"


def parse_sass(text: str) -> dict[str, dict[str, list[Insn]]]:
    """cuobjdump -sass output -> {arch: {kernel: instructions}}."""
    out: dict[str, dict[str, list[Insn]]] = {}
    arch, fn = None, None
    for line in text.splitlines():
        m = re.match(r"\s*code for (sm_\w+)", line)
        if m:
            arch, fn = m.group(1), None
            out.setdefault(arch, {})
            continue
        m = re.match(r"\s*Function : (\S+)", line)
        if m and arch:
            fn = m.group(1)
            out[arch][fn] = []
            continue
        m = INSN.match(line)
        if m and fn:
            text_ = m.group(2)
            g = GUARD.match(text_)
            guard = g.group(1) if g else None
            if g:
                text_ = text_[g.end():]
            op, _, args = text_.partition(" ")
            if guard == "!PT":
                # Never executes: ptxas pads around cp.async with `@!PT LDS RZ, [RZ]`.
                continue
            out[arch][fn].append(Insn(int(m.group(1), 16), guard, op, args.strip()))
    return out


def parse_res_usage(text: str) -> dict[str, dict[str, dict[str, int]]]:
    """cuobjdump -res-usage output -> {arch: {kernel: {REG, STACK, SHARED, LOCAL}}}."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    arch, fn = None, None
    for line in text.splitlines():
        m = re.match(r"\s*arch = (sm_\w+)", line)
        if m:
            arch = m.group(1)
            out.setdefault(arch, {})
            continue
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            fn = m.group(1)
            continue
        if fn and arch and "REG:" in line:
            out[arch][fn] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}
            fn = None
    return out


def disassemble(cuobjdump: Path, fatbin: Path):
    env = tool_env(cuobjdump)
    sass = subprocess.run([str(cuobjdump), "-sass", str(fatbin)], capture_output=True, text=True, env=env)
    if sass.returncode != 0 or "nvdisasm" in sass.stderr:
        sys.exit(
            f"error: {cuobjdump} -sass {fatbin} failed ({sass.stderr.strip()}); it needs nvdisasm beside it "
            "(scripts/install-cuda-tools.sh installs both)"
        )
    res = subprocess.run([str(cuobjdump), "-res-usage", str(fatbin)], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"error: {cuobjdump} -res-usage {fatbin} failed: {res.stderr.strip()}")
    return parse_sass(sass.stdout), parse_res_usage(res.stdout)


# ---- control flow: blocks, dominators, natural loops ---------------------------------------


@dataclass
class Loop:
    header: int  # block index
    blocks: set[int] = field(default_factory=set)


def is_branch(i: Insn) -> bool:
    return i.base in ("BRA", "JMP")


# BPT.TRAP ends a path (a failed assertion, or the code after a call that never returns).
STOPS = ("EXIT", "RET", "BRX", "JMX", "KILL", "BPT")


def ends_block(i: Insn) -> bool:
    return is_branch(i) or i.base in STOPS


def unconditional(i: Insn) -> bool:
    """A branch or exit with no guard and no condition operand (BRA P1, 0x..; BRA.DIV UR4, 0x..)."""
    if not i.always():
        return False
    if i.base in STOPS:
        return True
    return i.op in ("BRA", "BRA.U", "JMP") and "," not in i.args


def cfg(insns: list[Insn]):
    """Basic blocks (instruction index ranges) and successor lists of the kernel body: control
    reaches a subroutine only through CALL, which falls through here, so subroutines and the
    trailing `BRA self` padding are unreachable and drop out of the loop analysis."""
    index = {ins.addr: k for k, ins in enumerate(insns)}
    leaders = {0}
    for k, ins in enumerate(insns):
        if is_branch(ins) and ins.target() in index:
            leaders.add(index[ins.target()])
        if ends_block(ins) and k + 1 < len(insns):
            leaders.add(k + 1)
    starts = sorted(leaders)
    ranges = [(s, (starts[n + 1] if n + 1 < len(starts) else len(insns))) for n, s in enumerate(starts)]
    block_of = {s: n for n, (s, _) in enumerate(ranges)}
    succ: list[list[int]] = []
    for n, (s, e) in enumerate(ranges):
        last = insns[e - 1]
        out = []
        if is_branch(last) and last.target() in index:
            out.append(block_of[index[last.target()]])
        if not (ends_block(last) and unconditional(last)) and n + 1 < len(ranges):
            out.append(n + 1)
        succ.append(out)
    return ranges, succ


def loops_of(ranges, succ) -> list[Loop]:
    n = len(ranges)
    # Reachable blocks in reverse post-order.
    seen, order, stack = {0}, [], [(0, iter(succ[0]))]
    while stack:
        b, it = stack[-1]
        nxt = next((s for s in it if s not in seen), None)
        if nxt is None:
            order.append(b)
            stack.pop()
        else:
            seen.add(nxt)
            stack.append((nxt, iter(succ[nxt])))
    rpo = order[::-1]
    preds: list[list[int]] = [[] for _ in range(n)]
    for b in rpo:
        for s in succ[b]:
            preds[s].append(b)
    full = (1 << n) - 1
    dom = [full] * n
    dom[0] = 1
    changed = True
    while changed:
        changed = False
        for b in rpo[1:]:
            d = full
            for p in preds[b]:
                if p in seen:
                    d &= dom[p]
            d |= 1 << b
            if d != dom[b]:
                dom[b], changed = d, True
    loops: dict[int, Loop] = {}
    for u in rpo:
        for h in succ[u]:
            if dom[u] >> h & 1:  # back edge u -> h
                loop = loops.setdefault(h, Loop(h, {h}))
                work = [u]
                while work:
                    b = work.pop()
                    if b not in loop.blocks:
                        loop.blocks.add(b)
                        work.extend(p for p in preds[b] if p in seen)
    return list(loops.values())


# ---- per-kernel metrics --------------------------------------------------------------------

TENSOR = ("HMMA", "HGMMA")
LDSM = re.compile(r"LDSM\.16\.MT?88(?:\.(\d))?")
REG = re.compile(r"\bU?R\d+\b")


def is_int_div_setup(insns: list[Insn], k: int) -> bool:
    """I2F.RP / I2F.U32.RP whose result the next instruction to name its register takes into
    MUFU.RCP: the reciprocal estimate that every 32-bit division by a run-time divisor starts
    with (I2F.U64.RP is the 64-bit subroutine's). Float division has MUFU.RCP too, but never a
    round-up integer conversion feeding it."""
    i = insns[k]
    if i.base != "I2F" or ".RP" not in i.op or "64" in i.op:
        return False
    reg = REG.findall(i.args)[:1]
    for j in insns[k + 1 : k + 33]:
        if reg and reg[0] in REG.findall(j.args):
            return j.op == "MUFU.RCP"
    return False


def store_bytes(op: str) -> int:
    mods = op.split(".")[1:]
    for m, b in (("U8", 1), ("S8", 1), ("U16", 2), ("S16", 2), ("64", 8), ("128", 16)):
        if m in mods:
            return b
    return 4


def subroutine_is_div64(insns: list[Insn], index: dict[int, int], target: int) -> bool:
    k = index.get(target)
    while k is not None and k < len(insns) and insns[k].base != "RET":
        if insns[k].base == "I2F" and "64.RP" in insns[k].op:
            return True
        k += 1
    return False


def metrics(insns: list[Insn], res: dict[str, int]) -> dict[str, float | int | None]:
    index = {ins.addr: k for k, ins in enumerate(insns)}
    ops = [i.op for i in insns]
    m: dict[str, float | int | None] = {
        "registers": res.get("REG", 0),
        "smem_bytes": res.get("SHARED", 0),
        "local_bytes": res.get("LOCAL", 0) + res.get("STACK", 0),
        "local_ops": sum(o.startswith(("LDL", "STL")) for o in ops),
        "instructions": len(insns),
        "cp_async": sum(o.startswith("LDGSTS") for o in ops),
        "hmma": sum(o.startswith("HMMA") for o in ops),
        "hgmma": sum(o.startswith("HGMMA") for o in ops),
        "tma": sum(o.startswith(("UTMALDG", "UTMASTG")) for o in ops),
        "ffma": sum(o.split(".")[0] == "FFMA" for o in ops),
    }
    for b in (4, 8, 16):
        m[f"cp_async_{b}"] = sum(o.startswith("LDGSTS") and store_bytes(o) == b for o in ops)
    for b in (1, 2, 4, 8, 16):
        m[f"stg_{b}"] = sum(o.startswith("STG") and store_bytes(o) == b for o in ops)
    for x in (1, 2, 4):
        m[f"ldmatrix_x{x}"] = sum(1 for o in ops if (g := LDSM.fullmatch(o)) and int(g.group(1) or 1) == x)
    waits = [int(h, 16) for i in insns if i.op == "DEPBAR.LE" for h in re.findall(r"SB0,\s*0x([0-9a-f]+)", i.args)]
    m["stages"] = (max(waits) + 2 if waits else 2) if m["cp_async"] else 1
    div_at = {k for k in range(len(insns)) if is_int_div_setup(insns, k)}
    m["int_div"] = len(div_at)
    calls = [k for k, i in enumerate(insns) if i.base == "CALL"]
    m["calls"] = len(calls)
    m["div64_calls"] = sum(subroutine_is_div64(insns, index, insns[k].target()) for k in calls)

    ranges, succ = cfg(insns)
    loops = loops_of(ranges, succ)

    def members(loop: Loop) -> list[int]:
        return [k for b in loop.blocks for k in range(*ranges[b])]

    def work(ks: list[int]) -> tuple[int, int]:
        return (sum(insns[k].base in TENSOR for k in ks), sum(insns[k].base == "FFMA" for k in ks))

    def rank(ks: list[int]):
        # The smallest loop that holds the most tensor-core work, else the most FFMA (an epilogue
        # loop of FFMAs is not a tensor-core kernel's main loop); in a kernel without either, the
        # largest loop (its outermost), not some short wait or copy loop.
        w = work(ks)
        return (w, -len(ks) if any(w) else len(ks))

    main, main_ks = None, []
    for loop in loops:
        ks = members(loop)
        if main is None or rank(ks) > rank(main_ks):
            main, main_ks = loop, ks
    # Copies: the innermost loops holding as much work as the main loop, none inside another (an
    # outer loop around the main loop holds as much too, and is not a copy).
    copies = []
    if main is not None and any(work(main_ks)):
        tied = [(loop, len(ks)) for loop in loops if work(ks := members(loop)) == work(main_ks)]
        copies = [n for loop, n in tied if not any(o is not loop and o.blocks < loop.blocks for o, _ in tied)]
    keys = ("instructions", "tensor_share", "ffma_share", "ldg", "sts", "lds", "ldsm", "cp_async", "bar",
            "nested", "int_div", "calls", "local_ops", "copies", "largest_copy")
    if main is None:
        m.update({f"loop.{k}": None for k in keys})
        return m
    body = [insns[k] for k in main_ks]
    n = len(body)
    m.update({
        "loop.instructions": n,
        "loop.tensor_share": sum(i.base in TENSOR for i in body) / n,
        "loop.ffma_share": sum(i.base == "FFMA" for i in body) / n,
        "loop.ldg": sum(i.base == "LDG" for i in body),
        "loop.sts": sum(i.base == "STS" for i in body),
        "loop.lds": sum(i.base == "LDS" for i in body),
        "loop.ldsm": sum(i.base == "LDSM" for i in body),
        "loop.cp_async": sum(i.base == "LDGSTS" for i in body),
        "loop.bar": sum(i.base == "BAR" for i in body),
        "loop.nested": sum(1 for l in loops if l is not main and l.blocks < main.blocks),
        "loop.int_div": len(div_at & set(main_ks)),
        "loop.calls": sum(i.base == "CALL" for i in body),
        "loop.local_ops": sum(i.base in ("LDL", "STL") for i in body),
        "loop.copies": max(len(copies), 1),
        "loop.largest_copy": max(copies, default=n),
    })
    return m


def analyse(cuobjdump: Path, fatbins: list[Path]):
    """-> {arch: {kernel: (family, metrics)}} for every machine-code arch in the fatbins."""
    table: dict[str, dict[str, tuple[str, dict]]] = {}
    # nvdisasm takes most of the time, a few CPU-seconds per large family: one process per fatbin.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        done = list(pool.map(lambda fb: disassemble(cuobjdump, fb), fatbins))
    for fb, (sass, res) in zip(fatbins, done):
        for arch, kernels in sass.items():
            for name, insns in kernels.items():
                r = res.get(arch, {}).get(name, {})
                table.setdefault(arch, {})[name] = (fb.stem, metrics(insns, r))
    return table


# ---- declarations --------------------------------------------------------------------------

RULE = re.compile(r"^\s*([a-z0-9_.]+)\s*(<=|>=|==|!=|<|>)\s*(-?[0-9.]+)\s*(%?)\s*$")
OPS = {
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
}


def load_declarations(path: Path) -> list[dict]:
    with open(path, "rb") as f:
        data = tomllib.load(f)
    entries = data.get("kernel", [])
    for n, e in enumerate(entries):
        if isinstance(e.get("match"), str):
            e["match"] = [e["match"]]
        if not isinstance(e.get("match"), list) or not isinstance(e.get("expect", []), list):
            sys.exit(f"error: {path}: [[kernel]] entry {n + 1} needs match = \"name or pattern\" (or a list) "
                     "and expect = [...]")
        for rule in e.get("expect", []):
            if not RULE.match(rule):
                sys.exit(f"error: {path}: entry '{label(e)}': cannot read rule '{rule}' (use \"metric <= value\")")
    return entries


def matches(name: str, entry: dict) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in entry["match"])


def label(entry: dict) -> str:
    return ", ".join(entry["match"])


def broken_rules(m: dict, rule: str) -> str | None:
    """Why `rule` does not hold for metrics m, or None when it does."""
    metric, op, value, pct = RULE.match(rule).groups()
    want = float(value) / 100 if pct else float(value)
    if metric not in m:
        return f"unknown metric '{metric}' in '{rule}'"
    got = m[metric]
    if got is None:
        return f"{metric} is undefined (the kernel has no loop), declared '{rule}'"
    if not OPS[op](got, want):
        return f"{metric} = {fmt(metric, got)}, declared {op} {value}{pct}"
    return None


def check(table, entries: list[dict], decl: Path) -> list[str]:
    failures = []
    used = [False] * len(entries)
    for arch, kernels in sorted(table.items()):
        for name, (family, m) in sorted(kernels.items()):
            mine = [n for n, e in enumerate(entries) if matches(name, e)]
            if not mine:
                failures.append(f"{name} ({arch}, kernels/{family}.cu): no entry in {decl.name} declares it")
            for n in mine:
                used[n] = True
                for rule in entries[n].get("expect", []):
                    bad = broken_rules(m, rule)
                    if bad:
                        why = f" [{entries[n]['why']}]" if entries[n].get("why") else ""
                        failures.append(f"{name} ({arch}, kernels/{family}.cu): {bad} (entry '{label(entries[n])}'){why}")
    for n, e in enumerate(entries):
        if not used[n]:
            failures.append(f"entry '{label(e)}' in {decl.name} matches no kernel (renamed or removed?)")
    return failures


# ---- output --------------------------------------------------------------------------------


def fmt(metric: str, v) -> str:
    if v is None:
        return "-"
    if metric.endswith("_share"):
        return f"{v:.1%}"
    return str(int(v)) if float(v).is_integer() else f"{v:.3g}"


def widths(m: dict, prefix: str, sizes) -> str:
    parts = [f"{b}B:{m[f'{prefix}_{b}']}" for b in sizes if m[f"{prefix}_{b}"]]
    return " ".join(parts) or "-"


COLUMNS = [
    ("kernel", lambda n, m: n),
    ("regs", lambda n, m: fmt("", m["registers"])),
    ("smem", lambda n, m: fmt("", m["smem_bytes"])),
    ("local", lambda n, m: f"{m['local_bytes']}/{m['local_ops']}" if m["local_bytes"] or m["local_ops"] else "0"),
    ("cp.async", lambda n, m: widths(m, "cp_async", (4, 8, 16))),
    ("stages", lambda n, m: fmt("", m["stages"])),
    ("ldsm x4/x2/x1", lambda n, m: f"{m['ldmatrix_x4']}/{m['ldmatrix_x2']}/{m['ldmatrix_x1']}"),
    ("mma", lambda n, m: (f"{m['hmma']}" + (f"+{m['hgmma']}gmma" if m["hgmma"] else ""))),
    ("loop", lambda n, m: fmt("", m["loop.instructions"]) if (m["loop.copies"] or 1) == 1 else
     f"{m['loop.instructions']}-{m['loop.largest_copy']} x{m['loop.copies']}"),
    ("tc%", lambda n, m: fmt("loop.tensor_share", m["loop.tensor_share"])),
    ("ffma%", lambda n, m: fmt("loop.ffma_share", m["loop.ffma_share"])),
    ("ldg/sts/lds/ldsm/bar", lambda n, m: "-" if m["loop.instructions"] is None else
     "/".join(str(m[f"loop.{k}"]) for k in ("ldg", "sts", "lds", "ldsm", "bar"))),
    ("nest", lambda n, m: fmt("", m["loop.nested"])),
    ("idiv (loop)", lambda n, m: f"{m['int_div']} ({fmt('', m['loop.int_div'])})"),
    ("stores", lambda n, m: widths(m, "stg", (1, 2, 4, 8, 16))),
    ("call (div64)", lambda n, m: f"{m['calls']} ({m['div64_calls']})"),
]

LEGEND = """\
regs, smem (bytes, the ELF's: it can include 1 KiB the driver reserves, which ptxas -v omits),
local (stack bytes / LDL+STL instructions), cp.async by bytes per copy, stages of the cp.async
pipeline, ldmatrix by matrices per instruction, mma = HMMA (+ HGMMA); the main loop: its
instructions (smallest-largest xN: N copies of it side by side; the other figures are the
smallest's), tensor-core and FFMA shares, its LDG/STS/LDS/LDSM/BAR and nested loops;
idiv = 32-bit integer-division set-ups (in the main loop), stores = global stores by bytes,
call = CALLs (of the 64-bit division subroutine)."""


def print_table(kernels: dict, markdown: bool, only: list[str] | None = None) -> None:
    def first_pattern(name: str) -> int | None:
        hits = [k for k, p in enumerate(only or ["*"]) if fnmatch.fnmatchcase(name, p)]
        return hits[0] if hits else None

    # Fatbin order, or the order of the patterns asked for.
    picked = sorted(((first_pattern(n), k, n) for k, n in enumerate(kernels) if first_pattern(n) is not None))
    rows = [[c[1](n, kernels[n][1]) for c in COLUMNS] for _, _, n in picked]
    heads = [c[0] for c in COLUMNS]
    if markdown:
        print("| " + " | ".join(heads) + " |")
        print("|" + "|".join(" --- " for _ in heads) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return
    w = [max(len(h), *(len(r[k]) for r in rows)) if rows else len(h) for k, h in enumerate(heads)]
    print("  ".join(h.ljust(w[k]) for k, h in enumerate(heads)).rstrip())
    for r in rows:
        print("  ".join(v.ljust(w[k]) for k, v in enumerate(r)).rstrip())


def compare_archs(table, shown: str) -> None:
    for arch in sorted(table):
        if arch == shown:
            continue
        same = [n for n in table[arch] if n in table[shown] and table[arch][n][1] == table[shown][n][1]]
        differ = sorted(n for n in table[arch] if n not in same)
        note = f"; differs for: {', '.join(differ)}" if differ else ""
        print(f"{arch}: same figures as {shown} for {len(same)} of {len(table[arch])} kernels{note}")


# ---- self-test -----------------------------------------------------------------------------

SELFTEST_CU = ROOT / "scripts" / "sass-selftest.cu"


def parse_expectations(source: str) -> dict[str, list[tuple[str, str, str]]]:
    """`// expect <kernel>: <metric> <op> <value>, ...` lines of the self-test source."""
    out: dict[str, list] = {}
    for line in source.splitlines():
        m = re.match(r"\s*// expect (\w+): (.*)$", line)
        if m:
            out.setdefault(m.group(1), []).extend(r.strip() for r in m.group(2).split(","))
    return out


def test_detectors(cuobjdump: Path) -> list[str]:
    """The detectors on scripts/sass-selftest.cu, whose kernels each show one property a known
    number of times."""
    nvcc = find_tool("nvcc")
    if nvcc is None:
        return ["nvcc not found ($NVCC, .cuda-tools/bin, $CUDA_HOME/bin, PATH): run scripts/install-cuda-tools.sh"]
    with tempfile.TemporaryDirectory() as tmp:
        fb = Path(tmp) / "sass-selftest.fatbin"
        cmd = [str(nvcc), "-fatbin", "-O3", "-std=c++17", "-I", str(ROOT / "kernels"),
               "-gencode=arch=compute_90,code=sm_90", "-o", str(fb), str(SELFTEST_CU)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            return [f"nvcc failed on {SELFTEST_CU}:\n{r.stderr}"]
        kernels = analyse(cuobjdump, [fb]).get("sm_90", {})
    expected = parse_expectations(SELFTEST_CU.read_text())
    problems, count = [], 0
    for name, rules in expected.items():
        if name not in kernels:
            problems.append(f"{name} is not in the self-test fatbin")
            continue
        for rule in rules:
            count += 1
            bad = broken_rules(kernels[name][1], rule)
            if bad:
                problems.append(f"{SELFTEST_CU.name}: {name}: {bad}")
    print(f"self-test: {count - len(problems)} of {count} detector expectations hold "
          f"on {len(expected)} kernels of {SELFTEST_CU.name}")
    return problems


def write_declarations(path: Path, entries: list[dict]) -> None:
    # JSON string literals are valid TOML basic strings.
    with open(path, "w") as f:
        for e in entries:
            f.write("[[kernel]]\n")
            f.write(f"match = {json.dumps(e['match'])}\n")
            if e.get("why"):
                f.write(f"why = {json.dumps(e['why'])}\n")
            f.write("expect = [" + ", ".join(json.dumps(r) for r in e.get("expect", [])) + "]\n\n")


def test_broken_declaration(table, entries: list[dict], out_dir: Path, decl: Path) -> list[str]:
    """Runs this script, as CI does, on one family's fatbin with a declaration file in which
    one rule of one kernel is inverted: it must exit 1 and name that kernel and property, and
    nothing else."""
    sizes = {fb.stem: fb.stat().st_size for fb in out_dir.glob("*.fatbin")}
    arch = min(table)
    family_of = {name: fam for name, (fam, _) in table[arch].items()}
    plain = [e for e in entries if len(e["match"]) == 1 and e["match"][0] in family_of and e.get("expect")]
    if not plain:
        return [f"{decl}: no entry that names one kernel and has a rule, nothing to break"]
    victim = min(plain, key=lambda e: (sizes.get(family_of[e["match"][0]], 0), e["match"][0]))
    kernel = victim["match"][0]
    family = family_of[kernel]
    rule = victim["expect"][0]
    metric, op, value, pct = RULE.match(rule).groups()
    inverted = {"<=": ">", ">=": "<", "==": "!=", "!=": "==", "<": ">=", ">": "<="}[op]
    bad_rule = f"{metric} {inverted} {value}{pct}"
    kept = [dict(e) for e in entries if any(matches(n, e) for n, f in family_of.items() if f == family)]
    for e in kept:
        if e["match"] == victim["match"]:
            e["expect"] = [bad_rule] + e["expect"][1:]
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "out"
        one.mkdir()
        (one / f"{family}.fatbin").symlink_to(out_dir / f"{family}.fatbin")
        broken = Path(tmp) / "broken.toml"
        write_declarations(broken, kept)
        r = subprocess.run([sys.executable, __file__, "--dir", str(one), "--decl", str(broken)],
                           capture_output=True, text=True)
    lines = [l.strip() for l in r.stderr.splitlines() if l.startswith("  ")]
    named = [l for l in lines if l.startswith(f"{kernel} (") and f": {metric} = " in l]
    problems = []
    if r.returncode != 1:
        problems.append(f"with '{rule}' of {kernel} inverted the check exited {r.returncode}, not 1")
    if not named:
        problems.append(f"with '{rule}' of {kernel} inverted, no failure names it:\n{r.stderr}")
    if len(lines) != len(named):
        problems.append("the broken declaration file failed for other reasons too:\n" + r.stderr)
    if not problems:
        print(f"self-test: {kernel}'s '{rule}' inverted to '{bad_rule}': exit 1, as it must, with")
        for l in named:
            print(f"  {l}")
    return problems


# ---- main ----------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, help="folder with the fatbins (build.rs's OUT_DIR)")
    ap.add_argument("--decl", type=Path, default=DEFAULT_DECL, help="declarations (default kernels/sass.toml)")
    ap.add_argument("--arch", help="the arch whose table is printed (default: the lowest; all archs are checked)")
    ap.add_argument("--kernels", nargs="*", help="print only these kernels (names or patterns)")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    ap.add_argument("--no-check", action="store_true", help="print the table only")
    ap.add_argument("--self-test", action="store_true",
                    help="after the check, test the detectors on scripts/sass-selftest.cu and that a broken "
                    "declaration fails the check (CI runs this)")
    args = ap.parse_args()

    cuobjdump = find_tool("cuobjdump")
    if cuobjdump is None:
        print("error: cuobjdump not found ($CUOBJDUMP, .cuda-tools/bin, $CUDA_HOME/bin, PATH); "
              "run scripts/install-cuda-tools.sh", file=sys.stderr)
        return 2
    out_dir = args.dir or newest_out_dir()
    if out_dir is None:
        print("error: no built fatbins under target/*/build/insclr-cu-*/out; build with nvcc "
              "(scripts/install-cuda-tools.sh, then cargo build) or pass --dir", file=sys.stderr)
        return 2
    fatbins = sorted(out_dir.glob("*.fatbin"))
    if not fatbins:
        print(f"error: no *.fatbin in {out_dir}", file=sys.stderr)
        return 2
    table = analyse(cuobjdump, fatbins)
    shown = args.arch or min(table)
    if shown not in table:
        print(f"error: no {shown} code in the fatbins (have {', '.join(sorted(table))})", file=sys.stderr)
        return 2
    print(f"SASS of {len(fatbins)} fatbins in {out_dir} ({shown}; archs: {', '.join(sorted(table))})")
    print_table(table[shown], args.markdown, args.kernels)
    if not args.markdown:
        print(LEGEND)
    compare_archs(table, shown)
    if args.no_check:
        return 0
    entries = load_declarations(args.decl)
    failures = check(table, entries, args.decl)
    kernels = len({name for k in table.values() for name in k})
    if failures:
        print(f"\nSASS check FAILED ({len(failures)} problems; declarations in {args.decl}):", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
    else:
        print(f"SASS check: all {kernels} kernels hold their declarations in {args.decl} "
              f"on {' and '.join(sorted(table))}")
    if not args.self_test:
        return 1 if failures else 0
    problems = test_detectors(cuobjdump) + test_broken_declaration(table, entries, out_dir, args.decl)
    for p in problems:
        print(f"self-test: FAILED: {p}", file=sys.stderr)
    print(f"self-test: {'ok' if not problems else 'FAILED'}")
    return 1 if failures or problems else 0


if __name__ == "__main__":
    sys.exit(main())
