//! `tidings topology systemd`: example systemd units for a system — a template per component
//! (`<name>-<component>@.service`, one instance per replica: `@1`, `@2`, …), a oneshot that
//! applies the topology before any of them starts, and a target that starts them all.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tidings::system::{Component, System};

use crate::args::SystemdArgs;
use crate::failure::Failure;

pub(super) fn run(system: &System, args: &SystemdArgs) -> Result<(), Failure> {
    let file = absolute(system.path().unwrap_or(Path::new(system.file())))?;
    let name = match &args.name {
        Some(name) => name.clone(),
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tidings".into()),
    };
    let tidings = match &args.tidings {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| Failure::runtime(format!("cannot tell where tidings is: {e}")))?,
    };
    let units = units(system, &name, &file, &tidings);
    std::fs::create_dir_all(&args.out)
        .map_err(|e| Failure::runtime(format!("cannot create {}: {e}", args.out.display())))?;
    for (unit, text) in &units {
        let path = args.out.join(unit);
        std::fs::write(&path, text)
            .map_err(|e| Failure::runtime(format!("cannot write {}: {e}", path.display())))?;
        println!("{}", path.display());
    }
    println!(
        "tidings: {} units written; install them with\n  sudo cp {}/* /etc/systemd/system/ && sudo systemctl daemon-reload && sudo systemctl enable --now {name}.target\n  (the broker url, with its password, goes in /etc/tidings/{name}.env as TIDINGS_URL=…)",
        units.len(),
        args.out.display()
    );
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf, Failure> {
    std::path::absolute(path)
        .map_err(|e| Failure::runtime(format!("cannot resolve {}: {e}", path.display())))
}

/// Every unit: file name and text.
fn units(system: &System, name: &str, file: &Path, tidings: &Path) -> Vec<(String, String)> {
    let dir = file.parent().unwrap_or(Path::new("/"));
    let topology = format!("{name}-topology.service");
    let mut units = vec![(
        topology.clone(),
        format!(
            "[Unit]\n\
             Description={name}: declare the broker topology of {file}\n\
             Wants=network-online.target\n\
             After=network-online.target\n\
             \n\
             [Service]\n\
             Type=oneshot\n\
             RemainAfterExit=yes\n\
             EnvironmentFile=-/etc/tidings/{name}.env\n\
             ExecStart={exec}\n\
             Restart=on-failure\n\
             RestartSec=5\n",
            file = file.display(),
            exec = exec(&[
                &tidings.display().to_string(),
                "topology",
                "apply",
                &file.display().to_string(),
            ]),
        ),
    )];
    let mut wants = vec![topology.clone()];
    for component in system.components() {
        let unit = format!("{name}-{}@.service", component.name);
        for replica in 1..=component.replicas {
            wants.push(format!("{name}-{}@{replica}.service", component.name));
        }
        units.push((unit, component_unit(component, name, file, dir, &topology)));
    }
    units.push((
        format!("{name}.target"),
        format!(
            "[Unit]\n\
             Description={name}: every component of {file}\n\
             Wants={wants}\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n",
            file = file.display(),
            wants = wants.join(" "),
        ),
    ));
    units
}

fn component_unit(c: &Component, name: &str, file: &Path, dir: &Path, topology: &str) -> String {
    let mut env = String::new();
    let vars = [
        (tidings::system::SYSTEM_VAR, file.display().to_string()),
        (tidings::system::COMPONENT_VAR, c.name.clone()),
        (tidings::system::REPLICA_VAR, "%i".to_owned()),
    ];
    for (key, value) in vars {
        let _ = writeln!(
            env,
            "Environment={}",
            quote(&format!("{key}={value}"), false)
        );
    }
    for (key, value) in &c.env {
        let _ = writeln!(
            env,
            "Environment={}",
            quote(&format!("{key}={value}"), true)
        );
    }
    format!(
        "[Unit]\n\
         Description={name}: {component} replica %i\n\
         Requires={topology}\n\
         After={topology} network-online.target\n\
         PartOf={name}.target\n\
         \n\
         [Service]\n\
         WorkingDirectory={dir}\n\
         {env}\
         EnvironmentFile=-/etc/tidings/{name}.env\n\
         ExecStart={exec}\n\
         Restart=on-failure\n\
         RestartSec=2\n\
         # tidings daemons drain on SIGTERM (run_until_signal); then systemd sends SIGKILL.\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec=30\n\
         \n\
         [Install]\n\
         WantedBy={name}.target\n",
        component = c.name,
        dir = dir.display(),
        exec = exec(&["/bin/sh", "-c", &c.command]),
    )
}

/// An `ExecStart=` command line: each word quoted for systemd.
fn exec(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| quote(w, true))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` in double quotes, with what systemd would expand escaped: `\`, `"`, and — when
/// `literal` — the specifiers `%` and variables `$`.
fn quote(text: &str, literal: bool) -> String {
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '"' => quoted.push_str("\\\""),
            '%' if literal => quoted.push_str("%%"),
            '$' if literal => quoted.push_str("$$"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_component_gets_a_template_and_the_target_wants_each_replica() {
        let system = System::parse(
            "[[component]]\nname = \"fetcher\"\ncommand = \"fetch --rate 50% \\\"$HOME\\\"\"\nreplicas = 2\nenv = { RUST_LOG = \"info\" }\n",
            "t.toml",
        )
        .unwrap();
        let units = units(
            &system,
            "shop",
            Path::new("/srv/shop/t.toml"),
            Path::new("/usr/bin/tidings"),
        );
        let names: Vec<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "shop-topology.service",
                "shop-fetcher@.service",
                "shop.target"
            ]
        );
        assert!(
            units[0].1.contains(
                "ExecStart=\"/usr/bin/tidings\" \"topology\" \"apply\" \"/srv/shop/t.toml\""
            ),
            "{}",
            units[0].1
        );
        let fetcher = &units[1].1;
        assert!(
            fetcher.contains("Environment=\"TIDINGS_REPLICA=%i\""),
            "{fetcher}"
        );
        assert!(
            fetcher.contains("Environment=\"TIDINGS_COMPONENT=fetcher\""),
            "{fetcher}"
        );
        assert!(
            fetcher.contains("Environment=\"RUST_LOG=info\""),
            "{fetcher}"
        );
        assert!(
            fetcher.contains("Requires=shop-topology.service"),
            "{fetcher}"
        );
        assert!(fetcher.contains("WorkingDirectory=/srv/shop"), "{fetcher}");
        assert!(
            fetcher.contains(r#"ExecStart="/bin/sh" "-c" "fetch --rate 50%% \"$$HOME\"""#),
            "{fetcher}"
        );
        assert!(
            units[2].1.contains(
                "Wants=shop-topology.service shop-fetcher@1.service shop-fetcher@2.service"
            ),
            "{}",
            units[2].1
        );
    }
}
