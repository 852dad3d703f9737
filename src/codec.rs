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
    let bytes = bincode::serde::encode_to_vec(task, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if bytes.len() > MAX_FRAME {
        return Err(CodecError::TooLarge {
            size: bytes.len(),
            max: MAX_FRAME,
        });
    }
    Ok(bytes)
}

/// Decode a task. Never panics, whatever the bytes.
///
/// # Errors
/// [`CodecError`] saying what is wrong with the frame.
pub fn decode<M: DeserializeOwned>(bytes: &[u8]) -> Result<WireTask<M>, CodecError> {
    if bytes.len() > MAX_FRAME {
        return Err(CodecError::TooLarge {
            size: bytes.len(),
            max: MAX_FRAME,
        });
    }
    let (task, used): (WireTask<M>, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    if task.version != VERSION {
        return Err(CodecError::Version {
            found: task.version,
            expected: VERSION,
        });
    }
    Ok(task)
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
        match decode(bytes) {
            Ok(t) => {
                self.decoded.fetch_add(1, Ordering::Relaxed);
                Ok(t)
            }
            Err(e) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, bytes = bytes.len(), "rejected a frame");
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
