//! `deep-sched report`: synth → learn → report; every PNG decodes, has the
//! expected size and is not blank.

use deep_sched_core::policy::Policy;
use deep_sched_learn::learn::{learn, LearnOptions, States};
use deep_sched_learn::report::report;
use deep_sched_learn::synth::synth;

/// Decodes a PNG; returns (width, height, number of distinct RGB colours).
fn decode(path: &std::path::Path) -> (u32, u32, usize) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    assert!(px >= 3, "{}: {:?}", path.display(), info.color_type);
    let colours: std::collections::BTreeSet<[u8; 3]> = buf[..info.buffer_size()]
        .chunks_exact(px)
        .map(|c| [c[0], c[1], c[2]])
        .collect();
    (info.width, info.height, colours.len())
}

#[test]
fn report_writes_four_non_blank_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let samples = dir.path().join("samples.jsonl");
    let mut f = std::fs::File::create(&samples).unwrap();
    synth(600, 5, 40, &mut f).unwrap();
    drop(f);
    let opts = LearnOptions {
        states: States::Fixed(4),
        seed: 1,
        created: "2026-01-01T00:00:00Z".into(),
        ..LearnOptions::default()
    };
    let learned = learn(std::slice::from_ref(&samples), &opts, |_, _, _| {}).unwrap();
    let policy_path = dir.path().join("policy.json");
    std::fs::write(
        &policy_path,
        serde_json::to_string(&learned.policy).unwrap(),
    )
    .unwrap();
    let policy = Policy::load(policy_path.display().to_string()).unwrap();

    let out = dir.path().join("plots");
    let files = report(&policy, &[samples], false, false, &out).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "state_means.png",
            "state_timeline.png",
            "policy_heatmap.png",
            "learning_curve.png"
        ]
    );
    for f in &files {
        let (w, h, colours) = decode(f);
        assert_eq!((w, h), (900, 500), "{}", f.display());
        // Blank would be one colour (the white background).
        assert!(colours >= 2, "{} has {colours} colour(s)", f.display());
    }
}

#[test]
fn report_refuses_samples_of_another_agent() {
    let dir = tempfile::tempdir().unwrap();
    let samples = dir.path().join("samples.jsonl");
    let mut f = std::fs::File::create(&samples).unwrap();
    synth(300, 2, 40, &mut f).unwrap();
    drop(f);
    let opts = LearnOptions {
        states: States::Fixed(3),
        created: "2026-01-01T00:00:00Z".into(),
        ..LearnOptions::default()
    };
    let learned = learn(std::slice::from_ref(&samples), &opts, |_, _, _| {}).unwrap();
    let mut doc = learned.policy;
    doc.agent.upstreams[0].peers[0] = "10.9.9.9:80".into();
    let policy = doc.validate("other").unwrap();
    let e = report(
        &policy,
        std::slice::from_ref(&samples),
        false,
        false,
        &dir.path().join("p"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&samples.display().to_string()) && e.contains("10.9.9.9:80"),
        "{e}"
    );
}
