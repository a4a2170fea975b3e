#!/usr/bin/env python3
"""Writes the byte-literal pickles that src/io/pickle.rs and src/nn/weights.rs test against.

Run once when the fixtures change: python3 scripts/gen-pickle-fixtures.py > src/io/pickle_fixtures.rs
Needs only the standard library: torch's pickle layout is imitated with stand-in modules named
torch / torch._utils, so the bytes are what torch.save writes for the same state dict.
"""
import collections, io, pickle, struct, sys, types


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


Point.__module__ = "geom"
Point.__qualname__ = "Point"
sys.modules["geom"] = types.SimpleNamespace(Point=Point)

shared = [9]
BASIC = {
    "int_small": 7,
    "int_2": 1000,
    "int_4": -123456,
    "int_big": 2**40,
    "int_neg_big": -(2**62),
    "float": 1.5,
    "neg_float": -0.1,
    "str": "h\u00e9llo \u2713",
    "bytes": b"\x00\x01\xff",
    "bool_t": True,
    "bool_f": False,
    "none": None,
    "list": [1, [2, 3], (4,)],
    "tuple0": (),
    "tuple1": (1,),
    "tuple2": (1, 2),
    "tuple3": (1, 2, 3),
    "tuple4": (1, 2, 3, 4),
    "shared": [shared, shared],
    "set": {5},
    "frozenset": frozenset({6}),
    "big_list": list(range(1500)),
    "point": Point(3, -4),
    "odict": collections.OrderedDict([("b", 2), ("a", 1)]),
}

# --- torch stand-ins -------------------------------------------------------------------------
torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")
torch._utils = utils
sys.modules["torch"] = torch
sys.modules["torch._utils"] = utils


def _rebuild_tensor_v2(*a):
    raise RuntimeError("never called")


_rebuild_tensor_v2.__module__ = "torch._utils"
utils._rebuild_tensor_v2 = _rebuild_tensor_v2
STORAGE_TYPES = {}
for name, code, size in [("FloatStorage", "<f", 4), ("DoubleStorage", "<d", 8),
                         ("HalfStorage", "<e", 2), ("LongStorage", "<q", 8)]:
    cls = type(name, (), {})
    cls.__module__ = "torch"
    setattr(torch, name, cls)
    STORAGE_TYPES[name] = (cls, code, size)


class Storage:
    def __init__(self, key, kind, values):
        self.key, self.kind, self.values = key, kind, values

    def raw(self):
        _, code, _ = STORAGE_TYPES[self.kind]
        return b"".join(struct.pack(code, v) for v in self.values)


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce_ex__(self, proto):
        return (_rebuild_tensor_v2,
                (self.storage, self.offset, self.size, self.stride, False,
                 collections.OrderedDict()))


class TorchPickler(pickle.Pickler):
    legacy = False

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            cls = STORAGE_TYPES[obj.kind][0]
            if self.legacy:
                return ("storage", cls, obj.key, "cpu", len(obj.values), None)
            return ("storage", cls, obj.key, "cpu", len(obj.values))
        return None


def state_dict():
    w = Storage("140001", "FloatStorage", [float(i) for i in range(12)])
    d = Storage("140002", "DoubleStorage", [0.5, -1.25, 3.0])
    h = Storage("140003", "HalfStorage", [1.0, -2.0, 0.5, 65504.0])
    n = Storage("140004", "LongStorage", [7])
    sd = collections.OrderedDict()
    # module. prefix as DataParallel writes it; weight is a transposed (non-contiguous) view.
    sd["module.conv.weight"] = Tensor(w, 0, (3, 2), (1, 3))
    sd["module.conv.bias"] = Tensor(w, 6, (2,), (2,))  # offset 6, stride 2: 6.0, 8.0
    sd["module.bn.running_mean"] = Tensor(d, 0, (3,), (1,))
    sd["module.bn.running_var"] = Tensor(h, 0, (2, 2), (2, 1))
    sd["module.bn.num_batches_tracked"] = Tensor(n, 0, (), ())
    sd["module.fc.weight"] = Tensor(w, 1, (2, 2), (4, 1))  # 1,2,5,6
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    return sd, [w, d, h, n]


def torch_pickle(obj, legacy):
    f = io.BytesIO()
    p = TorchPickler(f, protocol=2)
    p.legacy = legacy
    p.dump(obj)
    return f.getvalue()


def legacy_pth(checkpoint=False):
    sd, storages = state_dict()
    obj = {"model": sd}
    if checkpoint:
        # An InsCLR-style checkpoint: optimiser tensors live in storages the model never uses.
        m = Storage("140005", "FloatStorage", [0.25, 0.5])
        storages.append(m)
        obj = {"iteration": 5, "model": sd,
               "optimizer": {"state": {0: {"exp_avg": Tensor(m, 0, (2,), (1,))}}}}
    f = io.BytesIO()
    pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
    pickle.dump(1001, f, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True,
                 "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
    f.write(torch_pickle(obj, legacy=True))
    keys = [s.key for s in storages]
    pickle.dump(keys, f, protocol=2)
    for s in storages:
        f.write(struct.pack("<q", len(s.values)))
        f.write(s.raw())
    return f.getvalue()


def lit(name, b):
    head = f"pub const {name}: &[u8] = b\""
    out = []
    for c in b:
        if 32 <= c < 127 and c not in (ord('"'), ord("\\")):
            out.append(chr(c))
        else:
            out.append(f"\\x{c:02x}")
    out.append("\";")
    s = "".join(out)
    # Break long literals with Rust's line-continuation escape.
    lines, cur = [], head
    for tok in _tokens(s):
        if len(cur) + len(tok) > 96:
            lines.append(cur + "\\")
            cur = ""
        cur += tok
    lines.append(cur)
    return "\n".join(lines)


def _tokens(s):
    i = 0
    while i < len(s):
        if s[i] == "\\" and s[i + 1] == "x":
            yield s[i:i + 4]
            i += 4
        elif s[i] == "\\":
            yield s[i:i + 2]
            i += 2
        elif s[i] == " ":
            yield "\\x20"  # a space after a line continuation would be eaten
            i += 1
        else:
            yield s[i]
            i += 1


print("//! Pickles written by python3's `pickle` (scripts/gen-pickle-fixtures.py); do not edit.")
print(f"// python {sys.version.split()[0]}")
print("#![allow(dead_code)]")
for proto in (0, 2, 4, 5):
    print(lit(f"BASIC_P{proto}", pickle.dumps(BASIC, protocol=proto)))
print(lit("BYTEARRAY_P5", pickle.dumps(bytearray(b"ab\x00"), protocol=5)))
sd, storages = state_dict()
print(lit("TORCH_STATE_P2", torch_pickle(sd, legacy=False)))
for s in storages:
    print(lit(f"STORAGE_{s.key}", s.raw()))
print(lit("LEGACY_PTH", legacy_pth()))
print(lit("LEGACY_CHECKPOINT_PTH", legacy_pth(checkpoint=True)))
