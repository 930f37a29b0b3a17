//! The `eventgate` command line: test-pattern, key and serve.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eventgate_protocol::header::encode_base64;

const BIN: &str = env!("CARGO_BIN_EXE_eventgate");

/// The command with no EVENTGATE_* variables inherited from the environment.
fn eventgate() -> Command {
    without_eventgate_variables(Command::new(BIN))
}

fn without_eventgate_variables(mut command: Command) -> Command {
    for (name, _) in std::env::vars() {
        if name.starts_with("EVENTGATE_") {
            command.env_remove(name);
        }
    }
    command.env("EVENTGATE_LOG", "warn");
    command
}

fn test_pattern(pattern: &str, event: &str) -> (Option<i32>, String, String) {
    let output = eventgate()
        .args(["test-pattern", "--pattern", pattern, "--event", event])
        .output()
        .expect("run eventgate");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn test_pattern_true_false_invalid() {
    let event = r#"{"source":"orders","detail":{"price":12.5}}"#;
    let (code, stdout, _) = test_pattern(
        r#"{"source":["orders"],"detail":{"price":[{"numeric":[">",10]}]}}"#,
        event,
    );
    assert_eq!((code, stdout.trim()), (Some(0), "true"));
    let (code, stdout, _) = test_pattern(r#"{"source":["billing"]}"#, event);
    assert_eq!((code, stdout.trim()), (Some(1), "false"));
    let (code, stdout, stderr) = test_pattern(r#"{"detail":{"n":[{"numeric":[">"]}]}}"#, event);
    assert_eq!(code, Some(2), "stdout {stdout:?} stderr {stderr:?}");
    assert!(stdout.trim().is_empty());
    assert!(stderr.contains("invalid pattern"), "{stderr}");
    let (code, _, stderr) = test_pattern(r#"{"source":["orders"]}"#, "not json");
    assert_eq!(code, Some(2));
    assert!(stderr.contains("invalid event"), "{stderr}");
}

#[test]
fn key_prints_the_api_key() {
    let output = eventgate()
        .args(["key", "--stack-id", "S-123", "--app-version", "V-9"])
        .output()
        .expect("run eventgate");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        encode_base64(b"V-9:S-123")
    );
    let output = eventgate()
        .args(["key", "--stack-id", "S-123"])
        .output()
        .expect("run eventgate");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        encode_base64(b"S-123")
    );
}

#[test]
fn serve_with_a_bad_config_exits_64() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("eventgate-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "dev = true\nno_such_key = 1\n").expect("write config");
    let output = eventgate()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("run eventgate");
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        output.status.code(),
        Some(64),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("no_such_key"));

    // A config file that does not exist is a configuration error too.
    let output = eventgate()
        .args(["serve", "--config", "/nonexistent/eventgate.toml"])
        .output()
        .expect("run eventgate");
    assert_eq!(output.status.code(), Some(64));
}

#[test]
fn serve_dev_prints_the_address_and_key() {
    let mut child = eventgate()
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn eventgate serve");
    let stdout = child.stdout.take().expect("stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lines.iter().any(|l: &String| l.starts_with("api key: ")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    let outcome = (|| {
        let first = lines.first().ok_or("no output")?;
        let address = first
            .strip_prefix("listening on http://127.0.0.1:")
            .ok_or_else(|| format!("first line is {first:?}"))?;
        let port: u16 = address
            .parse()
            .map_err(|_| format!("no port in {first:?}"))?;
        if port == 0 {
            return Err("port 0 printed".to_owned());
        }
        let key = lines
            .iter()
            .find_map(|l| l.strip_prefix("api key: "))
            .ok_or_else(|| format!("no api key line in {lines:?}"))?;
        if key.trim().is_empty() {
            return Err("empty api key".to_owned());
        }
        // The server really listens there.
        std::net::TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| format!("cannot connect to port {port}: {e}"))?;
        Ok::<(), String>(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    if let Err(message) = outcome {
        panic!("{message}; output: {lines:?}");
    }
}

/// Started with a soft open-file limit of 256, the server raises it to the hard limit.
#[cfg(target_os = "linux")]
#[test]
fn serve_raises_its_soft_open_file_limit_to_the_hard_one() {
    let mut child = without_eventgate_variables(Command::new("sh"))
        .arg("-c")
        .arg(format!(
            "ulimit -S -n 256 && exec {BIN} serve --dev --listen 127.0.0.1:0"
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sh");
    let mut first = String::new();
    let read = child
        .stdout
        .take()
        .map(|stdout| BufReader::new(stdout).read_line(&mut first));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id()));
    let _ = child.kill();
    let _ = child.wait();
    assert!(matches!(read, Some(Ok(n)) if n > 0), "no output: {read:?}");
    assert!(first.starts_with("listening on "), "{first}");
    let limits = limits.expect("read /proc/<pid>/limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("an open-files line");
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers.len(), 2, "{line}");
    assert_eq!(numbers[0], numbers[1], "soft limit not raised: {line}");
    assert_ne!(numbers[0], "256", "{line}");
}
