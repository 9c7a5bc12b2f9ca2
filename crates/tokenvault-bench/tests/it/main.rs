//! The benchmark harness, run end to end. `scripts/test.sh` runs this
//! module on its own, after the other suites (it loads both cores).

mod bench_smoke;
