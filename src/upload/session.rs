//! One upload: the bytes a client sends, on their way to the import's worker, which pulls
//! them. Nothing is stored: a bounded channel between the two holds a few frames, so a
//! client can only send as fast as the worker takes in, and the offset a client is told is
//! what the worker has taken in (the offset its next pull starts at).

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

/// Frames held between client and worker (each at most one hyper read, tens of KiB).
const FRAMES: usize = 32;

/// Which upload: an ImageImport's generation (a spec change starts a new upload).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
}

impl UploadId {
    /// The last path segment of the upload's URL.
    pub fn resource(&self) -> String {
        format!("g{}-{}", self.generation, self.uid)
    }
}

/// How an upload ended for the worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    Imported,
    Failed {
        reason: String,
        message: String,
    },
    /// The client terminated it (tus DELETE).
    Terminated,
}

#[derive(Debug)]
pub struct State {
    /// Announced by the client (tus `Upload-Length`).
    pub length: Option<u64>,
    pub max_bytes: Option<u64>,
    /// Bytes the worker has taken in.
    pub consumed: u64,
    /// Bytes handed to the channel (or already to the worker): `consumed..forwarded` are in
    /// flight.
    pub forwarded: u64,
    /// Bytes handed to the worker in pull answers.
    pub handed: u64,
    /// The worker Job pulling (a new one starts over from its own offset).
    pub job: Option<String>,
    /// The PATCH request allowed to write (a newer one takes over: one writer at a time).
    pub writer: u64,
    pub last_activity: SystemTime,
    /// Without a byte for this long the worker gives up (`UploadExpired`); told by the worker.
    pub expiry: Option<Duration>,
    pub ended: Option<Ended>,
    /// Bumped whenever the channel is replaced (the worker rewound): senders holding the old
    /// one stop.
    pub epoch: u64,
    /// Another session of the same import took this one's place: it reports nothing more.
    pub superseded: bool,
    tx: mpsc::Sender<Bytes>,
    rx: std::sync::Arc<tokio::sync::Mutex<mpsc::Receiver<Bytes>>>,
}

impl State {
    fn rewind(&mut self, offset: u64) {
        let (tx, rx) = mpsc::channel(FRAMES);
        self.tx = tx;
        self.rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
        self.consumed = offset;
        self.forwarded = offset;
        self.handed = offset;
        self.writer += 1;
        self.epoch += 1;
    }
}

/// What `status.upload` last said of a session: offset, length, expiry.
pub type Reported = (u64, Option<u64>, Option<String>);

pub struct Session {
    pub id: UploadId,
    state: Mutex<State>,
    /// Held while this session's `status.upload` is written (one write at a time).
    pub reported: tokio::sync::Mutex<Option<Reported>>,
    /// Bumped on every change of `state` worth waking a waiter for.
    changed: watch::Sender<u64>,
}

