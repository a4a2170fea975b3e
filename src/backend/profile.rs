//! NVTX ranges around the phases of a training step, for Nsight Systems
//! (`scripts/profile.sh`). The NVTX library (`libnvToolsExt`) is looked for once, at run time:
//! without it, or with `INSCLR_NVTX=0`, a range is an empty guard and costs nothing.

use std::sync::OnceLock;

/// An NVTX range, popped when dropped.
pub struct Range {
    _guard: Option<cudarc::nvtx::safe::Range>,
}

/// True when ranges are emitted: the library is present and `INSCLR_NVTX` is not `0`.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        // SAFETY: only tries to dlopen the library; no NVTX call is made.
        std::env::var("INSCLR_NVTX").map_or(true, |v| v != "0")
            && unsafe { cudarc::nvtx::sys::is_culib_present() }
    })
}

/// Opens a range named `name` (on the calling thread) until the guard is dropped.
pub fn range(name: &str) -> Range {
    Range {
        _guard: enabled().then(|| cudarc::nvtx::safe::scoped_range(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_nest_and_need_no_library() {
        // On a machine without libnvToolsExt (CI) this checks that nothing is loaded or
        // called; with it, that nested ranges push and pop without error.
        let outer = range("outer");
        {
            let _inner = range("inner");
        }
        assert_eq!(outer._guard.is_some(), enabled());
    }
}
