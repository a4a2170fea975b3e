//! The GLDv2 file layout (spec 2.1): images at `<dir>/<a>/<b>/<c>/<id>.jpg`, and the training
//! set of `train_clean.csv` (`landmark_id,images`, the images space-separated), where landmarks
//! with fewer than [`MIN_LANDMARK_IMAGES`] images are dropped and the rest are listed in file
//! order. The position in that list is the dataset index every pool and bank row uses.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The original's filter: a landmark with fewer images is left out of the training set.
pub const MIN_LANDMARK_IMAGES: usize = 15;

/// The header line of `train_clean.csv`, by which a training list is known to be one.
pub const TRAIN_CLEAN_HEADER: &str = "landmark_id,images";

/// Where GLDv2 keeps an image: `<dir>/<a>/<b>/<c>/<id>.jpg` with a, b, c the id's first chars.
pub fn image_path(dir: &Path, id: &str) -> PathBuf {
    let mut p = dir.to_path_buf();
    for ch in id.chars().take(3) {
        p.push(ch.to_string());
    }
    p.push(format!("{id}.jpg"));
    p
}

/// One training image of `train_clean.csv`: its id and its landmark (never used for training).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainImage {
    pub id: String,
    pub landmark: String,
}

/// Parses the text of `train_clean.csv` into the training set in dataset order; `name` is used
/// in errors.
pub fn parse_train_clean(text: &str, name: &str) -> Result<Vec<TrainImage>> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim_end_matches('\r').trim() == TRAIN_CLEAN_HEADER => {}
        Some((_, h)) => bail!("{name}:1: expected the header `{TRAIN_CLEAN_HEADER}`, got '{h}'"),
        None => bail!("{name} is empty"),
    }
    let mut out = Vec::new();
    for (ln, line) in lines {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((landmark, images)) = line.split_once(',') else {
            bail!(
                "{name}:{}: expected `landmark_id,images`, got '{line}'",
                ln + 1
            );
        };
        let ids: Vec<&str> = images.split_whitespace().collect();
        if let Some(bad) = ids
            .iter()
            .find(|id| id.len() < 3 || id.contains(['/', '\\']))
        {
            bail!(
                "{name}:{}: image id '{bad}' is not a GLDv2 id (hex characters, at least 3)",
                ln + 1
            );
        }
        if ids.len() < MIN_LANDMARK_IMAGES {
            continue;
        }
        out.extend(ids.iter().map(|id| TrainImage {
            id: id.to_string(),
            landmark: landmark.trim().to_string(),
        }));
    }
    if out.is_empty() {
        bail!("{name}: no landmark has {MIN_LANDMARK_IMAGES} or more images, so the training set is empty");
    }
    Ok(out)
}

/// Reads `train_clean.csv` ([`parse_train_clean`]).
pub fn read_train_clean(path: &Path) -> Result<Vec<TrainImage>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the GLDv2 training list {}", path.display()))?;
    parse_train_clean(&text, &path.display().to_string())
}

/// True when the file starts with `train_clean.csv`'s header.
pub fn is_train_clean(path: &Path) -> bool {
    use std::io::BufRead;
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let mut first = String::new();
    std::io::BufReader::new(f).read_line(&mut first).is_ok()
        && first.trim_end_matches(['\r', '\n']).trim() == TRAIN_CLEAN_HEADER
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_clean_keeps_landmarks_of_15_or_more_images_in_file_order() {
        let ids = |p: &str, n: usize| -> String {
            (0..n)
                .map(|i| format!("{p}{i:03x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let text = format!(
            "landmark_id,images\r\n7,{}\r\n3,{}\n\n9,{}\n",
            ids("b", 15),
            ids("a", 14),
            ids("c", 16)
        );
        let set = parse_train_clean(&text, "t.csv").unwrap();
        assert_eq!(set.len(), 31);
        assert_eq!(set[0].id, "b000");
        assert_eq!(set[14].id, "b00e");
        assert_eq!(
            set[15],
            TrainImage {
                id: "c000".into(),
                landmark: "9".into()
            }
        );
        assert!(set.iter().all(|t| t.landmark != "3"));
        let e = parse_train_clean("id,images\n", "t.csv").unwrap_err();
        assert!(e.to_string().contains("t.csv:1"), "{e}");
        let e = parse_train_clean(&format!("landmark_id,images\n1,{}\n", ids("a", 3)), "t.csv")
            .unwrap_err();
        assert!(e.to_string().contains("no landmark has 15"), "{e}");
        let e = parse_train_clean("landmark_id,images\n1,../etc\n", "t.csv").unwrap_err();
        assert!(e.to_string().contains("t.csv:2"), "{e}");
    }

    #[test]
    fn image_paths_nest_by_the_first_three_characters() {
        assert_eq!(
            image_path(Path::new("idx"), "0123abcd"),
            Path::new("idx/0/1/2/0123abcd.jpg")
        );
    }
}
