//! Naming of labs and removal of labs, including the leftovers of crashed runs.
//!
//! A lab's prefix is `mt<pid>x<n>`: the pid of the process that owns it and a per-process
//! counter. Its namespaces are `<prefix>-<suffix>` and its files live in `<root>/<prefix>`.
//! A prefix whose owner is no longer alive belongs to a crashed run: [`remove_stale_labs`]
//! removes it. The same rule covers other test namespaces named `m<letters><pid>x<n>-...`
//! (`mesh_dataplane::netns::TempNetns` uses `md`, a `NetnsScope` the tag it is given).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use mesh_dataplane::netns::Netns;

use crate::process::{kill_netns_processes, pid_alive};

/// Where labs keep their files unless told otherwise (`MESH_LAB_DIR` overrides).
pub const DEFAULT_LAB_ROOT: &str = "/tmp/mesh-lab";

/// How long processes of a removed lab get to die after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// The directory under which labs put their per-lab directories.
pub fn lab_root() -> PathBuf {
    std::env::var_os("MESH_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_LAB_ROOT.into())
}

/// A prefix no other lab of this or any live process uses: `mt<pid>x<n>`.
pub fn unique_prefix() -> String {
    tagged_prefix("mt")
}

/// `<tag><pid>x<n>`, unique per process by the counter and per run by the pid. Every prefix
/// handed out in this process, whatever its tag, has its own `n`.
pub(crate) fn tagged_prefix(tag: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{tag}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The owner pid of a lab prefix `m<letters><pid>x<n>`, or `None` if `prefix` is not one.
pub(crate) fn owner_pid(prefix: &str) -> Option<u32> {
    let rest = prefix.strip_prefix('m')?;
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_lowercase() && c != 'x');
    let (pid, n) = rest.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok()
}

/// Kills every process in the namespaces `<prefix>-*`, removes those namespaces (the most
/// deeply named first), then removes `dir` if given: first every mount under it (a daemon may
/// keep its own namespaces as bind mounts in its state directory: the processes inside those
/// are killed too). Absent pieces are fine.
pub fn remove_lab(prefix: &str, dir: Option<&Path>) -> Result<()> {
    let mut first_error = None;
    let dash = format!("{prefix}-");
    let mut names: Vec<String> = Netns::list()?
        .into_iter()
        .filter(|n| n.starts_with(&dash))
        .collect();
    // Namespaces named under another one go first (a host's task and network sandboxes before
    // the host, whose VXLAN sockets serve the sandboxes' devices).
    names.sort_by_key(|n| std::cmp::Reverse(n.matches('-').count()));
    for name in names {
        let result = (|| -> Result<()> {
            if let Ok(ns) = Netns::open(&name) {
                kill_netns_processes(&ns, KILL_TIMEOUT)?;
            }
            Netns::remove(&name)?;
            Ok(())
        })();
        if let Err(e) = result {
            first_error.get_or_insert(e.context(format!("remove network namespace {name}")));
        }
    }
    if let Some(dir) = dir {
        if let Err(e) = unmount_under(dir) {
            first_error.get_or_insert(e);
        }
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                first_error.get_or_insert(
                    anyhow::Error::new(e).context(format!("remove {}", dir.display())),
                );
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Unmounts everything mounted at or under `dir`, deepest and most recent first, after
/// killing the processes inside any namespace mounted there.
fn unmount_under(dir: &Path) -> Result<()> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    let mut mounts: Vec<(PathBuf, bool)> = mountinfo
        .lines()
        .rev()
        .filter_map(parse_mountinfo_line)
        .filter(|(point, _)| point.starts_with(&dir))
        .collect();
    // Stable: among equal depths, the most recent mount (listed last) stays first.
    mounts.sort_by_key(|(point, _)| std::cmp::Reverse(point.components().count()));
    for (point, is_nsfs) in mounts {
        if is_nsfs && let Ok(ns) = Netns::open_path(&point.to_string_lossy(), &point) {
            kill_netns_processes(&ns, KILL_TIMEOUT)?;
        }
        match nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e).with_context(|| format!("unmount {}", point.display())),
        }
    }
    Ok(())
}

/// The mount point of a `/proc/self/mountinfo` line and whether it is a namespace file.
fn parse_mountinfo_line(line: &str) -> Option<(PathBuf, bool)> {
    let (fields, rest) = line.split_once(" - ")?;
    let point = fields.split(' ').nth(4)?;
    let fstype = rest.split(' ').next()?;
    Some((PathBuf::from(unescape_octal(point)), fstype == "nsfs"))
}

/// Undoes the kernel's `\ooo` escaping of spaces, tabs, newlines and backslashes.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes labs left by processes that are gone: their namespaces (killing what runs in them)
/// and their directories under `root`. Returns the prefixes removed.
pub fn remove_stale_labs(root: &Path) -> Result<Vec<String>> {
    // Labs of this process start in parallel (one per test thread): one cleaner at a time, so
    // none returns while another is still half-way through the same leftovers.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // Test processes run in parallel too (nextest runs one per test): the same leftovers seen
    // by two of them are removed by one while the other waits, so neither meets them half-gone.
    let _cross_process = cleanup_lock(root)?;
    let mut stale: Vec<String> = Netns::list()?
        .into_iter()
        .filter_map(|name| name.split_once('-').map(|(p, _)| p.to_owned()))
        .filter(|p| owner_pid(p).is_some_and(|pid| !pid_alive(pid)))
        .collect();
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if owner_pid(&name).is_some_and(|pid| !pid_alive(pid)) {
                stale.push(name);
            }
        }
    }
    stale.sort();
    stale.dedup();
    // One leftover that resists does not keep the others.
    let mut first_error = None;
    for prefix in &stale {
        if let Err(e) = remove_lab(prefix, Some(&root.join(prefix))) {
            first_error.get_or_insert(e.context(format!("remove stale lab {prefix}")));
        }
    }
    first_error.map_or(Ok(stale), Err)
}

/// An exclusive `flock` on `<root>/.cleanup.lock`, held until the file is dropped (no lab
/// prefix looks like it, so cleaning never removes it).
pub fn cleanup_lock(root: &Path) -> Result<fs::File> {
    fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
    let path = root.join(".cleanup.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    file.lock()
        .with_context(|| format!("lock {}", path.display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_lab_prefixes_only() {
        assert_eq!(owner_pid("mt123x4"), Some(123));
        assert_eq!(owner_pid("mdp77x0"), Some(77));
        for not_ours in [
            "msb", "mt123", "mtx4", "mt12x", "xt1x2", "mt1x2y", "node1", "m-1x2",
        ] {
            assert_eq!(owner_pid(not_ours), None, "{not_ours}");
        }
    }

    #[test]
    fn mountinfo_lines_parse() {
        let line = "41 30 0:4 net:[4026532] /tmp/mesh-lab/mt1x0/node1/state/netns/a\\040b rw shared:5 - nsfs nsfs rw";
        assert_eq!(
            parse_mountinfo_line(line),
            Some(("/tmp/mesh-lab/mt1x0/node1/state/netns/a b".into(), true))
        );
        let line = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw";
        assert_eq!(parse_mountinfo_line(line), Some(("/".into(), false)));
        assert_eq!(unescape_octal("a\\134b\\012"), "a\\b\n");
    }

    #[test]
    fn unique_prefixes_are_unique_and_owned_by_us() {
        let (a, b) = (unique_prefix(), unique_prefix());
        assert_ne!(a, b);
        assert_eq!(owner_pid(&a), Some(std::process::id()));
    }
}
