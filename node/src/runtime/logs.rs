//! Reading a task's output back, for `mesh service logs`: what is written already (all of
//! it, or its last N records) and then, when following, what the shim appends later.
//!
//! The shim rotates `output.log` to `output.log.1` at its cap (see [`super::shim::output`]).
//! The reader holds the file it reads open, so a rotation never loses records: it reads the
//! renamed file to its end, then opens the new `output.log`. Files are told apart by inode.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;

use super::shim::output::{MAX_RECORD, Stream, parse_record};
use super::state::TaskDir;

/// One record of task output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// RFC 3339 UTC time as the shim wrote it (empty for a line that is not a record).
    pub time: String,
    pub stream: Stream,
    pub text: Vec<u8>,
}

impl Record {
    fn parse(line: &[u8]) -> Record {
        match parse_record(line) {
            Some(r) => Record {
                time: r.time.to_string(),
                stream: r.stream,
                text: r.text.to_vec(),
            },
            // Not written by the shim (a hand-edited file): kept whole rather than dropped.
            None => Record {
                time: String::new(),
                stream: Stream::Stdout,
                text: line.to_vec(),
            },
        }
    }
}

/// Reads the output of one task, in order, across rotations.
pub struct LogReader {
    dir: TaskDir,
    /// The current `output.log` as last opened, and its inode.
    file: Option<(File, u64)>,
    /// Bytes read after the last newline (a record still being written).
    partial: Vec<u8>,
}

impl LogReader {
    /// A reader of the task in `dir`; `NotFound` when there is no such task dir.
    pub fn open(dir: TaskDir) -> io::Result<LogReader> {
        if !dir.path().is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no task dir {}", dir.path().display()),
            ));
        }
        Ok(LogReader {
            dir,
            file: None,
            partial: Vec::new(),
        })
    }

    /// Everything written so far, or only its last `tail` records, oldest first. Later
    /// [`poll`](Self::poll)s return what is written after.
    pub fn backlog(&mut self, tail: Option<u64>) -> io::Result<Vec<Record>> {
        let mut out = Tail::new(tail);
        // The current file first, so that a rotation between the two opens is seen (the
        // rotated file is then the one already open, and is read once).
        self.file = open_with_inode(&self.dir.output_log())?;
        if let Some((mut rotated, ino)) = open_with_inode(&self.dir.output_log_rotated())?
            && self
                .file
                .as_ref()
                .is_none_or(|(_, current)| *current != ino)
        {
            let mut partial = Vec::new();
            read_records(&mut rotated, &mut partial, |r| out.push(r))?;
            if !partial.is_empty() {
                out.push(Record::parse(&partial));
            }
        }
        self.read_current(|r| out.push(r))?;
        Ok(out.into_vec())
    }

    /// The records appended since the last call. Call [`backlog`](Self::backlog) first.
    pub fn poll(&mut self) -> io::Result<Vec<Record>> {
        let mut out = Vec::new();
        self.read_current(|r| out.push(r))?;
        let now = inode(&self.dir.output_log())?;
        let current = self.file.as_ref().map(|(_, ino)| *ino);
        if now.is_some() && now != current {
            // Rotated (or first created): the old file is read to its end above; a record
            // cut at its end is complete, since the shim writes whole records.
            if !self.partial.is_empty() {
                out.push(Record::parse(&std::mem::take(&mut self.partial)));
            }
            self.file = open_with_inode(&self.dir.output_log())?;
            self.read_current(|r| out.push(r))?;
        }
        Ok(out)
    }

    /// Whether the task dir is gone (the task was removed: no more output will come).
    pub fn task_removed(&self) -> bool {
        !self.dir.path().exists()
    }

    fn read_current(&mut self, emit: impl FnMut(Record)) -> io::Result<()> {
        match &mut self.file {
            Some((file, _)) => read_records(file, &mut self.partial, emit),
            None => Ok(()),
        }
    }
}

/// The last `limit` records pushed (all of them without a limit).
struct Tail {
    limit: Option<usize>,
    records: VecDeque<Record>,
}

impl Tail {
    fn new(limit: Option<u64>) -> Tail {
        Tail {
            limit: limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            records: VecDeque::new(),
        }
    }

    fn push(&mut self, r: Record) {
        if self.limit == Some(0) {
            return;
        }
        if self.limit.is_some_and(|n| self.records.len() >= n) {
            self.records.pop_front();
        }
        self.records.push_back(r);
    }

    fn into_vec(self) -> Vec<Record> {
        self.records.into()
    }
}

