//! Replays the checked-in corpus through the harnesses on stable Rust, and
//! checks the seed generator's inputs are in it (`examples/seeds.rs`
//! regenerates them): `cargo test --manifest-path fuzz/Cargo.toml`.

use std::path::Path;

fn runner(target: &str) -> fn(&[u8]) {
    match target {
        "checkpoint_container" => hotspare_fuzz::container::run,
        "page_records" => hotspare_fuzz::pages::run,
        "state_codec" => hotspare_fuzz::state::run,
        "device_records" => hotspare_fuzz::devices::run,
        "replication_messages" => hotspare_fuzz::messages::run,
        "frame_reader" => |d| {
            hotspare_fuzz::transport::frame_reader(d);
        },
        "handshake" => |d| {
            hotspare_fuzz::transport::handshake(d);
        },
        other => panic!("no harness for corpus/{other}: add it here"),
    }
}

#[test]
fn every_corpus_input_passes_its_harness() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut n = 0;
    for dir in std::fs::read_dir(&corpus).expect("fuzz/corpus") {
        let dir = dir.unwrap().path();
        let run = runner(dir.file_name().unwrap().to_str().unwrap());
        for f in std::fs::read_dir(&dir).unwrap() {
            run(&std::fs::read(f.unwrap().path()).unwrap());
            n += 1;
        }
    }
    assert!(n > 0, "the corpus is empty");
}

#[test]
fn the_generated_seeds_are_checked_in() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for s in hotspare_fuzz::seeds::all() {
        let path = corpus.join(s.target).join(s.name);
        let have = std::fs::read(&path).unwrap_or_default();
        assert!(
            have == s.bytes,
            "{} is missing or stale: run `cargo run --example seeds -- corpus` in fuzz/",
            path.display()
        );
    }
}

#[test]
fn the_seeds_are_accepted_by_their_decoders() {
    use engine::replication::wire;
    use hotspare_fuzz::container::LIMITS;

    for s in hotspare_fuzz::seeds::all() {
        let (ctl, b) = (s.bytes[0], &s.bytes[1..]);
        let what = format!("{}/{}", s.target, s.name);
        let ok = match s.target {
            "checkpoint_container" => {
                let mut staged = engine::staged::StagedEpoch::default();
                staged.parse(b, &LIMITS, None, 1 << 30).is_ok()
                    && (s.name == "precopy" || staged.state().is_ok())
            }
            "page_records" => {
                checkpoint::pages::decode_records_with_deltas(
                    b,
                    |_, _| Ok(()),
                    |_, _| Ok(()),
                    |_, _| Ok(()),
                )
                .is_ok()
                    && !b.is_empty()
            }
            "state_codec" => {
                let id = hotspare_fuzz::state::SECTIONS[usize::from(ctl)];
                engine::snapshot::StateSections::default()
                    .take(id, b)
                    .is_ok()
            }
            "device_records" => hotspare_fuzz::devices::with_env(|env| {
                let mut records = env.baseline.clone();
                if ctl == 0 {
                    records = checkpoint::devices::decode(b).unwrap();
                } else {
                    records[usize::from(ctl) - 1].data = b.to_vec();
                }
                let ok = env.manager.restore(&records).is_ok();
                env.manager.restore(&env.baseline).unwrap();
                ok
            }),
            "replication_messages" => match ctl {
                0 => wire::decode::<wire::EpochBegin>("", b).is_ok(),
                1 => wire::decode::<wire::EpochEnd>("", b).is_ok(),
                2 => wire::decode::<wire::Ack>("", b).is_ok(),
                3 => wire::decode::<wire::Nack>("", b).is_ok(),
                4 => wire::decode::<wire::Heartbeat>("", b).is_ok(),
                _ => engine::replication::arbiter::decode("", b).is_ok(),
            },
            // The valid handshakes complete, the others are refused.
            "handshake" => {
                hotspare_fuzz::transport::handshake(&s.bytes) == s.name.ends_with("-valid")
            }
            "frame_reader" => hotspare_fuzz::transport::frame_reader(&s.bytes) > 0,
            other => panic!("unknown target {other}"),
        };
        assert!(ok, "seed {what} is refused by its decoder");
    }
}
