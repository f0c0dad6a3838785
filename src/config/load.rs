//! File → [`Config`]: YAML, `${VAR}` substitution, `*_file` secrets, typed structs, validation.
//! Collects every error it can, each with its key path (`upstream.connect_timeout`).

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::Config;

/// Secret keys that have a `<key>_file` twin reading the value from a file.
const FILE_TWINS: &[&str] = &[
    "admin_token",
    "secret",
    "secret_base64",
    "private_key",
    "private_key_base64",
    "service_account",
    "keys",
    "url",
    "pin",
];

/// Stop collecting after this many errors: the rest are usually echoes of the first.
const MAX_ERRORS: usize = 50;

/// One problem in the config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Key path such as `routes[0].tokens.token.ttl`; empty for the whole file.
    pub path: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { path: path.into(), reason: reason.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// Every error found in one config file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors {
    pub origin: String,
    pub errors: Vec<FieldError>,
    /// The files the load read or tried to read besides the config file itself, so that a
    /// reload can watch for the one that was missing.
    pub files: Vec<PathBuf>,
}

impl ConfigErrors {
    pub fn new(origin: impl Into<String>, errors: Vec<FieldError>) -> Self {
        Self { origin: origin.into(), errors, files: Vec::new() }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {e}", self.origin)?;
        }
        Ok(())
    }
}

/// A loaded, validated config, where it came from, and every other file it was read from.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    /// The config file, when it came from one (a reload reads it again).
    pub path: Option<PathBuf>,
    /// Files besides the config file that went into it (`*_file` secrets, TLS material,
    /// public keys): a change to any of them is a change of config.
    pub files: Vec<PathBuf>,
    /// SHA-256 of the config text and of those files' contents, hex: which config this is.
    pub digest: String,
}

/// Loads and validates the config file at `path`.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::new(origin.clone(), vec![FieldError::new("", format!("cannot read: {e}"))]))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut loaded = load_str(&text, &origin, base)?;
    loaded.path = Some(path.to_path_buf());
    Ok(loaded)
}

/// Loads and validates config text; relative `*_file` paths are resolved against `base`.
pub fn load_str(text: &str, origin: &str, base: &Path) -> Result<Loaded, ConfigErrors> {
    let mut files = Vec::new();
    let result = parse(text, base, &mut files);
    match result {
        Ok(config) => {
            let digest = digest(text.as_bytes(), &files);
            Ok(Loaded { config, path: None, files, digest })
        }
        Err(errors) => Err(ConfigErrors { origin: origin.to_owned(), errors, files }),
    }
}

