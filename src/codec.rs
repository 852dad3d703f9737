//! The wire: how a task, its escalation context and its audit trail are encoded when
//! they leave the process (cluster nodes). The one place that knows the format.
//!
//! Frames are bincode 2 (standard configuration, varint integers) of a versioned
//! [`WireTask`], at most [`MAX_FRAME`] bytes. Decoding never panics and never allocates
//! more than the limit on a hostile length prefix: a bad frame is an error, and a
//! [`Codec`] counts every rejection.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::envelope::{AuditEntry, EscalationInfo};

/// Largest frame accepted or produced: 16 MiB.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Wire format version; a frame of another version is rejected.
pub const VERSION: u8 = 1;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_FRAME>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// A task as it crosses the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireTask<M> {
    /// [`VERSION`] of the encoder.
    pub version: u8,
    /// The task's id.
    pub id: u64,
    /// Attempts made so far.
    pub attempt: u32,
    /// Escalation context, if it travels as an escalation.
    pub escalation: Option<EscalationInfo>,
    /// Its audit trail.
    pub trail: Vec<AuditEntry>,
    /// The tracing context to continue (e.g. a W3C traceparent), if any.
    pub trace: Option<String>,
    /// The payload.
    pub payload: M,
}

impl<M> WireTask<M> {
    /// A plain task with no escalation, trail or trace.
    pub fn new(id: u64, payload: M) -> Self {
        WireTask {
            version: VERSION,
            id,
            attempt: 0,
            escalation: None,
            trail: Vec::new(),
            trace: None,
            payload,
        }
    }
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Larger than [`MAX_FRAME`].
    #[error("frame of {size} bytes is over the {max}-byte limit; split the payload")]
    TooLarge {
        /// The frame's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not a valid frame for this message type.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// Bytes left over after a complete frame.
    #[error("frame has {0} trailing bytes after the task; frames are not concatenated")]
    Trailing(usize),
    /// Another wire version.
    #[error("frame is wire version {found}, this node speaks {expected}; run the same echelon version on every node")]
    Version {
        /// The frame's version.
        found: u8,
        /// Ours.
        expected: u8,
    },
    /// The payload cannot be encoded (e.g. a map with non-string keys).
    #[error("cannot encode the task: {0}")]
    Encode(String),
}

/// Encode a task.
///
/// # Errors
/// [`CodecError::Encode`] for an unencodable payload, [`CodecError::TooLarge`] past the
/// frame limit.
pub fn encode<M: Serialize>(task: &WireTask<M>) -> Result<Vec<u8>, CodecError> {
    encode_frame(task)
}

/// Decode a task. Never panics, whatever the bytes.
///
/// # Errors
/// [`CodecError`] saying what is wrong with the frame.
pub fn decode<M: DeserializeOwned>(bytes: &[u8]) -> Result<WireTask<M>, CodecError> {
    let task: WireTask<M> = decode_frame(bytes)?;
    check_version(task.version)?;
    Ok(task)
}

/// Encode any frame with the wire configuration and limit.
pub(crate) fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(value, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if bytes.len() > MAX_FRAME {
        return Err(CodecError::TooLarge {
            size: bytes.len(),
            max: MAX_FRAME,
        });
    }
    Ok(bytes)
}

/// Decode any frame: limit first (no allocation past it), then the whole slice must be
/// one value.
pub(crate) fn decode_frame<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_FRAME {
        return Err(CodecError::TooLarge {
            size: bytes.len(),
            max: MAX_FRAME,
        });
    }
    let (value, used): (T, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

fn check_version(found: u8) -> Result<(), CodecError> {
    if found == VERSION {
        Ok(())
    } else {
        Err(CodecError::Version {
            found,
            expected: VERSION,
        })
    }
}

/// What a remote agent made of a task, as it travels back to the node that owns the
/// task (see `cluster`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireVerdict<M> {
    /// Handled, no reply.
    Done,
    /// Handled with a reply.
    Reply(M),
    /// Escalate from the remote agent's position.
    Escalate {
        /// Severity in `0.0..=1.0`.
        severity: f64,
        /// Why.
        reason: String,
        /// Suppression key, if the agent gave one.
        key: Option<String>,
        /// Payload for the level above.
        payload: M,
    },
    /// The remote agent crashed on the task (it was restarted there).
    Crashed(String),
    /// The remote agent rejected the task.
    Rejected(String),
    /// The remote node could not run the task (team not open, decode error, stopping).
    Unavailable(String),
}

/// A [`WireVerdict`] with the wire version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireReply<M> {
    /// [`VERSION`] of the encoder.
    pub version: u8,
    /// The verdict.
    pub verdict: WireVerdict<M>,
}

