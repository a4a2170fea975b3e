//! Writing self-contained HTML pages (`search --html`, `report`): escaping, and links to image
//! files relative to the page, so a page and its images can move together.

use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

/// `text` safe in HTML element content and quoted attribute values.
pub fn html_escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&#39;"),
            _ => s.push(c),
        }
    }
    s
}

/// A relative file path as a URL path: every byte but unreserved characters and `/` is
/// percent-encoded, so `#`, `?`, `%` and spaces in file names do not end or change the URL.
pub fn url_path(path: &Path) -> String {
    #[cfg(unix)]
    let bytes = {
        use std::os::unix::ffi::OsStrExt;
        path.as_os_str().as_bytes().to_vec()
    };
    #[cfg(not(unix))]
    let bytes = path.to_string_lossy().replace('\\', "/").into_bytes();
    let mut s = String::with_capacity(bytes.len());
    for b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

/// `path` as an absolute path with symlinks resolved where it exists (so that it and the page's
/// folder are compared in the same terms), else made absolute lexically.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    path.canonicalize()
        .or_else(|_| std::path::absolute(path))
        .with_context(|| format!("resolving {}", path.display()))
}

/// `target` relative to the folder `base` (both absolute): `..` up to their common ancestor,
/// then down to the target.
pub fn relative_to(target: &Path, base: &Path) -> PathBuf {
    let t: Vec<Component> = target.components().collect();
    let b: Vec<Component> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == 0 {
        // Different roots (drives): no relative path exists.
        return target.to_path_buf();
    }
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// The `src` / `href` of file `target` in a page to be written at `page`: relative to the
/// page's folder, URL-encoded and HTML-escaped.
pub fn href(target: &Path, page: &Path) -> Result<String> {
    let dir = page.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = absolute(dir.unwrap_or(Path::new(".")))?;
    Ok(html_escape(&url_path(&relative_to(
        &absolute(target)?,
        &dir,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_walk_up_to_the_common_folder() {
        let r = relative_to(Path::new("/a/b/img/x.jpg"), Path::new("/a/b/out"));
        assert_eq!(r, PathBuf::from("../img/x.jpg"));
        let r = relative_to(Path::new("/a/b/x.jpg"), Path::new("/a/b"));
        assert_eq!(r, PathBuf::from("x.jpg"));
        let r = relative_to(Path::new("/x.jpg"), Path::new("/a/b"));
        assert_eq!(r, PathBuf::from("../../x.jpg"));
    }

    #[test]
    fn names_are_escaped_for_html_and_urls() {
        assert_eq!(html_escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
        assert_eq!(
            url_path(Path::new("../a b/#1?.jpg")),
            "../a%20b/%231%3F.jpg"
        );
        assert_eq!(url_path(Path::new("é.jpg")), "%C3%A9.jpg");
    }
}