/// YAML → substitution → `*_file` secrets → typed structs → paths resolved → validation.
/// `files` receives every file read or tried.
fn parse(text: &str, base: &Path, files: &mut Vec<PathBuf>) -> Result<Config, Vec<FieldError>> {
    let mut tree: Value =
        serde_saphyr::from_str(text).map_err(|e| vec![FieldError::new("", format!("invalid YAML: {e}"))])?;
    if tree.is_null() {
        tree = Value::Object(Map::new());
    }
    let mut errors = Vec::new();
    substitute_tree(&mut tree, &mut String::new(), &mut errors);
    read_file_twins(&mut tree, &mut String::new(), base, files, &mut errors);
    let Some(mut config) = deserialize_collecting(tree, &mut errors) else {
        return Err(errors);
    };
    super::validate::resolve_paths(&mut config, base);
    files.extend(super::validate::referenced_files(&config));
    if errors.is_empty() {
        errors.extend(super::validate::validate(&config));
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

/// SHA-256, hex, of `text` and of each file's content in order (a missing file counts as
/// such): the same inputs give the same digest on every replica.
pub fn digest(text: &[u8], files: &[PathBuf]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(text);
    for file in files {
        ctx.update(&[0]);
        ctx.update(file.as_os_str().as_encoded_bytes());
        match std::fs::read(file) {
            Ok(content) => {
                ctx.update(&[1]);
                ctx.update(&(content.len() as u64).to_be_bytes());
                ctx.update(&content);
            }
            Err(_) => ctx.update(&[2]),
        }
    }
    ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string; `$${` is a literal `${`.
fn substitute_tree(v: &mut Value, path: &mut String, errors: &mut Vec<FieldError>) {
    match v {
        Value::String(s) if s.contains('$') => match substitute(s) {
            Ok(new) => *s = new,
            Err(reason) => errors.push(FieldError::new(path.clone(), reason)),
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let mut p = format!("{path}[{i}]");
                substitute_tree(item, &mut p, errors);
            }
        }
        Value::Object(map) => {
            // Keys too: a vendor's claim *name* may be configurable (Dotdigital's ID claim).
            if map.keys().any(|k| k.contains('$')) {
                let old = std::mem::take(map);
                for (k, v) in old {
                    match substitute(&k) {
                        Ok(new) => map.insert(new, v),
                        Err(reason) => {
                            errors.push(FieldError::new(join(path, &k), reason));
                            map.insert(k, v)
                        }
                    };
                }
            }
            for (k, item) in map.iter_mut() {
                let mut p = join(path, k);
                substitute_tree(item, &mut p, errors);
            }
        }
        _ => {}
    }
}

/// Expands environment references in one string.
pub(crate) fn substitute(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
            let expr = &after[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!("invalid environment reference ${{{expr}}}"));
            }
            match (std::env::var(name).ok().filter(|v| !v.is_empty() || default.is_none()), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(format!("environment variable {name} is not set")),
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Turns every `<secret>_file: PATH` into `<secret>: <file content>` (one entry per line for `keys`).
fn read_file_twins(
    v: &mut Value,
    path: &mut String,
    base: &Path,
    files: &mut Vec<PathBuf>,
    errors: &mut Vec<FieldError>,
) {
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                read_file_twins(item, &mut format!("{path}[{i}]"), base, files, errors);
            }
        }
        Value::Object(map) => {
            for twin in FILE_TWINS {
                let file_key = format!("{twin}_file");
                let Some(file_value) = map.shift_remove(&file_key) else {
                    continue;
                };
                let key_path = join(path, &file_key);
                let Value::String(file) = file_value else {
                    errors.push(FieldError::new(key_path, "expected a file path"));
                    continue;
                };
                if map.contains_key(*twin) {
                    errors.push(FieldError::new(key_path, format!("give either {twin} or {file_key}, not both")));
                    continue;
                }
                let full = base.join(&file);
                files.push(full.clone());
                match std::fs::read_to_string(&full) {
                    Ok(content) => {
                        let value = if *twin == "keys" {
                            content
                                .lines()
                                .map(str::trim)
                                .filter(|l| !l.is_empty())
                                .map(|l| Value::String(l.into()))
                                .collect()
                        } else {
                            Value::String(content.trim_end_matches(['\r', '\n']).to_owned())
                        };
                        map.insert((*twin).to_owned(), value);
                    }
                    Err(e) => errors.push(FieldError::new(key_path, format!("cannot read {}: {e}", full.display()))),
                }
            }
            for (k, item) in map.iter_mut() {
                read_file_twins(item, &mut join(path, k), base, files, errors);
            }
        }
        _ => {}
    }
}

/// Deserializes `tree`, and on each error records it, drops the offending node and tries again,
/// so that one run reports every independent mistake.
fn deserialize_collecting(mut tree: Value, errors: &mut Vec<FieldError>) -> Option<Config> {
    let first_error = errors.len();
    for _ in 0..MAX_ERRORS {
        let err = match serde_path_to_error::deserialize::<_, Config>(tree.clone()) {
            Ok(config) => return Some(config),
            Err(err) => err,
        };
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let reason = err.inner().to_string();
        if let Some(field) = reason.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) {
            // A field we dropped ourselves reappears as "missing": already reported.
            let full = join(&path, field);
            if !errors[first_error..].iter().any(|e| e.path == full) {
                errors.push(FieldError::new(full, "missing required key"));
            }
            return None;
        }
        errors.push(FieldError::new(path, reason));
        let segments: Vec<_> = err.path().iter().cloned().collect();
        if !remove_at(&mut tree, &segments) {
            return None;
        }
    }
    None
}

fn remove_at(tree: &mut Value, segments: &[serde_path_to_error::Segment]) -> bool {
    use serde_path_to_error::Segment;
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = tree;
    for seg in parents {
        node = match (seg, node) {
            (Segment::Map { key }, Value::Object(m)) => match m.get_mut(key) {
                Some(n) => n,
                None => return false,
            },
            (Segment::Seq { index }, Value::Array(a)) => match a.get_mut(*index) {
                Some(n) => n,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, node) {
        (Segment::Map { key }, Value::Object(m)) => m.shift_remove(key).is_some(),
        // Removing a list element would shift the indices later errors are reported at.
        _ => false,
    }
}

/// The JSON Schema of the config file, with the `*_file` twins of every secret.
pub fn schema() -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(Config)).unwrap_or(Value::Null);
    add_file_twins(&mut schema);
    schema
}

