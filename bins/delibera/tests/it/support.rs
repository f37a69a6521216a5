//! What the tests share: the built CLI in an empty environment and under a
//! deadline, and bounded waits on the processes and servers they start.

use std::io::{BufRead, BufReader};
use std::process::{Child, ExitStatus, Output};
use std::time::Duration;

/// Every wait in these tests gives up after this long, so a broken behaviour
/// fails with a message instead of hanging.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

/// The built `delibera`, with an empty environment (each test sets what the
/// command reads, so the developer's exports change nothing), killed if it
/// runs past [`DEADLINE`].
pub(crate) fn delibera() -> assert_cmd::Command {
    let mut command = assert_cmd::Command::cargo_bin("delibera").unwrap();
    command.env_clear().timeout(DEADLINE);
    command
}

/// Runs a command to its end.
pub(crate) trait Finish {
    /// The command's output; fails naming the command if it had to be killed.
    fn finish(&mut self) -> Output;
}

impl Finish for assert_cmd::Command {
    fn finish(&mut self) -> Output {
        let output = self.output().unwrap();
        assert!(
            output.status.code().is_some(),
            "{self:?} did not exit by itself within {DEADLINE:?}: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

/// The first line `child` prints, once it printed it; fails after [`DEADLINE`].
pub(crate) fn first_line(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    receiver
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("no line on stdout within {DEADLINE:?}"))
}

/// Waits for `child` to exit; fails (killing it) after [`DEADLINE`].
pub(crate) fn exit_of(child: &mut Child) -> ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("the process did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Awaits `future`, or fails naming `what` once [`DEADLINE`] has passed.
pub(crate) async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {DEADLINE:?}"))
}

/// An HTTP client whose every request gives up after [`DEADLINE`].
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .unwrap()
}
