//! `drover flash --hosts FILE`: one board per line, `USER@HOST PROVISION_DIR`, `#` comments
//! and blank lines ignored, relative directories taken from the file's own directory (so a
//! fleet's hosts file and its provisioning directories travel together).

use std::path::{Path, PathBuf};

/// One board to flash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `USER@HOST` (or `HOST`, or an ssh_config alias), as ssh takes it.
    pub destination: String,
    /// Its provisioning directory.
    pub provision: PathBuf,
}

/// Parses a hosts file's text; `base` is its directory. Errors name the line.
pub fn parse(text: &str, base: &Path) -> Result<Vec<Host>, String> {
    let mut hosts: Vec<Host> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [destination, dir] = fields[..] else {
            return Err(format!("line {}: expected `USER@HOST PROVISION_DIR`, got `{line}`", i + 1));
        };
        if destination.starts_with('-') {
            return Err(format!("line {}: `{destination}` is not a host", i + 1));
        }
        if hosts.iter().any(|h| h.destination == destination) {
            return Err(format!("line {}: {destination} is listed twice", i + 1));
        }
        hosts.push(Host { destination: destination.to_string(), provision: base.join(dir) });
    }
    if hosts.is_empty() {
        return Err("no hosts in the file".into());
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_a_host_and_its_provisioning() {
        let text = "# lab\npi@10.0.0.7  devices/pi-07\n\nroot@jetson-1 /srv/prov/jetson-1 # Orin\n";
        let hosts = parse(text, Path::new("/fleet")).unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[0], Host { destination: "pi@10.0.0.7".into(), provision: "/fleet/devices/pi-07".into() });
        assert_eq!(hosts[1].provision, Path::new("/srv/prov/jetson-1"));
    }

    #[test]
    fn malformed_lines_are_refused_by_number() {
        assert_eq!(
            parse("pi@a\n", Path::new(".")).unwrap_err(),
            "line 1: expected `USER@HOST PROVISION_DIR`, got `pi@a`"
        );
        assert!(parse("a d\na e\n", Path::new(".")).unwrap_err().contains("line 2: a is listed twice"));
        assert!(parse("-oProxyCommand=x d\n", Path::new(".")).unwrap_err().contains("not a host"));
        assert!(parse("# nothing\n", Path::new(".")).is_err());
    }
}
