//! The rules shipped in the agent binary: the repository's `rules/` directory, embedded.
//! A test checks this list against the directory, so a rule added there must be named here.

/// `(file name, text)` of each shipped rule, sorted by name.
pub const RULES: &[(&str, &str)] = &[];

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn embedded_list_is_the_rules_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yml") || n.ends_with(".yaml"))
            .collect();
        on_disk.sort();
        let embedded: Vec<String> = RULES.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(embedded, on_disk, "rules/ and detect/builtin.rs differ");
        for (name, text) in RULES {
            let file = std::fs::read_to_string(dir.join(name)).unwrap();
            assert_eq!(&file, text, "{name} differs from its embedded copy");
        }
    }
}
