//! The README as a new user follows it: its CLI walkthrough runs as a script against a
//! temporary agent, and every repository path it names exists.

use std::process::Stdio;
use std::time::{Duration, Instant};

use daemoneye_tests::{Agent, Bins, wait_exit};

const T: Duration = Duration::from_secs(10);

fn bins() -> Bins {
    Bins {
        agent: env!("CARGO_BIN_EXE_daemoneye-agent").into(),
        cli: env!("CARGO_BIN_EXE_daemoneye-cli").into(),
    }
}

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README")
}

/// The shell block after the `<!-- walkthrough -->` marker.
fn walkthrough(readme: &str) -> String {
    let (_, after) = readme
        .split_once("<!-- walkthrough -->")
        .expect("the README marks its walkthrough");
    let body = after
        .trim_start()
        .strip_prefix("```sh\n")
        .expect("a sh block follows the marker");
    body.split_once("```")
        .expect("the block ends")
        .0
        .to_string()
}

#[test]
fn the_readme_walkthrough_runs_as_a_script() {
    let script = walkthrough(&readme());
    assert!(script.lines().count() > 10, "{script}");
    let config = format!(
        "[[collectors]]\nname = \"procmond\"\nbinary = {:?}\nargs = [\"--interval\", \"5\"]\n",
        env!("CARGO_BIN_EXE_procmond")
    );
    let agent = Agent::start(&bins(), Some(&config));
    // The walkthrough starts with the agent up and its collector running.
    let deadline = Instant::now() + T;
    while agent.run_cli(&["health"]).0.code() != Some(0) {
        assert!(Instant::now() < deadline, "the agent never became healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    let bin_dir = bins().cli.parent().expect("bin dir").to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = std::process::Command::new("bash")
        .args(["-e", "-o", "pipefail", "-c", &script])
        .current_dir(agent.dir.path())
        .env("PATH", path)
        .env("DAEMONEYE_BROKER_SOCKET", &agent.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash");
    let mut out = daemoneye_tests::Lines::follow(child.stdout.take().expect("stdout"));
    let mut err = daemoneye_tests::Lines::follow(child.stderr.take().expect("stderr"));
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let out = out.drain(Duration::from_secs(1)).join("\n");
    let err = err.drain(Duration::from_secs(1)).join("\n");
    let Some(status) = status else {
        let _ = child.kill();
        panic!("the walkthrough hung\nstdout:\n{out}\nstderr:\n{err}");
    };
    assert!(status.success(), "{status}\nstdout:\n{out}\nstderr:\n{err}");
    // What the comments promise.
    assert!(out.contains("\nhello\n"), "{out}");
    assert!(out.contains("exit 3"), "{out}");
    assert!(
        err.contains(r#"held by durable "order-forwarder" (orders), its subscriber away"#),
        "{err}"
    );
    assert!(out.contains("overall  healthy"), "{out}");
    assert!(
        out.contains("process,realtime,kernel_level,system_wide"),
        "{out}"
    );
}

#[test]
fn every_repository_path_the_readme_names_exists() {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let text = readme();
    let tops = [
        "core/", "io/", "proto/", "sim/", "benches/", "tests/", "scripts/", "fuzz/", ".ci/",
    ];
    let mut missing = Vec::new();
    let mut checked = 0;
    for quoted in text.split('`').skip(1).step_by(2) {
        let path = quoted.trim_end_matches(['/', ',', '.', ':']);
        if tops.iter().any(|t| quoted.starts_with(t))
            && !path.contains(['<', '*', ' ', '{', '$'])
            && !root.join(path).exists()
        {
            missing.push(quoted.to_string());
        }
        checked += usize::from(tops.iter().any(|t| quoted.starts_with(t)));
    }
    assert!(
        checked > 5,
        "only {checked} paths found: is the README's layout gone?"
    );
    assert!(
        missing.is_empty(),
        "the README names missing paths: {missing:?}"
    );
}
