//! The README and the documents under `docs/`, checked where they can be without running their
//! commands whole (issue 28): the README's commands find the binary wherever cargo builds it,
//! every script and repository path they name exists, every relative link (and its `#section`)
//! resolves, and every `insclr-cu <command> --flag` example names a command and flags that the
//! binary has. A newcomer's first commands fail here rather than on their machine.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use regex::Regex;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and docs/*.md: the text whose commands and examples are checked.
fn user_docs() -> Vec<PathBuf> {
    let mut docs = vec![root().join("README.md")];
    docs.extend(md_files("docs"));
    docs
}

/// Every Markdown file whose links are checked: the user's documents, CONTRIBUTING.md and the
/// dated records in bench_results/ (which link into docs/).
fn linked_docs() -> Vec<PathBuf> {
    let mut docs = user_docs();
    docs.push(root().join("CONTRIBUTING.md"));
    docs.extend(md_files("bench_results"));
    docs
}

fn md_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("reading {dir}/: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.sort();
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A Markdown text apart: the text outside fenced blocks (each fenced line blanked, so that
/// line numbers and paragraphs stay) and the fenced blocks' lines.
struct Parts {
    outside: String,
    blocks: Vec<Vec<String>>,
}

fn parts(text: &str) -> Parts {
    let (mut outside, mut blocks, mut block) = (Vec::new(), Vec::new(), None::<Vec<String>>);
    for line in text.lines() {
        if line.starts_with("```") {
            match block.take() {
                Some(b) => blocks.push(b),
                None => block = Some(Vec::new()),
            }
            outside.push("");
        } else if let Some(b) = block.as_mut() {
            b.push(line.to_string());
            outside.push("");
        } else {
            outside.push(line);
        }
    }
    Parts {
        outside: outside.join("\n"),
        blocks,
    }
}

/// The commands of fenced blocks, one string each: `# comments` dropped, a line ending in `\`
/// joined with the next, and an indented line joined with the command above it (the command
/// synopsis continues its long lines that way; its comment lines are indented `#` lines).
fn fenced_commands(blocks: &[Vec<String>]) -> Vec<String> {
    let comment = Regex::new(r"\s#.*$").unwrap();
    let mut cmds: Vec<String> = Vec::new();
    for block in blocks {
        let mut continued = false;
        for line in block {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continued = false;
                continue;
            }
            let body = comment.replace(line, "");
            let body = body.trim_end();
            let (body, more) = match body.strip_suffix('\\') {
                Some(b) => (b.trim(), true),
                None => (body.trim(), false),
            };
            let indented = line.starts_with(char::is_whitespace);
            match cmds.last_mut() {
                Some(last) if continued || indented => {
                    last.push(' ');
                    last.push_str(body);
                }
                _ => cmds.push(body.to_string()),
            }
            continued = more;
        }
    }
    cmds
}

/// Inline code spans outside fenced blocks, whitespace collapsed (a span may break a line).
fn code_spans(outside: &str) -> Vec<String> {
    let span = Regex::new(r"`([^`]+)`").unwrap();
    span.captures_iter(outside)
        .map(|c| c[1].split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// A command's words, less the `NAME=value` environment settings in front of its program.
fn program_words(cmd: &str) -> Vec<&str> {
    let env = Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*=").unwrap();
    cmd.split_whitespace()
        .skip_while(|w| env.is_match(w))
        .collect()
}

/// What the binary has: its commands with the long flags each `--help` lists, and the
/// options before the command (with whether each takes a value).
struct Cli {
    commands: BTreeMap<String, BTreeSet<String>>,
    global: BTreeMap<String, bool>,
}

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_insclr-cu"))
        .args(args)
        .output()
        .expect("running insclr-cu --help");
    assert!(out.status.success(), "insclr-cu {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn cli() -> &'static Cli {
    static CLI: OnceLock<Cli> = OnceLock::new();
    CLI.get_or_init(|| {
        let top = help(&["--help"]);
        let option = Regex::new(r"(?m)^\s+(?:-\w, )?(--[A-Za-z0-9-]+)( <)?").unwrap();
        let global = option
            .captures_iter(&top)
            .map(|c| (c[1].to_string(), c.get(2).is_some()))
            .collect();
        let listed = top
            .split("Commands:")
            .nth(1)
            .and_then(|s| s.split("\n\n").next())
            .expect("a Commands: section in insclr-cu --help");
        let commands = listed
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| *c != "help")
            .map(|c| {
                let flags = option
                    .captures_iter(&help(&[c, "--help"]))
                    .map(|f| f[1].to_string())
                    .collect();
                (c.to_string(), flags)
            })
            .collect::<BTreeMap<_, _>>();
        assert!(
            commands.len() >= 5,
            "commands read from --help: {commands:?}"
        );
        Cli { commands, global }
    })
}

/// The binary's arguments in a command or code span, when it runs the binary: after a word
/// `insclr-cu` (or a path ending in it), or after `cargo run ... --`. A code span that starts
/// with a command's name and has a flag (`pool --feats f.npy`) is an example too.
fn binary_args<'a>(words: &[&'a str], span: bool) -> Option<Vec<&'a str>> {
    for (i, w) in words.iter().enumerate() {
        if *w == "insclr-cu" || w.ends_with("/insclr-cu") {
            return Some(words[i + 1..].to_vec());
        }
        if *w == "cargo" && words.get(i + 1) == Some(&"run") {
            let dashes = words[i + 2..].iter().position(|w| *w == "--")?;
            return Some(words[i + 3 + dashes..].to_vec());
        }
    }
    let first = words.first()?;
    (span && cli().commands.contains_key(*first) && words.iter().any(|w| w.starts_with("--")))
        .then(|| words.to_vec())
}

