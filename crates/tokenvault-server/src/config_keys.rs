//! The configuration keys `serve` knows, and what to say about the ones it
//! does not: a file key nobody reads is a typo that silently keeps a
//! default, so it is an error, with the nearest known key suggested.

use serde::de::{self, Deserializer, Visitor};

use crate::config::Config;

/// The values the example file ships with: a configuration still holding
/// one was copied without being filled in.
pub const PLACEHOLDERS: &[&str] = &["your-spotify-client-id", "change-me", "..."];

/// The field names of `T` as its `Deserialize` declares them (serde passes
/// them to `deserialize_struct`; this deserializer only records them).
fn struct_fields<'de, T: de::Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields(&'static [&'static str]);
    #[derive(Debug)]
    struct Captured(&'static [&'static str]);
    impl std::fmt::Display for Captured {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("fields captured")
        }
    }
    impl std::error::Error for Captured {}
    impl de::Error for Captured {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Captured(&[])
        }
    }
    impl<'de> Deserializer<'de> for &mut Fields {
        type Error = Captured;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Captured> {
            Err(Captured(&[]))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Captured> {
            self.0 = fields;
            Err(Captured(fields))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }
    match T::deserialize(&mut Fields(&[])) {
        Err(Captured(fields)) => fields,
        Ok(_) => &[],
    }
}

/// Top-level keys of the configuration file.
pub fn config_keys() -> &'static [&'static str] {
    struct_fields::<Config>()
}

/// Keys of an `[integrations.<key>]` table.
pub fn integration_keys() -> &'static [&'static str] {
    struct_fields::<tokenvault::integrations::IntegrationConfig>()
}

/// Edit distance between two short strings.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(current + 1);
            previous = current;
        }
    }
    row[b.len()]
}

/// The known word closest to `word`, when it is close enough to be the
/// one meant (a third of its length, at least two edits).
pub fn suggest<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    known
        .into_iter()
        .map(|candidate| (distance(&word, candidate), candidate))
        .filter(|(d, _)| *d <= (word.len() / 3).max(2))
        .min()
        .map(|(_, candidate)| candidate)
}

/// `unknown key `x`` with a "did you mean" when there is a near one.
pub fn unknown(what: &str, key: &str, known: &[&str]) -> String {
    match suggest(key, known.iter().copied()) {
        Some(near) => format!("{what}: unknown key `{key}` (did you mean `{near}`?)"),
        None => format!(
            "{what}: unknown key `{key}`; known keys: {}",
            known.join(", ")
        ),
    }
}

/// Unknown keys of a configuration file: at the top level and in each
/// `[integrations.<key>]` table.
pub fn unknown_file_keys(file: &toml::Table) -> Vec<String> {
    let mut errors = Vec::new();
    let top = config_keys();
    for key in file.keys() {
        if !top.contains(&key.as_str()) {
            errors.push(unknown("config file", key, top));
        }
    }
    if let Some(toml::Value::Table(integrations)) = file.get("integrations") {
        let known = integration_keys();
        for (name, table) in integrations {
            let toml::Value::Table(table) = table else {
                continue;
            };
            for key in table.keys() {
                if !known.contains(&key.as_str()) {
                    errors.push(unknown(&format!("[integrations.{name}]"), key, known));
                }
            }
        }
    }
    errors
}

/// `TOKENVAULT_*` variables that name no key (warnings: an environment
/// often holds variables meant for other tools, e.g. test settings).
pub fn unknown_env_keys(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let top = config_keys();
    vars.into_iter()
        .filter_map(|(name, _)| {
            let key = name.strip_prefix("TOKENVAULT_")?.to_ascii_lowercase();
            (key != "config" && !top.contains(&key.as_str())).then(|| {
                match suggest(&key, top.iter().copied()) {
                    Some(near) => format!(
                        "{name} sets no configuration key (did you mean TOKENVAULT_{}?)",
                        near.to_ascii_uppercase()
                    ),
                    None => format!("{name} sets no configuration key; it is ignored"),
                }
            })
        })
        .collect()
}

/// Values still holding a placeholder of the example file.
pub fn placeholders(file: &toml::Table) -> Vec<String> {
    let mut found = Vec::new();
    fn walk(path: &str, value: &toml::Value, found: &mut Vec<String>) {
        match value {
            toml::Value::String(s) if PLACEHOLDERS.contains(&s.trim()) => found.push(format!(
                "{path} = {s:?} is the example file's placeholder: fill in the real value"
            )),
            toml::Value::Table(table) => {
                for (key, value) in table {
                    let path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    walk(&path, value, found);
                }
            }
            toml::Value::Array(items) => {
                for item in items {
                    walk(path, item, found);
                }
            }
            _ => {}
        }
    }
    walk("", &toml::Value::Table(file.clone()), &mut found);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_known_keys_are_the_structs_fields() {
        let top = config_keys();
        for key in [
            "bind",
            "public_url",
            "database_url",
            "integrations",
            "retention_days",
        ] {
            assert!(top.contains(&key), "{key} missing from {top:?}");
        }
        assert!(integration_keys().contains(&"redirect_uri"));
        assert!(integration_keys().contains(&"client_secret"));
    }

    #[test]
    fn typos_get_the_nearest_key_and_strangers_the_list() {
        let file: toml::Table = toml::from_str(
            "pubilc_url = \"http://x\"\nbind = \"127.0.0.1:1\"\ncolour = 1\n\
             [integrations.spotify]\nprovider = \"spotify\"\nredirect_url = \"http://x\"\n",
        )
        .unwrap();
        let errors = unknown_file_keys(&file);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors.contains(
            &"config file: unknown key `pubilc_url` (did you mean `public_url`?)".to_owned()
        ));
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("config file: unknown key `colour`; known keys: "))
        );
        assert!(errors.contains(
            &"[integrations.spotify]: unknown key `redirect_url` (did you mean `redirect_uri`?)"
                .to_owned()
        ));
        let env = unknown_env_keys([
            ("TOKENVAULT_PUBLIK_URL".to_owned(), String::new()),
            ("TOKENVAULT_BIND".to_owned(), String::new()),
            ("TOKENVAULT_CONFIG".to_owned(), String::new()),
            ("OTHER".to_owned(), String::new()),
        ]);
        assert_eq!(
            env,
            [
                "TOKENVAULT_PUBLIK_URL sets no configuration key (did you mean TOKENVAULT_PUBLIC_URL?)"
            ]
        );
    }

    #[test]
    fn the_example_files_placeholders_are_found() {
        let example: toml::Table =
            toml::from_str(include_str!("../../../tokenvault.example.toml")).unwrap();
        let found = placeholders(&example);
        assert!(
            found
                .iter()
                .any(|f| f.starts_with("integrations.spotify.client_id")),
            "{found:?}"
        );
        assert!(
            unknown_file_keys(&example).is_empty(),
            "the example uses known keys"
        );
    }
}
