//! `tokenvault-bench`: tokenvault's speed as ratios to the physical floor
//! measured in the same run (the machine changes from run to run). Prints
//! the results as JSON on stdout and a readable summary on stderr. See
//! docs/benchmarks.md.

mod b1;
mod b2;
mod b3;
mod b4;
mod load;
mod mock;
mod setup;

use std::time::Duration;

/// The allocator `tokenvault serve` runs with (see its `main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    about = "Benchmarks tokenvault (B1 token reads, B2 refresh throughput, B3 scale, B4 wide reads)"
)]
struct Cli {
    /// `smoke` runs every benchmark in a few seconds (CI); `full` is the
    /// documented run.
    #[arg(long, value_enum, default_value = "full")]
    size: Size,
    /// Benchmarks to run (default all).
    #[arg(long, value_delimiter = ',', default_values = ["b1", "b2", "b3", "b4"])]
    only: Vec<String>,
    /// Also write the JSON here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Experiment: override `database_max_connections` (default 10).
    #[arg(long)]
    database_max_connections: Option<u32>,
    /// Experiment: override `scheduler_concurrency` (default 16).
    #[arg(long)]
    scheduler_concurrency: Option<usize>,
    /// Experiment: override `scheduler_batch` (default 100).
    #[arg(long)]
    scheduler_batch: Option<u32>,
    #[command(subcommand)]
    child: Option<Child>,
}

