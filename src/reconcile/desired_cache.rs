//! The last good desired-state document from the hub, kept in `state_dir/desired.json`.
//!
//! A document offered to the cache is taken as a whole or not at all:
//! - over [`MAX_FILE_BYTES`], or not a valid document: refused, naming the path of the
//!   bad field;
//! - a `generation` below the one held: refused as a rollback (a hub, or someone
//!   between it and the agent, serving an older state: TUF's rollback attack);
//! - the held generation with other content: refused as a conflict (a generation names
//!   one document for good);
//! - the held generation and the same content: unchanged;
//! - anything else: written durably (temp file, fsync, rename, directory fsync) and
//!   only then held.
//!
//! A restart holds what the file holds, so a host whose hub is down converges toward
//! the last good state. This module never holds a document it has not made durable,
//! never drops the one it holds for a refused or unsaved one, and never stands in an
//! empty state for a missing one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::desired::{DesiredState, Invalid, MAX_FILE_BYTES};
use crate::base::sync::lock;
use crate::store::{Io, replace_file};

/// Why an offered document was not taken. The held one stays.
#[derive(Debug)]
#[non_exhaustive]
pub enum DesiredOfferError {
    /// Larger than the 16 MiB a desired-state document may be.
    TooLarge {
        /// Its size.
        len: usize,
    },
    /// Not a valid desired-state document.
    Invalid(Invalid),
    /// Its generation is below the one held.
    Rollback {
        /// The generation offered.
        offered: u64,
        /// The generation held.
        held: u64,
    },
    /// The held generation, with other content.
    Conflict {
        /// The generation both name.
        generation: u64,
    },
    /// It could not be made durable (so it is not held either).
    Write {
        /// The cache file.
        file: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

impl DesiredOfferError {
    /// The word the audit log and the log use.
    pub fn code(&self) -> &'static str {
        match self {
            DesiredOfferError::TooLarge { .. } => "desired_too_large",
            DesiredOfferError::Invalid(_) => "desired_invalid",
            DesiredOfferError::Rollback { .. } => "desired_rollback",
            DesiredOfferError::Conflict { .. } => "desired_conflict",
            DesiredOfferError::Write { .. } => "desired_not_saved",
        }
    }
}

impl fmt::Display for DesiredOfferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DesiredOfferError::TooLarge { len } => {
                write!(f, "document is {len} bytes, more than {MAX_FILE_BYTES}")
            }
            DesiredOfferError::Invalid(e) => write!(f, "document invalid at {e}"),
            DesiredOfferError::Rollback { offered, held } => write!(
                f,
                "generation {offered} is below the generation held ({held}): a rollback"
            ),
            DesiredOfferError::Conflict { generation } => write!(
                f,
                "generation {generation} is held with other content: a generation names one document"
            ),
            DesiredOfferError::Write { file, source } => {
                write!(f, "cannot save {}: {source}", file.display())
            }
        }
    }
}

impl std::error::Error for DesiredOfferError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DesiredOfferError::Invalid(e) => Some(e),
            DesiredOfferError::Write { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What became of an offered document that was not refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// Saved and now held.
    Accepted(DesiredState),
    /// The document held already.
    Unchanged,
}

/// The desired-state cache over one file.
pub struct DesiredCache {
    path: PathBuf,
    io: Arc<dyn Io>,
    held: Mutex<Option<DesiredState>>,
}

impl fmt::Debug for DesiredCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DesiredCache")
            .field("path", &self.path)
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl DesiredCache {
    /// Opens the cache at `path`, holding what it holds. Opening never writes. A file
    /// that is missing holds nothing; one that cannot be read or is not a valid
    /// document holds nothing either, and is logged (`desired_cache_unusable`) and
    /// left where it is for an operator.
    pub fn open(path: impl Into<PathBuf>, io: Arc<dyn Io>) -> DesiredCache {
        let path = path.into();
        let held = match io.read(&path) {
            Ok(None) => None,
            Ok(Some(bytes)) => match parse(&bytes) {
                Ok(state) => Some(state),
                Err(e) => {
                    unusable(&path, &e.to_string());
                    None
                }
            },
            Err(e) => {
                unusable(&path, &e.to_string());
                None
            }
        };
        DesiredCache {
            path,
            io,
            held: Mutex::new(held),
        }
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The document held, if any.
    pub fn held(&self) -> Option<DesiredState> {
        lock(&self.held).clone()
    }

    /// The generation held, if any.
    pub fn generation(&self) -> Option<u64> {
        lock(&self.held).as_ref().map(|s| s.generation)
    }

    /// Offers a document's bytes (see the module doc for the rules).
    pub fn offer(&self, bytes: &[u8]) -> Result<Offered, DesiredOfferError> {
        let state = parse(bytes)?;
        let mut held = lock(&self.held);
        if let Some(h) = held.as_ref() {
            if state.generation < h.generation {
                return Err(DesiredOfferError::Rollback {
                    offered: state.generation,
                    held: h.generation,
                });
            }
            if state.generation == h.generation {
                return if state == *h {
                    Ok(Offered::Unchanged)
                } else {
                    Err(DesiredOfferError::Conflict {
                        generation: state.generation,
                    })
                };
            }
        }
        replace_file(self.io.as_ref(), &self.path, bytes).map_err(|source| {
            DesiredOfferError::Write {
                file: self.path.clone(),
                source,
            }
        })?;
        *held = Some(state.clone());
        Ok(Offered::Accepted(state))
    }
}

fn parse(bytes: &[u8]) -> Result<DesiredState, DesiredOfferError> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(DesiredOfferError::TooLarge { len: bytes.len() });
    }
    DesiredState::from_json(bytes).map_err(DesiredOfferError::Invalid)
}