/// Encode a remote agent's verdict.
///
/// # Errors
/// As [`encode`].
pub fn encode_reply<M: Serialize>(verdict: WireVerdict<M>) -> Result<Vec<u8>, CodecError> {
    encode_frame(&WireReply {
        version: VERSION,
        verdict,
    })
}

/// Decode a remote agent's verdict. Never panics, whatever the bytes.
///
/// # Errors
/// As [`decode`].
pub fn decode_reply<M: DeserializeOwned>(bytes: &[u8]) -> Result<WireVerdict<M>, CodecError> {
    let r: WireReply<M> = decode_frame(bytes)?;
    check_version(r.version)?;
    Ok(r.verdict)
}

/// A request from one node's teams to another node's host. Payloads stay encoded (as
/// [`WireTask`] frames) so the host can route a request before it knows the type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HostRequest {
    /// Start (or find) a hosted team: `count` agents of a registered `kind`.
    Open {
        /// The owner's id for the team (unique per owner).
        team: u64,
        /// The owning node's name.
        owner: String,
        /// The registered kind to build the agents from.
        kind: String,
        /// The tier name (the hosted agents' paths use it).
        name: String,
        /// How many agents.
        count: u32,
        /// Opaque configuration for the kind's builder.
        config: Vec<u8>,
    },
    /// Run one task on agent `index` of a team.
    Task {
        /// The team.
        team: u64,
        /// The agent.
        index: u32,
        /// A [`WireTask`] frame.
        task: Vec<u8>,
    },
    /// Stop a team.
    Close {
        /// The team.
        team: u64,
    },
}

/// The host's answer to a [`HostRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HostAnswer {
    /// The team is running.
    Opened,
    /// A task's [`WireReply`] frame.
    Verdict(Vec<u8>),
    /// The team was stopped.
    Closed,
    /// The request could not be served, and why.
    Error(String),
}

#[derive(Serialize, Deserialize)]
struct Versioned<T> {
    version: u8,
    body: T,
}

/// Encode a host request or answer with the wire version.
///
/// # Errors
/// As [`encode`].
pub fn encode_host<T: Serialize>(body: &T) -> Result<Vec<u8>, CodecError> {
    encode_frame(&Versioned {
        version: VERSION,
        body,
    })
}

/// Decode a host request or answer. Never panics, whatever the bytes.
///
/// # Errors
/// As [`decode`].
pub fn decode_host<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let v: Versioned<T> = decode_frame(bytes)?;
    check_version(v.version)?;
    Ok(v.body)
}

/// A decoder that counts what it accepts and rejects (a node's wire statistics).
#[derive(Debug, Default)]
pub struct Codec {
    decoded: AtomicU64,
    rejected: AtomicU64,
}

impl Codec {
    /// Decode a frame, counting it; a rejected frame is logged and its error returned.
    ///
    /// # Errors
    /// As [`decode`].
    pub fn decode<M: DeserializeOwned>(&self, bytes: &[u8]) -> Result<WireTask<M>, CodecError> {
        self.count(bytes.len(), decode(bytes))
    }

    /// Count the result of any decoder: a rejection is logged and counted.
    ///
    /// # Errors
    /// `result`'s error, unchanged.
    pub fn count<T>(&self, bytes: usize, result: Result<T, CodecError>) -> Result<T, CodecError> {
        match result {
            Ok(t) => {
                self.decoded.fetch_add(1, Ordering::Relaxed);
                Ok(t)
            }
            Err(e) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, bytes, "rejected a frame");
                Err(e)
            }
        }
    }

    /// Frames decoded.
    pub fn decoded(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }

    /// Frames rejected.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}
