//! The task's stdout and stderr, kept in `<task dir>/output.log` for `mesh service logs`.
//!
//! # Format
//! One record per line: `<RFC 3339 UTC time, µs> <stdout|stderr> <text>\n`, e.g.
//! `2026-01-02T03:04:05.123456Z stderr listening on :80`. Output without a newline is cut into
//! records of at most [`MAX_RECORD`] bytes; bytes are kept as written (not necessarily UTF-8).
//!
//! # Bounds
//! When a record would take `output.log` past the spec's `log_max_bytes`, the file is renamed
//! to `output.log.1` (replacing the previous one) and a new `output.log` is started: at most
//! twice the cap is kept per task.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::runtime::state::TaskDir;

/// Longest record; longer output without a newline is split.
pub const MAX_RECORD: usize = 16 * 1024;

/// Which output of the task a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A parsed record of `output.log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord<'a> {
    /// RFC 3339 time as written.
    pub time: &'a str,
    pub stream: Stream,
    /// The text as the task wrote it (not necessarily UTF-8).
    pub text: &'a [u8],
}

/// Parses one line of `output.log` (without its newline).
pub fn parse_record(line: &[u8]) -> Option<LogRecord<'_>> {
    let space = line.iter().position(|b| *b == b' ')?;
    let time = std::str::from_utf8(&line[..space]).ok()?;
    let rest = &line[space + 1..];
    let (stream, text) = match rest.iter().position(|b| *b == b' ') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    let stream = match stream {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    Some(LogRecord { time, stream, text })
}

/// The output file of one task, with its size cap.
#[derive(Debug)]
pub struct OutputLog {
    path: PathBuf,
    rotated: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    /// Whether a write error was already reported (reported once, not per line).
    failing: bool,
}

impl OutputLog {
    /// Opens (appends to) the task's `output.log`.
    pub fn open(dir: &TaskDir, max_bytes: u64) -> io::Result<OutputLog> {
        let path = dir.output_log();
        let file = open_append(&path)?;
        let size = file.metadata()?.len();
        Ok(OutputLog {
            path,
            rotated: dir.output_log_rotated(),
            file,
            size,
            max_bytes,
            failing: false,
        })
    }

    /// Appends one record. Errors (a full disk) are reported once on the shim's stderr and
    /// otherwise ignored: losing output must not stop the task.
    pub fn write_record(&mut self, stream: Stream, text: &[u8]) {
        let time = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let mut record = Vec::with_capacity(time.len() + text.len() + 9);
        record.extend_from_slice(time.as_bytes());
        record.push(b' ');
        record.extend_from_slice(stream.as_str().as_bytes());
        record.push(b' ');
        record.extend_from_slice(text);
        record.push(b'\n');
        match self.append(&record) {
            Ok(()) => self.failing = false,
            Err(e) => {
                if !self.failing {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot write task output");
                }
                self.failing = true;
            }
        }
    }

    fn append(&mut self, record: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + record.len() as u64 > self.max_bytes {
            fs::rename(&self.path, &self.rotated)?;
            self.file = open_append(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(record)?;
        self.size += record.len() as u64;
        Ok(())
    }
}

fn open_append(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Copies one output pipe of the task into the log, record by record, until EOF.
pub async fn pump(mut pipe: impl AsyncRead + Unpin, stream: Stream, log: Arc<Mutex<OutputLog>>) {
    let mut pending: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 8192];
    let write = |text: &[u8]| {
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        if text.is_empty() {
            log.write_record(stream, text);
        }
        for part in text.chunks(MAX_RECORD) {
            log.write_record(stream, part);
        }
    };
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        pending.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|b| *b == b'\n') {
            write(&pending[start..start + pos]);
            start += pos + 1;
        }
        while pending.len() - start >= MAX_RECORD {
            write(&pending[start..start + MAX_RECORD]);
            start += MAX_RECORD;
        }
        pending.drain(..start);
    }
    if !pending.is_empty() {
        write(&pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_output_log_rotates_at_its_cap() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TaskDir::new(tmp.path());
        let mut log = OutputLog::open(&dir, 1024).unwrap();
        for i in 0..100 {
            log.write_record(Stream::Stdout, format!("line {i}").as_bytes());
        }
        let current = fs::read_to_string(dir.output_log()).unwrap();
        let rotated = fs::read_to_string(dir.output_log_rotated()).unwrap();
        assert!(current.len() <= 1024 && rotated.len() <= 1024);
        assert!(current.trim_end().ends_with("stdout line 99"), "{current}");
        let last_rotated = rotated.lines().last().unwrap();
        let first_current = current.lines().next().unwrap();
        let n = |l: &str| -> u32 {
            let text = parse_record(l.as_bytes()).unwrap().text;
            std::str::from_utf8(&text[5..]).unwrap().parse().unwrap()
        };
        assert_eq!(n(last_rotated) + 1, n(first_current));
    }

    #[tokio::test]
    async fn runtime_pump_splits_lines_and_long_output() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TaskDir::new(tmp.path());
        let log = Arc::new(Mutex::new(OutputLog::open(&dir, 1 << 20).unwrap()));
        let mut input = b"one\ntwo\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_RECORD + 10));
        input.extend_from_slice(b"\nlast without newline");
        pump(&input[..], Stream::Stderr, log).await;
        let text = fs::read_to_string(dir.output_log()).unwrap();
        let records: Vec<_> = text
            .lines()
            .map(|l| parse_record(l.as_bytes()).unwrap())
            .collect();
        let texts: Vec<_> = records.iter().map(|r| r.text.len()).collect();
        assert_eq!(texts, [3, 3, MAX_RECORD, 10, 20]);
        assert_eq!(records[0].text, b"one");
        assert_eq!(records[4].text, b"last without newline");
        assert!(records.iter().all(|r| r.stream == Stream::Stderr));
        assert!(records[0].time.ends_with('Z'));
    }

    #[test]
    fn runtime_parse_record_refuses_other_lines() {
        assert!(parse_record(b"garbage").is_none());
        assert!(parse_record(b"t stdin x").is_none());
        assert_eq!(parse_record(b"t stdout ").unwrap().text, b"");
        assert_eq!(parse_record(b"t stderr").unwrap().text, b"");
        let r = parse_record(b"t stdout a b \xff").unwrap();
        assert_eq!(
            (r.time, r.stream, r.text),
            ("t", Stream::Stdout, &b"a b \xff"[..])
        );
    }
}
