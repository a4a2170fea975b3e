//! The bank family (kernels/bank.cu) against its CPU twin, on the GPU or the emulated GPU: row
//! scatters and gathers by index, both dtypes, aligned and unaligned rows, and the checks that
//! keep an index list from writing out of bounds.

mod common;

use common::{download_f32, kernel_device, matches_cpu, upload_as, FLOAT_DTYPES};
use insclr::backend::CopyRows;
use insclr::rng::Rng;

#[test]
fn kernel_copy_rows_matches_cpu() {
    let dev = kernel_device("kernel_copy_rows_matches_cpu");
    for (dt, _) in FLOAT_DTYPES {
        // Row lengths: 1 and 3 (no 16-byte moves), 8 (16-byte moves for both dtypes), a
        // descriptor's 2048, and an odd one past a warp.
        for dim in [1usize, 3, 8, 33, 2048] {
            for count in [0usize, 1, 37] {
                let (ns, nd) = (50usize, 64usize);
                let what = format!("copy_rows {dt} dim={dim} count={count}");
                // Row copies are exact: any difference at all is a wrong row.
                matches_cpu(&what, &dev, f64::MIN_POSITIVE, |be| {
                    let mut rng = Rng::new(51 + (dim * 7 + count) as u64);
                    let src = upload_as(be, &rng.vec_f32(ns * dim, -1.0, 1.0), dt)?;
                    let mut dst = upload_as(be, &rng.vec_f32(nd * dim, -1.0, 1.0), dt)?;
                    // Distinct destinations in a scrambled order; sources repeat.
                    let mut dst_idx: Vec<usize> = (0..nd).collect();
                    for i in (1..nd).rev() {
                        dst_idx.swap(i, rng.below(i + 1));
                    }
                    dst_idx.truncate(count);
                    let src_idx: Vec<usize> = (0..count).map(|_| rng.below(ns)).collect();
                    be.copy_rows(&src, &mut dst, &src_idx, &dst_idx, CopyRows { dim })?;
                    Ok(vec![("dst".into(), download_f32(be, &dst)?)])
                });
            }
        }
    }
}

#[test]
fn bad_row_indices_are_errors_before_any_launch() {
    let dev = kernel_device("bad_row_indices_are_errors_before_any_launch");
    let be: &dyn insclr::backend::Backend = &dev;
    let src = be.upload(&[1.0f32; 8]).unwrap();
    let mut dst = be.upload(&[0.0f32; 6]).unwrap();
    let rows = CopyRows { dim: 2 };
    let err = |r: anyhow::Result<()>| format!("{:#}", r.unwrap_err());
    assert!(err(be.copy_rows(&src, &mut dst, &[4], &[0], rows)).contains("source row 4"));
    assert!(err(be.copy_rows(&src, &mut dst, &[0], &[3], rows)).contains("destination row 3"));
    assert!(err(be.copy_rows(&src, &mut dst, &[0, 1], &[2, 2], rows)).contains("written twice"));
    assert!(err(be.copy_rows(&src, &mut dst, &[0], &[], rows)).contains("1 source rows for 0"));
    assert!(
        err(be.copy_rows(&src, &mut dst, &[], &[], CopyRows { dim: 3 })).contains("whole rows")
    );
    // Nothing was written by the refused calls.
    assert_eq!(be.download::<f32>(&dst).unwrap(), vec![0.0; 6]);
}
