//! Every example configuration in `nginx-conf/` passes `nginx -t` with the
//! module and the example policies (as installed by scripts/build.sh).

mod harness;

use std::process::Command;

#[test]
fn example_configurations_pass_nginx_t() {
    let root = harness::root();
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("nginx-conf")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("conf") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        // Test the example as committed, against the installed prefix.
        let installed = root.join("build/conf").join(&name);
        std::fs::copy(&path, &installed).unwrap();
        let dir = harness::TempDir::new("examples");
        let out = Command::new(harness::nginx_bin())
            .arg("-t")
            .arg("-p")
            .arg(root.join("build"))
            .arg("-c")
            .arg(&installed)
            .arg("-e")
            .arg(dir.path().join("logs/error.log"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} examples found");
}
