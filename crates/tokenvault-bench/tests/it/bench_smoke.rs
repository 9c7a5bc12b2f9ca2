//! A smoke-size run completes and reports every headline figure. Not a
//! performance test: the figures are not judged here (docs/benchmarks.md
//! has them, from release builds at full size).

use std::process::Command;

/// The fields `docs/benchmarks.md` calls headline figures.
const HEADLINE: [&str; 9] = [
    "b1.ratio_sqlite",
    "b1.ratio_postgres",
    "b1.p99_ms",
    "b2.ratio",
    "b2.connections_per_instance",
    "b3.tick_ms",
    "b3.rss_mib",
    "b4.ratio_sqlite",
    "b4.ratio_postgres",
];

#[test]
fn a_smoke_run_reports_every_headline_figure() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let run = Command::new(env!("CARGO_BIN_EXE_tokenvault-bench"))
        .args(["--size", "smoke", "--out"])
        .arg(&out)
        .output()
        .expect("the benchmark binary runs");
    assert!(
        run.status.success(),
        "the smoke run failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let missing: Vec<&str> = HEADLINE
        .into_iter()
        .filter(|field| {
            !field
                .split('.')
                .try_fold(&report, |value, key| value.get(key))
                .is_some_and(serde_json::Value::is_number)
        })
        .collect();
    assert!(missing.is_empty(), "the report lacks {missing:?}: {report}");
    // The JSON on stdout is the same report.
    let printed: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(printed, report);
}