/// Checks the binary's arguments of one example: the options before the command, the command,
/// and every `--flag` after it (alternatives as in `--json | --html` or `--db-feats/--query-feats`
/// each). Returns the command named, if any (`<command>` in the synopsis names none).
fn check_args(args: &[&str]) -> Result<Option<String>, String> {
    let cli = cli();
    let words: Vec<&str> = args
        .iter()
        .map(|w| w.trim_matches(|c| "[](),;:'\"".contains(c)))
        .collect();
    let mut i = 0;
    while let Some(w) = words.get(i).filter(|w| w.starts_with("--")) {
        let name = w.split('=').next().unwrap();
        let takes_value = *cli
            .global
            .get(name)
            .ok_or_else(|| format!("insclr-cu has no option {name} before its command"))?;
        i += if takes_value && !w.contains('=') {
            2
        } else {
            1
        };
    }
    let Some(command) = words
        .get(i)
        .filter(|w| !w.is_empty() && !w.starts_with('<'))
    else {
        return Ok(None);
    };
    let flags = cli.commands.get(*command).ok_or_else(|| {
        format!(
            "insclr-cu has no command `{command}` (it has {:?})",
            cli.commands.keys().collect::<Vec<_>>()
        )
    })?;
    for w in &words[i + 1..] {
        for part in w.split(['|', '/']) {
            if part.len() > 2 && part.starts_with("--") {
                let name = part.split('=').next().unwrap();
                if name != "--help" && !flags.contains(name) {
                    return Err(format!(
                        "`insclr-cu {command}` has no flag {name} (it has {flags:?})"
                    ));
                }
            }
        }
    }
    Ok(Some(command.to_string()))
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings (a repeated heading gets `-1`, `-2`, ...).
fn anchors(path: &Path) -> BTreeSet<String> {
    let heading = Regex::new(r"(?m)^#+ (.*)$").unwrap();
    let mut seen = BTreeMap::<String, usize>::new();
    heading
        .captures_iter(&parts(&read(path)).outside)
        .map(|c| {
            let s = slug(&c[1]);
            let n = seen.entry(s.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                s
            } else {
                format!("{s}-{}", *n - 1)
            }
        })
        .collect()
}

/// The README's commands, run the way its reader runs them but with CARGO_TARGET_DIR set
/// (the newcomer's trip-up of issue 28: `target/release/insclr-cu` did not exist there). Each
/// `scripts/demo.sh ...` command runs with `--dry-run`, which prints the commands it would run
/// and fetches, builds and runs nothing: the binary must be the one under CARGO_TARGET_DIR, and
/// each of its command lines must name a command and flags the binary has.
#[test]
fn readme_commands_work_with_cargo_target_dir() {
    let readme = root().join("README.md");
    let commands = fenced_commands(&parts(&read(&readme)).blocks);
    let tmp = std::env::temp_dir().join(format!("insclr-readme-{}", std::process::id()));
    let target = tmp.join("target");
    let bin = format!("{}/release/insclr-cu", target.display());
    let mut demo_modes = BTreeSet::new();
    for cmd in &commands {
        let words = program_words(cmd);
        let Some(program) = words.first() else {
            continue;
        };
        assert!(
            !program.starts_with("target/") && !program.contains("/target/"),
            "README.md: `{cmd}` runs from cargo's default target folder, which CARGO_TARGET_DIR \
             moves: run it through scripts/demo.sh (it finds the binary) or cargo run"
        );
        if program.starts_with("scripts/") {
            let script = root().join(program);
            let mode = std::fs::metadata(&script)
                .unwrap_or_else(|e| panic!("README.md: `{cmd}`: {program}: {e}"))
                .permissions();
            assert!(
                mode.mode() & 0o111 != 0,
                "README.md: `{cmd}`: {program} is not executable"
            );
        }
        if *program != "scripts/demo.sh" {
            continue;
        }
        let out = Command::new("timeout")
            .args(["60", "bash", "scripts/demo.sh"])
            .args(&words[1..])
            .arg("--dry-run")
            .current_dir(root())
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("CARGO_BUILD_TARGET_DIR")
            .output()
            .expect("running bash scripts/demo.sh --dry-run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "`{cmd} --dry-run`: {:?}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let runs: Vec<&str> = stdout
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|p| p.ends_with("/insclr-cu"))
            })
            .collect();
        assert!(
            !runs.is_empty(),
            "`{cmd} --dry-run` runs no insclr-cu:\n{stdout}"
        );
        for run in &runs {
            assert!(
                run.starts_with(&format!("{bin} ")),
                "`{cmd}` with CARGO_TARGET_DIR={}: runs `{run}`, not {bin}",
                target.display()
            );
            let args: Vec<&str> = run.split_whitespace().skip(1).collect();
            if let Err(e) = check_args(&args) {
                panic!("`{cmd}` would run `{run}`: {e}");
            }
        }
        if words.get(1) == Some(&"pipeline") {
            let want = format!("{bin} pipeline --config configs/demo-pipeline.toml");
            assert!(
                runs.contains(&want.as_str()),
                "`{cmd} --dry-run` does not run `{want}`:\n{stdout}"
            );
        }
        demo_modes.insert(words[1..].join(" "));
    }
    // The demo and its whole recipe are the README's commands: neither may fall back to a
    // command this test does not run.
    for mode in ["", "pipeline"] {
        assert!(
            demo_modes.contains(mode),
            "README.md has no fenced `scripts/demo.sh {mode}` (it has {commands:?})"
        );
    }
    assert!(
        !target.exists(),
        "the dry runs wrote into CARGO_TARGET_DIR ({})",
        target.display()
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Every relative link and image in the Markdown files points to a file that exists, and a
/// `#section` to a heading of that file. Links inside code are not links.
#[test]
fn links_point_to_files_and_sections() {
    let link = Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let code = Regex::new(r"`[^`]+`").unwrap();
    let scheme = Regex::new(r"^[a-z]+:").unwrap();
    let mut checked = 0;
    let mut broken = Vec::new();
    for doc in linked_docs() {
        let text = parts(&read(&doc)).outside;
        let text = code.replace_all(&text, "");
        for c in link.captures_iter(&text) {
            let href = &c[1];
            if scheme.is_match(href) {
                continue; // https:, mailto:
            }
            checked += 1;
            let (path, section) = href.split_once('#').unwrap_or((href, ""));
            let target = if path.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(path)
            };
            if !target.exists() {
                broken.push(format!("{}: ({href}): no {}", rel(&doc), rel(&target)));
            } else if !section.is_empty()
                && target.extension().is_some_and(|x| x == "md")
                && !anchors(&target).contains(section)
            {
                broken.push(format!(
                    "{}: ({href}): {} has no heading #{section}",
                    rel(&doc),
                    rel(&target)
                ));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(
        checked >= 20,
        "only {checked} links found: is the parser broken?"
    );
}

/// Every script the README and docs name exists, and every repository path they give in code
/// (`configs/...`, `tests/...`, `kernels/...`) is there: a moved file must move its mentions.
/// Paths with placeholders (`configs/X.toml`, `kernels/*.cu`, `src/backend/{cpu,cuda}/`) and
/// the outputs under data/ are not checked.
#[test]
fn scripts_and_paths_in_the_docs_exist() {
    let script = Regex::new(r"(?:^|[^\w./-])(scripts/[\w.-]+)").unwrap();
    let path = Regex::new(
        r"^(?:configs|scripts|tests|bench_results|kernels|src|benches|docs|build)/[a-z0-9_./-]*$",
    )
    .unwrap();
    let mut missing = BTreeSet::new();
    let mut checked = 0;
    for doc in user_docs() {
        let text = read(&doc);
        for c in script.captures_iter(&text) {
            checked += 1;
            let named = c[1].trim_end_matches('.'); // the end of a sentence
            if !root().join(named).is_file() {
                missing.insert(format!("{}: {named}", rel(&doc)));
            }
        }
        let p = parts(&text);
        for example in fenced_commands(&p.blocks)
            .into_iter()
            .chain(code_spans(&p.outside))
        {
            for word in example.split_whitespace() {
                let word = word.trim_matches(|c| "[](),;:'\"".contains(c));
                if path.is_match(word) {
                    checked += 1;
                    if !root().join(word).exists() {
                        missing.insert(format!("{}: {word}", rel(&doc)));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "named in the docs but not in the repository:\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
    assert!(
        checked >= 50,
        "only {checked} paths found: is the parser broken?"
    );
}

/// Every `insclr-cu <command> --flag ...` example in the README and docs (fenced or inline,
/// and inline `pool --feats ...`) names a command and flags the binary's `--help` lists, and
/// the docs show every command the binary has.
#[test]
fn command_examples_name_real_commands_and_flags() {
    let mut wrong = Vec::new();
    let mut shown = BTreeSet::new();
    let mut examples = 0;
    for doc in user_docs() {
        let p = parts(&read(&doc));
        let fenced = fenced_commands(&p.blocks).into_iter().map(|c| (c, false));
        let inline = code_spans(&p.outside).into_iter().map(|c| (c, true));
        for (example, span) in fenced.chain(inline) {
            let words: Vec<&str> = example.split_whitespace().collect();
            let Some(args) = binary_args(&words, span) else {
                continue;
            };
            examples += 1;
            match check_args(&args) {
                Ok(command) => shown.extend(command),
                Err(e) => wrong.push(format!("{}: `{example}`: {e}", rel(&doc))),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(
        examples >= 20,
        "only {examples} examples found: is the parser broken?"
    );
    let unshown: Vec<_> = cli()
        .commands
        .keys()
        .filter(|c| !shown.contains(*c))
        .collect();
    assert!(
        unshown.is_empty(),
        "no example in the README or docs shows insclr-cu {unshown:?}"
    );
}
