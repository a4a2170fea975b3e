//! Mutation fuzzing of every file reader (npy, npz, safetensors, torch zip and legacy .pth,
//! pickle, revisitop ground-truth pickle, TOML config). Each reader gets valid seed inputs,
//! built here with the project's writers or taken from fixtures, and parses mutated copies
//! (bit flips, interesting bytes, truncation, extension, splicing, huge length fields, huge
//! numbers in text) from memory. A reader may return any error, but must not panic, and must
//! not make any single allocation larger than max(input size x a small factor, 1 MiB): a
//! corrupted size field has to be checked against the bytes that are there before it is
//! believed. A counting global allocator measures that, per thread.
//!
//! `INSCLR_FUZZ_ITERS` sets the inputs per reader (default 100000), `INSCLR_FUZZ_SEED` the
//! base seed; scripts/fuzz.sh runs a million per reader in release. A failure names the reader,
//! the case seed and the file where the input (and a minimised copy) was written; a request
//! over 1 GiB is refused, which aborts the process after the input is dumped.
//! `INSCLR_FUZZ_REPLAY=<reader>:<file>` replays one input and prints a backtrace of any
//! allocation over the limit (see `replay`).

use insclr::io::npy::{self, Array, NpzEntry};
use insclr::io::tensor::{SourceDType, Tensor, TensorData};
use insclr::io::{pth, safetensors};
use insclr::rng::Rng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../src/io/pickle_fixtures.rs"]
mod pickle_fixtures;
use pickle_fixtures as fx;

/// Slack every reader may allocate regardless of input size (buffers, tables).
const SLACK: usize = 1 << 20;
/// Requests above this while watched are refused (the process aborts) rather than risking
/// the machine's memory; the input is dumped first.
const HARD_CAP: usize = 1 << 30;

thread_local! {
    /// The allocation limit while a reader runs on this thread; 0 when not watching.
    static LIMIT: Cell<usize> = const { Cell::new(0) };
    /// The largest single request seen while watching.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    /// The input being parsed and its reader, to dump it if the process is about to abort.
    static CURRENT: Cell<(*const u8, usize, &'static str)> =
        const { Cell::new((std::ptr::null(), 0, "")) };
    /// The case seed of the input being parsed, for the abort message.
    static CASE: Cell<u64> = const { Cell::new(0) };
    /// Set while fuzzing, so the panic hook stays quiet and keeps the message.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static PANIC_AT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    /// Set by `check_file` to print where an over-limit allocation comes from.
    static TRACE: Cell<bool> = const { Cell::new(false) };
}

struct Counting;

impl Counting {
    /// Records a request; false when it must be refused.
    fn note(size: usize) -> bool {
        let limit = LIMIT.try_with(Cell::get).unwrap_or(0);
        if limit == 0 {
            return true;
        }
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        if size > limit && TRACE.with(Cell::get) {
            // Stop watching while the backtrace allocates.
            LIMIT.with(|l| l.set(0));
            eprintln!(
                "fuzz: {size}-byte allocation (limit {limit}) from:\n{}",
                std::backtrace::Backtrace::force_capture()
            );
            LIMIT.with(|l| l.set(limit));
        }
        if size <= HARD_CAP {
            return true;
        }
        // Stop watching (the dump allocates), write the input, then refuse.
        LIMIT.with(|l| l.set(0));
        let (p, n, reader) = CURRENT.with(Cell::get);
        if !p.is_null() {
            // SAFETY: CURRENT points at the input slice, alive for the whole parse call.
            let input = unsafe { std::slice::from_raw_parts(p, n) };
            let case = CASE.with(Cell::get);
            let path = dump_dir().join(format!("{reader}-{case:016x}-abort.bin"));
            let _ = std::fs::write(&path, input);
            eprintln!(
                "fuzz {reader}: case seed {case:#x}: {size}-byte allocation from a {n}-byte input; refused, so the process aborts; input in {} (replay with INSCLR_FUZZ_REPLAY={reader}:<file>)",
                path.display()
            );
        }
        false
    }
}

// SAFETY: every call forwards to System with the same layout; bookkeeping touches only
// const-initialised thread locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::note(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::note(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !Self::note(new_size) {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn dump_dir() -> PathBuf {
    let d = std::env::temp_dir().join("insclr-fuzz");
    let _ = std::fs::create_dir_all(&d);
    d
}

