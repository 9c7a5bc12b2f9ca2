//! `tokenvault keys …`: master-key lifecycle.

use std::collections::BTreeSet;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tokenvault::crypto::{KeyId, KeyRing, MasterKey};
use tokenvault::rotation;

use crate::config::Config;
use crate::wiring::{self, KeySource};

/// Prints a new key as `id:base64`, the form TOKENVAULT_MASTER_KEYS takes.
pub fn generate(id: Option<String>) -> anyhow::Result<()> {
    let id = id.unwrap_or_else(|| format!("k{}", chrono::Utc::now().format("%Y%m%d%H%M%S")));
    let id = KeyId::parse(&id)
        .with_context(|| format!("key id {id:?} must be 1-32 letters, digits, - or _"))?;
    let key = MasterKey::generate(id);
    println!("{}", key.to_spec().as_str());
    eprintln!(
        "Rollout without downtime: 1) append this key LAST to TOKENVAULT_MASTER_KEYS on every instance and restart them;\n\
         2) move it FIRST (active) and restart again; 3) run `tokenvault keys rotate`; 4) `tokenvault keys retire OLD_ID`."
    );
    Ok(())
}

pub async fn status(config: &Config) -> anyhow::Result<()> {
    let (ring, source) = wiring::load_key_ring(config)?;
    let store = wiring::open_store(config).await?;
    let counts = store.count_by_key().await?;
    println!("source: {}", describe(&source));
    println!("{:<34} {:>12}  state", "key", "connections");
    let mut ids: BTreeSet<String> = counts.keys().cloned().collect();
    ids.extend(ring.keys().iter().map(|k| k.id().to_string()));
    let active = ring.active().id().to_string();
    for id in ids {
        let rows = counts.get(&id).copied().unwrap_or(0);
        let state = match (id == active, ring.get(&id).is_some()) {
            (true, _) => "active",
            (false, true) if rows == 0 => "retirable",
            (false, true) => "needs rotation",
            (false, false) => "MISSING from key ring: these rows cannot be decrypted",
        };
        println!("{id:<34} {rows:>12}  {state}");
    }
    Ok(())
}

pub async fn rotate(config: &Config, batch: u32) -> anyhow::Result<()> {
    let (ring, _) = wiring::load_key_ring(config)?;
    let active = ring.active().id().to_string();
    let envelope = wiring::envelope(ring);
    let store = wiring::open_store(config).await?;
    let total: u64 = store
        .count_by_key()
        .await?
        .iter()
        .filter(|(id, _)| **id != active)
        .map(|(_, n)| n)
        .sum();
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} re-wrapped ({per_sec}, eta {eta})")
            .expect("valid template"),
    );
    let report =
        rotation::rotate(store.as_ref(), &envelope, batch, |n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    println!(
        "re-wrapped {} data keys under `{active}`; {} changed concurrently; {} failed; {} remain on other keys",
        report.rewrapped,
        report.changed_concurrently,
        report.failed.len(),
        report.remaining
    );
    for (id, reason) in report.failed.iter().take(20) {
        eprintln!("  connection {id}: {reason}");
    }
    if !report.failed.is_empty() || report.remaining > 0 {
        bail!(
            "rotation incomplete; fix the errors above and run `tokenvault keys rotate` again (it resumes)"
        );
    }
    Ok(())
}

pub async fn retire(config: &Config, id: &str) -> anyhow::Result<()> {
    let (ring, source) = wiring::load_key_ring(config)?;
    let store = wiring::open_store(config).await?;
    let envelope = wiring::envelope(ring);
    rotation::check_retirable(store.as_ref(), &envelope, id).await?;
    match source {
        KeySource::File(path) => {
            let content = std::fs::read_to_string(&path)?;
            let kept: Vec<String> = KeyRing::parse(&content, &path.display().to_string())?
                .keys()
                .iter()
                .filter(|key| key.id().as_str() != id)
                .map(|key| key.to_spec().to_string())
                .collect();
            let tmp = path.with_extension("key.tmp");
            write_private(
                &tmp,
                &format!(
                    "# tokenvault master keys, first = active.\n{}\n",
                    kept.join("\n")
                ),
            )?;
            std::fs::rename(&tmp, &path)?;
            println!(
                "retired `{id}`: no connection uses it; removed it from {}",
                path.display()
            );
        }
        KeySource::Env => {
            println!(
                "retired `{id}`: no connection uses it; remove it from TOKENVAULT_MASTER_KEYS on every instance"
            );
        }
    }
    Ok(())
}

fn describe(source: &KeySource) -> String {
    match source {
        KeySource::Env => "TOKENVAULT_MASTER_KEYS".to_owned(),
        KeySource::File(path) => format!("key file {}", path.display()),
    }
}

/// Writes a key file readable by its owner only (0600), like the one
/// generated on first start.
fn write_private(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    // A leftover temp file keeps its old mode: force it.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(content.as_bytes())?;
    file.sync_all()
}