impl Session {
    pub fn new(id: UploadId, offset: u64, length: Option<u64>, max_bytes: Option<u64>) -> Self {
        let (tx, rx) = mpsc::channel(FRAMES);
        Session {
            id,
            state: Mutex::new(State {
                length,
                max_bytes,
                consumed: offset,
                forwarded: offset,
                handed: offset,
                job: None,
                writer: 0,
                last_activity: SystemTime::now(),
                expiry: None,
                ended: None,
                epoch: 0,
                superseded: false,
                tx,
                rx: std::sync::Arc::new(tokio::sync::Mutex::new(rx)),
            }),
            reported: tokio::sync::Mutex::new(None),
            changed: watch::Sender::new(0),
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let r = f(&mut self.state.lock().expect("session lock"));
        self.changed.send_modify(|v| *v += 1);
        r
    }

    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().expect("session lock"))
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// When the upload expires without a byte (if the worker said how long it waits).
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.read(|s| s.expiry.map(|e| s.last_activity + e))
    }

    /// Start over from `offset` (a new worker, or one whose last pull was lost): what is in
    /// flight is dropped, the writer stops, and the client resends from there.
    pub fn rewind(&self, offset: u64) {
        self.with(|s| s.rewind(offset));
    }

    /// Take over as the writer; returns the writer id.
    pub fn take_writer(&self) -> u64 {
        self.with(|s| {
            s.writer += 1;
            s.writer
        })
    }

    /// Hand `data`, which starts at upload offset `at`, towards the worker (waiting while the
    /// channel is full). Bytes before `forwarded` were handed on already and are skipped.
    /// Returns false when this writer was replaced or the channel rewound.
    pub async fn forward(
        &self,
        writer: u64,
        at: u64,
        data: Bytes,
    ) -> Result<bool, super::error::UploadError> {
        use super::error::UploadError;
        let end = at + data.len() as u64;
        let (tx, epoch, skip) = {
            let s = self.state.lock().expect("session lock");
            if let Some(e) = &s.ended {
                return Err(ended_error(e));
            }
            if s.writer != writer {
                return Ok(false);
            }
            if let Some(len) = s.length
                && end > len
            {
                return Err(UploadError::BadRequest(format!(
                    "more bytes than the Upload-Length of {len}"
                )));
            }
            if let Some(max) = s.max_bytes
                && end > max
            {
                return Err(UploadError::TooLarge(format!(
                    "the archive is larger than this import's source.upload.maxBytes ({max})"
                )));
            }
            if end <= s.forwarded {
                return Ok(true);
            }
            if at > s.forwarded {
                return Err(UploadError::Conflict(format!(
                    "bytes from offset {at}, but the upload is at {}",
                    s.forwarded
                )));
            }
            (s.tx.clone(), s.epoch, (s.forwarded - at) as usize)
        };
        let data = data.slice(skip..);
        let mut changes = self.subscribe();
        let permit = loop {
            tokio::select! {
                p = tx.reserve() => match p {
                    Ok(p) => break p,
                    Err(_) => return Ok(false),
                },
                _ = changes.changed() => {
                    if let Some(e) = self.read(|s| s.ended.clone()) {
                        return Err(ended_error(&e));
                    }
                    if self.read(|s| s.writer != writer || s.epoch != epoch) {
                        return Ok(false);
                    }
                }
            }
        };
        let n = data.len() as u64;
        let sent = self.with(|s| {
            if s.writer != writer || s.epoch != epoch || s.ended.is_some() {
                return false;
            }
            permit.send(data);
            s.forwarded += n;
            s.last_activity = SystemTime::now();
            true
        });
        Ok(sent)
    }

    /// The worker took in everything before `offset` and asks for what follows: up to
    /// `max` bytes of what is there, waiting up to `wait` for the first frame.
    pub async fn pull(&self, offset: u64, max: usize, wait: Duration) -> Pulled {
        let (rx, epoch) = {
            let mut s = self.state.lock().expect("session lock");
            // Not where the last answer ended: that answer was lost (or this is a new worker,
            // or this service restarted). What was in flight is gone; the client resends.
            if offset != s.handed {
                tracing::info!(upload = ?self.id, offset, handed = s.handed, "the worker starts over from its offset");
                s.rewind(offset);
            }
            s.consumed = offset;
            (s.rx.clone(), s.epoch)
        };
        self.changed.send_modify(|v| *v += 1);
        if let Some(e) = self.read(|s| s.ended.clone()) {
            return Pulled::Ended(e);
        }
        if self.read(|s| s.length.is_some_and(|l| offset >= l)) {
            return Pulled::Complete;
        }
        let mut rx = rx.lock().await;
        let mut out = Vec::new();
        let mut size = 0usize;
        let mut changes = self.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        let first = loop {
            tokio::select! {
                b = rx.recv() => break b,
                _ = changes.changed() => {
                    if let Some(e) = self.read(|s| s.ended.clone()) {
                        return Pulled::Ended(e);
                    }
                    if self.read(|s| s.epoch != epoch) {
                        return Pulled::Nothing;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Pulled::Nothing,
            }
        };
        let Some(first) = first else {
            return Pulled::Nothing;
        };
        size += first.len();
        out.push(first);
        while size < max {
            match rx.try_recv() {
                Ok(b) => {
                    size += b.len();
                    out.push(b);
                }
                Err(_) => break,
            }
        }
        let handed = self.with(|s| {
            if s.epoch != epoch {
                return false;
            }
            s.handed += size as u64;
            true
        });
        if !handed {
            return Pulled::Nothing;
        }
        Pulled::Data(out)
    }

    /// Wait until the worker took in `offset` bytes, the upload ended, or `wait` passed.
    pub async fn wait_consumed(&self, offset: u64, wait: Duration) {
        let mut changes = self.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.read(|s| {
                s.consumed >= offset || s.ended.is_some() || s.superseded || s.forwarded < offset
            }) {
                return;
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

pub enum Pulled {
    Data(Vec<Bytes>),
    /// Nothing arrived in time (or the upload rewound): ask again.
    Nothing,
    /// Every announced byte was taken in.
    Complete,
    Ended(Ended),
}

pub fn ended_error(e: &Ended) -> super::error::UploadError {
    use super::error::UploadError;
    match e {
        Ended::Imported => UploadError::Gone("this upload is complete and was imported".into()),
        Ended::Terminated => UploadError::Gone("this upload was terminated".into()),
        Ended::Failed { reason, message } => UploadError::ImportFailed {
            reason: reason.clone(),
            message: message.clone(),
        },
    }
}
