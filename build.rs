//! Passes what `nginx-sys` learned about the nginx it built against (OS,
//! feature flags, version) to the module as `cfg` values.
//!
//! `nginx-sys` must be a direct dependency for its `DEP_NGINX_*` variables to
//! reach this script (cargo only forwards `links` metadata to dependants).

use std::env;

/// (minimum nginx version number, cfg name) pairs the glue can test with
/// `#[cfg(...)]`.
const VERSION_GATES: &[(u64, &str)] = &[
    // rr peers carry `refs`/`zombie` (re-resolvable servers in a zone).
    (1_027_003, "ngx_peer_refs"),
];

fn main() {
    for var in [
        "DEP_NGINX_FEATURES",
        "DEP_NGINX_FEATURES_CHECK",
        "DEP_NGINX_OS",
        "DEP_NGINX_OS_CHECK",
        "DEP_NGINX_VERSION_NUMBER",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let allowed = |var: &str| env::var(var).unwrap_or_else(|_| "any()".to_owned());
    println!(
        "cargo::rustc-check-cfg=cfg(ngx_feature, values({}))",
        allowed("DEP_NGINX_FEATURES_CHECK")
    );
    println!(
        "cargo::rustc-check-cfg=cfg(ngx_os, values({}))",
        allowed("DEP_NGINX_OS_CHECK")
    );
    if let Ok(features) = env::var("DEP_NGINX_FEATURES") {
        for f in features.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            println!("cargo::rustc-cfg=ngx_feature=\"{f}\"");
        }
    }
    if let Ok(os) = env::var("DEP_NGINX_OS") {
        println!("cargo::rustc-cfg=ngx_os=\"{os}\"");
    }
    let version: u64 = env::var("DEP_NGINX_VERSION_NUMBER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for (min, name) in VERSION_GATES {
        println!("cargo::rustc-check-cfg=cfg({name})");
        if version >= *min {
            println!("cargo::rustc-cfg={name}");
        }
    }
}