fn install_quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let at = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                PANIC_AT.with(|p| *p.borrow_mut() = at);
            } else {
                default(info);
            }
        }));
    });
}

/// A reader under test: parses an input from memory, any error allowed.
type Parse = fn(&[u8]);

/// Runs `parse` on `input` watched; the failure, if any.
fn check(reader: &'static str, parse: Parse, input: &[u8], factor: usize) -> Option<String> {
    let limit = input.len().saturating_mul(factor).max(SLACK);
    CURRENT.with(|c| c.set((input.as_ptr(), input.len(), reader)));
    LARGEST.with(|l| l.set(0));
    QUIET.with(|q| q.set(true));
    LIMIT.with(|l| l.set(limit));
    let r = catch_unwind(AssertUnwindSafe(|| parse(input)));
    LIMIT.with(|l| l.set(0));
    QUIET.with(|q| q.set(false));
    CURRENT.with(|c| c.set((std::ptr::null(), 0, "")));
    let largest = LARGEST.with(Cell::get);
    match r {
        Err(e) => {
            let msg = e
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| e.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let at = PANIC_AT.with(|p| p.borrow().clone());
            Some(format!("panicked at {at}: {msg}"))
        }
        Ok(()) if largest > limit => Some(format!(
            "allocated {largest} bytes at once for a {}-byte input (limit {limit})",
            input.len()
        )),
        Ok(()) => None,
    }
}

/// Interesting byte values: boundaries of signed and unsigned types, and an ASCII digit.
const BYTES: [u8; 6] = [0, 1, 0x7f, 0x80, 0xff, b'9'];
/// Values written over length fields.
const HUGE: [u64; 9] = [
    u64::MAX,
    1 << 63,
    1 << 62,
    1 << 40,
    1 << 32,
    u32::MAX as u64,
    0x7fff_ffff,
    0xffff,
    0,
];
/// Tokens inserted into text (npy headers, TOML, protocol-0 pickles).
const TOKENS: [&[u8]; 16] = [
    b"99999999999999999999",
    b"1000000000000",
    b"4294967296",
    b"-1",
    b"1e308",
    b"nan",
    b"(",
    b")",
    b"[",
    b"]",
    b"{",
    b"'",
    b"\"",
    b",",
    b"\n",
    b" = ",
];

/// One mutated copy of a random seed.
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seeds[rng.below(seeds.len())].clone();
    let max_len = b.len() + 1024;
    for _ in 0..1 + rng.below(4) {
        // Header fields sit near the start: aim there a quarter of the time.
        let pos = |rng: &mut Rng, len: usize| {
            if len == 0 {
                0
            } else if rng.below(4) == 0 {
                rng.below(len.min(64))
            } else {
                rng.below(len)
            }
        };
        match rng.below(9) {
            0 if !b.is_empty() => {
                let i = pos(rng, b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let i = pos(rng, b.len());
                b[i] = BYTES[rng.below(BYTES.len())];
            }
            2 => {
                let n = rng.below(b.len() + 1);
                b.truncate(n);
            }
            3 => {
                let i = rng.below(b.len() + 1);
                let extra: Vec<u8> = (0..1 + rng.below(32))
                    .map(|_| rng.next_u64() as u8)
                    .collect();
                b.splice(i..i, extra);
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let s = rng.below(other.len());
                    let n = 1 + rng.below((other.len() - s).min(256));
                    let i = rng.below(b.len() + 1);
                    let end = (i + n).min(b.len());
                    b.splice(i..end, other[s..s + n].iter().copied());
                }
            }
            5 => {
                let w = [1, 2, 4, 8][rng.below(4)];
                if b.len() >= w {
                    let i = pos(rng, b.len() - w + 1);
                    let v = HUGE[rng.below(HUGE.len())].to_le_bytes();
                    b[i..i + w].copy_from_slice(&v[..w]);
                }
            }
            6 => {
                let i = pos(rng, b.len() + 1);
                b.splice(i..i, TOKENS[rng.below(TOKENS.len())].iter().copied());
            }
            7 if !b.is_empty() => {
                // Replace the run of digits at or after a random place with a huge number.
                let start = pos(rng, b.len());
                if let Some(s) = b[start..].iter().position(u8::is_ascii_digit) {
                    let s = start + s;
                    let e = s + b[s..].iter().take_while(|c| c.is_ascii_digit()).count();
                    b.splice(s..e, TOKENS[rng.below(3)].iter().copied());
                }
            }
            _ if !b.is_empty() => {
                let i = rng.below(b.len());
                let n = 1 + rng.below((b.len() - i).min(64));
                b.drain(i..i + n);
            }
            _ => {}
        }
    }
    b.truncate(max_len);
    b
}

