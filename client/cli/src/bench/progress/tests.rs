//! Tests of the progress line's rendering and of the sampler's sums.

use super::*;
use crate::bench::config::tests::config;
use crate::bench::config::BenchConfig;

fn sample(stop: Stop, done: u64) -> Progress {
    Progress {
        phase: Phase::Run,
        elapsed: Duration::from_secs(12),
        stop,
        done,
        ops_per_sec: 45_210.4,
        errors: 3,
        write_gap: None,
    }
}

/// The bar's cells: (filled, total).
fn bar(line: &str) -> (usize, usize) {
    let inside = line
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .map(|(bar, _)| bar)
        .unwrap_or_else(|| panic!("no bar in {line:?}"));
    (inside.matches('#').count(), inside.len())
}

#[test]
fn progress_line_in_requests_mode() {
    let line = progress_line(&sample(Stop::Requests(100_000), 41_000), 80);
    assert_eq!(
        line,
        "[#########---------------] 41000/100000   41%  45210 ops/s  3 err"
    );
    let (filled, cells) = bar(&line);
    assert_eq!(filled, cells * 41 / 100);
    // 100% only once every request is answered.
    let almost = progress_line(&sample(Stop::Requests(100_000), 99_999), 80);
    assert!(almost.contains(" 99%"), "{almost}");
    assert_ne!(bar(&almost).0, bar(&almost).1);
    let done = progress_line(&sample(Stop::Requests(100_000), 100_000), 80);
    assert!(done.contains("100%"), "{done}");
    assert_eq!(bar(&done).0, bar(&done).1);
    let nothing = progress_line(&sample(Stop::Requests(100_000), 0), 80);
    assert!(nothing.contains("  0%"), "{nothing}");
    assert_eq!(bar(&nothing).0, 0);
}

#[test]
fn progress_line_in_duration_mode_with_the_write_gap() {
    let mut p = sample(Stop::Duration(Duration::from_secs(30)), 541_000);
    p.write_gap = Some(Duration::from_micros(25_400));
    let line = progress_line(&p, 80);
    assert_eq!(
        line,
        "[#########--------------] 12.0/30.0 s   40%  45210 ops/s  3 err  write gap 25 ms"
    );
    p.write_gap = Some(Duration::from_millis(12_345));
    assert!(progress_line(&p, 80).ends_with("write gap 12.3 s"));
    // Past the end (the last answers arrive after the deadline).
    p.elapsed = Duration::from_secs(31);
    let late = progress_line(&p, 80);
    assert!(late.contains("31.0/30.0 s  100%"), "{late}");
}

#[test]
fn progress_line_names_the_prefill() {
    let p = Progress {
        phase: Phase::Prefill,
        write_gap: None,
        ..sample(Stop::Requests(500_000), 250_000)
    };
    let line = progress_line(&p, 80);
    assert!(line.contains("] prefill 250000/500000   50%"), "{line}");
}

#[test]
fn progress_line_fits_narrow_widths_and_huge_numbers() {
    let mut p = sample(Stop::Requests(100_000), 41_000);
    // The bar shrinks first...
    assert_eq!(
        progress_line(&p, 46),
        "[##---] 41000/100000   41%  45210 ops/s  3 err"
    );
    // ...then goes, and the numbers stay.
    assert_eq!(
        progress_line(&p, 45),
        "41000/100000   41%  45210 ops/s  3 err"
    );
    // Narrower than the numbers: cut.
    assert_eq!(progress_line(&p, 10), "41000/1000");
    assert_eq!(progress_line(&p, 0), "");
    // Never wider than 80, whatever the caller asks.
    p.done = u64::MAX;
    p.stop = Stop::Requests(u64::MAX);
    p.errors = u64::MAX;
    p.ops_per_sec = 1e300;
    p.write_gap = Some(Duration::MAX);
    for width in [80, 81, 200, usize::MAX] {
        assert_eq!(progress_line(&p, width).len(), MAX_PROGRESS_WIDTH);
    }
}

#[test]
fn progress_line_survives_nonsense_numbers() {
    for ops in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -5.0] {
        let mut p = sample(Stop::Requests(0), 7);
        p.ops_per_sec = ops;
        let line = progress_line(&p, 80);
        assert!(line.contains("7/0  100%  0 ops/s"), "{line}");
        p.stop = Stop::Duration(Duration::ZERO);
        assert!(progress_line(&p, 80).contains("100%"));
    }
}

