//! The `meshlet` binary: `check`, `run` with SIGTERM, and the `registry` operator commands.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_meshlet");

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn check_accepts_the_example_and_demo_configs() {
    // Under --strict: the examples show no setting `meshlet check` warns about.
    for file in ["config/meshlet.yaml", "config/demo.yaml"] {
        let out = Command::new(BIN)
            .args(["check", "--strict", "--config", file])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
    }
}

#[test]
fn check_names_file_line_column_field_and_expectation() {
    let f = write_config(
        "service:\n  name: orders\ndefaults:\n  retry:\n    attempts: 3\n    backof: 100ms\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(f.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let expected_prefix = format!(
        "meshlet: {}:6:5: defaults.retry: unknown field `backof`",
        f.path().display()
    );
    assert!(err.starts_with(&expected_prefix), "{err}");
    assert!(
        err.contains("expected one of") && err.contains("`backoff`"),
        "{err}"
    );

    let f = write_config(
        "service:\n  name: orders\nregistry:\n  redis: \"${MESHLET_CLI_TEST_UNSET}\"\n",
    );
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(f.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(":4:") && err.contains("MESHLET_CLI_TEST_UNSET"),
        "{err}"
    );
}

#[test]
fn the_config_path_comes_from_meshlet_config_when_not_given() {
    let f = write_config("service: {name: orders}\n");
    let out = Command::new(BIN)
        .arg("check")
        .env("MESHLET_CONFIG", f.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn sigterm_deregisters_drains_and_exits_zero() {
    let redis = RedisServer::start();
    let app = Upstream::start("app").await;
    let (inbound, outbound, api, telemetry) = (free_port(), free_port(), free_port(), free_port());
    let f = write_config(&format!(
        "service: {{name: billing, app: \"http://{}\"}}\nworkers: 1\nshutdown_grace: 3s\nlisten: {{outbound: 127.0.0.1:{outbound}, inbound: 127.0.0.1:{inbound}, api: 127.0.0.1:{api}, telemetry: 127.0.0.1:{telemetry}}}\nregistry:\n  redis: {}\n",
        app.addr,
        redis.url()
    ));
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(f.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut conn = redis.conn();
    assert!(
        eventually(Duration::from_secs(10), || {
            let n: u64 = redis::cmd("ZCARD")
                .arg("mesh:svc:billing")
                .query(&mut conn)
                .unwrap_or(0);
            async move { n == 1 }
        })
        .await,
        "registered itself"
    );
    let in_flight = tokio::spawn(async move {
        let addr = format!("127.0.0.1:{inbound}").parse().unwrap();
        get_host(addr, "billing", "/slow/700").await
    });
    assert!(eventually(Duration::from_secs(2), || async { app.hits() == 1 }).await);
    // The shell's own `kill` builtin: no extra package needed.
    let killed = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "meshlet did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, 200, "the in-flight request finished");
    let mut conn = redis.conn();
    let n: u64 = redis::cmd("ZCARD")
        .arg("mesh:svc:billing")
        .query(&mut conn)
        .unwrap();
    assert_eq!(n, 0, "deregistered");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("\"deregistered\"") || stderr.contains("deregistered"),
        "{stderr}"
    );
    assert!(
        stderr.lines().all(|l| l.starts_with('{')),
        "json log lines: {stderr}"
    );
}

#[tokio::test]
async fn registry_commands_register_list_and_deregister() {
    let redis = RedisServer::start();
    let url = redis.url();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("registry")
            .args(["--redis", &url])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    run(&[
        "register",
        "--service",
        "search",
        "--address",
        "127.0.0.1:7700",
        "--id",
        "s-1",
        "--protocol",
        "h2",
    ]);
    let listed = run(&["list"]);
    assert!(
        listed.contains("search")
            && listed.contains("s-1")
            && listed.contains("127.0.0.1:7700")
            && listed.contains("h2"),
        "{listed}"
    );
    let mut conn = redis.conn();
    let protocol: String = redis::cmd("HGET")
        .arg("mesh:inst:search:s-1")
        .arg("protocol")
        .query(&mut conn)
        .unwrap();
    assert_eq!(protocol, "h2");
    run(&["deregister", "--service", "search", "--id", "s-1"]);
    assert!(!run(&["list"]).contains("s-1"));
}