fn add_file_twins(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get_mut("properties") {
                for twin in FILE_TWINS {
                    if props.contains_key(*twin) {
                        let desc = format!("file whose content is `{twin}` (Kubernetes secret mounts)");
                        props.insert(
                            format!("{twin}_file"),
                            serde_json::json!({ "type": "string", "description": desc }),
                        );
                    }
                }
            }
            map.values_mut().for_each(add_file_twins);
        }
        Value::Array(items) => items.iter_mut().for_each(add_file_twins),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution() {
        std::env::set_var("TG_TEST_SUBST", "abc");
        assert_eq!(substitute("x-${TG_TEST_SUBST}-y").unwrap(), "x-abc-y");
        assert_eq!(substitute("${TG_TEST_UNSET_1:-dflt}").unwrap(), "dflt");
        assert_eq!(substitute("${TG_TEST_UNSET_1:-}").unwrap(), "");
        assert_eq!(substitute("$${HOME} $5").unwrap(), "${HOME} $5");
        assert_eq!(substitute("${TG_TEST_UNSET_1}").unwrap_err(), "environment variable TG_TEST_UNSET_1 is not set");
        assert!(substitute("${A-B}").is_err());
        assert!(substitute("${OPEN").is_err());
    }

    #[test]
    fn collects_every_error_with_its_path() {
        let yaml = "upstream:\n  url: http://127.0.0.1:1\n  connect_timeout: 5 secs\n  response_timeout: 1 minute\nlimits:\n  bogus: 1\n";
        let err = load_str(yaml, "t.yaml", Path::new(".")).unwrap_err();
        let lines: Vec<String> = err.errors.iter().map(|e| e.to_string()).collect();
        assert!(
            lines.iter().any(|l| l.starts_with("upstream.connect_timeout: invalid duration \"5 secs\"")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("upstream.response_timeout: invalid duration \"1 minute\"")),
            "{lines:?}"
        );
        assert!(lines.iter().any(|l| l.starts_with("limits") && l.contains("unknown field `bogus`")), "{lines:?}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let err = load_str("listen: 127.0.0.1:1\n", "t.yaml", Path::new(".")).unwrap_err();
        assert_eq!(err.errors, vec![FieldError::new("upstream", "missing required key")]);
    }

    #[test]
    fn a_pkcs11_key_reads_its_pin_from_a_file_and_is_checked_without_the_module() {
        let dir = std::env::temp_dir().join(format!("tg-pin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pin"), "1234\n").unwrap();
        let key = |pkcs11: &str| {
            format!("upstream: {{ url: 'http://127.0.0.1:1' }}\nkeys:\n  - {{ id: k, algorithm: ES256, pkcs11: {pkcs11} }}\n")
        };
        let good = key("{ module: /m.so, token_label: t, key_label: l, pin_file: pin }");
        let loaded = load_str(&good, "t.yaml", &dir).unwrap();
        let hsm = loaded.config.keys[0].pkcs11.clone().unwrap();
        assert_eq!(hsm.pin.unwrap().expose(), "1234");
        assert_eq!((hsm.sessions, hsm.queue, hsm.timeout.0.as_secs()), (2, 1024, 2));

        let bad = key("{ module: '', token_label: '', key_label: l, sessions: 0, queue: 0 }");
        let err = load_str(&bad, "t.yaml", &dir).unwrap_err();
        let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
        for path in ["module", "token_label", "pin", "sessions", "queue"] {
            assert!(paths.contains(&format!("keys[0].pkcs11.{path}").as_str()), "{path}: {paths:?}");
        }
        let both =
            key("{ module: /m.so, token_label: t, key_label: l, pin: x }").replace("pkcs11:", "secret: s, pkcs11:");
        let err = load_str(&both, "t.yaml", &dir).unwrap_err();
        assert!(err.errors.iter().any(|e| e.path == "keys[0].id" && e.reason.contains("pkcs11")), "{err:?}");
    }

    #[test]
    fn schema_lists_file_twins() {
        let s = schema().to_string();
        assert!(s.contains("admin_token_file") && s.contains("secret_base64_file"));
    }
}