proptest::proptest! {
    #[test]
    fn progress_line_is_one_short_plain_line(
        done in proptest::prelude::any::<u64>(),
        total in proptest::prelude::any::<u64>(),
        by_time in proptest::prelude::any::<bool>(),
        elapsed_ms in proptest::prelude::any::<u64>(),
        ops in proptest::prelude::any::<f64>(),
        errors in proptest::prelude::any::<u64>(),
        gap_us in proptest::option::of(proptest::prelude::any::<u64>()),
        prefill in proptest::prelude::any::<bool>(),
        width in 0usize..300,
    ) {
        let p = Progress {
            phase: if prefill { Phase::Prefill } else { Phase::Run },
            elapsed: Duration::from_millis(elapsed_ms),
            stop: if by_time {
                Stop::Duration(Duration::from_millis(total))
            } else {
                Stop::Requests(total)
            },
            done,
            ops_per_sec: ops,
            errors,
            write_gap: gap_us.map(Duration::from_micros),
        };
        let line = progress_line(&p, width);
        proptest::prop_assert!(line.len() <= width.min(MAX_PROGRESS_WIDTH), "{line:?}");
        proptest::prop_assert!(
            line.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
            "{line:?}"
        );
    }
}

#[tokio::test]
async fn sampler_sums_the_connections_of_the_current_phase() {
    let cfg = BenchConfig {
        prefill: true,
        stop: Stop::Duration(Duration::from_secs(30)),
        ..config("x".into())
    };
    let shared = Arc::new(RunState::new(cfg, 1, 3));
    let mut samples = Vec::new();
    let mut observer = |p: &Progress| samples.push(*p);
    let mut sampler = Sampler::new(shared.clone(), PROGRESS_INTERVAL, &mut observer);
    let began = sampler.began;
    let at = |ms| began + Duration::from_millis(ms);
    let tally = |ok, failed| Tally {
        ok,
        failed,
        ..Tally::new()
    };
    shared.counts[0].publish(Phase::Prefill, &tally(100, 1));
    shared.counts[2].publish(Phase::Prefill, &tally(100, 0));
    sampler.sample(at(1000));
    // The measured run begins; its counts start from zero, and no write
    // has succeeded yet: the write gap is the whole run so far.
    shared.start.set(at(2000)).unwrap();
    shared.counts[1].publish(Phase::Run, &tally(300, 2));
    sampler.sample(at(4000));
    shared.counts[1].publish(Phase::Run, &tally(500, 2));
    shared.counts[2].publish(Phase::Run, &tally(100, 1));
    sampler.sample(at(4500));
    drop(sampler);
    let keys = 64 * 4;
    assert_eq!(
        samples,
        vec![
            Progress {
                phase: Phase::Prefill,
                elapsed: Duration::from_secs(1),
                stop: Stop::Requests(keys),
                done: 201,
                ops_per_sec: 200.0,
                errors: 1,
                write_gap: None,
            },
            Progress {
                phase: Phase::Run,
                elapsed: Duration::from_secs(2),
                stop: Stop::Duration(Duration::from_secs(30)),
                done: 302,
                ops_per_sec: 150.0,
                errors: 2,
                write_gap: Some(Duration::from_secs(2)),
            },
            Progress {
                phase: Phase::Run,
                elapsed: Duration::from_millis(2500),
                stop: Stop::Duration(Duration::from_secs(30)),
                done: 603,
                ops_per_sec: 600.0,
                errors: 3,
                write_gap: Some(Duration::from_millis(2500)),
            },
        ]
    );
}

#[tokio::test]
async fn sampler_shows_nothing_before_a_run_without_prefill() {
    let shared = Arc::new(RunState::new(config("x".into()), 1, 2));
    let mut calls = 0;
    let mut observer = |_: &Progress| calls += 1;
    let mut sampler = Sampler::new(shared, PROGRESS_INTERVAL, &mut observer);
    sampler.sample(Instant::now() + Duration::from_secs(1));
    drop(sampler);
    assert_eq!(calls, 0);
}