fn inode(path: &std::path::Path) -> io::Result<Option<u64>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m.ino())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn open_with_inode(path: &std::path::Path) -> io::Result<Option<(File, u64)>> {
    match File::open(path) {
        Ok(f) => {
            let ino = f.metadata()?.ino();
            Ok(Some((f, ino)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads `file` from its position to its end, emitting each complete line; the bytes after
/// the last newline stay in `partial` for the next read.
fn read_records(
    file: &mut File,
    partial: &mut Vec<u8>,
    mut emit: impl FnMut(Record),
) -> io::Result<()> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        partial.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(pos) = partial[start..].iter().position(|b| *b == b'\n') {
            emit(Record::parse(&partial[start..start + pos]));
            start += pos + 1;
        }
        partial.drain(..start);
        // A line longer than any record the shim writes is not one: do not grow forever.
        if partial.len() > 2 * MAX_RECORD + 64 {
            emit(Record::parse(&std::mem::take(partial)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::shim::output::OutputLog;

    fn texts(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|r| String::from_utf8_lossy(&r.text).into_owned())
            .collect()
    }

    fn write(log: &mut OutputLog, range: std::ops::Range<u32>) {
        for i in range {
            log.write_record(Stream::Stdout, format!("line {i}").as_bytes());
        }
    }

    #[test]
    fn runtime_logs_backlog_spans_the_rotated_file_and_tails() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TaskDir::new(tmp.path());
        let mut log = OutputLog::open(&dir, 1024).unwrap();
        write(&mut log, 0..40);
        assert!(
            dir.output_log_rotated().exists(),
            "the test needs a rotation"
        );
        let all = LogReader::open(dir.clone()).unwrap().backlog(None).unwrap();
        let numbers: Vec<u32> = texts(&all)
            .iter()
            .map(|t| t[5..].parse().unwrap())
            .collect();
        // Contiguous up to the last line: the rotated file, then the current one.
        let first = numbers[0];
        assert_eq!(numbers, (first..40).collect::<Vec<_>>());
        let tail = LogReader::open(dir.clone())
            .unwrap()
            .backlog(Some(3))
            .unwrap();
        assert_eq!(texts(&tail), ["line 37", "line 38", "line 39"]);
        assert!(tail.iter().all(|r| r.time.ends_with('Z')));
        assert!(
            LogReader::open(dir)
                .unwrap()
                .backlog(Some(0))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn runtime_logs_follow_sees_appends_and_rotations_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TaskDir::new(tmp.path());
        // Nothing written yet: no file, empty backlog, then the first records appear.
        let mut reader = LogReader::open(dir.clone()).unwrap();
        assert!(reader.backlog(None).unwrap().is_empty());
        let mut log = OutputLog::open(&dir, 1024).unwrap();
        write(&mut log, 0..3);
        assert_eq!(
            texts(&reader.poll().unwrap()),
            ["line 0", "line 1", "line 2"]
        );
        assert!(reader.poll().unwrap().is_empty());
        // About one rotation every five polls (the shim keeps one rotated file, so a reader
        // must poll at least once per rotation): every record is seen once, in order.
        let mut seen = Vec::new();
        for batch in 0..20 {
            write(&mut log, 3 + batch * 5..3 + (batch + 1) * 5);
            seen.extend(texts(&reader.poll().unwrap()));
        }
        let want: Vec<String> = (3..103).map(|i| format!("line {i}")).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn runtime_logs_partial_line_waits_for_its_newline() {
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        let dir = TaskDir::new(tmp.path());
        let mut f = File::create(dir.output_log()).unwrap();
        f.write_all(b"2026-01-01T00:00:00.000000Z stderr hel")
            .unwrap();
        let mut reader = LogReader::open(dir.clone()).unwrap();
        assert!(reader.backlog(None).unwrap().is_empty());
        f.write_all(b"lo\n").unwrap();
        let got = reader.poll().unwrap();
        assert_eq!(texts(&got), ["hello"]);
        assert_eq!(got[0].stream, Stream::Stderr);
    }

    #[test]
    fn runtime_logs_missing_task_and_removed_task() {
        let tmp = tempfile::tempdir().unwrap();
        let gone = LogReader::open(TaskDir::new(tmp.path().join("nope")));
        assert_eq!(gone.err().unwrap().kind(), io::ErrorKind::NotFound);
        let path = tmp.path().join("t1");
        std::fs::create_dir(&path).unwrap();
        let reader = LogReader::open(TaskDir::new(&path)).unwrap();
        assert!(!reader.task_removed());
        std::fs::remove_dir(&path).unwrap();
        assert!(reader.task_removed());
    }
}
