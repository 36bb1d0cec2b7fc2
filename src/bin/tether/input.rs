//! Reading the files the subcommands are given: JSON or YAML, into one JSON value.

use serde::Deserialize;
use serde_json::Value;
use std::io::Read;
use std::path::Path;

/// The bytes of `path` (`-`: standard input), or the line that says why not.
pub fn read(path: &Path) -> Result<Vec<u8>, String> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        return std::io::stdin()
            .read_to_end(&mut bytes)
            .map(|_| bytes)
            .map_err(|e| format!("cannot read standard input: {e}"));
    }
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Whether the text is JSON rather than YAML: JSON documents tether deals with are objects.
pub fn looks_like_json(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_none_or(|b| *b == b'{')
}

/// Every document of a JSON or YAML text, as JSON values. YAML anchors, aliases and merge keys
/// (`<<`) are resolved, as Envoy resolves them.
pub fn documents(bytes: &[u8]) -> Result<Vec<Value>, String> {
    if looks_like_json(bytes) {
        return serde_json::from_slice(bytes)
            .map(|v| vec![v])
            .map_err(|e| format!("not valid JSON: {e}"));
    }
    let mut out = Vec::new();
    for document in serde_norway::Deserializer::from_slice(bytes) {
        let mut yaml = serde_norway::Value::deserialize(document)
            .map_err(|e| format!("not valid YAML: {e}"))?;
        yaml.apply_merge()
            .map_err(|e| format!("not valid YAML: {e}"))?;
        if yaml.is_null() {
            // An empty document (a trailing `---`, a file of comments).
            continue;
        }
        let json =
            serde_json::to_value(&yaml).map_err(|e| format!("YAML that has no JSON form: {e}"))?;
        out.push(json);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_documents_aliases_and_merge_keys_become_json() {
        let docs =
            documents(b"a: &x {b: 1}\nc: *x\nd:\n  <<: *x\n  e: 2\n---\n# nothing\n---\n- 1\n")
                .unwrap();
        assert_eq!(
            docs,
            vec![
                serde_json::json!({"a": {"b": 1}, "c": {"b": 1}, "d": {"b": 1, "e": 2}}),
                serde_json::json!([1]),
            ]
        );
    }

    #[test]
    fn json_is_read_as_json_and_bad_text_is_refused() {
        assert_eq!(
            documents(br#" {"a": [1]}"#).unwrap(),
            vec![serde_json::json!({"a": [1]})]
        );
        assert!(documents(b"{\"a\": ")
            .unwrap_err()
            .starts_with("not valid JSON"));
        assert!(documents(b"a: [1\n")
            .unwrap_err()
            .starts_with("not valid YAML"));
        assert!(documents(b"? [1]\n: 2\n")
            .unwrap_err()
            .starts_with("YAML that has no JSON form"));
    }
}