/// Removes chunks of a failing input while it still fails, to make the dump readable.
fn minimise(reader: &'static str, parse: Parse, factor: usize, input: &[u8]) -> Vec<u8> {
    let mut cur = input.to_vec();
    let mut chunk = cur.len().div_ceil(2).max(1);
    let mut tries = 0;
    while tries < 4000 {
        let mut i = 0;
        let mut changed = false;
        while i < cur.len() && tries < 4000 {
            let mut cand = cur.clone();
            cand.drain(i..(i + chunk).min(cur.len()));
            tries += 1;
            if check(reader, parse, &cand, factor).is_some() {
                cur = cand;
                changed = true;
            } else {
                i += chunk;
            }
        }
        if chunk == 1 && !changed {
            break;
        }
        chunk = (chunk / 2).max(1);
    }
    cur
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// Fuzzes one reader; panics with the first failure found, its input dumped to a file.
fn fuzz(reader: &'static str, seeds: Vec<Vec<u8>>, factor: usize, parse: Parse) {
    install_quiet_hook();
    for s in &seeds {
        assert!(
            check(reader, parse, s, factor).is_none(),
            "{reader}: a seed itself fails"
        );
    }
    let iters = env_u64("INSCLR_FUZZ_ITERS", 100_000);
    let base = env_u64("INSCLR_FUZZ_SEED", 0);
    // A per-reader stream, so adding a reader does not change the others' inputs.
    let salt = reader.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, c| {
        (h ^ c as u64).wrapping_mul(0x100_0000_01b3)
    });
    let t = std::time::Instant::now();
    for i in 0..iters {
        let case = base.wrapping_add(i) ^ salt;
        let input = mutate(&mut Rng::new(case), &seeds);
        CASE.with(|c| c.set(case));
        if let Some(why) = check(reader, parse, &input, factor) {
            let dir = dump_dir();
            let full = dir.join(format!("{reader}-{case:016x}.bin"));
            let small = minimise(reader, parse, factor, &input);
            let min = dir.join(format!("{reader}-{case:016x}-min.bin"));
            std::fs::File::create(&full)
                .and_then(|mut f| f.write_all(&input))
                .expect("writing the failing input");
            std::fs::write(&min, &small).expect("writing the minimised input");
            let why_min = check(reader, parse, &small, factor).unwrap_or_default();
            panic!(
                "fuzz {reader}: case {i} (seed {case:#x}): {why}\n  input: {} ({} bytes)\n  minimised: {} ({} bytes): {why_min}",
                full.display(),
                input.len(),
                min.display(),
                small.len()
            );
        }
    }
    eprintln!(
        "fuzz {reader}: {iters} inputs in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

fn parse_npy(b: &[u8]) {
    let _ = npy::from_bytes::<f32>(b, "fuzz.npy");
    let _ = npy::from_bytes::<i64>(b, "fuzz.npy");
    let _ = npy::read_from::<f32, _>(&mut &b[..], "fuzz.npy");
}

fn parse_npz(b: &[u8]) {
    let _ = npy::read_npz_from::<i64, _>(std::io::Cursor::new(b), "fuzz.npz", "neighbor");
    let _ = npy::read_npz_from::<f32, _>(std::io::Cursor::new(b), "fuzz.npz", "similarity");
}

fn parse_safetensors(b: &[u8]) {
    let _ = safetensors::from_bytes(b);
}

fn parse_pth(b: &[u8]) {
    let _ = pth::read_bytes(b);
}

fn parse_pickle(b: &[u8]) {
    let _ = insclr::io::pickle::parse(b);
}

fn parse_gnd_pickle(b: &[u8]) {
    let _ = insclr::eval::gnd_pickle::from_bytes(b, "fuzz.pkl");
}

fn parse_config(b: &[u8]) {
    let text = String::from_utf8_lossy(b);
    let _ = insclr::train::config::Config::parse(&text, "fuzz.toml");
}

fn npy_bytes<T: npy::NpyElem>(shape: Vec<usize>, data: Vec<T>) -> Vec<u8> {
    let mut v = Vec::new();
    npy::write_to(&mut v, &Array::new(shape, data).unwrap()).unwrap();
    v
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("insclr-fuzz-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// A zip of `(name, bytes)` entries, each stored or deflated.
fn zip_of(entries: &[(&str, &[u8], bool)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    for &(name, data, deflate) in entries {
        let method = if deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let o = zip::write::SimpleFileOptions::default().compression_method(method);
        z.start_file(name, o).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
    buf.into_inner()
}

fn read_seed(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn fuzz_npy() {
    let seeds = vec![
        npy_bytes(vec![3, 2], vec![1.0f32, -2.0, 3.5, 0.0, 1e-7, 9.0]),
        npy_bytes(vec![4], vec![0i64, -1, 1 << 40, 7]),
        npy_bytes(vec![0, 5], Vec::<f32>::new()),
        npy_bytes(vec![], vec![2.5f32]),
    ];
    fuzz("npy", seeds, 64, parse_npy);
}

#[test]
fn fuzz_npz() {
    let f = Array::new(vec![3, 2], vec![1.0f32, -2.0, 3.5, 0.0, 1e-7, 9.0]).unwrap();
    let i = Array::new(vec![4], vec![0i64, -1, 1 << 40, 7]).unwrap();
    let p = tmp("seed.npz");
    npy::write_npz(
        &p,
        &[
            NpzEntry::I64("neighbor", &i),
            NpzEntry::F32("similarity", &f),
        ],
    )
    .unwrap();
    let deflated = zip_of(&[
        ("neighbor.npy", &npy_bytes(vec![4], i.data.clone()), true),
        (
            "similarity.npy",
            &npy_bytes(vec![3, 2], f.data.clone()),
            true,
        ),
    ]);
    let seeds = vec![read_seed(&p), deflated];
    fuzz("npz", seeds, npy::MAX_DEFLATE_RATIO as usize, parse_npz);
}

#[test]
fn fuzz_safetensors() {
    let t = vec![
        Tensor::new(
            "layer1.0.conv1.weight",
            vec![2, 1, 1, 3],
            TensorData::F32(vec![0.5, -1.0, 2.0, 3.25, -0.0, 1e-8]),
            SourceDType::F32,
        )
        .unwrap(),
        Tensor::new(
            "bn1.num_batches_tracked",
            vec![],
            TensorData::I64(vec![123456789012]),
            SourceDType::I64,
        )
        .unwrap(),
        Tensor::new(
            "empty",
            vec![0, 4],
            TensorData::F32(vec![]),
            SourceDType::F32,
        )
        .unwrap(),
    ];
    let meta = [("format".to_string(), "pt".to_string())].into();
    let seeds = vec![
        safetensors::to_bytes(&t, None).unwrap(),
        safetensors::to_bytes(&t[..1], Some(meta)).unwrap(),
    ];
    fuzz("safetensors", seeds, 64, parse_safetensors);
}

#[test]
fn fuzz_pth() {
    let zip = |deflate| {
        zip_of(&[
            ("ckpt/data.pkl", fx::TORCH_STATE_P2, deflate),
            ("ckpt/byteorder", b"little", false),
            ("ckpt/data/140001", fx::STORAGE_140001, deflate),
            ("ckpt/data/140002", fx::STORAGE_140002, false),
            ("ckpt/data/140003", fx::STORAGE_140003, false),
            ("ckpt/data/140004", fx::STORAGE_140004, false),
            ("ckpt/version", b"3\n", false),
        ])
    };
    let seeds = vec![
        zip(false),
        zip(true),
        fx::LEGACY_PTH.to_vec(),
        fx::LEGACY_CHECKPOINT_PTH.to_vec(),
    ];
    for s in &seeds {
        pth::read_bytes(s).expect("seed checkpoints read");
    }
    fuzz("pth", seeds, npy::MAX_DEFLATE_RATIO as usize, parse_pth);
}

fn gnd_seeds() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/revisited-numpy");
    ["gnd_p2.pkl", "gnd_p4.pkl", "gnd_p5.pkl"]
        .iter()
        .map(|n| read_seed(&dir.join(n)))
        .collect()
}

#[test]
fn fuzz_pickle() {
    let mut seeds: Vec<Vec<u8>> = [
        fx::BASIC_P0,
        fx::BASIC_P2,
        fx::BASIC_P4,
        fx::BASIC_P5,
        fx::BYTEARRAY_P5,
        fx::TORCH_STATE_P2,
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect();
    seeds.extend(gnd_seeds());
    fuzz("pickle", seeds, 64, parse_pickle);
}

#[test]
fn fuzz_gnd_pickle() {
    fuzz("gnd_pickle", gnd_seeds(), 64, parse_gnd_pickle);
}

#[test]
fn fuzz_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut seeds = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            seeds.push(read_seed(&p));
        }
    }
    assert!(!seeds.is_empty(), "no configs/*.toml seeds");
    fuzz("config", seeds, 64, parse_config);
}

/// Replays one dumped input: `INSCLR_FUZZ_REPLAY=<reader>:<file> cargo test --test
/// fuzz_readers replay -- --nocapture` prints the failure and where a too-large allocation
/// was made.
#[test]
fn replay() {
    let Ok(spec) = std::env::var("INSCLR_FUZZ_REPLAY") else {
        return;
    };
    let (reader, file) = spec
        .split_once(':')
        .expect("INSCLR_FUZZ_REPLAY=<reader>:<file>");
    let (parse, factor): (Parse, usize) = match reader {
        "npy" => (parse_npy, 64),
        "npz" => (parse_npz, npy::MAX_DEFLATE_RATIO as usize),
        "safetensors" => (parse_safetensors, 64),
        "pth" => (parse_pth, npy::MAX_DEFLATE_RATIO as usize),
        "pickle" => (parse_pickle, 64),
        "gnd_pickle" => (parse_gnd_pickle, 64),
        "config" => (parse_config, 64),
        o => panic!("unknown reader {o}"),
    };
    install_quiet_hook();
    let input = read_seed(Path::new(file));
    TRACE.with(|t| t.set(true));
    let r = check("replay", parse, &input, factor);
    TRACE.with(|t| t.set(false));
    eprintln!(
        "{reader} on {file}: {}",
        r.as_deref().unwrap_or("no failure")
    );
}

/// Deep nesting, which mutation rarely builds, must be an error and not a stack overflow
/// (an abort that catch_unwind cannot stop).
#[test]
fn nesting_bombs_are_errors() {
    let deep = |open: &str, n: usize| open.repeat(n);
    let toml = format!("A = {}", deep("[", 100_000));
    assert!(insclr::train::config::Config::parse(&toml, "deep.toml").is_err());
    let toml = format!("A = {}", deep("{ b = ", 100_000));
    assert!(insclr::train::config::Config::parse(&toml, "deep.toml").is_err());
    let json = format!("{{\"t\": {}", deep("[", 100_000));
    let mut st = (json.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(json.as_bytes());
    assert!(safetensors::from_bytes(&st).is_err());
    let mut pkl = b"\x80\x02".to_vec();
    pkl.extend(std::iter::repeat_n(b'(', 100_000));
    pkl.extend(std::iter::repeat_n(b't', 100_000));
    pkl.push(b'.');
    assert!(insclr::io::pickle::parse(&pkl).is_err());
    assert!(insclr::eval::gnd_pickle::from_bytes(&pkl, "deep.pkl").is_err());
}
