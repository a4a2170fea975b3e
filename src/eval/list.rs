//! The plain list protocol: any folder of images with a JSON ground truth
//! `{"imlist": [...], "qimlist": [...], "gnd": [{"ok": [...], "junk": [...], "bbx": [x1,y1,x2,y2]?}]}`
//! (paths relative to the dataset root, indices 0-based into `imlist`). It is scored with the
//! revisitop AP / mP@k of one protocol (positives = `ok`, ignored = `junk`), so small and
//! private sets use the same numbers as Oxford and Paris.

use super::revisited::{Gnd, QueryGnd};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Ground truth of one query of a list dataset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Positives: indices into `imlist`.
    pub ok: Vec<usize>,
    #[serde(default)]
    /// Ignored images: removed from the ranking before scoring.
    pub junk: Vec<usize>,
    #[serde(default)]
    /// Optional query crop (x1, y1, x2, y2) in pixels.
    pub bbx: Option<[f64; 4]>,
}

/// A list dataset's ground truth.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ListGnd {
    /// Free text: where the images come from and how the ground truth was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub about: Option<String>,
    /// Database image paths, relative to the dataset root.
    pub imlist: Vec<String>,
    /// Query image paths, relative to the dataset root.
    pub qimlist: Vec<String>,
    /// One entry per query.
    pub gnd: Vec<ListQuery>,
}

impl ListGnd {
    /// Parses the JSON text; `name` is used in errors.
    pub fn parse(text: &str, name: &str) -> Result<ListGnd> {
        let g: ListGnd = serde_json::from_str(text).with_context(|| {
            format!(
                "{name}: not a list ground truth; expected {{\"imlist\": [...], \"qimlist\": [...], \"gnd\": [{{\"ok\": [...], \"junk\": [...]}}]}}"
            )
        })?;
        g.as_revisited().validate(name)?;
        Ok(g)
    }

    /// Reads a ground-truth JSON file.
    pub fn read(path: &Path) -> Result<ListGnd> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading ground truth {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The same ground truth as a revisitop one with every positive "easy", so the Medium
    /// protocol's (ok, junk) is exactly this file's (ok, junk).
    pub fn as_revisited(&self) -> Gnd {
        Gnd {
            imlist: self.imlist.clone(),
            qimlist: self.qimlist.clone(),
            gnd: self
                .gnd
                .iter()
                .map(|q| QueryGnd {
                    easy: q.ok.clone(),
                    hard: Vec::new(),
                    junk: q.junk.clone(),
                    bbx: q.bbx,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::revisited::Protocol;

    #[test]
    fn parses_and_maps_ok_junk_to_medium() {
        let g = ListGnd::parse(
            r#"{"imlist": ["a.jpg", "b.jpg", "c.jpg"], "qimlist": ["q.jpg"],
                "gnd": [{"ok": [2], "junk": [0], "bbx": [1, 2, 30, 40]}]}"#,
            "gt.json",
        )
        .unwrap();
        let r = g.as_revisited();
        assert_eq!(Protocol::Medium.split(&r.gnd[0]), (vec![2], vec![0]));
        assert_eq!(r.gnd[0].bbx, Some([1.0, 2.0, 30.0, 40.0]));
        let bad = ListGnd::parse(
            r#"{"imlist": ["a.jpg"], "qimlist": ["q.jpg"], "gnd": [{"ok": [3]}]}"#,
            "gt.json",
        );
        assert!(format!("{:#}", bad.unwrap_err()).contains("database image 3"));
        let typo = ListGnd::parse(
            r#"{"imlist": ["a.jpg"], "qimlist": ["q.jpg"], "gnd": [{"ok": [0], "jnk": [0]}]}"#,
            "gt.json",
        );
        assert!(typo.is_err());
    }
}
