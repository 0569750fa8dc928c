//! A microcontroller's frames on a tty: opened raw at the configured speed, read with a short
//! poll timeout (so the source notices `stop`), fed to a [`FrameStream`]; a port that is missing
//! or hangs up (USB unplugged) is opened again every second.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::{Mode, OFlags};
use rustix::termios::{self, ControlModes, OptionalActions, SpecialCodeIndex};

use super::stream::FrameStream;
use super::{Shared, deliver_all, lock};
use crate::serve::Inference;

/// How long one poll waits for bytes: the bound on noticing `stop`.
const POLL: Timespec = Timespec { tv_sec: 0, tv_nsec: 100_000_000 };
/// Wait before opening the port again.
const RETRY: Duration = Duration::from_secs(1);

/// Opens `path` as a raw 8N1 line at `baud`: no echo, no line editing, no CR/LF translation,
/// no flow control, reads return what has arrived.
pub fn open(path: &Path, baud: u32) -> io::Result<OwnedFd> {
    let fd = rustix::fs::open(path, OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())?;
    let mut t = termios::tcgetattr(&fd)?;
    t.make_raw();
    t.set_speed(baud)?;
    t.control_modes |= ControlModes::CREAD | ControlModes::CLOCAL;
    t.control_modes -= ControlModes::CSTOPB | ControlModes::PARENB | ControlModes::CRTSCTS;
    t.special_codes[SpecialCodeIndex::VMIN] = 0;
    t.special_codes[SpecialCodeIndex::VTIME] = 0;
    termios::tcsetattr(&fd, OptionalActions::Now, &t)?;
    Ok(fd)
}

/// Reads `fd` until `stop` or until the line hangs up or fails (`Err`).
fn pump(
    fd: &OwnedFd,
    stream: &mut FrameStream,
    inference: &Inference,
    report: &Shared,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        match poll(&mut fds, Some(&POLL)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let hung_up = fds[0].revents().intersects(PollFlags::HUP | PollFlags::ERR);
        match rustix::io::read(fd, &mut buf) {
            Ok(0) if hung_up => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                let windows = stream.feed(&buf[..n], &mut lock(report));
                deliver_all(inference, windows, report);
            }
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Runs a serial input until `stop`: open, read, reopen after a hang-up. The frame stream (and
/// so the sequence numbers) carries over a reopen, so frames lost while the port was gone count
/// as lost.
pub fn run(path: &Path, baud: u32, inference: &Inference, report: &Shared, stop: &AtomicBool) {
    let mut stream = FrameStream::new();
    while !stop.load(Ordering::Relaxed) {
        match open(path, baud) {
            Ok(fd) => {
                lock(report).connected = true;
                log::info!("input {}: open at {baud} baud", path.display());
                if let Err(e) = pump(&fd, &mut stream, inference, report, stop) {
                    log::warn!("input {}: {e}; opening it again", path.display());
                }
            }
            Err(e) => log::warn!("input {}: {e}", path.display()),
        }
        lock(report).connected = false;
        let until = Instant::now() + RETRY;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use drover_shim::FrameWriter;
    use drover_wire::frame::{Body, FeatureWindow};
    use drover_wire::telemetry::InputReport;
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};

    use super::*;

    /// A pseudo-terminal: the master plays the microcontroller, the slave's path is the "port".
    fn pty() -> (OwnedFd, std::path::PathBuf) {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        (master, std::path::PathBuf::from(name.to_string_lossy().into_owned()))
    }

    #[test]
    fn frames_written_to_a_tty_are_read_raw_and_accounted() {
        let (master, path) = pty();
        // Opened raw before anything is written, as the agent does at start.
        let slave = open(&path, 115_200).expect("open the pty as a serial port");
        let mut mcu = FrameWriter::new();
        let mut bytes = vec![0x0D, 0x0A, 0x11, 0x13, 0x7F, 0x00]; // CR LF XON XOFF DEL: raw, untouched
        for i in 0..3u32 {
            let body =
                Body::Window(FeatureWindow { index: i, values: heapless::Vec::from_slice(&[i as f32]).expect("fits") });
            bytes.extend(mcu.encode(body).expect("encodes"));
        }
        rustix::io::write(&master, &bytes).expect("write to the pty");

        let report: Shared = Arc::new(Mutex::new(InputReport::new("pty")));
        let stop = Arc::new(AtomicBool::new(false));
        let inference = {
            let settings = crate::agent::AgentConfig::parse("device = \"t\"\ndata_dir = \"/tmp\"")
                .expect("config")
                .serve_settings(None);
            Inference::new(settings, Arc::new(crate::agent::SystemClock::default()))
        };
        let (r, s) = (report.clone(), stop.clone());
        let reader = std::thread::spawn(move || {
            let mut stream = FrameStream::new();
            pump(&slave, &mut stream, &inference, &r, &s)
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&report).windows < 3 {
            assert!(Instant::now() < deadline, "windows did not arrive: {:?}", lock(&report));
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().expect("reader").expect("no I/O error");
        let r = lock(&report).clone();
        assert_eq!((r.link.frames, r.link.rejected(), r.windows), (3, 1, 3), "{r:?}");
        assert_eq!(r.refused, 3, "no model is served");
    }

    #[test]
    fn a_missing_port_is_an_error_not_a_panic() {
        assert!(open(Path::new("/dev/drover-no-such-tty"), 115_200).is_err());
    }
}