#[derive(Subcommand)]
enum Child {
    /// (internal) B3's fresh instance process.
    #[command(hide = true)]
    B3Tick {
        #[arg(long)]
        database_url: String,
        #[arg(long)]
        batch: u32,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Size {
    Smoke,
    Full,
}

struct Plan {
    b1_warmup: Duration,
    b1_duration: Duration,
    b2_connections: usize,
    b2_floor: Duration,
    b2_limit: Duration,
    b3_connections: usize,
    b3_due: usize,
    b4_connections: usize,
}

impl Size {
    fn plan(self) -> Plan {
        match self {
            Size::Smoke => Plan {
                b1_warmup: Duration::from_millis(200),
                b1_duration: Duration::from_secs(1),
                b2_connections: 500,
                b2_floor: Duration::from_secs(1),
                b2_limit: Duration::from_secs(60),
                b3_connections: 20_000,
                b3_due: 200,
                b4_connections: 2_000,
            },
            Size::Full => Plan {
                b1_warmup: Duration::from_secs(1),
                b1_duration: Duration::from_secs(10),
                b2_connections: 100_000,
                b2_floor: Duration::from_secs(5),
                b2_limit: Duration::from_secs(1800),
                b3_connections: 1_000_000,
                b3_due: 1_000,
                b4_connections: 100_000,
            },
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // As `serve` does before building its state (metrics on by default).
    tokenvault_server::metrics::install();
    if let Some(Child::B3Tick {
        database_url,
        batch,
    }) = cli.child
    {
        let tick = b3::child(database_url, batch).await?;
        println!("{}", serde_json::to_string(&tick)?);
        return Ok(());
    }
    let tuning = setup::Tuning {
        database_max_connections: cli.database_max_connections,
        scheduler_concurrency: cli.scheduler_concurrency,
        scheduler_batch: cli.scheduler_batch,
    };
    setup::TUNING.set(tuning).expect("set once");
    let plan = cli.size.plan();
    let wants = |name: &str| cli.only.iter().any(|b| b == name);
    let mut out = json!({
        "size": if cli.size == Size::Full { "full" } else { "smoke" },
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "overrides": tuning,
    });
    let mut targets = serde_json::Map::new();

    if wants("b1") {
        eprintln!("B1 token read: SQLite…");
        let sqlite = b1::run(None, plan.b1_warmup, plan.b1_duration).await?;
        eprintln!("B1 token read: PostgreSQL…");
        let pg_url = tokenvault::testing::fresh_postgres_url().await;
        let postgres = b1::run(Some(pg_url.clone()), plan.b1_warmup, plan.b1_duration).await?;
        setup::drop_database(&pg_url).await?;
        let p99 = sqlite.service.p99_ms.max(postgres.service.p99_ms);
        targets.insert("b1.ratio_sqlite >= 0.9".into(), json!(sqlite.ratio >= 0.9));
        targets.insert(
            "b1.ratio_postgres >= 0.9".into(),
            json!(postgres.ratio >= 0.9),
        );
        targets.insert("b1.p99_ms < 5".into(), json!(p99 < 5.0));
        out["b1"] = json!({
            "connections": b1::CONNECTIONS,
            "concurrency": b1::CONCURRENCY,
            "duration_s": plan.b1_duration.as_secs_f64(),
            "ratio_sqlite": sqlite.ratio,
            "ratio_postgres": postgres.ratio,
            // The worse of the two backends' service p99.
            "p99_ms": p99,
            "sqlite": sqlite,
            "postgres": postgres,
        });
    }
    if wants("b2") {
        eprintln!(
            "B2 refresh throughput: {} connections…",
            plan.b2_connections
        );
        let b2 = b2::run(plan.b2_connections, plan.b2_floor, plan.b2_limit).await?;
        targets.insert("b2.ratio >= 0.5".into(), json!(b2.ratio >= 0.5));
        targets.insert(
            "b2.connections_per_instance >= 10M".into(),
            json!(b2.connections_per_instance >= 10e6),
        );
        out["b2"] = serde_json::to_value(&b2)?;
    }
    if wants("b3") {
        eprintln!(
            "B3 scale: {} connections, {} due…",
            plan.b3_connections, plan.b3_due
        );
        let b3 = b3::run(plan.b3_connections, plan.b3_due).await?;
        targets.insert("b3.tick_ms < 30".into(), json!(b3.tick.tick_ms < 30.0));
        targets.insert("b3.index_scan".into(), json!(b3.index_scan));
        targets.insert("b3.rss_mib <= 64".into(), json!(b3.tick.rss_mib <= 64.0));
        out["b3"] = serde_json::to_value(&b3)?;
    }
    if wants("b4") {
        eprintln!(
            "B4 wide reads: SQLite, {} connections…",
            plan.b4_connections
        );
        let sqlite = b4::run(None, plan.b4_connections, plan.b1_warmup, plan.b1_duration).await?;
        eprintln!(
            "B4 wide reads: PostgreSQL, {} connections…",
            plan.b4_connections
        );
        let pg_url = tokenvault::testing::fresh_postgres_url().await;
        let postgres = b4::run(
            Some(pg_url.clone()),
            plan.b4_connections,
            plan.b1_warmup,
            plan.b1_duration,
        )
        .await?;
        setup::drop_database(&pg_url).await?;
        targets.insert("b4.ratio_sqlite >= 0.7".into(), json!(sqlite.ratio >= 0.7));
        targets.insert(
            "b4.ratio_postgres >= 0.7".into(),
            json!(postgres.ratio >= 0.7),
        );
        out["b4"] = json!({
            "connections": plan.b4_connections,
            "concurrency": b4::CONCURRENCY,
            "duration_s": plan.b1_duration.as_secs_f64(),
            "ratio_sqlite": sqlite.ratio,
            "ratio_postgres": postgres.ratio,
            "sqlite": sqlite,
            "postgres": postgres,
        });
    }
    out["targets"] = Value::Object(targets);

    let text = serde_json::to_string_pretty(&out)?;
    if let Some(path) = &cli.out {
        std::fs::write(path, &text)?;
    }
    println!("{text}");
    eprintln!("{}", summary(&out));
    Ok(())
}

/// One backend's line of B1 or B4: the floor beside the token reads.
fn floor_and_service(backend: &str, floor: &str, unit: &str, r: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    format!(
        "  {backend:<9} {floor} {:>8.0} {unit} (p50 {:.2} ms, p99 {:.2} ms) | token {:>8.0} req/s (p50 {:.2} ms, p99 {:.2} ms) | ratio {:.2}",
        f(&r["floor"]["rps"]),
        f(&r["floor"]["p50_ms"]),
        f(&r["floor"]["p99_ms"]),
        f(&r["service"]["rps"]),
        f(&r["service"]["p50_ms"]),
        f(&r["service"]["p99_ms"]),
        f(&r["ratio"]),
    )
}

fn summary(out: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut lines = vec![format!(
        "tokenvault-bench ({} size, {} CPUs)",
        out["size"].as_str().unwrap_or("?"),
        out["cpus"]
    )];
    if let Some(b1) = out.get("b1") {
        lines.push(format!(
            "B1 token read, {} connections, {} concurrent keep-alive clients, {} s:",
            b1["connections"], b1["concurrency"], b1["duration_s"]
        ));
        for backend in ["sqlite", "postgres"] {
            let r = &b1[backend];
            lines.push(floor_and_service(backend, "floor", "req/s", r));
            lines.push(format!(
                "  {backend:<9} one call at a time: store get {:.0} µs, open {:.0} µs, valid_token {:.0} µs",
                f(&r["breakdown"]["store_get_us"]),
                f(&r["breakdown"]["open_us"]),
                f(&r["breakdown"]["valid_token_us"]),
            ));
        }
    }
    if let Some(b2) = out.get("b2") {
        lines.push(format!(
            "B2 refresh, {} due connections, concurrency {}: mock {:.0} req/s | refresher {:.0} refreshes/s in {:.1} s | ratio {:.3} | {:.1} M connections/instance | exactly once: {}",
            b2["connections"],
            b2["concurrency"],
            f(&b2["mock_rps"]),
            f(&b2["refreshes_per_s"]),
            f(&b2["refresh_s"]),
            f(&b2["ratio"]),
            f(&b2["connections_per_instance"]) / 1e6,
            b2["exactly_once"],
        ));
    }
    if let Some(b3) = out.get("b3") {
        lines.push(format!(
            "B3 scale, {} connections ({} due, inserted in {:.1} s): claim {:.1} ms (median of the warm ones; cold {:.1} ms) | full tick {:.0} ms | index scan: {} | RSS {:.1} MiB (peak {:.1})",
            b3["connections"],
            b3["due"],
            f(&b3["insert_s"]),
            f(&b3["tick_ms"]),
            f(&b3["tick_cold_ms"]),
            f(&b3["full_tick_ms"]),
            b3["index_scan"],
            f(&b3["rss_mib"]),
            f(&b3["rss_peak_mib"]),
        ));
    }
    if let Some(b4) = out.get("b4") {
        lines.push(format!(
            "B4 wide reads, {} connections, each request a random user, {} concurrent clients, {} s:",
            b4["connections"], b4["concurrency"], b4["duration_s"]
        ));
        for backend in ["sqlite", "postgres"] {
            let r = &b4[backend];
            lines.push(floor_and_service(backend, "direct point reads", "/s", r));
        }
    }
    let missed: Vec<&String> = out["targets"]
        .as_object()
        .map(|t| {
            t.iter()
                .filter(|(_, met)| met != &&json!(true))
                .map(|(name, _)| name)
                .collect()
        })
        .unwrap_or_default();
    lines.push(if missed.is_empty() {
        "all targets met".to_owned()
    } else {
        format!(
            "targets missed: {}",
            missed
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    lines.join("\n")
}
