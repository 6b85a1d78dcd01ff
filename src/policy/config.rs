//! Policy configuration: the tag names and the default activation strategy.

use serde::Deserialize;

/// The `external_ids` keys that tag a migrating port, and the strategy used while it migrates.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct PolicyConfig {
    /// Chassis the port moves to. Present and non-empty: the port is migrating.
    pub destination_key: String,
    /// Chassis the port moves from (optional on a port).
    pub source_key: String,
    /// Migration phase (optional on a port): succeeded/completed, failed/aborted, else in progress.
    pub phase_key: String,
    /// Per-port override of the activation strategy.
    pub strategy_key: String,
    /// Strategy while in progress; empty or `none` means no `activation-strategy` key.
    pub default_strategy: String,
    /// Finish a migration as soon as the Southbound shows the destination activated, without
    /// waiting for the phase tag (needs `--sb-db`). Off by default.
    pub finalize_on_activation: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            destination_key: "migration-destination".into(),
            source_key: "migration-source".into(),
            phase_key: "migration-phase".into(),
            strategy_key: "migration-activation-strategy".into(),
            default_strategy: "rarp".into(),
            finalize_on_activation: false,
        }
    }
}

/// The policy part of the proxy's TOML file: a `[migration]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub migration: PolicyConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("policy config: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("policy config: migration.{field} must not be empty")]
    EmptyKey { field: &'static str },
    #[error("policy config: key {key:?} is used for both migration.{first} and migration.{second}")]
    DuplicateKey { key: String, first: &'static str, second: &'static str },
}

impl PolicyConfig {
    /// The tag keys must be non-empty and distinct (one key cannot mean two things).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let keys = [
            ("destination-key", &self.destination_key),
            ("source-key", &self.source_key),
            ("phase-key", &self.phase_key),
            ("strategy-key", &self.strategy_key),
        ];
        for (i, (field, key)) in keys.iter().enumerate() {
            if key.trim().is_empty() {
                return Err(ConfigError::EmptyKey { field });
            }
            if let Some((second, _)) = keys[i + 1..].iter().find(|(_, other)| other == key) {
                return Err(ConfigError::DuplicateKey { key: key.to_string(), first: field, second });
            }
        }
        Ok(())
    }
}

/// Parses and validates the TOML text; absent keys keep their defaults.
pub fn load_toml(text: &str) -> Result<FileConfig, ConfigError> {
    let file: FileConfig = toml::from_str(text)?;
    file.migration.validate()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let file = load_toml("").expect("empty config is valid");
        assert_eq!(file.migration, PolicyConfig::default());
        assert_eq!(file.migration.destination_key, "migration-destination");
        assert_eq!(file.migration.default_strategy, "rarp");
    }

    #[test]
    fn subset_overrides() {
        let file = load_toml("[migration]\ndestination-key = \"kubevirt/dst\"\ndefault-strategy = \"\"\n")
            .expect("valid config");
        assert_eq!(file.migration.destination_key, "kubevirt/dst");
        assert_eq!(file.migration.default_strategy, "");
        assert_eq!(file.migration.source_key, "migration-source");
    }

    #[test]
    fn rejects_unknown_and_invalid() {
        let cases = [
            "[migration]\ndestination_key = \"x\"\n",
            "[migration]\nnope = \"x\"\n",
            "[other]\n",
            "[migration]\nphase-key = 3\n",
            "[migration]\nsource-key = \" \"\n",
            "[migration]\nsource-key = \"migration-destination\"\n",
        ];
        for text in cases {
            assert!(load_toml(text).is_err(), "{text:?} should be refused");
        }
        let err = load_toml("[migration]\nphase-key = \"migration-source\"\n").expect_err("duplicate");
        assert!(err.to_string().contains("source-key"), "{err}");
    }
}
