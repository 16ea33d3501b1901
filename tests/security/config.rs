//! Config checks (docs/config.md, "Security checks"): values an operator would not choose
//! knowingly are refused, with the field and line, and risky ones are warned about by
//! `meshlet check` (errors with `--strict`).

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_meshlet");

/// A 32-byte secret: the shortest accepted.
const SECRET_32: &str = "0123456789abcdef0123456789abcdef";

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn check(text: &str, extra: &[&str]) -> (Output, String) {
    let f = write_config(text);
    let out = Command::new(BIN)
        .arg("check")
        .args(extra)
        .arg("--config")
        .arg(f.path())
        .output()
        .unwrap();
    let path = f.path().display().to_string();
    (out, path)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_1000_day_duration_is_refused_with_its_line_and_field() {
    let (out, path) = check(
        "service:\n  name: orders\ndefaults:\n  retry:\n    attempts: 2\n    backoff: 1000d\n",
        &[],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with(&format!("meshlet: {path}:6:")),
        "names the line: {err}"
    );
    assert!(
        err.contains("defaults.retry.backoff"),
        "names the field: {err}"
    );
    assert!(err.contains("365 days"), "{err}");

    // The same for a duration in a map form, and the bound itself is accepted.
    let (out, _) = check("service: {name: orders}\nregistry: {ttl: 400d}\n", &[]);
    assert!(stderr(&out).contains("registry.ttl"), "{}", stderr(&out));
    let (out, _) = check(
        "service: {name: orders}\nservices:\n  catalog: {degrade: {stale: 365d}}\n",
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_10_byte_token_secret_is_refused_by_check_and_run() {
    let short = "0123456789";
    let (out, path) = check(
        &format!("service: {{name: orders}}\nauth:\n  token: {{secret: \"{short}\"}}\n"),
        &[],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with(&format!("meshlet: {path}:3: auth.token.secret: ")),
        "{err}"
    );
    assert!(err.contains("32 bytes"), "{err}");
    assert!(!err.contains(short), "the secret is never printed: {err}");

    // Every secret of a rotation list verifies tokens, so each one is checked.
    let (out, _) = check(
        &format!(
            "service: {{name: orders}}\nauth:\n  token:\n    secret:\n      - \"{SECRET_32}\"\n      - \"{short}\"\n"
        ),
        &[],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(":4: auth.token.secret.1: "), "{err}");

    // From the environment, too.
    let f = write_config(
        "service: {name: orders}\nauth: {token: {secret: \"${MESHLET_SEC_TEST_SECRET}\"}}\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(f.path())
        .env("MESHLET_SEC_TEST_SECRET", "hunter2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // `meshlet run` refuses to start with it, rather than serving with a guessable key.
    let f = write_config(&format!(
        "service: {{name: orders}}\nlisten: {{outbound: 127.0.0.1:0, inbound: 127.0.0.1:0, api: 127.0.0.1:0, telemetry: 127.0.0.1:0}}\nauth:\n  token: {{secret: \"{short}\"}}\n"
    ));
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(f.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "meshlet run started with a 10-byte secret"
    );

    let (out, _) = check(
        &format!("service: {{name: orders}}\nauth: {{token: {{secret: \"{SECRET_32}\"}}}}\n"),
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn check_warns_about_a_public_inbound_without_auth_and_strict_refuses_it() {
    let open = "service: {name: orders, app: \"http://127.0.0.1:8080\"}\nlisten: {inbound: 0.0.0.0:15006}\n";
    let (out, _) = check(open, &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "a warning is not an error: {err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].starts_with("warning: listen.inbound: `0.0.0.0:15006`"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));

    let (out, _) = check(open, &["--strict"]);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--strict makes it an error: {err}"
    );
    assert!(err.contains("warning: listen.inbound: "), "{err}");
    assert!(err.contains("--strict"), "{err}");

    // Closed: tokens required, or the inbound on loopback, or no inbound served at all.
    for closed in [
        format!("{open}auth:\n  token: {{secret: \"{SECRET_32}\"}}\n  inbound: {{require: true}}\n"),
        "service: {name: orders, app: \"http://127.0.0.1:8080\"}\nlisten: {inbound: 127.0.0.1:15006}\n".to_owned(),
        "service: {name: orders}\nlisten: {inbound: 0.0.0.0:15006}\n".to_owned(),
    ] {
        let (out, _) = check(&closed, &["--strict"]);
        let err = stderr(&out);
        assert!(out.status.success(), "{closed}: {err}");
        assert!(!err.contains("warning:"), "{closed}: {err}");
    }
}

#[test]
fn check_warns_about_an_anonymous_hub() {
    let hub = "service: {name: chat}\nlisten: {inbound: 127.0.0.1:15006}\nrealtime: {path: /ws}\n";
    let (out, _) = check(hub, &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("warning: realtime.auth: ")),
        "{err}"
    );
    let (out, _) = check(hub, &["--strict"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let (out, _) = check(
        &format!(
            "service: {{name: chat}}\nlisten: {{inbound: 127.0.0.1:15006}}\nrealtime:\n  auth: {{secret: \"{SECRET_32}\"}}\n"
        ),
        &["--strict"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}