fn unusable(path: &Path, why: &str) {
    crate::warn!(
        desired_cache_unusable,
        "cached desired state unusable; holding none until the hub serves one",
        file = path.display(),
        error = why
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FaultOp, FaultyIo, OsIo};

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("felhom-dcache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn doc(generation: u64, cores: u32) -> Vec<u8> {
        format!(
            r#"{{"generation":{generation},"guests":[{{"vmid":100,"spec":{{"cores":{cores}}}}}]}}"#
        )
        .into_bytes()
    }

    #[test]
    fn an_accepted_document_is_held_and_survives_a_reopen() {
        let d = dir("reopen");
        let path = d.join("desired.json");
        let cache = DesiredCache::open(&path, Arc::new(OsIo));
        assert_eq!(cache.held(), None, "nothing yet, never an empty state");
        assert!(matches!(cache.offer(&doc(3, 2)), Ok(Offered::Accepted(_))));
        assert_eq!(cache.generation(), Some(3));
        let again = DesiredCache::open(&path, Arc::new(OsIo));
        assert_eq!(again.held(), cache.held());
        assert_eq!(std::fs::read(&path).unwrap(), doc(3, 2), "the bytes served");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn rollback_conflict_and_invalid_are_refused_and_the_held_one_stays() {
        let d = dir("refuse");
        let path = d.join("desired.json");
        let cache = DesiredCache::open(&path, Arc::new(OsIo));
        cache.offer(&doc(5, 2)).unwrap();
        let held = cache.held();

        let e = cache.offer(&doc(4, 8)).unwrap_err();
        assert!(
            matches!(
                e,
                DesiredOfferError::Rollback {
                    offered: 4,
                    held: 5
                }
            ),
            "{e}"
        );
        assert_eq!(e.code(), "desired_rollback");

        let e = cache.offer(&doc(5, 8)).unwrap_err();
        assert!(
            matches!(e, DesiredOfferError::Conflict { generation: 5 }),
            "{e}"
        );

        // The same document with other spacing is the same document.
        let spaced = String::from_utf8(doc(5, 2)).unwrap().replace(',', ", ");
        assert_eq!(cache.offer(spaced.as_bytes()).unwrap(), Offered::Unchanged);

        let bad = br#"{"generation":6,"guests":[{"vmid":100,"spec":{"cores":"four"}}]}"#;
        match cache.offer(bad).unwrap_err() {
            DesiredOfferError::Invalid(i) => assert_eq!(i.path, "guests[0].spec.cores"),
            e => panic!("expected invalid, got {e}"),
        }
        let huge = vec![b' '; usize::try_from(MAX_FILE_BYTES).unwrap() + 1];
        assert!(matches!(
            cache.offer(&huge),
            Err(DesiredOfferError::TooLarge { .. })
        ));

        assert_eq!(cache.held(), held);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            doc(5, 2),
            "the file is untouched"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_document_that_cannot_be_saved_is_not_held() {
        let d = dir("unsaved");
        let path = d.join("desired.json");
        DesiredCache::open(&path, Arc::new(OsIo))
            .offer(&doc(1, 2))
            .unwrap();
        let cache = DesiredCache::open(&path, Arc::new(FaultyIo::new(FaultOp::Sync, 1, false)));
        let e = cache.offer(&doc(2, 4)).unwrap_err();
        assert_eq!(e.code(), "desired_not_saved");
        assert_eq!(cache.generation(), Some(1), "the saved one is still held");
        assert_eq!(std::fs::read(&path).unwrap(), doc(1, 2));
        // The next try, with the disk back, saves it.
        assert!(matches!(cache.offer(&doc(2, 4)), Ok(Offered::Accepted(_))));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_damaged_cache_file_holds_nothing_and_is_left_for_an_operator() {
        let d = dir("damaged");
        let path = d.join("desired.json");
        std::fs::write(&path, b"{\"generation\":").unwrap();
        let cache = DesiredCache::open(&path, Arc::new(OsIo));
        assert_eq!(cache.held(), None);
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"generation\":");
        let _ = std::fs::remove_dir_all(&d);
    }
}
