//! The bench's command line.

use std::path::PathBuf;

use clap::{ArgAction, Parser, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Measures the executor (this build's mecanywhere-executor) on the local Docker \
             daemon, every figure next to a baseline taken in the same run",
    args_override_self = true
)]
pub struct Args {
    /// Counted seconds per throughput point (at least 1)
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub seconds: u64,
    /// Where to write the figures as JSON [default: <target dir>/bench-results.json]
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Cold starts per side in row 3 (at least 5)
    #[arg(long, value_name = "N", default_value_t = 11)]
    pub cold_runs: usize,
    /// `background_eviction` in the executor's config (false: evictions wait for the
    /// victim's removal)
    #[arg(long, value_name = "true|false", default_value_t = true, action = ArgAction::Set)]
    pub background_eviction: bool,
    /// `sandbox_pool` in the executor's config (at most 64; 0 switches it off)
    /// [default: the executor's, 8]
    #[arg(long, value_name = "N")]
    pub sandbox_pool: Option<u64>,
    /// `spare_containers` in the executor's config (at most 64; 0 switches them off)
    /// [default: the executor's, 4]
    #[arg(long, value_name = "N")]
    pub spare_containers: Option<u64>,
    /// Run only these rows: back-to-back, the cold path's rows back to back (row 9);
    /// image-gc, new keys while image GC passes (row 10)
    #[arg(long, value_name = "ROWS", value_enum)]
    pub only: Option<Only>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Only {
    // The cold path's rows back to back (row 9).
    BackToBack,
    // New keys while image GC passes (row 10).
    ImageGc,
}

impl Args {
    /// The command line, with each number brought into its bounds.
    pub fn parse_bounded() -> Args {
        Args::parse().bounded()
    }

    fn bounded(mut self) -> Args {
        self.seconds = self.seconds.max(1);
        self.cold_runs = self.cold_runs.max(5);
        self.sandbox_pool = self.sandbox_pool.map(|n| n.min(64));
        self.spare_containers = self.spare_containers.map(|n| n.min(64));
        self
    }

    /// Holders the executor keeps free (its default unless set).
    pub fn pool(&self) -> f64 {
        self.sandbox_pool.unwrap_or(8) as f64
    }

    /// Whether the executor keeps spares (its default, 4, unless set).
    pub fn spares_on(&self) -> bool {
        self.spare_containers.unwrap_or(4) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .expect("parses")
            .bounded()
    }

    #[test]
    fn the_command_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let args = parse(&[]);
        assert_eq!((args.seconds, args.cold_runs), (5, 11));
        assert!(args.background_eviction);
        assert_eq!((args.sandbox_pool, args.spare_containers), (None, None));
        assert_eq!((args.json, args.only), (None, None));
        assert_eq!(parse(&[]).pool(), 8.0);
        assert!(parse(&[]).spares_on());
    }

    #[test]
    fn flags_and_their_bounds() {
        let args = parse(&[
            "--seconds",
            "0",
            "--cold-runs",
            "2",
            "--sandbox-pool",
            "100",
            "--spare-containers",
            "0",
            "--background-eviction",
            "false",
            "--only",
            "back-to-back",
            "--json",
            "/tmp/b.json",
        ]);
        assert_eq!((args.seconds, args.cold_runs), (1, 5));
        assert_eq!(args.sandbox_pool, Some(64));
        assert!(!args.spares_on());
        assert!(!args.background_eviction);
        assert_eq!(args.only, Some(Only::BackToBack));
        assert_eq!(args.json, Some(PathBuf::from("/tmp/b.json")));
        assert_eq!(parse(&["--only", "image-gc"]).only, Some(Only::ImageGc));
        // The last of a repeated flag counts, as before.
        assert_eq!(parse(&["--seconds", "3", "--seconds", "7"]).seconds, 7);
    }

    #[test]
    fn refuses_what_the_bench_does_not_know() {
        for bad in [
            &["--only", "warm"][..],
            &["--seconds", "x"],
            &["--background-eviction", "yes"],
            &["--seconds"],
            &["--frobnicate", "1"],
        ] {
            assert!(
                Args::try_parse_from(std::iter::once("bench").chain(bad.iter().copied())).is_err(),
                "{bad:?}"
            );
        }
    }
}
