//! `hotspare run --config FILE` and `hotspare standby --config FILE`: a TOML
//! file whose keys are the subcommand's long options (`interval-ms = 20`,
//! `shadow = ["b:7000", "c:7000"]`, `verify-memory = true`). The file is
//! turned into arguments placed before the command line's, and both go
//! through the same parser, so the file covers every option and never
//! drifts from the CLI; an option given on the command line wins. An
//! error names the file, the line and the key.

use std::ffi::OsString;
use std::path::Path;

use clap::error::{ContextKind, ContextValue};
use clap::Parser;

/// Subcommands that take `--config` this way (`agent` has its own).
const WITH_CONFIG: [&str; 2] = ["run", "standby"];

/// The 1-based line of top-level `key` in `text` (0: not found).
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let t = l.trim();
            t.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .is_some_and(|h| h.trim() == key)
                || (t.contains('=')
                    && t.split('=')
                        .next()
                        .is_some_and(|k| k.trim().trim_matches('"') == key))
        })
        .map_or(0, |i| i + 1)
}

/// One TOML value as arguments for `--key`.
fn args_of(key: &str, v: &toml::Value, out: &mut Vec<OsString>) -> Result<(), String> {
    let flag = format!("--{key}");
    match v {
        toml::Value::Boolean(true) => out.push(flag.into()),
        toml::Value::Boolean(false) => {}
        toml::Value::Integer(i) => out.extend([flag.into(), i.to_string().into()]),
        toml::Value::Float(f) => out.extend([flag.into(), f.to_string().into()]),
        toml::Value::String(s) => out.extend([flag.into(), s.into()]),
        toml::Value::Array(items) => {
            for i in items {
                if matches!(i, toml::Value::Array(_) | toml::Value::Table(_)) {
                    return Err("a list of lists or tables is not an option's value".into());
                }
                args_of(key, i, out)?;
            }
        }
        toml::Value::Table(_) => {
            return Err("a table is not an option (keys are long option names)".into())
        }
        toml::Value::Datetime(_) => return Err("a date is not an option's value".into()),
    }
    Ok(())
}

/// Expands `--config FILE` of `run` or `standby` in `argv`; other command
/// lines come back unchanged.
pub fn expand(argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let sub = argv.get(1).and_then(|s| s.to_str()).unwrap_or("");
    if !WITH_CONFIG.contains(&sub) {
        return Ok(argv);
    }
    let Some(at) = argv.iter().position(|a| a == "--config") else {
        return Ok(argv);
    };
    let path = argv.get(at + 1).ok_or("--config needs a file")?.clone();
    let path = Path::new(&path);
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        format!("{}: {}", path.display(), e.to_string().trim_end())
    })?;
    let mut rest: Vec<OsString> = argv[..at].to_vec();
    rest.extend_from_slice(&argv[at + 2..]);
    let given = |key: &str| {
        rest[2..].iter().any(|a| {
            a.to_str()
                .is_some_and(|a| a == format!("--{key}") || a.starts_with(&format!("--{key}=")))
        })
    };
    let mut from_file: Vec<OsString> = Vec::new();
    for (key, v) in &table {
        if key == "config" {
            return Err(format!(
                "{}:{}: config: a config cannot name another",
                path.display(),
                line_of(&text, key)
            ));
        }
        if given(key) {
            continue;
        }
        args_of(key, v, &mut from_file)
            .map_err(|why| format!("{}:{}: {key}: {why}", path.display(), line_of(&text, key)))?;
    }
    let mut out: Vec<OsString> = rest[..2].to_vec();
    out.extend(from_file);
    out.extend_from_slice(&rest[2..]);
    // Parse once here, so an error can name the file's line.
    if let Err(e) = crate::Cli::try_parse_from(&out) {
        if let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) {
            let key = arg
                .trim_start_matches('-')
                .split([' ', '='])
                .next()
                .unwrap_or("");
            if table.contains_key(key) && !given(key) {
                let msg = e.render().to_string();
                let first = msg
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("error: ");
                return Err(format!(
                    "{}:{}: {key}: {first}",
                    path.display(),
                    line_of(&text, key)
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cfg: &str, extra: &[&str]) -> Result<Vec<String>, String> {
        let dir = std::env::temp_dir().join(format!("hs-cfg-{}-{}", std::process::id(), cfg.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("vm.toml");
        std::fs::write(&f, cfg).unwrap();
        let mut argv: Vec<OsString> = vec![
            "hotspare".into(),
            "run".into(),
            "--config".into(),
            f.clone().into(),
        ];
        argv.extend(extra.iter().map(OsString::from));
        let r = expand(argv).map(|v| v.into_iter().map(|a| a.into_string().unwrap()).collect());
        std::fs::remove_dir_all(&dir).unwrap();
        r
    }

    #[test]
    fn keys_become_options_and_the_command_line_wins() {
        let a = run(
            "kernel = \"/g.elf\"\ninterval-ms = 20\nshadow = [\"b:7\", \"c:7\"]\nverify-memory = true\npin = false\n",
            &["--interval-ms", "30"],
        )
        .unwrap();
        assert_eq!(
            a,
            [
                "hotspare",
                "run",
                "--kernel",
                "/g.elf",
                "--shadow",
                "b:7",
                "--shadow",
                "c:7",
                "--verify-memory",
                "--interval-ms",
                "30"
            ]
        );
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let e = run("kernel = \"/g\"\n\ninterval-ms = \"soon\"\n", &[]).unwrap_err();
        assert!(
            e.contains("vm.toml:3: interval-ms:") && e.contains("soon"),
            "{e}"
        );
        let e = run("kernel = \"/g\"\nno-such = 1\n", &[]).unwrap_err();
        assert!(e.contains("vm.toml:2: no-such:"), "{e}");
        let e = run("kernel = \"/g\"\n[disk]\nx = 1\n", &[]).unwrap_err();
        assert!(
            e.contains("vm.toml:2: disk: a table is not an option"),
            "{e}"
        );
        let e = run("kernel = \"/g\"\ninterval-ms = \n", &[]).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }
}
