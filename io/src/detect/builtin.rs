//! The rules shipped in the agent binary: the repository's `rules/` directory, embedded.
//! A test checks this list against the directory, so a rule added there must be named here.

/// `(file name, text)` of each shipped rule, sorted by name.
pub const RULES: &[(&str, &str)] = &[
    (
        "credential_shadow_read.yml",
        include_str!("../../../rules/credential_shadow_read.yml"),
    ),
    (
        "credential_ssh_private_key_read.yml",
        include_str!("../../../rules/credential_ssh_private_key_read.yml"),
    ),
    (
        "cron_crontab_edit.yml",
        include_str!("../../../rules/cron_crontab_edit.yml"),
    ),
    (
        "cron_file_written.yml",
        include_str!("../../../rules/cron_file_written.yml"),
    ),
    (
        "decode_piped_to_shell.yml",
        include_str!("../../../rules/decode_piped_to_shell.yml"),
    ),
    (
        "deleted_executable_running.yml",
        include_str!("../../../rules/deleted_executable_running.yml"),
    ),
    (
        "download_piped_to_shell.yml",
        include_str!("../../../rules/download_piped_to_shell.yml"),
    ),
    (
        "download_to_temp_directory.yml",
        include_str!("../../../rules/download_to_temp_directory.yml"),
    ),
    (
        "execution_from_temp_directory.yml",
        include_str!("../../../rules/execution_from_temp_directory.yml"),
    ),
    (
        "journal_vacuumed.yml",
        include_str!("../../../rules/journal_vacuumed.yml"),
    ),
    (
        "log_files_cleared.yml",
        include_str!("../../../rules/log_files_cleared.yml"),
    ),
    (
        "reverse_shell_dev_tcp.yml",
        include_str!("../../../rules/reverse_shell_dev_tcp.yml"),
    ),
    (
        "reverse_shell_netcat.yml",
        include_str!("../../../rules/reverse_shell_netcat.yml"),
    ),
    (
        "reverse_shell_script_oneliner.yml",
        include_str!("../../../rules/reverse_shell_script_oneliner.yml"),
    ),
    (
        "reverse_shell_socat.yml",
        include_str!("../../../rules/reverse_shell_socat.yml"),
    ),
    (
        "shell_history_cleared.yml",
        include_str!("../../../rules/shell_history_cleared.yml"),
    ),
    (
        "systemd_unit_enabled_from_unusual_path.yml",
        include_str!("../../../rules/systemd_unit_enabled_from_unusual_path.yml"),
    ),
    (
        "systemd_unit_written.yml",
        include_str!("../../../rules/systemd_unit_written.yml"),
    ),
];

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
