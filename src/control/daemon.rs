//! What a daemon under systemd or `ovn-ctl` owes its operator, the OVS way: a pidfile that
//! `ovs-appctl -t NAME` accepts (it must hold a POSIX write lock, or `ovs-appctl` calls it
//! stale), the control socket named after it, and a log file reopened on `vlog/reopen` so
//! OVN's logrotate rule (`/var/log/ovn/*.log`, then `vlog/reopen` on every `*.ctl`) rotates it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rustix::fs::{fcntl_lock, FlockOperation};

#[derive(Debug, thiserror::Error)]
pub enum PidfileError {
    #[error("{path}: already locked by a running process (pid {pid}): is another ovn-nb-proxy running?")]
    Running { path: PathBuf, pid: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// A locked pidfile, removed when dropped. The lock lives as long as the open file: nothing
/// else in the process may open the path (closing any descriptor of it drops a POSIX lock).
pub struct Pidfile {
    path: PathBuf,
    _file: File,
}

impl Pidfile {
    /// Writes this process's pid to `path` (through a locked temporary file renamed into
    /// place, so a reader never sees it half written). A pidfile locked by a live process is
    /// an error; an unlocked one is stale and replaced.
    pub fn create(path: &Path) -> Result<Pidfile, PidfileError> {
        let io_err = |source| PidfileError::Io { path: path.to_path_buf(), source };
        if let Ok(mut existing) = OpenOptions::new().read(true).write(true).open(path) {
            if fcntl_lock(&existing, FlockOperation::NonBlockingLockExclusive).is_err() {
                let mut pid = String::new();
                let _ = existing.read_to_string(&mut pid);
                return Err(PidfileError::Running { path: path.to_path_buf(), pid: pid.trim().to_string() });
            }
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut file =
            OpenOptions::new().create(true).write(true).truncate(true).open(&tmp).map_err(io_err)?;
        fcntl_lock(&file, FlockOperation::NonBlockingLockExclusive).map_err(|e| io_err(e.into()))?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        file.flush().map_err(io_err)?;
        std::fs::rename(&tmp, path).map_err(io_err)?;
        Ok(Pidfile { path: path.to_path_buf(), _file: file })
    }

    /// Where `ovs-appctl -t NAME` looks for the control socket of the daemon whose pidfile
    /// is `DIR/NAME.pid`: `DIR/NAME.PID.ctl`.
    pub fn control_socket(&self) -> PathBuf {
        control_socket_for(&self.path, std::process::id())
    }
}

/// `DIR/NAME.pid` → `DIR/NAME.<pid>.ctl`.
pub fn control_socket_for(pidfile: &Path, pid: u32) -> PathBuf {
    let stem = pidfile.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    pidfile.with_file_name(format!("{stem}.{pid}.ctl"))
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A log file appended to, reopened by path on request (after logrotate moved it).
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    pub fn open(path: &Path) -> io::Result<LogFile> {
        Ok(LogFile { path: path.to_path_buf(), file: Mutex::new(append(path)?) })
    }

    /// Opens the path again and writes on to the new file; on failure the old one is kept.
    pub fn reopen(&self) -> io::Result<()> {
        let fresh = append(&self.path)?;
        *self.lock() = fresh;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, File> {
        self.file.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Writes go to the file open now (a line is one `write_all` of the formatted event, so one
/// append). `Arc<LogFile>` is then a tracing writer as it is.
impl Write for &LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.lock().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.lock().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_is_locked_named_for_appctl_and_removed() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("ovn-nb-proxy.pid");
        let p = Pidfile::create(&path).expect("pidfile");
        assert_eq!(p.control_socket(), dir.path().join(format!("ovn-nb-proxy.{}.ctl", std::process::id())));
        // Looked at from another process (POSIX locks are per process, and this one opening
        // the file again would drop its own lock): held, and holding our pid.
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import fcntl,sys\nf=open(sys.argv[1],'r+')\npid=f.read().strip()\ntry:\n fcntl.lockf(f,fcntl.LOCK_EX|fcntl.LOCK_NB)\n print('free',pid)\nexcept OSError:\n print('held',pid)",
            ])
            .arg(&path)
            .output()
            .expect("python3");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("held {}", std::process::id()));
        drop(p);
        assert!(!path.exists(), "removed on drop");
    }

    #[test]
    fn a_stale_pidfile_is_replaced() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("x.pid");
        std::fs::write(&path, "999999\n").expect("write");
        let _p = Pidfile::create(&path).expect("a stale pidfile is replaced");
        assert_eq!(std::fs::read_to_string(&path).expect("read").trim(), std::process::id().to_string());
    }

    #[test]
    fn the_log_file_is_reopened_after_a_rotation() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("p.log");
        let log = LogFile::open(&path).expect("open");
        (&log).write_all(b"one\n").expect("write");
        std::fs::rename(&path, dir.path().join("p.log.1")).expect("rotate");
        (&log).write_all(b"two\n").expect("write");
        log.reopen().expect("reopen");
        (&log).write_all(b"three\n").expect("write");
        assert_eq!(std::fs::read_to_string(dir.path().join("p.log.1")).expect("old"), "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&path).expect("new"), "three\n");
    }
}
