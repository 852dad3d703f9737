//! Bad input: every decoder — the wire codec and the scenario parser — returns an error
//! for any malformed input and never panics (property tests with proptest).

use echelon::codec::{
    decode, decode_host, decode_reply, encode, encode_host, encode_reply, Codec, CodecError,
    HostAnswer, HostRequest, WireTask, WireVerdict, MAX_FRAME,
};
use echelon::sim::Scenario;
use echelon::{AuditEntry, Decision, EscalationInfo, Path, Role};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Msg {
    Reading { patient: u32, spo2: f32 },
    Note(String),
    Batch(Vec<u64>),
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        (any::<u32>(), -1000.0f32..1000.0)
            .prop_map(|(patient, spo2)| Msg::Reading { patient, spo2 }),
        ".{0,40}".prop_map(Msg::Note),
        prop::collection::vec(any::<u64>(), 0..20).prop_map(Msg::Batch),
    ]
}

fn task() -> impl Strategy<Value = WireTask<Msg>> {
    (
        any::<u64>(),
        any::<u32>(),
        msg(),
        prop::option::of((0.0f64..=1.0, ".{0,20}", ".{0,20}")),
        prop::collection::vec((0u64..1_000_000, ".{1,20}", 0u32..10), 0..5),
        prop::option::of(".{0,30}"),
    )
        .prop_map(|(id, attempt, payload, esc, trail, trace)| {
            let mut t = WireTask::new(id, payload);
            t.attempt = attempt;
            t.escalation = esc.map(|(severity, reason, origin)| EscalationInfo {
                severity,
                reason,
                origin: Path::from(origin.as_str()),
                from: Path::from("a/b"),
                key: None,
            });
            t.trail = trail
                .into_iter()
                .map(|(ms, path, level)| AuditEntry {
                    at: std::time::Duration::from_millis(ms),
                    path: Path::from(path.as_str()),
                    level,
                    role: Role::Agent,
                    decision: Decision::Handled,
                })
                .collect();
            t.trace = trace;
            t
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_are_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode::<Msg>(&bytes);
    }

    #[test]
    fn random_bytes_into_the_cluster_frames_are_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        // host requests and answers, and remote verdicts: what crosses between nodes
        let _ = decode_host::<HostRequest>(&bytes);
        let _ = decode_host::<HostAnswer>(&bytes);
        let _ = decode_reply::<Msg>(&bytes);
    }

    #[test]
    fn a_verdict_and_a_request_survive_the_wire(m in msg(), severity in 0.0f64..=1.0, reason in ".{0,30}", key in prop::option::of(".{0,10}"), team in any::<u64>(), index in any::<u32>(), frame in prop::collection::vec(any::<u8>(), 0..200)) {
        for v in [WireVerdict::Done, WireVerdict::Reply(m.clone()), WireVerdict::Escalate { severity, reason: reason.clone(), key: key.clone(), payload: m.clone() }, WireVerdict::Crashed(reason.clone())] {
            let bytes = encode_reply(v.clone()).expect("encode");
            prop_assert_eq!(decode_reply::<Msg>(&bytes), Ok(v));
        }
        let req = HostRequest::Task { team, index, task: frame };
        let bytes = encode_host(&req).expect("encode");
        prop_assert_eq!(decode_host::<HostRequest>(&bytes), Ok(req));
        // any cut of a valid frame is an error
        for cut in 0..bytes.len() {
            prop_assert!(decode_host::<HostRequest>(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn a_task_survives_the_wire(t in task()) {
        let bytes = encode(&t).expect("encodable");
        prop_assert_eq!(decode::<Msg>(&bytes).expect("decodes"), t);
    }

    #[test]
    fn a_truncated_frame_is_rejected(t in task(), cut in 0usize..10_000) {
        let bytes = encode(&t).expect("encodable");
        let cut = cut % bytes.len().max(1);
        prop_assert!(decode::<Msg>(&bytes[..cut]).is_err());
    }

    #[test]
    fn flipped_bits_never_panic(t in task(), flips in prop::collection::vec((any::<usize>(), 0u8..8), 1..8)) {
        let mut bytes = encode(&t).expect("encodable");
        for (at, bit) in flips {
            let i = at % bytes.len();
            bytes[i] ^= 1 << bit;
        }
        let _ = decode::<Msg>(&bytes);
    }

    #[test]
    fn any_text_is_a_scenario_or_a_clear_error(text in "(?s).{0,400}") {
        if let Err(e) = Scenario::parse(&text, std::path::Path::new("fuzz.toml")) {
            prop_assert!(!e.message.is_empty());
            prop_assert!(e.to_string().starts_with("fuzz.toml:"));
        }
    }
}

#[test]
fn a_hostile_length_prefix_fails_fast_without_allocating_it() {
    // a Note whose string claims u64::MAX bytes
    let mut bytes = encode(&WireTask::new(1, Msg::Note(String::new()))).unwrap();
    let last = bytes.len() - 1; // the empty string's length byte
    bytes.truncate(last);
    bytes.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    assert!(matches!(
        decode::<Msg>(&bytes),
        Err(CodecError::Malformed(_))
    ));
}

#[test]
fn oversized_and_trailing_frames_and_other_versions_are_rejected_and_counted() {
    let codec = Codec::default();
    let big = vec![0u8; MAX_FRAME + 1];
    assert!(matches!(
        codec.decode::<Msg>(&big),
        Err(CodecError::TooLarge { .. })
    ));
    let mut bytes = encode(&WireTask::new(9, Msg::Batch(vec![1, 2, 3]))).unwrap();
    bytes.push(0);
    assert_eq!(codec.decode::<Msg>(&bytes), Err(CodecError::Trailing(1)));
    let mut other = WireTask::new(9, Msg::Note("x".into()));
    other.version = 2;
    let e = codec.decode::<Msg>(&encode(&other).unwrap()).unwrap_err();
    assert!(e.to_string().contains("same echelon version"), "{e}");
    let good = encode(&WireTask::new(3, Msg::Note("ok".into()))).unwrap();
    assert!(codec.decode::<Msg>(&good).is_ok());
    assert_eq!((codec.decoded(), codec.rejected()), (1, 3));
}
